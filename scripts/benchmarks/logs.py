"""logs: task log reads through the master, and the agent's cost of health checks.

Log reads: a finished task's stdout (--log-mib MiB) read with ReadTaskLog
(master -> agent ReadFile pieces of 64 KiB -> stream) beside reading the same
file directly from the sandbox in 64 KiB pieces (the limit), same run.
Follow latency: a task writes a timestamped line every 50 ms; the time until
each line arrives on a follow stream, beside the master's poll interval.
Health checks: the agent's CPU time with --tasks sleeping tasks, first without
checks, then each with a TCP check every --interval s against a listener in
this process; the agent's CPU per probe beside the CPU this process spends on
the same connects done by a bare asyncio loop (the peer).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import grpc
import psutil

from corral.testing import Cluster
from corral.v1 import common_pb2, operator_pb2, operator_pb2_grpc, scheduler_pb2
from frameworks import Scheduler, SchedulerDriver, TaskSpec, pack
from master.logs import POLL_INTERVAL
from scripts.benchmarks.common import percentile

HELP = "ReadTaskLog throughput and follow latency; agent CPU per health check probe"

PIECE = 64 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-mib", type=int, default=32, help="size of the log read back")
    parser.add_argument("--lines", type=int, default=100, help="lines written while following")
    parser.add_argument("--tasks", type=int, default=50, help="health-checked tasks")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between a task's probes")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of agent CPU measured")
    parser.add_argument("--timeout", type=float, default=120.0)


class Launcher(Scheduler):
    """Launches the specs (with their health checks) and records their states."""

    def __init__(self) -> None:
        self.pending: list[TaskSpec] = []
        self.checks: dict[str, common_pb2.HealthCheck] = {}
        self.states: dict[str, int] = {}
        self.framework_id = ""
        self.changed = asyncio.Event()

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        self.framework_id = framework_id
        self.changed.set()

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        packing = pack(offers, self.pending)
        for task in packing.tasks:
            if task.task_id in self.checks:
                task.health_check.CopyFrom(self.checks[task.task_id])
        if packing.tasks:
            await driver.accept(packing.offer_ids, packing.tasks, refuse_seconds=0)
        self.pending = packing.unplaced
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=0 if self.pending else 5)

    def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        self.states[status.task_id] = status.state
        self.changed.set()

    def running(self, specs: list[TaskSpec]) -> bool:
        return all(self.states.get(s.task_id) == common_pb2.TASK_RUNNING for s in specs)

    async def until(self, condition: object, timeout: float) -> None:
        async def wait() -> None:
            while not condition():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


def _read_log(address: str, task_id: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        total = 0
        for chunk in stub.ReadTaskLog(operator_pb2.ReadTaskLogRequest(task_id=task_id), timeout=300):
            total += len(chunk.data)
        return total


def _read_direct(path: Path) -> int:
    total = 0
    with open(path, "rb", buffering=0) as file:
        while piece := file.read(PIECE):
            total += len(piece)
    return total


async def _follow(address: str, task_id: str, lines: int) -> list[float]:
    """Latency of each line from its write (its own timestamp) to its arrival."""
    latencies: list[float] = []
    buffer = b""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        request = operator_pb2.ReadTaskLogRequest(task_id=task_id, follow=True)
        async for chunk in stub.ReadTaskLog(request):
            now = time.time()
            buffer += chunk.data
            *complete, buffer = buffer.split(b"\n")
            latencies.extend(now - float(line) for line in complete if line)
            if len(latencies) >= lines:
                break
    return latencies


async def _connect_loop(port: int, probes: int) -> float:
    """CPU seconds this process spends on `probes` bare asyncio connects (the peer)."""
    before = time.process_time()
    for _ in range(probes):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
    return time.process_time() - before


def _agent_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


async def _scenario(
    cluster: Cluster, agent_pid: int, root: Path, args: argparse.Namespace
) -> dict[str, object]:
    launcher = Launcher()
    driver = SchedulerDriver(launcher, master=cluster.master_address, name="bench-logs")
    runner = asyncio.create_task(driver.run())
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        await launcher.until(lambda: launcher.framework_id, args.timeout)
        address = cluster.master_address

        # 1. A finished task's log: through the master vs directly from its sandbox.
        size = args.log_mib * 1024 * 1024
        writer = TaskSpec(f"head -c {size} /dev/zero | tr '\\0' x", task_id="writer")
        launcher.pending.append(writer)
        await driver.revive()
        await launcher.until(lambda: launcher.states.get("writer") == common_pb2.TASK_FINISHED, args.timeout)
        t0 = time.perf_counter()
        through_master = await asyncio.to_thread(_read_log, address, "writer")
        master_s = time.perf_counter() - t0
        sandbox = root / "agent1" / "sandboxes" / launcher.framework_id / "writer"
        t0 = time.perf_counter()
        direct = _read_direct(sandbox / "stdout")
        direct_s = time.perf_counter() - t0
        assert through_master == direct == size, (through_master, direct, size)

        # 2. Follow latency of lines a running task writes.
        talker = TaskSpec(f"for i in $(seq {args.lines}); do date +%s.%N; sleep 0.05; done", task_id="talker")
        launcher.pending.append(talker)
        await driver.revive()
        await launcher.until(lambda: "talker" in launcher.states, args.timeout)
        latencies = await asyncio.wait_for(_follow(address, "talker", args.lines), args.timeout)

        # 3. Agent CPU with N sleeping tasks, without and then with health checks.
        async def window() -> float:
            before = _agent_cpu(agent_pid)
            await asyncio.sleep(args.window)
            return _agent_cpu(agent_pid) - before

        plain = [TaskSpec("sleep 600", task_id=f"plain-{i}", cpus=0.01, mem=1) for i in range(args.tasks)]
        launcher.pending.extend(plain)
        await driver.revive()
        await launcher.until(lambda: launcher.running(plain), args.timeout)
        idle_cpu = await window()
        for spec in plain:
            await driver.kill(spec.task_id)
        check = common_pb2.HealthCheck(
            type=common_pb2.HealthCheck.TCP,
            port=port,
            delay_seconds=0.01,
            interval_seconds=args.interval,
            timeout_seconds=5,
            grace_period_seconds=60,
        )
        checked = [TaskSpec("sleep 600", task_id=f"checked-{i}", cpus=0.01, mem=1) for i in range(args.tasks)]
        launcher.checks.update({s.task_id: check for s in checked})
        launcher.pending.extend(checked)
        await driver.revive()
        await launcher.until(lambda: launcher.running(checked), args.timeout)
        await asyncio.sleep(1.0)  # every check past its delay
        checked_cpu = await window()
        probes = args.tasks * args.window / args.interval
        peer_cpu = await _connect_loop(port, int(probes))
        await driver.teardown()
    finally:
        listener.close()
        driver.stop()
        await asyncio.gather(runner, return_exceptions=True)

    per_probe = (checked_cpu - idle_cpu) / probes
    return {
        "log_mib": args.log_mib,
        "read_through_master_mib_per_s": args.log_mib / master_s,
        "read_direct_mib_per_s": args.log_mib / direct_s,
        "read_ratio_to_direct": direct_s / master_s,
        "follow_latency_p50_ms": percentile(latencies, 50) * 1000,
        "follow_latency_p99_ms": percentile(latencies, 99) * 1000,
        "follow_poll_interval_ms": POLL_INTERVAL * 1000,
        "health_tasks": args.tasks,
        "health_probes_per_s": args.tasks / args.interval,
        "agent_cpu_fraction_idle": idle_cpu / args.window,
        "agent_cpu_fraction_checking": checked_cpu / args.window,
        "agent_cpu_us_per_probe": per_probe * 1e6,
        "bare_asyncio_connect_cpu_us_per_probe": peer_cpu / probes * 1e6,
        "probe_cost_ratio_to_bare_connect": per_probe / (peer_cpu / probes) if peer_cpu else float("nan"),
        "failed": 0,
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        root = Path(tmp)
        cluster = Cluster(root)
        try:
            cluster.start_master("--log-level", "WARNING")
            agent = cluster.start_agent(
                "--log-level", "WARNING", resources=f"cpus:4;mem:{4096 + args.tasks * 2};ports:[31000-31099]"
            )
            cluster.wait_agents(1)
            result = asyncio.run(_scenario(cluster, agent.pid, root, args))
        finally:
            cluster.close()
    return {"benchmark": "logs", **result}
