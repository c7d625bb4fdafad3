"""Packing tasks into offers: TaskSpec, OfferPacker and pack (frameworks/sdk/tasks.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from corral.ids import InvalidId
from corral.resources import ResourceError, Resources
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import OfferPacker, TaskSpec, pack


def offer(
    offer_id: str,
    agent_id: str,
    cpus: float = 4,
    mem: float = 4096,
    disk: float = 0,
    ports: list[tuple[int, int]] | None = None,
    containerizers: tuple[str, ...] = (),
) -> scheduler_pb2.Offer:
    res = Resources.of(cpus=cpus, mem=mem, disk=disk)
    if ports:
        res = res + Resources.of(ranges={"ports": ports})
    return scheduler_pb2.Offer(
        id=offer_id,
        agent_id=agent_id,
        hostname=f"host-{agent_id}",
        resources=res.to_proto(),
        containerizers=list(containerizers),
    )


def ports_of(task: common_pb2.TaskInfo) -> list[int]:
    return [p for b, e in Resources.from_proto(task.resources).ranges("ports") for p in range(b, e + 1)]


def test_first_fit_fills_the_first_agent_before_the_next():
    offers = [offer("o1", "a1", cpus=1), offer("o2", "a2", cpus=1)]
    packing = pack(offers, [TaskSpec("true", cpus=0.5) for _ in range(3)])
    assert [t.agent_id for t in packing.tasks] == ["a1", "a1", "a2"]
    assert packing.offer_ids == ["o1", "o2"]
    assert packing.leftover_offer_ids == []
    assert packing.unplaced == []


def test_spread_places_round_robin_over_the_agents():
    offers = [offer("o1", "a1"), offer("o2", "a2"), offer("o3", "a3")]
    packing = pack(offers, [TaskSpec("true") for _ in range(5)], strategy="spread")
    assert [t.agent_id for t in packing.tasks] == ["a1", "a2", "a3", "a1", "a2"]


def test_spread_skips_agents_the_task_does_not_fit():
    offers = [offer("o1", "a1", cpus=0.1), offer("o2", "a2", cpus=4)]
    packing = pack(offers, [TaskSpec("true", cpus=1) for _ in range(2)], strategy="spread")
    assert [t.agent_id for t in packing.tasks] == ["a2", "a2"]
    assert packing.leftover_offer_ids == ["o1"]


def test_offers_that_get_no_task_are_leftovers_and_tasks_that_do_not_fit_are_unplaced():
    offers = [offer("o1", "a1", cpus=1, mem=100), offer("o2", "a2", cpus=1, mem=100)]
    big = TaskSpec("true", cpus=1, mem=1000)
    small = TaskSpec("true", cpus=1, mem=100)
    packing = pack(offers, [big, small])
    assert packing.unplaced == [big]
    assert [t.task_id for t in packing.tasks] == [small.task_id]
    assert packing.offer_ids == ["o1"]
    assert packing.leftover_offer_ids == ["o2"]


def test_tasks_only_get_what_earlier_tasks_left():
    specs = [TaskSpec("true", cpus=0.4, mem=40) for _ in range(3)]
    packing = pack([offer("o1", "a1", cpus=1, mem=100)], specs)
    # 0.4 + 0.4 fit in 1 cpu, the third does not.
    assert len(packing.tasks) == 2
    assert len(packing.unplaced) == 1


def test_offers_of_one_agent_are_pooled():
    offers = [offer("o1", "a1", cpus=1, mem=100), offer("o2", "a1", cpus=1, mem=100)]
    packing = pack(offers, [TaskSpec("true", cpus=1.5, mem=150)])
    assert len(packing.tasks) == 1
    assert packing.offer_ids == ["o1", "o2"]
    assert packing.leftover_offer_ids == []


def test_ports_come_from_the_offer_ranges_and_never_collide():
    offers = [offer("o1", "a1", ports=[(31000, 31001), (31005, 31006)])]
    packing = pack(offers, [TaskSpec("true", ports=1), TaskSpec("true", ports=2), TaskSpec("true", ports=2)])
    assert [ports_of(t) for t in packing.tasks] == [[31000], [31001, 31005]]
    assert len(packing.unplaced) == 1  # one port left, two wanted


def test_ports_reach_the_task_environment():
    packing = pack([offer("o1", "a1", ports=[(8000, 8010)])], [TaskSpec("serve", ports=2)])
    env = packing.tasks[0].command.environment
    assert (env["PORT0"], env["PORT1"], env["PORTS"]) == ("8000", "8001", "8000,8001")


def test_a_task_without_ports_fits_an_offer_without_ports():
    packing = pack([offer("o1", "a1")], [TaskSpec("true")])
    assert ports_of(packing.tasks[0]) == []
    assert "PORTS" not in packing.tasks[0].command.environment


def test_a_task_naming_a_containerizer_only_goes_to_agents_that_have_it():
    offers = [offer("o1", "a1", containerizers=("process",)), offer("o2", "a2", containerizers=("docker",))]
    packing = pack(offers, [TaskSpec("true", containerizer="docker")])
    assert [t.agent_id for t in packing.tasks] == ["a2"]
    assert packing.tasks[0].containerizer == "docker"


def test_the_packer_places_incrementally_and_refuses_duplicate_ids():
    packer = OfferPacker([offer("o1", "a1", cpus=1)])
    spec = TaskSpec("true", cpus=0.5, task_id="web-1")
    info = packer.place(spec)
    assert info is not None
    assert info.agent_id == "a1"
    with pytest.raises(ValueError, match="used twice"):
        packer.place(spec)
    assert packer.place(TaskSpec("true", cpus=0.6)) is None
    assert len(packer.result().unplaced) == 1


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        OfferPacker([], strategy="random")  # type: ignore[arg-type]


def test_shell_command_task_info():
    spec = TaskSpec("echo $X", cpus=0.5, mem=64, disk=10, env={"X": "1"}, labels={"k": "v"}, task_id="t1")
    info = spec.to_task_info("a1")
    assert info.task_id == "t1"
    assert info.name == "t1"
    assert info.command.shell
    assert info.command.value == "echo $X"
    assert dict(info.command.environment) == {"X": "1"}
    assert dict(info.labels) == {"k": "v"}
    assert Resources.from_proto(info.resources) == Resources.of(cpus=0.5, mem=64, disk=10)
    assert not info.HasField("kill_policy")


def test_argv_command_task_info():
    info = TaskSpec(["/bin/echo", "a b"], kill_grace_period=7, name="echo").to_task_info("a1")
    assert not info.command.shell
    assert info.command.value == "/bin/echo"
    assert list(info.command.arguments) == ["/bin/echo", "a b"]
    assert info.kill_policy.grace_period_seconds == 7
    assert info.name == "echo"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"command": "true", "task_id": "../x"}, InvalidId),
        ({"command": "true", "cpus": -1}, ResourceError),
        ({"command": "true", "mem": float("nan")}, ResourceError),
        ({"command": "  "}, ValueError),
        ({"command": []}, ValueError),
        ({"command": "true", "ports": -1}, ValueError),
    ],
)
def test_bad_specs_fail_where_they_are_written(kwargs, error):
    with pytest.raises(error):
        TaskSpec(**kwargs)


def test_task_ids_are_unique_by_default():
    assert len({TaskSpec("true").task_id for _ in range(100)}) == 100


# -- invariants over random offers and tasks ----------------------------------

port_ranges = st.lists(
    st.tuples(st.integers(1000, 1100), st.integers(0, 5)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=3,
)
offers_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a1", "a2", "a3"]),
        st.integers(0, 4000).map(lambda m: m / 1000),
        st.integers(0, 2000),
        port_ranges,
    ),
    max_size=6,
)
specs_strategy = st.lists(
    st.tuples(st.integers(1, 2000).map(lambda m: m / 1000), st.integers(0, 500), st.integers(0, 4)),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(offers_strategy, specs_strategy, st.sampled_from(["first_fit", "spread"]))
def test_packing_invariants(raw_offers, raw_specs, strategy):
    offers = []
    for i, (agent, cpus, mem, ports) in enumerate(raw_offers):
        offers.append(offer(f"o{i}", agent, cpus=cpus, mem=mem, ports=ports))
    specs = [TaskSpec("true", cpus=c, mem=m, ports=p) for c, m, p in raw_specs]
    packing = pack(offers, specs, strategy=strategy)

    # Every spec is either placed or unplaced, exactly once.
    placed_ids = [t.task_id for t in packing.tasks]
    assert sorted(placed_ids + [s.task_id for s in packing.unplaced]) == sorted(s.task_id for s in specs)
    # Every offer is either used or left over, exactly once.
    assert sorted(packing.offer_ids + packing.leftover_offer_ids) == sorted(o.id for o in offers)
    assert not set(packing.offer_ids) & set(packing.leftover_offer_ids)

    offered: dict[str, Resources] = {}
    for o in offers:
        offered[o.agent_id] = offered.get(o.agent_id, Resources()) + Resources.from_proto(o.resources)
    used_agents = {o.agent_id for o in offers if o.id in packing.offer_ids}
    assert {t.agent_id for t in packing.tasks} == used_agents

    by_spec = {s.task_id: s for s in specs}
    for agent, total in offered.items():
        tasks = [t for t in packing.tasks if t.agent_id == agent]
        taken = Resources()
        for t in tasks:
            taken = taken + Resources.from_proto(t.resources)
            assert len(ports_of(t)) == by_spec[t.task_id].ports
        # Resources never exceed the agent's offers; ports never collide.
        assert total.contains(taken)
        ports = [p for t in tasks for p in ports_of(t)]
        assert len(ports) == len(set(ports))
