"""The DRF allocator (master/allocator/drf.py), alone: no master, no I/O.

Example tests pin down the semantics (DRF order, weights, filters, suppression,
activity, re-registration). A stateful property test drives random sequences
of operations against a small independent model of who holds what, and checks
that nothing is ever allocated twice, that everything is conserved, and that
nothing offerable is left unoffered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from corral.resources import EMPTY, SCALAR_NAMES, Resources
from master.allocator import Allocation, create
from master.allocator.drf import DRFAllocator, is_allocatable

AGENT = Resources.of(cpus=4, mem=4096, ranges={"ports": [(31000, 31009)]})


def counts(offers: list[Allocation]) -> Counter[str]:
    return Counter(o.framework_id for o in offers)


def with_agents(n: int, total: Resources = AGENT, prefix: str = "a") -> Iterator[str]:
    for i in range(n):
        yield f"{prefix}{i:04d}"


def cluster(frameworks: dict[str, list[str]], agents: int, total: Resources = AGENT) -> DRFAllocator:
    alloc = DRFAllocator()
    for framework_id, roles in frameworks.items():
        alloc.add_framework(framework_id, roles)
    for agent_id in with_agents(agents):
        alloc.add_agent(agent_id, total)
    return alloc


def test_registered_by_name() -> None:
    assert isinstance(create("drf"), DRFAllocator)
    with pytest.raises(ValueError, match="unknown allocator"):
        create("nope")


def test_whole_agent_is_offered_once() -> None:
    alloc = cluster({"f1": ["*"]}, agents=2)
    offers = alloc.allocate(now=0)
    assert sorted((o.agent_id, o.framework_id, o.role, o.resources) for o in offers) == [
        ("a0000", "f1", "*", AGENT),
        ("a0001", "f1", "*", AGENT),
    ]
    assert alloc.allocate(now=1) == []
    assert alloc.available("a0000") == EMPTY
    assert alloc.allocations("a0000") == {("f1", "*"): AGENT}


def test_frameworks_in_a_role_share_fairly_and_order_updates_within_a_pass() -> None:
    alloc = cluster({"f1": ["*"], "f2": ["*"], "f3": ["*"]}, agents=99)
    offers = alloc.allocate(now=0)
    assert counts(offers) == {"f1": 33, "f2": 33, "f3": 33}
    # The shares change after every allocation, so one pass interleaves.
    assert [o.framework_id for o in offers[:6]] == ["f1", "f2", "f3", "f1", "f2", "f3"]
    assert alloc.framework_share("f1", "*") == pytest.approx(1 / 3)


def test_role_weights_scale_shares() -> None:
    alloc = DRFAllocator()
    alloc.set_weight("heavy", 2)
    alloc.add_framework("fh", ["heavy"])
    alloc.add_framework("fl", ["light"])
    for agent_id in with_agents(300):
        alloc.add_agent(agent_id, AGENT)
    got = counts(alloc.allocate(now=0))
    assert got["fh"] + got["fl"] == 300
    assert abs(got["fh"] - 2 * got["fl"]) <= 2
    # Weighted shares end up equal: 2/3 / 2 against 1/3 / 1.
    assert alloc.role_share("heavy") == pytest.approx(alloc.role_share("light"), abs=0.01)


def test_weight_changed_later_reorders_roles() -> None:
    alloc = cluster({"fa": ["a"], "fb": ["b"]}, agents=2)
    assert counts(alloc.allocate(now=0)) == {"fa": 1, "fb": 1}
    alloc.set_weight("b", 4)
    for agent_id in with_agents(4, prefix="n"):
        alloc.add_agent(agent_id, AGENT)
    # b's share now counts a quarter: it gets agents until it is even again.
    assert counts(alloc.allocate(now=1)) == {"fb": 3, "fa": 1}
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight"):
            alloc.set_weight("b", bad)


def test_dominant_share_is_the_largest_fraction() -> None:
    alloc = DRFAllocator()
    big = Resources.of(cpus=10, mem=1000)
    # Role "memhog" holds 90% of memory but 10% of cpus; "cpuhog" 50% of cpus.
    alloc.add_agent(
        "a",
        big,
        used={
            ("fm", "memhog"): Resources.of(cpus=1, mem=900),
            ("fc", "cpuhog"): Resources.of(cpus=5, mem=10),
        },
    )
    assert alloc.role_share("memhog") == pytest.approx(0.9)
    assert alloc.role_share("cpuhog") == pytest.approx(0.5)
    alloc.add_framework("fm", ["memhog"])
    alloc.add_framework("fc", ["cpuhog"])
    # "a" has cpus 4, mem 90 left; the next offer goes to the lower dominant share.
    assert [o.framework_id for o in alloc.allocate(now=0)] == ["fc"]


def test_ties_go_to_fewer_allocations_then_name() -> None:
    alloc = DRFAllocator()
    alloc.add_framework("fb", ["*"])
    alloc.add_framework("fa", ["*"])
    alloc.add_agent("x", EMPTY + Resources.of(mem=64))  # allocatable by memory only; cpu share 0
    offers = alloc.allocate(now=0)
    assert [o.framework_id for o in offers] == ["fa"]  # equal share and count: by name
    alloc.add_agent("gpu-only-share", Resources.of(cpus=1, gpus=1))
    # fa holds 100% of mem, fb nothing: fb first regardless of name.
    assert [o.framework_id for o in alloc.allocate(now=0)] == ["fb"]


def test_equal_shares_go_to_the_framework_chosen_fewer_times() -> None:
    alloc = cluster({"fa": ["*"], "fb": ["*"]}, agents=0)
    alloc.suppress("fb")
    alloc.add_agent("s1", Resources.of(mem=64))
    alloc.add_agent("s2", Resources.of(mem=64))
    assert counts(alloc.allocate(now=0)) == {"fa": 2}
    alloc.revive("fb")
    alloc.suppress("fa")
    alloc.add_agent("big", Resources.of(mem=128))
    assert counts(alloc.allocate(now=0)) == {"fb": 1}
    alloc.revive("fa")
    alloc.add_agent("next", Resources.of(mem=64))
    # Both hold 128 of 320: fb was chosen once, fa twice, so fb despite its name.
    assert alloc.framework_share("fa", "*") == alloc.framework_share("fb", "*")
    assert [o.framework_id for o in alloc.allocate(now=0)] == ["fb"]


def test_minimum_allocatable() -> None:
    assert is_allocatable(Resources.of(cpus=0.01))
    assert is_allocatable(Resources.of(mem=32))
    assert not is_allocatable(Resources.of(cpus=0.009, mem=31.999, disk=10_000, ranges={"ports": [(1, 9)]}))
    alloc = cluster({"f": ["*"]}, agents=0)
    alloc.add_agent("tiny", Resources.of(cpus=0.005, mem=16, disk=100))
    alloc.add_agent("cpu", Resources.of(cpus=0.01))
    alloc.add_agent("mem", Resources.of(mem=32))
    assert sorted(o.agent_id for o in alloc.allocate(now=0)) == ["cpu", "mem"]


def test_suppress_and_revive() -> None:
    alloc = cluster({"f1": ["*"], "f2": ["*"]}, agents=0)
    alloc.suppress("f1")
    for agent_id in with_agents(4):
        alloc.add_agent(agent_id, AGENT)
    assert counts(alloc.allocate(now=0)) == {"f2": 4}
    alloc.suppress("f2")
    alloc.add_agent("late", AGENT)
    assert alloc.allocate(now=1) == []
    # Reviving makes the framework a candidate for leftovers examined before.
    alloc.revive("f1")
    assert [(o.framework_id, o.agent_id) for o in alloc.allocate(now=2)] == [("f1", "late")]


def test_suppress_is_per_role() -> None:
    alloc = cluster({"f": ["x", "y"]}, agents=0)
    alloc.suppress("f", ["x"])
    alloc.add_agent("a", AGENT)
    assert [(o.framework_id, o.role) for o in alloc.allocate(now=0)] == [("f", "y")]
    alloc.suppress("f", ["y"])
    alloc.add_agent("b", AGENT)
    assert alloc.allocate(now=0) == []
    alloc.revive("f", ["x"])
    assert [(o.role, o.agent_id) for o in alloc.allocate(now=0)] == [("x", "b")]


def test_subscribed_as_suppressed() -> None:
    alloc = DRFAllocator()
    alloc.add_framework("f", ["x", "y"], suppressed_roles=["x"])
    alloc.add_agent("a", AGENT)
    assert [o.role for o in alloc.allocate(now=0)] == ["y"]


def test_refusal_filter_blocks_then_lapses() -> None:
    alloc = cluster({"f": ["*"]}, agents=2)
    first = alloc.allocate(now=10)
    assert alloc.next_filter_expiry() is None
    declined = next(o for o in first if o.agent_id == "a0000")
    alloc.recover("f", "*", "a0000", declined.resources, now=10, refuse_seconds=5)
    assert alloc.available("a0000") == AGENT
    assert alloc.next_filter_expiry() == 15
    assert alloc.allocate(now=11) == []
    assert alloc.allocate(now=14.999) == []
    assert [o.agent_id for o in alloc.allocate(now=15)] == ["a0000"]
    assert alloc.next_filter_expiry() is None


def test_refusal_filter_is_per_role_and_agent() -> None:
    alloc = cluster({"f": ["x", "y"]}, agents=0)
    alloc.add_agent("a", AGENT)
    (o,) = alloc.allocate(now=0)
    assert (o.role, o.agent_id) == ("x", "a")  # equal shares and counts: by name
    alloc.recover("f", "x", "a", AGENT, now=0, refuse_seconds=60)
    # Filtered in x on a, but not in y on a ...
    assert [(o.role, o.agent_id) for o in alloc.allocate(now=1)] == [("y", "a")]
    # ... nor in x on another agent (x now has the lower share).
    alloc.add_agent("b", AGENT)
    assert [(o.role, o.agent_id) for o in alloc.allocate(now=1)] == [("x", "b")]


def test_declined_offer_goes_to_the_next_framework_at_once() -> None:
    alloc = cluster({"f1": ["*"], "f2": ["*"]}, agents=1)
    (offer,) = alloc.allocate(now=0)
    assert offer.framework_id == "f1"
    alloc.recover("f1", "*", offer.agent_id, offer.resources, now=0, refuse_seconds=5)
    assert [o.framework_id for o in alloc.allocate(now=0)] == ["f2"]


def test_revive_clears_filters() -> None:
    alloc = cluster({"f": ["x", "y"]}, agents=0)
    alloc.add_agent("a", AGENT)
    alloc.add_agent("b", AGENT)
    for o in alloc.allocate(now=0):
        alloc.recover("f", o.role, o.agent_id, o.resources, now=0)
        alloc.recover("f", "x", o.agent_id, EMPTY, now=0, refuse_seconds=100)
        alloc.recover("f", "y", o.agent_id, EMPTY, now=0, refuse_seconds=50)
    assert alloc.allocate(now=1) == []
    assert alloc.next_filter_expiry() == 50
    alloc.revive("f", ["y"])
    assert sorted((o.role, o.agent_id) for o in alloc.allocate(now=1)) == [("y", "a"), ("y", "b")]
    assert alloc.next_filter_expiry() == 100


def test_longer_filter_wins_and_zero_installs_none() -> None:
    alloc = cluster({"f": ["*"]}, agents=1)
    (o,) = alloc.allocate(now=0)
    alloc.recover("f", "*", o.agent_id, EMPTY, now=0, refuse_seconds=30)
    alloc.recover("f", "*", o.agent_id, EMPTY, now=0, refuse_seconds=10)
    assert alloc.next_filter_expiry() == 30
    alloc.revive("f")
    alloc.recover("f", "*", o.agent_id, o.resources, now=0, refuse_seconds=0)
    alloc.recover("f", "*", o.agent_id, EMPTY, now=0, refuse_seconds=None)
    assert alloc.next_filter_expiry() is None
    assert [x.agent_id for x in alloc.allocate(now=0)] == [o.agent_id]


def test_declined_and_partly_recovered_resources_return() -> None:
    alloc = cluster({"f": ["*"]}, agents=1)
    (o,) = alloc.allocate(now=0)
    half = Resources.of(cpus=2, mem=1024, ranges={"ports": [(31000, 31004)]})
    alloc.recover("f", "*", o.agent_id, half, now=0)
    assert alloc.available(o.agent_id) == half
    (again,) = alloc.allocate(now=0)
    assert again.resources == half
    assert alloc.allocations(o.agent_id) == {("f", "*"): AGENT}
    # A leftover too small to be worth an offer stays available but unoffered.
    alloc.recover("f", "*", o.agent_id, Resources.of(cpus=0.005), now=0)
    assert alloc.allocate(now=0) == []
    assert alloc.available(o.agent_id) == Resources.of(cpus=0.005)


def test_recovering_more_than_allocated_is_clamped() -> None:
    alloc = cluster({"f": ["*"], "g": ["*"]}, agents=1)
    (o,) = alloc.allocate(now=0)
    # Wrong framework: nothing comes back.
    alloc.recover("g", "*", o.agent_id, AGENT, now=0)
    assert alloc.available(o.agent_id) == EMPTY
    alloc.recover("f", "*", o.agent_id, Resources.of(cpus=3), now=0)
    alloc.recover("f", "*", o.agent_id, Resources.of(cpus=3, ranges={"ports": [(1, 31000)]}), now=0)
    assert alloc.available(o.agent_id) == Resources.of(cpus=4, ranges={"ports": [(31000, 31000)]})
    alloc.recover("f", "*", "no-such-agent", AGENT, now=0, refuse_seconds=5)
    assert alloc.next_filter_expiry() is None


def test_inactive_agents_are_not_offered() -> None:
    alloc = cluster({"f": ["*"]}, agents=2)
    alloc.deactivate_agent("a0001")
    assert [o.agent_id for o in alloc.allocate(now=0)] == ["a0000"]
    alloc.recover("f", "*", "a0000", AGENT, now=0)
    alloc.deactivate_agent("a0000")
    assert alloc.allocate(now=0) == []
    alloc.activate_agent("a0001")
    alloc.activate_agent("a0000")
    assert sorted(o.agent_id for o in alloc.allocate(now=0)) == ["a0000", "a0001"]


def test_shares_count_only_active_agents_in_the_total() -> None:
    alloc = cluster({"f": ["*"]}, agents=1)
    alloc.allocate(now=0)
    alloc.add_agent("idle", AGENT)
    alloc.suppress("f")
    assert alloc.role_share("*") == pytest.approx(0.5)
    alloc.deactivate_agent("idle")
    assert alloc.role_share("*") == pytest.approx(1.0)
    alloc.remove_agent("idle")
    alloc.remove_agent("a0000")
    assert alloc.role_share("*") == 0


def test_inactive_frameworks_get_nothing() -> None:
    alloc = cluster({"f1": ["*"], "f2": ["*"]}, agents=0)
    alloc.deactivate_framework("f1")
    for agent_id in with_agents(3):
        alloc.add_agent(agent_id, AGENT)
    assert counts(alloc.allocate(now=0)) == {"f2": 3}
    alloc.deactivate_framework("f2")
    alloc.add_agent("late", AGENT)
    assert alloc.allocate(now=0) == []
    alloc.activate_framework("f1")
    assert [(o.framework_id, o.agent_id) for o in alloc.allocate(now=0)] == [("f1", "late")]


def test_reregistered_agent_keeps_what_is_in_use() -> None:
    alloc = cluster({"f1": ["*"], "f2": ["*"]}, agents=0)
    in_use = Resources.of(cpus=3, mem=1024, ranges={"ports": [(31000, 31004)]})
    alloc.add_agent("a", AGENT, used={("f1", "*"): in_use})
    assert alloc.available("a") == AGENT - in_use
    assert alloc.framework_share("f1", "*") == pytest.approx(0.75)
    (o,) = alloc.allocate(now=0)
    assert (o.framework_id, o.resources) == ("f2", AGENT - in_use)
    # Registering again replaces the old picture; the master rescinded offers.
    alloc.add_agent("a", AGENT, used={("f1", "*"): in_use})
    assert alloc.allocations("a") == {("f1", "*"): in_use}
    alloc.recover("f1", "*", "a", in_use, now=0)
    assert alloc.available("a") == AGENT
    assert alloc.framework_share("f1", "*") == 0


def test_used_by_a_framework_not_subscribed_yet_counts() -> None:
    alloc = DRFAllocator()
    alloc.add_agent("a", AGENT, used={("early", "*"): AGENT})
    alloc.add_agent("b", AGENT)
    alloc.add_agent("c", AGENT)
    assert alloc.allocate(now=0) == []  # "early" holds "a" but is not subscribed
    alloc.add_framework("early", ["*"])
    alloc.add_framework("fresh", ["*"])
    offers = alloc.allocate(now=0)
    # early already holds a third of the cluster: fresh catches up first.
    assert [o.framework_id for o in offers] == ["fresh", "early"]


def test_used_beyond_the_total_is_clamped() -> None:
    alloc = DRFAllocator()
    alloc.add_agent("a", AGENT, used={("f", "*"): AGENT + Resources.of(cpus=4), ("g", "*"): AGENT})
    assert alloc.allocations("a") == {("f", "*"): AGENT}
    assert alloc.available("a") == EMPTY


def test_remove_agent_forgets_everything_on_it() -> None:
    alloc = cluster({"f": ["*"]}, agents=2)
    offers = alloc.allocate(now=0)
    alloc.recover("f", "*", "a0000", offers[0].resources, now=0, refuse_seconds=10)
    alloc.remove_agent("a0000")
    alloc.remove_agent("a0001")
    assert alloc.framework_share("f", "*") == 0
    assert alloc.next_filter_expiry() is None
    alloc.recover("f", "*", "a0001", AGENT, now=0)  # late recover of a gone agent: ignored
    alloc.add_agent("a0000", AGENT)  # same id again: no stale filter
    assert [o.agent_id for o in alloc.allocate(now=1)] == ["a0000"]


def test_remove_framework_returns_leftovers() -> None:
    alloc = cluster({"f1": ["*"]}, agents=2)
    alloc.allocate(now=0)
    alloc.add_framework("f2", ["*"])
    alloc.remove_framework("f1")  # without recovering first
    assert alloc.framework_share("f1", "*") == 0
    assert counts(alloc.allocate(now=0)) == {"f2": 2}
    # Calls about a framework already removed are ignored, not fatal.
    alloc.deactivate_framework("f1")
    alloc.revive("f1")
    alloc.deactivate_agent("gone")


def test_resubscription_replaces_roles_keeps_allocations() -> None:
    alloc = cluster({"f": ["x"]}, agents=1)
    (o,) = alloc.allocate(now=0)
    alloc.add_framework("f", ["y"])
    assert alloc.allocations(o.agent_id) == {("f", "x"): AGENT}
    alloc.add_agent("b", AGENT)
    assert [(x.role, x.agent_id) for x in alloc.allocate(now=0)] == [("y", "b")]
    alloc.recover("f", "x", o.agent_id, AGENT, now=0)
    assert alloc.role_share("x") == 0
    assert [(x.role, x.agent_id) for x in alloc.allocate(now=0)] == [("y", o.agent_id)]


def test_incremental_pass_examines_only_dirty_agents(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost contract, checked by counting instead of timing: after one
    agent frees resources, a pass looks at that agent alone."""
    examined: list[str] = []
    choose = DRFAllocator._choose

    def spy(self: DRFAllocator, agent: object) -> tuple[str, str] | None:
        examined.append(agent.id)  # type: ignore[attr-defined]
        return choose(self, agent)  # type: ignore[arg-type]

    monkeypatch.setattr(DRFAllocator, "_choose", spy)
    alloc = cluster({"f1": ["*"], "f2": ["*"]}, agents=100)
    assert len(alloc.allocate(now=0)) == 100
    assert len(examined) == 100
    examined.clear()
    alloc.recover("f1", "*", "a0042", AGENT, now=1)
    assert len(alloc.allocate(now=1)) == 1
    assert examined == ["a0042"]
    examined.clear()
    assert alloc.allocate(now=2) == []
    assert examined == []
    # A revive makes every agent with leftovers a candidate, and only those.
    alloc.suppress("f1")
    alloc.suppress("f2")
    for agent_id in ("a0001", "a0002"):
        alloc.recover("f1", "*", agent_id, AGENT, now=2)
        alloc.recover("f2", "*", agent_id, AGENT, now=2)
    assert alloc.allocate(now=2) == []
    alloc.revive("f2")
    assert len(alloc.allocate(now=3)) == 2
    assert sorted(examined) == ["a0001", "a0002"]


