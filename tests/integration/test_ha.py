"""Replicated masters against a real etcd: election, failover, fencing, the registry in etcd.

Every test runs real `master` (and `agent`) processes and a real etcd on
127.0.0.1; faults are real: kill -9, SIGSTOP, etcd stopped.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from corral.testing import Cluster, EtcdServer, wait_for
from corral.v1 import registry_pb2, scheduler_pb2, scheduler_pb2_grpc
from tests.integration.test_etcd_adapter import require_etcd

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL = 2.0
#: Time for a standby to notice and win after the leader's lease expired.
MARGIN = 5.0


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd", require_etcd())
    try:
        server.start()
        yield server
    finally:
        server.close()


def etcdctl(server: EtcdServer, *args: str) -> str:
    binary = str(Path(server.binary).with_name("etcdctl"))
    done = subprocess.run(
        [binary, "--endpoints", server.address, *args], capture_output=True, check=True, timeout=10
    )
    return done.stdout.decode()


def refusal(address: str) -> grpc.RpcError:
    """The error a scheduler call to `address` gets."""
    with grpc.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Revive(scheduler_pb2.ReviveRequest(framework_id="f", stream_id="s"), timeout=5)
    return caught.value


def test_three_masters_elect_exactly_one_leader_and_standbys_name_it(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    masters = cluster.start_masters(3, etcd_server.url, ttl=TTL)
    leader = cluster.wait_leader()
    for proc in masters:
        state = cluster.master_state(proc.address)
        assert state.leader.address == leader.address
        assert state.leader.term > 0
        assert state.leading == (proc is leader)
        if proc is not leader:
            error = refusal(proc.address)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"the leader is at {leader.address}" in error.details()
            assert ("x-leader-addr", leader.address) in tuple(error.trailing_metadata())
    stored = json.loads(etcdctl(etcd_server, "get", "--print-value-only", "/corral/default/leader"))
    assert stored["address"] == leader.address


def test_killing_the_leader_elects_another_and_agents_follow(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    cluster.start_masters(3, etcd_server.url, ttl=TTL)
    old = cluster.wait_leader()
    for _ in range(2):
        cluster.start_agent()
    cluster.wait_agents(2)
    term = cluster.state().leader.term

    old.signal(signal.SIGKILL)
    new = cluster.wait_leader(timeout=TTL + MARGIN)
    assert new is not old
    state = cluster.state()
    assert state.leader.term > term
    assert state.leader.failovers >= 1
    # The registry came from etcd: both agents are known, then come back.
    assert len(state.agents) == 2
    cluster.wait_agents(2)


def test_losing_etcd_makes_the_leader_step_down_until_etcd_returns(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    cluster.start_masters(3, etcd_server.url, ttl=TTL)
    cluster.wait_leader()
    cluster.start_agent()
    cluster.wait_agents(1)

    etcd_server.stop()
    # Within 2/3 of the TTL (plus a refresh timeout) nobody leads, and nobody does while etcd is away.
    wait_for(lambda: not cluster.leaders(), TTL + MARGIN, "every master to step down")
    for _ in range(5):
        assert cluster.leaders() == []
    etcd_server.start()
    cluster.wait_leader(timeout=TTL + 15)
    cluster.wait_agents(1)


def test_a_paused_leader_is_fenced_when_it_resumes(cluster: Cluster, etcd_server: EtcdServer) -> None:
    masters = cluster.start_masters(2, etcd_server.url, ttl=TTL)
    old = cluster.wait_leader()
    cluster.start_agent()
    cluster.wait_agents(1)
    old.signal(signal.SIGSTOP)
    try:
        new = wait_for(
            lambda: next((p for p in cluster.leaders() if p is not old), None),
            TTL + MARGIN,
            "the standby to take over",
        )
        assert new is not old
    finally:
        old.signal(signal.SIGCONT)
    # Resumed, the old leader must not act: it says it does not lead and refuses calls.
    state = wait_for(lambda: cluster.master_state(old.address), 10, "the resumed master to answer")
    assert not state.leading
    assert state.leader.address == new.address
    error = refusal(old.address)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [p.address for p in cluster.leaders()] == [new.address]
    assert len(masters) == 2
    assert "stepping down" in old.output()


def test_a_prefix_holding_garbage_is_refused_and_left_alone(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    etcdctl(etcd_server, "put", "/corral/default/registry", "not a registry")
    etcdctl(etcd_server, "put", "/corral/other/something-else", "hello")
    work = cluster.root / "refusing"
    work.mkdir()
    for cluster_name, expect in (
        ("default", "/corral/default/registry in etcd is not a Corral registry"),
        ("other", "holds keys Corral does not write (/corral/other/something-else)"),
    ):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "master",
                "--listen",
                "127.0.0.1:0",
                "--work-dir",
                str(work),
                "--store",
                etcd_server.url,
                "--cluster",
                cluster_name,
                "--election-ttl",
                "1",
            ],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert expect in done.stderr.decode()
        assert "refusing to lead" in done.stderr.decode()
    assert "not a registry" in etcdctl(etcd_server, "get", "/corral/default/registry")
    assert "hello" in etcdctl(etcd_server, "get", "/corral/other/something-else")


def test_a_registry_from_a_newer_version_is_refused(cluster: Cluster, etcd_server: EtcdServer) -> None:
    newer = registry_pb2.Registry(version=99).SerializeToString()
    etcdctl(etcd_server, "put", "/corral/default/registry", newer.decode("latin-1"))
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "master", "--listen", "127.0.0.1:0", "--work-dir", str(cluster.root)),
            *("--store", etcd_server.url),
        ],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "has version 99, newer than this master's" in done.stderr.decode()
    # The stored value is untouched.
    stored = subprocess.run(
        [
            str(Path(etcd_server.binary).with_name("etcdctl")),
            "--endpoints",
            etcd_server.address,
            "get",
            "--print-value-only",
            "/corral/default/registry",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert stored.rstrip(b"\n") == newer
