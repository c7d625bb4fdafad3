"""scale: one real master process against thousands of emulated agents.

Registration: N emulated agents (agent/emulator.py: the real session and
status-update code, pretend tasks) connect at once; the time until the master
has accepted them all, the master's RSS, and the master's CPU spent on nothing
but their heartbeats at the default interval (5 s), as a share of one core.

Throughput: A emulated agents and F frameworks (the SDK) launching short
pretend tasks; the sustained rate from accept to TASK_FINISHED delivered and
acknowledged, and offer-to-launch latency. The emulated tasks spawn nothing,
so this is the master's (and the SDK's) own ceiling.

Targets (issue 6): 10,000 agents registered in <= 60 s, RSS <= 2 GiB, heartbeat
load <= 20% of a core; >= 2,000 tasks/s on this 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import psutil

from agent.emulator import Emulator
from corral.resources import Resources
from corral.testing import Cluster
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import Scheduler, SchedulerDriver, TaskSpec, pack
from scripts.benchmarks.common import percentile

HELP = "10,000 emulated agents on one master; scheduling throughput with 1,000"

DEFAULT_MASTER = ("--agent-heartbeat-interval", "5", "--agent-timeout", "15", "--log-level", "WARNING")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=10_000, help="agents in the registration phase")
    parser.add_argument("--heartbeat-window", type=float, default=30.0, help="seconds of heartbeat-only load")
    parser.add_argument("--throughput-agents", type=int, default=1000)
    parser.add_argument("--frameworks", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks across all frameworks")
    parser.add_argument("--task-seconds", type=float, default=0.05)


async def registration(address: str, master: psutil.Process, args: argparse.Namespace) -> dict[str, object]:
    emulator = Emulator(
        [address], args.agents, Resources.parse("cpus:16;mem:65536;ports:[31000-32000]"), 3600
    )
    start = time.monotonic()
    running = asyncio.create_task(emulator.run())
    try:
        await asyncio.wait_for(emulator.wait_registered(), 600)
        registered_s = time.monotonic() - start
        await asyncio.sleep(5)  # let registrations' registry writes and offers settle
        before = master.cpu_times()
        window_start = time.monotonic()
        await asyncio.sleep(args.heartbeat_window)
        after = master.cpu_times()
        cpu_s = (after.user - before.user) + (after.system - before.system)
        load = cpu_s / (time.monotonic() - window_start)
        rss = master.memory_info().rss
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    return {
        "agents": args.agents,
        "register_all_s": registered_s,
        "master_rss_mib": rss / 2**20,
        "heartbeat_load_share_of_core": load,
    }


class Launcher(Scheduler):
    def __init__(self, name: str, total: int) -> None:
        self.pending = [TaskSpec("true", cpus=0.5, mem=64, task_id=f"{name}-{i}") for i in range(total)]
        self.total = total
        self.offer_time: dict[str, float] = {}
        self.accepted_time: dict[str, float] = {}
        self.finished_time: dict[str, float] = {}
        self.first = 0.0
        self.done = asyncio.Event()

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        received = time.perf_counter()
        packing = pack(offers, self.pending)
        if packing.tasks:
            await driver.accept(packing.offer_ids, packing.tasks, refuse_seconds=0)
            accepted = time.perf_counter()
            self.first = self.first or received
            self.pending = packing.unplaced
            for task in packing.tasks:
                self.offer_time[task.task_id] = received
                self.accepted_time[task.task_id] = accepted
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=0 if self.pending else 3600)

    def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        if status.state == common_pb2.TASK_FINISHED:
            self.finished_time.setdefault(status.task_id, time.perf_counter())
            if len(self.finished_time) == self.total:
                self.done.set()


async def throughput(address: str, args: argparse.Namespace) -> dict[str, object]:
    emulator = Emulator(
        [address], args.throughput_agents, Resources.parse("cpus:8;mem:8192"), args.task_seconds
    )
    running = asyncio.create_task(emulator.run())
    launchers = [Launcher(f"fw{i}", args.tasks // args.frameworks) for i in range(args.frameworks)]
    drivers = [SchedulerDriver(fw, master=address, name=f"bench-{i}") for i, fw in enumerate(launchers)]
    runs: list[asyncio.Task[None]] = []
    try:
        await asyncio.wait_for(emulator.wait_registered(), 300)
        runs = [asyncio.create_task(d.run()) for d in drivers]
        await asyncio.wait_for(asyncio.gather(*(fw.done.wait() for fw in launchers)), 600)
        for driver in drivers:
            await driver.teardown()
    finally:
        for driver in drivers:
            driver.stop()
        running.cancel()
        await asyncio.gather(running, *runs, return_exceptions=True)
    first = min(fw.first for fw in launchers)
    last = max(max(fw.finished_time.values()) for fw in launchers)
    finished = sum(len(fw.finished_time) for fw in launchers)
    launch_latency = [fw.accepted_time[t] - fw.offer_time[t] for fw in launchers for t in fw.accepted_time]
    return {
        "throughput_agents": args.throughput_agents,
        "frameworks": args.frameworks,
        "tasks": finished,
        "tasks_per_s": finished / (last - first),
        "offer_to_launch_p50_ms": percentile(launch_latency, 50) * 1000,
        "offer_to_launch_p99_ms": percentile(launch_latency, 99) * 1000,
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    result: dict[str, object] = {"benchmark": "scale", "failed": 0}
    for phase in ("registration", "throughput"):
        with tempfile.TemporaryDirectory(prefix="corral-scale-") as tmp:
            cluster = Cluster(Path(tmp))
            try:
                address = cluster.start_master(*DEFAULT_MASTER)
                master = psutil.Process(cluster.processes[0].pid)
                if phase == "registration":
                    result.update(asyncio.run(registration(address, master, args)))
                else:
                    result.update(asyncio.run(throughput(address, args)))
            finally:
                cluster.close()
    result["meets_register_target"] = float(result["register_all_s"]) <= 60  # type: ignore[arg-type]
    result["meets_rss_target"] = float(result["master_rss_mib"]) <= 2048  # type: ignore[arg-type]
    result["meets_heartbeat_target"] = float(result["heartbeat_load_share_of_core"]) <= 0.2  # type: ignore[arg-type]
    result["meets_throughput_target"] = float(result["tasks_per_s"]) >= 2000  # type: ignore[arg-type]
    return result