_DETERMINISM_SCRIPT = """
import json
from corral.resources import Resources
from master.allocator.drf import DRFAllocator
alloc = DRFAllocator()
for i in range(12):
    alloc.add_framework(f"f{i}", [f"r{i % 4}", f"r{(i + 1) % 4}"])
alloc.set_weight("r2", 1.5)
for i in range(60):
    alloc.add_agent(f"a{i}", Resources.of(cpus=1 + i % 3, mem=512 * (1 + i % 5)))
out = [[o.framework_id, o.role, o.agent_id] for o in alloc.allocate(0.0)]
for f, r, a in out[::3]:
    alloc.recover(f, r, a, alloc.allocations(a)[(f, r)], now=1.0, refuse_seconds=2.0)
alloc.revive("f5")
out += [[o.framework_id, o.role, o.agent_id] for o in alloc.allocate(1.0)]
out += [[o.framework_id, o.role, o.agent_id] for o in alloc.allocate(3.0)]
print(json.dumps(out))
"""


def test_deterministic_across_hash_seeds() -> None:
    """Same inputs, same offers, even where Python's string hashing differs."""
    results = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _DETERMINISM_SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        results.append(json.loads(done.stdout))
    assert len(results[0]) > 60
    assert results[0] == results[1]


# -- property: random operation sequences against a model ----------------------

