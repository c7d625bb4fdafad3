"""allocator: the DRF allocator alone, in process, no network.

Emulated clusters of A agents x F frameworks over several weighted roles.
Times one full allocation pass (every agent free), one incremental pass after
a single agent frees resources, a pass after every offer was declined with a
filter, and an empty pass; counts offers. Beside them, Mesos' published
figure for the same shape (about 1 s per pass at 10,000 agents x 1,000
frameworks, after years of tuning: shared/reference/mesos-semantics.md §3),
and the cost per agent across sizes, which must not grow (linear scaling).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

from corral.resources import Resources
from master.allocator import Allocation, Allocator, create

HELP = "DRF allocator pass times against Mesos' published figure; linearity in agents"

MESOS_PASS_MS_10K_X_1K = 1000.0
TARGET_FULL_MS = 100.0
TARGET_INCREMENTAL_MS = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", default="1000,10000,50000", help="comma-separated agent counts")
    parser.add_argument("--frameworks", default="1,100,1000", help="comma-separated framework counts")
    parser.add_argument("--roles", type=int, default=10)
    parser.add_argument("--incremental-rounds", type=int, default=200)


def build(agents: int, frameworks: int, roles: int) -> Allocator:
    allocator = create("drf")
    total = Resources.of(cpus=32, mem=256_000, disk=1_000_000, ranges={"ports": [(31000, 32000)]})
    for i in range(roles):
        allocator.set_weight(f"role{i}", 1.0 + i % 3)
    for f in range(frameworks):
        allocator.add_framework(f"fw{f:05d}", [f"role{f % roles}"])
    for a in range(agents):
        allocator.add_agent(f"agent{a:06d}", total)
    return allocator


def timed(fn: Callable[[], list[Allocation]]) -> tuple[float, list[Allocation]]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def measure(agents: int, frameworks: int, roles: int, rounds: int) -> dict[str, float | int]:
    allocator = build(agents, frameworks, roles)
    full_ms, offers = timed(lambda: allocator.allocate(now=0.0))
    incremental = []
    for i in range(min(rounds, len(offers))):
        offer = offers[i]
        allocator.recover(offer.framework_id, offer.role, offer.agent_id, offer.resources, now=1.0)
        ms, again = timed(lambda: allocator.allocate(now=1.0))
        incremental.append(ms)
        offers[i] = again[0]
    for offer in offers:
        allocator.recover(
            offer.framework_id, offer.role, offer.agent_id, offer.resources, now=2.0, refuse_seconds=5.0
        )
    declined_ms, _ = timed(lambda: allocator.allocate(now=2.0))
    empty_ms, _ = timed(lambda: allocator.allocate(now=2.0))
    return {
        "agents": agents,
        "frameworks": frameworks,
        "offers": len(offers),
        "full_pass_ms": full_ms,
        "full_pass_us_per_agent": full_ms * 1000 / agents,
        "incremental_pass_ms_p50": statistics.median(incremental) if incremental else float("nan"),
        "after_decline_all_ms": declined_ms,
        "empty_pass_ms": empty_ms,
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    sizes = [(a, f) for a in map(int, args.agents.split(",")) for f in map(int, args.frameworks.split(","))]
    rows = []
    for agents, frameworks in sizes:
        row = measure(agents, frameworks, args.roles, args.incremental_rounds)
        rows.append(row)
        print(
            f"{agents:>6} agents x {frameworks:>5} frameworks: full {row['full_pass_ms']:8.1f} ms "
            f"({row['full_pass_us_per_agent']:.1f} us/agent), "
            f"incremental {row['incremental_pass_ms_p50']:.4f} ms, "
            f"after decline-all {row['after_decline_all_ms']:.1f} ms, empty {row['empty_pass_ms']:.4f} ms",
            flush=True,
        )
    headline = next((r for r in rows if r["agents"] == 10_000 and r["frameworks"] == 1_000), None)
    per_agent = {
        r["agents"]: r["full_pass_us_per_agent"]
        for r in rows
        if r["frameworks"] == max(int(f) for f in args.frameworks.split(","))
    }
    smallest, largest = min(per_agent), max(per_agent)
    result: dict[str, object] = {"benchmark": "allocator", "roles": args.roles, "failed": 0, "rows": rows}
    if headline is not None:
        result["full_pass_ms_10k_x_1k"] = headline["full_pass_ms"]
        result["ratio_to_mesos_10k_x_1k"] = headline["full_pass_ms"] / MESOS_PASS_MS_10K_X_1K
        result["incremental_ms_10k_x_1k"] = headline["incremental_pass_ms_p50"]
        result["meets_full_target"] = headline["full_pass_ms"] <= TARGET_FULL_MS
        result["meets_incremental_target"] = headline["incremental_pass_ms_p50"] <= TARGET_INCREMENTAL_MS
    if smallest != largest:
        # Cost per agent at the largest size over the smallest: about 1 means linear.
        result["per_agent_cost_growth"] = per_agent[largest] / per_agent[smallest]
    return result
