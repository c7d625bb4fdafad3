"""launch: offer-to-RUNNING latency and throughput against direct spawn.

K agents on loopback, one framework launching short tasks (`true`). Paced
phase: one task in flight at a time, so offer-to-RUNNING is the pipeline's own
latency. Burst phase: as many tasks as fit, for the sustained rate (and the
latency of a task queued behind the others), beside the rate of spawning the
same commands directly with subprocess at the same concurrency, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path

from corral.testing import Cluster
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import Scheduler, SchedulerDriver, TaskSpec, pack
from scripts.benchmarks.common import percentile

HELP = "offer-to-RUNNING latency and throughput against direct spawn"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks in the burst phase")
    parser.add_argument("--paced-tasks", type=int, default=200, help="tasks in the paced phase")
    parser.add_argument("--agent-cpus", type=int, default=8)
    parser.add_argument("--task-cpus", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--isolation",
        choices=("both", "none", "cgroups"),
        default="both",
        help="agents' --isolation; cgroups applies only when run as root (default: both, side by side)",
    )


# -- the physical limit: spawning the same commands directly ---------------


def direct_spawn_rate(count: int, concurrency: int, command: str) -> dict[str, float]:
    """Run `count` copies of `command` with /bin/sh -c, at most `concurrency`
    at a time, as fast as subprocess allows; report tasks per second."""
    running: dict[int, subprocess.Popen[bytes]] = {}
    started = time.perf_counter()
    launched = 0
    latencies = []
    while launched < count or running:
        while launched < count and len(running) < concurrency:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            latencies.append(time.perf_counter() - t0)
            running[proc.pid] = proc
            launched += 1
        pid, status = os.wait()
        done = running.pop(pid, None)
        if done is not None:
            done.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    return {"tasks_per_s": count / elapsed, "spawn_p50_ms": percentile(latencies, 50) * 1000}


# -- Corral: one framework launching short tasks ---------------------------


class LaunchBench(Scheduler):
    """Launch `total` copies of a command as fast as offers allow."""

    def __init__(
        self, total: int, command: str, cpus: float, mem: float, max_in_flight: int = 0, prefix: str = "t"
    ) -> None:
        self.total = total
        self.max_in_flight = max_in_flight
        self.prefix = prefix
        self.command = command
        self.cpus = cpus
        self.mem = mem
        self.launched = 0
        self.offer_time: dict[str, float] = {}
        self.accept_time: dict[str, float] = {}
        self.running_time: dict[str, float] = {}
        self.finished_time: dict[str, float] = {}
        self.failed: list[str] = []
        self.first_accept = 0.0
        self.done = asyncio.Event()

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        received = time.perf_counter()
        want = self.total - self.launched
        if self.max_in_flight:
            in_flight = self.launched - len(self.running_time)
            want = min(want, self.max_in_flight - in_flight)
        specs = []
        if want > 0:
            per_offer = [
                int(min(_scalar(o, "cpus") / self.cpus, _scalar(o, "mem") / self.mem)) for o in offers
            ]
            n = min(want, sum(per_offer))
            specs = [
                TaskSpec(
                    self.command, cpus=self.cpus, mem=self.mem, task_id=f"{self.prefix}{self.launched + i}"
                )
                for i in range(n)
            ]
        packing = pack(offers, specs)
        if packing.tasks:
            for task in packing.tasks:
                self.offer_time[task.task_id] = received
                self.accept_time[task.task_id] = time.perf_counter()
            if not self.first_accept:
                self.first_accept = received
            # refuse_seconds=0: what is left must come straight back.
            await driver.accept(packing.offer_ids, packing.tasks, refuse_seconds=0)
            self.launched += len(packing.tasks)
        if packing.leftover_offer_ids:
            more = self.launched < self.total
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=0 if more else 60)

    def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        now = time.perf_counter()
        if status.state == common_pb2.TASK_RUNNING:
            self.running_time.setdefault(status.task_id, now)
        elif status.state == common_pb2.TASK_FINISHED:
            self.finished_time.setdefault(status.task_id, now)
        elif status.state in (common_pb2.TASK_FAILED, common_pb2.TASK_ERROR, common_pb2.TASK_LOST):
            self.failed.append(
                f"{status.task_id}: {common_pb2.TaskState.Name(status.state)} {status.message}"
            )
            self.finished_time.setdefault(status.task_id, now)
        if len(self.finished_time) >= self.total:
            self.done.set()


def _scalar(offer: scheduler_pb2.Offer, name: str) -> float:
    return sum(r.scalar for r in offer.resources if r.name == name)


async def run_framework(address: str, bench: LaunchBench, timeout: float) -> None:
    driver = SchedulerDriver(bench, master=address, name="bench-launch")
    runner = asyncio.create_task(driver.run())
    try:
        await asyncio.wait_for(bench.done.wait(), timeout)
    finally:
        try:
            await driver.teardown()
        finally:
            driver.stop()
            await asyncio.gather(runner, return_exceptions=True)


def measure(args: argparse.Namespace, isolation: str) -> tuple[LaunchBench, LaunchBench]:
    """The paced and the burst phase on one fresh cluster whose agents run
    with `--isolation isolation`."""
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        cluster = Cluster(Path(tmp))
        try:
            cluster.start_master("--log-level", "WARNING")
            for _ in range(args.agents):
                cluster.start_agent(
                    "--log-level",
                    "WARNING",
                    "--isolation",
                    isolation,
                    resources=f"cpus:{args.agent_cpus};mem:{args.agent_cpus * 1024};ports:[31000-31999]",
                )
            cluster.wait_agents(args.agents)
            paced = LaunchBench(args.paced_tasks, "true", args.task_cpus, 16, max_in_flight=1, prefix="p")
            asyncio.run(run_framework(cluster.master_address, paced, args.timeout))
            burst = LaunchBench(args.tasks, "true", args.task_cpus, 16, prefix="b")
            asyncio.run(run_framework(cluster.master_address, burst, args.timeout))
        finally:
            cluster.close()
    return paced, burst


def run(args: argparse.Namespace) -> dict[str, object]:
    """Two phases per isolation mode: paced (one task in flight at a time: the
    pipeline's own latency) and burst (as many as fit: throughput, and the
    latency a task sees when it queues behind hundreds of others); then the
    direct-spawn limit at the burst's concurrency."""
    concurrency = int(args.agents * args.agent_cpus / args.task_cpus)
    modes = ["none", "cgroups"] if args.isolation == "both" else [args.isolation]
    measured = {mode: measure(args, mode) for mode in modes}
    direct = direct_spawn_rate(args.tasks, concurrency, "true")

    def latencies(bench: LaunchBench) -> list[float]:
        return [bench.running_time[t] - bench.offer_time[t] for t in bench.running_time]

    result: dict[str, object] = {
        "benchmark": "launch",
        "agents": args.agents,
        "paced_tasks": args.paced_tasks,
        "burst_tasks": args.tasks,
        "burst_concurrency": concurrency,
        "direct_spawn_p50_ms": direct["spawn_p50_ms"],
        "direct_spawn_tasks_per_s": direct["tasks_per_s"],
    }
    failures: list[str] = []
    for mode, (paced, burst) in measured.items():
        elapsed = max(burst.finished_time.values()) - burst.first_accept
        rate = len(burst.finished_time) / elapsed
        suffix = f"_isolation_{mode}"
        result.update(
            {
                f"paced_offer_to_running_p50_ms{suffix}": percentile(latencies(paced), 50) * 1000,
                f"paced_offer_to_running_p99_ms{suffix}": percentile(latencies(paced), 99) * 1000,
                f"burst_offer_to_running_p50_ms{suffix}": percentile(latencies(burst), 50) * 1000,
                f"burst_offer_to_running_p99_ms{suffix}": percentile(latencies(burst), 99) * 1000,
                f"corral_tasks_per_s{suffix}": rate,
                f"ratio_to_direct{suffix}": rate / direct["tasks_per_s"],
            }
        )
        failures += paced.failed + burst.failed
    result["failed"] = len(failures)
    result["failures"] = failures[:5]
    return result