AGENT_IDS = [f"a{i}" for i in range(5)]
FRAMEWORK_IDS = [f"f{i}" for i in range(4)]
ROLES = ["r0", "r1", "r2"]
SCALARS = sorted(SCALAR_NAMES)
Key = tuple[str, str, str]  # framework, role, agent


def worth_offering(r: Resources) -> bool:
    """The minimum allocatable, restated here so the check does not trust drf.py."""
    return r.milli("cpus") >= 10 or r.milli("mem") >= 32_000


def port_set(r: Resources) -> set[int]:
    return {p for b, e in r.ranges("ports") for p in range(b, e + 1)}


@st.composite
def agent_totals(draw: st.DrawFn) -> Resources:
    scalars = {
        "cpus": draw(st.sampled_from([0, 5, 10, 500, 4000])),
        "mem": draw(st.sampled_from([0, 16_000, 32_000, 4_096_000])),
        "disk": draw(st.sampled_from([0, 1_000_000])),
    }
    first = draw(st.integers(0, 60))
    ranges = [(first, first + draw(st.integers(0, 6)))] if draw(st.booleans()) else []
    return Resources(scalars, {"ports": tuple(ranges)})


@st.composite
def parts(draw: st.DrawFn, whole: Resources) -> Resources:
    """Any part of `whole`: each scalar cut anywhere, any subset of ports."""
    scalars = {name: draw(st.integers(0, amount)) for name, amount in whole.scalar_items()}
    ports = sorted(draw(st.sets(st.sampled_from(sorted(port_set(whole))))) if port_set(whole) else set())
    return Resources(scalars, {"ports": tuple((p, p) for p in ports)})


