"""Accept validation: every problem refuses the whole call and is named."""

import math

import grpc
import pytest

from corral.resources import Resources
from corral.v1 import common_pb2, scheduler_pb2
from master.validation import OfferView, Rejected, check_framework_info, plan_accept

FW = "fw-1"


def offer(oid: str, agent: str, role: str = "*", **amounts: float) -> OfferView:
    ranges = {"ports": [(31000, 31009)]}
    return OfferView(
        oid, FW, agent, role, Resources.of(ranges=ranges, **(amounts or {"cpus": 2, "mem": 1024}))
    )


def task(tid: str, agent: str, cpus: float = 0.5, mem: float = 128, command: str = "true", **extra):
    resources = [
        common_pb2.Resource(name="cpus", scalar=cpus),
        common_pb2.Resource(name="mem", scalar=mem),
    ]
    return common_pb2.TaskInfo(
        task_id=tid,
        agent_id=agent,
        resources=resources,
        command=common_pb2.CommandInfo(value=command, shell=True),
        **extra,
    )


def launch(*tasks):
    return [scheduler_pb2.Operation(launch=scheduler_pb2.Operation.Launch(task_infos=list(tasks)))]


OFFERS = {
    "o1": offer("o1", "a1"),
    "o2": offer("o2", "a2"),
    "other": OfferView("other", "fw-2", "a3", "*", Resources.of(cpus=1)),
}


def test_valid_accept_plans_tasks_per_agent_and_leftovers():
    plan = plan_accept(
        FW, ["o1", "o2"], launch(task("t1", "a1"), task("t2", "a1"), task("t3", "a2", cpus=2)), OFFERS, set()
    )
    assert [t.info.task_id for t in plan.tasks_by_agent["a1"]] == ["t1", "t2"]
    assert [t.info.task_id for t in plan.tasks_by_agent["a2"]] == ["t3"]
    assert plan.leftovers[("a1", "*")].scalar("cpus") == 1.0
    assert plan.leftovers[("a1", "*")].scalar("mem") == 768
    # a2's cpus are used up but its mem and ports are left over.
    assert plan.leftovers[("a2", "*")].scalar("cpus") == 0
    assert plan.leftovers[("a2", "*")].ranges("ports") == ((31000, 31009),)


@pytest.mark.parametrize(
    ("offer_ids", "ops", "code", "fragment"),
    [
        ([], launch(task("t1", "a1")), grpc.StatusCode.INVALID_ARGUMENT, "no offer ids"),
        (["o1", "o1"], launch(), grpc.StatusCode.INVALID_ARGUMENT, "more than once"),
        (["nope"], launch(), grpc.StatusCode.NOT_FOUND, "not outstanding"),
        (["other"], launch(), grpc.StatusCode.NOT_FOUND, "not outstanding"),
        (["o1"], launch(task("../x", "a1")), grpc.StatusCode.INVALID_ARGUMENT, "'../x' is not allowed"),
        (["o1"], launch(task("a/b", "a1")), grpc.StatusCode.INVALID_ARGUMENT, "is not allowed"),
        (["o1"], launch(task("t1", "a1"), task("t1", "a1")), grpc.StatusCode.INVALID_ARGUMENT, "used twice"),
        (
            ["o1"],
            launch(task("t1", "a1", cpus=3)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "more than its accepted",
        ),
        (
            ["o1"],
            launch(task("t1", "a1"), task("t2", "a1", cpus=1.6)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "more than",
        ),
        (
            ["o1"],
            launch(task("t1", "a2")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not the agent of any accepted offer",
        ),
        (["o1"], launch(task("t1", "a1", cpus=-1)), grpc.StatusCode.INVALID_ARGUMENT, "must not be negative"),
        (["o1"], launch(task("t1", "a1", cpus=math.nan)), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        (["o1"], launch(task("t1", "a1", mem=math.inf)), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        (
            ["o1"],
            launch(task("t1", "a1", command="")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "command.value is empty",
        ),
        (["o1"], launch(task("t1", "a1", containerizer="lxc")), grpc.StatusCode.INVALID_ARGUMENT, "unknown"),
        (["o1"], [scheduler_pb2.Operation()], grpc.StatusCode.INVALID_ARGUMENT, "no operation set"),
    ],
)
def test_bad_accept_is_refused_with_precise_status(offer_ids, ops, code, fragment):
    with pytest.raises(Rejected) as info:
        plan_accept(FW, offer_ids, ops, OFFERS, set())
    assert info.value.code == code
    assert fragment in info.value.message


def test_unknown_resource_name_is_refused():
    bad = task("t1", "a1")
    bad.resources.add(name="unicorns", scalar=1)
    with pytest.raises(Rejected, match="unknown resource 'unicorns'"):
        plan_accept(FW, ["o1"], launch(bad), OFFERS, set())


def test_ports_outside_the_offer_are_refused():
    t = task("t1", "a1")
    t.resources.add(name="ports", ranges=[common_pb2.Range(begin=8080, end=8080)])
    with pytest.raises(Rejected, match="more than its accepted"):
        plan_accept(FW, ["o1"], launch(t), OFFERS, set())


def test_live_task_id_is_already_exists():
    with pytest.raises(Rejected) as info:
        plan_accept(FW, ["o1"], launch(task("t1", "a1")), OFFERS, {"t1"})
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_every_problem_is_named():
    with pytest.raises(Rejected) as info:
        plan_accept(FW, ["o1"], launch(task("../x", "a1"), task("t2", "a1", cpus=-1)), OFFERS, set())
    assert "'../x'" in info.value.message and "'t2'" in info.value.message


def test_tasks_are_charged_to_the_role_whose_offer_fits():
    offers = {"p": offer("p", "a1", "prod", cpus=1, mem=256), "d": offer("d", "a1", "dev", cpus=4, mem=4096)}
    plan = plan_accept(
        FW, ["p", "d"], launch(task("small", "a1", cpus=1, mem=256), task("big", "a1", cpus=3)), offers, set()
    )
    roles = {t.info.task_id: t.role for t in plan.tasks_by_agent["a1"]}
    assert roles == {"small": "prod", "big": "dev"}


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        (common_pb2.FrameworkInfo(name="x", failover_timeout_seconds=-1), "failover_timeout_seconds"),
        (common_pb2.FrameworkInfo(name="x", failover_timeout_seconds=math.nan), "failover_timeout_seconds"),
        (common_pb2.FrameworkInfo(name="x", roles=["a", "a"]), "twice"),
        (common_pb2.FrameworkInfo(name="x", roles=["../etc"]), "role"),
        (common_pb2.FrameworkInfo(name="x", id="../fw"), "framework id"),
    ],
)
def test_bad_framework_info_is_refused(info, fragment):
    with pytest.raises(Rejected, match=fragment):
        check_framework_info(info)


def test_a_nul_in_a_task_command_is_refused():
    bad = task("t1", "a1", command="echo a\0b")
    with pytest.raises(Rejected, match="command contains a NUL character"):
        plan_accept(FW, ["o1"], launch(bad), OFFERS, set())
