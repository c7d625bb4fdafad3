"""Malformed and hostile scheduler calls against a real master and agent are
refused with the right status and leave the master's state as it was."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import pytest

from corral.testing import Cluster, wait_for
from corral.v1 import common_pb2, operator_pb2, scheduler_pb2
from tests.rawclient import RawFramework, launch, task_info

pytestmark = pytest.mark.integration


@pytest.fixture
def running(cluster: Cluster) -> Iterator[tuple[Cluster, RawFramework]]:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    fw = RawFramework(cluster.master_address, name="hostile-test")
    fw.subscribe()
    try:
        yield cluster, fw
    finally:
        fw.close()


def snapshot(state: operator_pb2.State) -> tuple:
    return (
        sorted((o.id, o.SerializeToString(deterministic=True)) for o in state.offers),
        sorted(t.task.task_id for t in state.tasks),
        sorted((a.id, a.status) for a in state.agents),
    )


def refused(fw: RawFramework, method: str, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fw.call(method, **fields)
    return info.value


def assert_refused_and_unchanged(
    cluster: Cluster, fw: RawFramework, code: grpc.StatusCode, fragment: str, method: str = "Accept", **fields
) -> None:
    before = snapshot(cluster.state())
    error = refused(fw, method, **fields)
    assert error.code() == code, error.details()
    assert fragment in error.details()
    assert snapshot(cluster.state()) == before


def test_hostile_accepts_are_refused_and_change_nothing(running, tmp_path):
    cluster, fw = running
    (offer,) = fw.offers()
    agent = offer.agent_id
    ok = task_info("good", agent)

    assert_refused_and_unchanged(
        cluster,
        fw,
        grpc.StatusCode.PERMISSION_DENIED,
        "stream id",
        offer_ids=[offer.id],
        operations=launch(ok),
        stream_id="forged",
    )
    assert_refused_and_unchanged(
        cluster,
        fw,
        grpc.StatusCode.NOT_FOUND,
        "not registered",
        offer_ids=[offer.id],
        operations=launch(ok),
        framework_id="fw-nobody",
    )
    assert_refused_and_unchanged(
        cluster,
        fw,
        grpc.StatusCode.INVALID_ARGUMENT,
        "more than its accepted",
        offer_ids=[offer.id],
        operations=launch(task_info("big", agent, cpus=64)),
    )
    assert_refused_and_unchanged(
        cluster,
        fw,
        grpc.StatusCode.INVALID_ARGUMENT,
        "used twice",
        offer_ids=[offer.id],
        operations=launch(ok, task_info("good", agent)),
    )
    assert_refused_and_unchanged(
        cluster,
        fw,
        grpc.StatusCode.INVALID_ARGUMENT,
        "'../x' is not allowed",
        offer_ids=[offer.id],
        operations=launch(task_info("../x", agent)),
    )
    assert_refused_and_unchanged(
        cluster,
        fw,
        grpc.StatusCode.INVALID_ARGUMENT,
        "finite",
        offer_ids=[offer.id],
        operations=launch(task_info("nan", agent, mem=math.nan)),
    )
    assert_refused_and_unchanged(
        cluster,
        fw,
        grpc.StatusCode.INVALID_ARGUMENT,
        "negative",
        offer_ids=[offer.id],
        operations=launch(task_info("neg", agent, cpus=-1)),
    )
    assert_refused_and_unchanged(
        cluster,
        fw,
        grpc.StatusCode.NOT_FOUND,
        "not outstanding",
        offer_ids=["no-such-offer"],
        operations=launch(ok),
    )
    # No sandbox was made for the path-like id, anywhere under the cluster.
    assert not [p for p in tmp_path.rglob("*") if p.name == "x" and p.is_dir()]

    # The offer is still good: the same framework can use it now.
    fw.call("Accept", offer_ids=[offer.id], operations=launch(ok))
    status = fw.wait("update").update.status
    assert status.task_id == "good"


def test_someone_elses_offer_is_not_found_and_stays_theirs(running):
    cluster, fw = running
    (offer,) = fw.offers()
    thief = RawFramework(cluster.master_address, name="thief")
    thief.subscribe()
    try:
        before = snapshot(cluster.state())
        error = refused(
            thief, "Accept", offer_ids=[offer.id], operations=launch(task_info("stolen", offer.agent_id))
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = refused(thief, "Decline", offer_ids=[offer.id])
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert snapshot(cluster.state()) == before
        fw.call("Accept", offer_ids=[offer.id], operations=launch(task_info("mine", offer.agent_id)))
        assert fw.wait("update").update.status.task_id == "mine"
    finally:
        thief.close()


def test_live_task_id_cannot_be_reused(running):
    cluster, fw = running
    (offer,) = fw.offers()
    fw.call(
        "Accept",
        offer_ids=[offer.id],
        operations=launch(task_info("sleeper", offer.agent_id, "sleep 60")),
        filters=scheduler_pb2.Filters(refuse_seconds=0),
    )
    (offer2,) = fw.offers()
    before = snapshot(cluster.state())
    error = refused(
        fw, "Accept", offer_ids=[offer2.id], operations=launch(task_info("sleeper", offer2.agent_id))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert snapshot(cluster.state()) == before


def test_stale_stream_after_resubscribe_is_refused(running):
    cluster, fw = running
    old_stream = fw.stream_id
    again = RawFramework(
        cluster.master_address, name="hostile-test", failover=0, framework_id=fw.framework_id
    )
    try:
        again.subscribe()
        assert again.framework_id == fw.framework_id
        assert fw.wait("error").error.message  # the old subscription is told it was replaced
        error = refused(again, "Revive", stream_id=old_stream)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        again.call("Revive")
    finally:
        again.close()


def test_bad_calls_of_every_kind_are_refused(running):
    cluster, fw = running
    fw.offers()
    cases = [
        ("Kill", {"task_id": "../etc"}, "not allowed"),
        (
            "Kill",
            {"task_id": "t", "kill_policy": common_pb2.KillPolicy(grace_period_seconds=math.inf)},
            "grace",
        ),
        (
            "Acknowledge",
            {"acknowledgements": [scheduler_pb2.AcknowledgeRequest.Ack(agent_id="a", task_id="t", uuid=b"")]},
            "uuid",
        ),
        ("Reconcile", {"tasks": [scheduler_pb2.ReconcileRequest.Task(task_id="a/b")]}, "not allowed"),
        ("Revive", {"roles": ["not-mine"]}, "not among"),
        ("Suppress", {"roles": ["not-mine"]}, "not among"),
        ("Decline", {"offer_ids": ["x", "x"]}, "more than once"),
    ]
    for method, fields, fragment in cases:
        assert_refused_and_unchanged(
            cluster, fw, grpc.StatusCode.INVALID_ARGUMENT, fragment, method, **fields
        )


def test_bad_subscriptions_are_refused(running):
    cluster, _ = running
    for info, fragment in [
        (common_pb2.FrameworkInfo(name="x", failover_timeout_seconds=-5), "failover_timeout"),
        (common_pb2.FrameworkInfo(name="x", roles=["a/b"]), "role"),
        (common_pb2.FrameworkInfo(name="x", id="../../fw"), "framework id"),
    ]:
        fw = RawFramework(cluster.master_address)
        fw.info.CopyFrom(info)
        try:
            with pytest.raises(grpc.RpcError) as err:
                fw.subscribe()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert fragment in err.value.details()
        finally:
            fw.close()
    # The master is still serving.
    wait_for(lambda: cluster.state().agents, what="the master to answer")