class AllocatorMachine(RuleBasedStateMachine):
    """Drives a DRFAllocator the way a master would, mirrored by a model of
    what each framework holds; checks after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.alloc = DRFAllocator()
        self.now = 0.0
        self.totals: dict[str, Resources] = {}
        self.active_agents: set[str] = set()
        self.roles: dict[str, set[str]] = {}
        self.suppressed: dict[str, set[str]] = {}
        self.active_frameworks: set[str] = set()
        self.filters: dict[Key, float] = {}
        self.held: dict[Key, Resources] = {}
        self.weights: dict[str, float] = {}

    # -- helpers --

    def eligible(self, framework_id: str, role: str, agent_id: str) -> bool:
        return (
            framework_id in self.active_frameworks
            and role in self.roles[framework_id]
            and role not in self.suppressed[framework_id]
            and self.filters.get((framework_id, role, agent_id), -1.0) <= self.now
        )

    def held_on(self, agent_id: str) -> dict[tuple[str, str], Resources]:
        return {(f, r): res for (f, r, a), res in self.held.items() if a == agent_id}

    def give_back(self, key: Key, asked: Resources) -> None:
        rest = self.held[key] - asked
        if rest:
            self.held[key] = rest
        else:
            del self.held[key]

    # -- agents --

    @initialize(first=agent_totals(), second=agent_totals())
    def first_agents(self, first: Resources, second: Resources) -> None:
        self.add_agent(AGENT_IDS[0], first)
        self.add_agent(AGENT_IDS[1], second)

    @initialize(roles=st.sets(st.sampled_from(ROLES), min_size=1))
    def first_frameworks(self, roles: set[str]) -> None:
        self.add_framework(FRAMEWORK_IDS[0], {ROLES[0]}, set())
        self.add_framework(FRAMEWORK_IDS[1], roles, set())

    @rule(agent_id=st.sampled_from(AGENT_IDS), total=agent_totals(), data=st.data())
    def add_agent(self, agent_id: str, total: Resources, data: st.DataObject | None = None) -> None:
        if agent_id in self.totals:
            # Re-registration: the agent reports what its tasks hold.
            used = self.held_on(agent_id)
            self.alloc.add_agent(agent_id, self.totals[agent_id], used=used)
        else:
            used = {}
            if data is not None and data.draw(st.booleans(), label="foreign use"):
                who = (data.draw(st.sampled_from(FRAMEWORK_IDS)), data.draw(st.sampled_from(ROLES)))
                used[who] = data.draw(parts(total), label="used")
            self.alloc.add_agent(agent_id, total, used=used)
            self.totals[agent_id] = total
            for (f, r), res in used.items():
                if res:
                    self.held[(f, r, agent_id)] = res
        self.active_agents.add(agent_id)
        self.filters = {k: v for k, v in self.filters.items() if k[2] != agent_id}

    @precondition(lambda self: self.totals)
    @rule(data=st.data())
    def remove_agent(self, data: st.DataObject) -> None:
        agent_id = data.draw(st.sampled_from(sorted(self.totals)))
        self.alloc.remove_agent(agent_id)
        del self.totals[agent_id]
        self.active_agents.discard(agent_id)
        self.held = {k: v for k, v in self.held.items() if k[2] != agent_id}
        self.filters = {k: v for k, v in self.filters.items() if k[2] != agent_id}

    @precondition(lambda self: self.totals)
    @rule(data=st.data(), active=st.booleans())
    def toggle_agent(self, data: st.DataObject, active: bool) -> None:
        agent_id = data.draw(st.sampled_from(sorted(self.totals)))
        if active:
            self.alloc.activate_agent(agent_id)
            self.active_agents.add(agent_id)
        else:
            self.alloc.deactivate_agent(agent_id)
            self.active_agents.discard(agent_id)

    # -- frameworks --

    @rule(
        framework_id=st.sampled_from(FRAMEWORK_IDS),
        roles=st.sets(st.sampled_from(ROLES), min_size=1),
        suppressed=st.sets(st.sampled_from(ROLES)),
    )
    def add_framework(self, framework_id: str, roles: set[str], suppressed: set[str]) -> None:
        self.alloc.add_framework(framework_id, sorted(roles), sorted(suppressed))
        self.roles[framework_id] = roles
        self.suppressed[framework_id] = suppressed & roles
        self.active_frameworks.add(framework_id)

    @precondition(lambda self: self.roles)
    @rule(data=st.data(), recover_first=st.booleans())
    def remove_framework(self, data: st.DataObject, recover_first: bool) -> None:
        framework_id = data.draw(st.sampled_from(sorted(self.roles)))
        for key in [k for k in self.held if k[0] == framework_id]:
            if recover_first:
                self.alloc.recover(framework_id, key[1], key[2], self.held[key], self.now)
            del self.held[key]
        self.alloc.remove_framework(framework_id)
        del self.roles[framework_id], self.suppressed[framework_id]
        self.active_frameworks.discard(framework_id)
        self.filters = {k: v for k, v in self.filters.items() if k[0] != framework_id}

    @precondition(lambda self: self.roles)
    @rule(data=st.data(), active=st.booleans())
    def toggle_framework(self, data: st.DataObject, active: bool) -> None:
        framework_id = data.draw(st.sampled_from(sorted(self.roles)))
        if active:
            self.alloc.activate_framework(framework_id)
            self.active_frameworks.add(framework_id)
        else:
            self.alloc.deactivate_framework(framework_id)
            self.active_frameworks.discard(framework_id)

    @precondition(lambda self: self.roles)
    @rule(data=st.data(), roles=st.none() | st.sets(st.sampled_from(ROLES)))
    def suppress(self, data: st.DataObject, roles: set[str] | None) -> None:
        framework_id = data.draw(st.sampled_from(sorted(self.roles)))
        self.alloc.suppress(framework_id, roles)
        chosen = self.roles[framework_id] if roles is None else roles & self.roles[framework_id]
        self.suppressed[framework_id] |= chosen

    @precondition(lambda self: self.roles)
    @rule(data=st.data(), roles=st.none() | st.sets(st.sampled_from(ROLES)))
    def revive(self, data: st.DataObject, roles: set[str] | None) -> None:
        framework_id = data.draw(st.sampled_from(sorted(self.roles)))
        self.alloc.revive(framework_id, roles)
        chosen = set(ROLES) if roles is None else roles
        self.suppressed[framework_id] -= chosen
        self.filters = {
            k: v for k, v in self.filters.items() if not (k[0] == framework_id and k[1] in chosen)
        }

    @rule(role=st.sampled_from(ROLES), weight=st.sampled_from([0.5, 1.0, 2.0, 3.0]))
    def set_weight(self, role: str, weight: float) -> None:
        self.alloc.set_weight(role, weight)
        self.weights[role] = weight

    # -- resources --

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 4.0, 25.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def allocate(self) -> None:
        self.allocate_and_check()

    @rule(data=st.data(), refuse=st.sampled_from([1.0, 5.0, 20.0]))
    def allocate_and_decline(self, data: st.DataObject, refuse: float) -> None:
        """Frameworks decline some of what they were just offered, with a filter."""
        for o in self.allocate_and_check():
            if data.draw(st.booleans(), label=f"decline {o.agent_id}"):
                key = (o.framework_id, o.role, o.agent_id)
                self.alloc.recover(*key, o.resources, self.now, refuse_seconds=refuse)
                self.give_back(key, o.resources)
                self.note_filter(key, refuse)

    def allocate_and_check(self) -> list[Allocation]:
        offers = self.alloc.allocate(self.now)
        self.filters = {k: v for k, v in self.filters.items() if v > self.now}
        assert len({o.agent_id for o in offers}) == len(offers), "two offers for one agent in a pass"
        for o in offers:
            assert o.agent_id in self.active_agents, f"offer on inactive or unknown agent {o.agent_id}"
            assert o.framework_id in self.roles, f"offer to unknown framework {o.framework_id}"
            assert self.eligible(o.framework_id, o.role, o.agent_id), f"offer to ineligible {o}"
            assert worth_offering(o.resources), f"offer below the minimum: {o}"
            key = (o.framework_id, o.role, o.agent_id)
            before = sum(self.held_on(o.agent_id).values(), EMPTY)
            assert not port_set(before) & port_set(o.resources), f"ports offered twice: {o}"
            assert self.totals[o.agent_id].contains(before + o.resources), f"more than the agent has: {o}"
            self.check_drf_choice(o)
            self.held[key] = self.held.get(key, EMPTY) + o.resources
        # Liveness: nothing worth offering is left where someone could take it.
        for agent_id in self.active_agents:
            left = self.alloc.available(agent_id)
            if worth_offering(left):
                takers = [(f, r) for f, rs in self.roles.items() for r in rs if self.eligible(f, r, agent_id)]
                assert not takers, f"{agent_id} has {left} left; {takers} could take it"
        return offers

    def check_drf_choice(self, o: Allocation) -> None:
        """The offer went to a lowest-share role among those with an eligible
        framework for the agent, and to a lowest-share framework in it (ties,
        broken by allocation count and name, are not modelled)."""
        takers = [(f, r) for f, rs in self.roles.items() for r in rs if self.eligible(f, r, o.agent_id)]
        role_share = min(self.share(r, None) for _, r in takers)
        assert self.share(o.role, None) <= role_share + 1e-9, f"{o.role} is not a lowest-share role"
        in_role = min(self.share(o.role, f) for f, r in takers if r == o.role)
        assert self.share(o.role, o.framework_id) <= in_role + 1e-9, f"{o} is not a lowest share in role"

    def share(self, role: str, framework_id: str | None) -> float:
        """Weighted dominant share of a role, or of one framework within it."""
        totals: dict[str, int] = {}
        for agent_id in self.active_agents:
            for name, amount in self.totals[agent_id].scalar_items():
                totals[name] = totals.get(name, 0) + amount
        held = [res for (f, r, _), res in self.held.items() if r == role and framework_id in (None, f)]
        fractions = [sum(res.milli(n) for res in held) / totals[n] for n in SCALARS if totals.get(n)]
        weight = self.weights.get(role, 1.0) if framework_id is None else 1.0
        return max(fractions, default=0.0) / weight

    @precondition(lambda self: self.held)
    @rule(data=st.data(), refuse=st.sampled_from([None, 0.0, 1.0, 5.0]))
    def recover_part(self, data: st.DataObject, refuse: float | None) -> None:
        key = data.draw(st.sampled_from(sorted(self.held)))
        part = data.draw(parts(self.held[key]), label="part")
        self.alloc.recover(*key, part, self.now, refuse_seconds=refuse)
        self.give_back(key, part)
        self.note_filter(key, refuse)

    @precondition(lambda self: self.totals)
    @rule(
        data=st.data(),
        framework_id=st.sampled_from(FRAMEWORK_IDS),
        role=st.sampled_from(ROLES),
        refuse=st.sampled_from([None, 2.0]),
    )
    def recover_wrong(self, data: st.DataObject, framework_id: str, role: str, refuse: float | None) -> None:
        """A buggy caller recovers more than the framework holds (maybe
        nothing): only what it really holds may come back."""
        agent_id = data.draw(st.sampled_from(sorted(self.totals)))
        asked = data.draw(parts(self.totals[agent_id]), label="asked")
        self.alloc.recover(framework_id, role, agent_id, asked, self.now, refuse_seconds=refuse)
        key = (framework_id, role, agent_id)
        if key in self.held:
            self.give_back(key, asked)
        self.note_filter(key, refuse)

    def note_filter(self, key: Key, refuse: float | None) -> None:
        if refuse and key[0] in self.roles:
            self.filters[key] = max(self.filters.get(key, -1.0), self.now + refuse)

    @rule()
    def drain_and_reoffer(self) -> None:
        """Everything given back, everyone eligible: every agent worth
        offering is offered whole, at once."""
        for (f, r, a), res in sorted(self.held.items()):
            self.alloc.recover(f, r, a, res, self.now)
        self.held.clear()
        for framework_id in sorted(self.roles):
            self.alloc.activate_framework(framework_id)
            self.alloc.revive(framework_id)
            self.active_frameworks.add(framework_id)
            self.suppressed[framework_id] = set()
        self.filters.clear()
        for agent_id in sorted(self.totals):
            self.alloc.activate_agent(agent_id)
            self.active_agents.add(agent_id)
        expected = {a: t for a, t in self.totals.items() if worth_offering(t)} if self.roles else {}
        self.allocate_and_check()
        got = {k[2]: res for k, res in self.held.items()}
        assert got == expected

    # -- invariants --

    @invariant()
    def conserved_and_never_twice(self) -> None:
        for agent_id, total in self.totals.items():
            available = self.alloc.available(agent_id)
            held = self.held_on(agent_id)
            assert self.alloc.allocations(agent_id) == held
            pieces = [available, *held.values()]
            for name in SCALARS:
                assert sum(p.milli(name) for p in pieces) == total.milli(name), (agent_id, name)
            ports = [port_set(p) for p in pieces]
            assert sum(len(p) for p in ports) == len(port_set(total)), f"ports counted twice on {agent_id}"
            assert set().union(*ports) == port_set(total)

    @invariant()
    def filter_expiry_reported(self) -> None:
        assert self.alloc.next_filter_expiry() == min(self.filters.values(), default=None)

    @invariant()
    def shares(self) -> None:
        for role in ROLES:
            assert self.alloc.role_share(role) == pytest.approx(self.share(role, None))
            for framework_id in FRAMEWORK_IDS:
                expected = self.share(role, framework_id)
                assert self.alloc.framework_share(framework_id, role) == pytest.approx(expected)


AllocatorMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_allocator_properties = AllocatorMachine.TestCase
