"""containers: N busybox containers RUNNING through Corral, beside the Docker SDK and Docker Swarm.

For each N, in the same run on the same engine:

- corral: one framework gets offers from one agent (`--containerizers docker`)
  and launches N docker tasks; the time runs from the first offer to the N-th
  TASK_RUNNING update.
- direct (the limit): the same N containers (image, command, cpu and memory
  limits, labels) created and started with the Docker SDK from a thread pool of
  the agent's launch concurrency, until the last start returns.
- swarm (the peer): `docker service create --replicas N` on a single-node swarm
  bound to 127.0.0.1, until all N tasks are running.

Every container is removed between phases (and at the end, also on failure); a
swarm this benchmark created is left again (`docker swarm leave --force`). The
agent's own RSS and CPU are sampled while it is idle and while it holds the
largest N containers. Each phase runs --repeat times, in a rotating order, and the
median is reported; the machine's load average is reported beside it. Needs
scripts/docker-setup.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import psutil
import requests.exceptions

from agent.containerizer.docker import DOCKER_API_VERSION, DOCKER_URL, LABEL_SANDBOX, LAUNCH_CONCURRENCY
from corral.testing import Cluster, wait_for
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import Scheduler, SchedulerDriver, TaskSpec, pack

HELP = "N busybox containers RUNNING: Corral beside the Docker SDK directly and Docker Swarm"

IMAGE = "corral-test/busybox:latest"
COMMAND = "sleep 3600"
#: Labels the benchmark's own containers (direct phase) and services carry.
BENCH_LABEL = "corral.bench"
SWARM_SERVICE = "corral-bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--counts", default="10,50,100", help="comma-separated numbers of containers")
    parser.add_argument("--cpus", type=float, default=0.05, help="cpus per container")
    parser.add_argument("--mem", type=float, default=16.0, help="MiB of memory per container")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=LAUNCH_CONCURRENCY,
        help="direct SDK starts at once (default: the agent's own launch concurrency)",
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="window for the agent's idle CPU")
    parser.add_argument("--no-swarm", action="store_true", help="skip the Docker Swarm peer")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each phase; the median is reported")
    parser.add_argument("--timeout", type=float, default=300.0)


# -- the limit: the Docker SDK directly ------------------------------------------


def direct_start(api: docker.APIClient, count: int, concurrency: int, cpus: float, mem: float) -> float:
    """Seconds to create and start `count` containers, `concurrency` at a time."""
    limit = int(mem * 1024 * 1024)
    host_config = api.create_host_config(nano_cpus=int(cpus * 1e9), mem_limit=limit, memswap_limit=limit)

    def one(index: int) -> None:
        created = api.create_container(
            IMAGE,
            entrypoint=["/bin/sh", "-c", COMMAND],
            command=[],
            labels={BENCH_LABEL: "direct"},
            host_config=host_config,
        )
        api.start(created["Id"])

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(count)))
    return time.perf_counter() - started


def remove_labelled(api: docker.APIClient, label: str) -> None:
    """Remove every container carrying `label`, a few at a time."""
    ids = [c["Id"] for c in api.containers(all=True, filters={"label": label})]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: api.remove_container(i, force=True), ids))


# -- the peer: Docker Swarm -------------------------------------------------------


def swarm_start(api: docker.APIClient, image_id: str, count: int, cpus: float, mem: float) -> float:
    """Seconds from `docker service create --replicas count` until all its tasks run."""
    name = f"{SWARM_SERVICE}-{count}"
    started = time.perf_counter()
    docker_cli(
        "service",
        "create",
        "--detach",
        "--quiet",
        "--no-resolve-image",
        "--name",
        name,
        "--replicas",
        str(count),
        "--limit-cpu",
        str(cpus),
        "--limit-memory",
        f"{int(mem)}m",
        "--restart-condition",
        "none",
        "--label",
        f"{BENCH_LABEL}=swarm",
        image_id,
        "/bin/sh",
        "-c",
        COMMAND,
    )
    try:

        def all_running() -> bool:
            tasks = api.tasks(filters={"service": name})
            running: int = sum(t["Status"]["State"] == "running" for t in tasks)
            return running >= count

        wait_for(all_running, 300.0, f"{count} swarm tasks running", interval=0.05)
        return time.perf_counter() - started
    finally:
        docker_cli("service", "rm", name)
        label = f"com.docker.swarm.service.name={name}"
        wait_for(
            lambda: not api.containers(all=True, filters={"label": label}), 120.0, "swarm containers gone"
        )


def docker_cli(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


# -- Corral: one framework, one agent ---------------------------------------------


class ContainerBench(Scheduler):
    """Launch `total` docker tasks as fast as offers allow; note when each runs."""

    def __init__(self, total: int, cpus: float, mem: float, prefix: str) -> None:
        self.specs = [
            TaskSpec(COMMAND, cpus=cpus, mem=mem, task_id=f"{prefix}{i}", containerizer="docker")
            for i in range(total)
        ]
        self.total = total
        self.first_offer = 0.0
        self.running: dict[str, float] = {}
        self.failed: list[str] = []
        self.done = asyncio.Event()

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        if not self.first_offer:
            self.first_offer = time.perf_counter()
        packing = pack(offers, self.specs)
        for info in packing.tasks:
            info.container.image = IMAGE
        if packing.tasks:
            await driver.accept(packing.offer_ids, packing.tasks, refuse_seconds=0)
        self.specs = packing.unplaced
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=0 if self.specs else 60)

    def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        if status.state == common_pb2.TASK_RUNNING:
            self.running.setdefault(status.task_id, time.perf_counter())
        elif status.state in (common_pb2.TASK_FAILED, common_pb2.TASK_ERROR, common_pb2.TASK_LOST):
            self.failed.append(
                f"{status.task_id}: {common_pb2.TaskState.Name(status.state)} {status.message}"
            )
        if len(self.running) + len(self.failed) >= self.total:
            self.done.set()


async def corral_start(
    address: str, bench: ContainerBench, timeout: float, while_running: Callable[[], None]
) -> None:
    """Run the framework until all its tasks run, call `while_running`, then tear it down."""
    driver = SchedulerDriver(bench, master=address, name="bench-containers")
    runner = asyncio.create_task(driver.run())
    try:
        await asyncio.wait_for(bench.done.wait(), timeout)
        await asyncio.to_thread(while_running)
    finally:
        try:
            await driver.teardown()
        finally:
            driver.stop()
            await asyncio.gather(runner, return_exceptions=True)


class AgentSampler:
    """The agent's own RSS and CPU (it has no child processes: containers belong to the engine)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def sample(self, seconds: float) -> dict[str, float]:
        before = self.process.cpu_times()
        time.sleep(seconds)
        after = self.process.cpu_times()
        cpu = (after.user + after.system) - (before.user + before.system)
        return {
            "rss_mib": self.process.memory_info().rss / (1024 * 1024),
            "cpu_percent": 100.0 * cpu / seconds,
            "threads": float(self.process.num_threads()),
        }


def corral_once(
    address: str,
    api: docker.APIClient,
    root: Path,
    args: argparse.Namespace,
    failures: list[str],
    count: int,
    sampler: AgentSampler | None,
    result: dict[str, Any],
    repeat: int,
) -> float:
    """One framework gets `count` containers RUNNING; seconds from its first offer to the last."""
    bench = ContainerBench(count, args.cpus, args.mem, prefix=f"n{count}-r{repeat}-")

    def while_running() -> None:
        if sampler is not None and repeat == 0:
            for key, value in sampler.sample(min(args.idle_seconds, 5.0)).items():
                result[f"agent_busy_{count}_{key}"] = value

    asyncio.run(corral_start(address, bench, args.timeout, while_running))
    failures.extend(bench.failed)
    wait_for(lambda: not ours(api, root), 120.0, "Corral's containers to be removed")
    if not bench.running:
        return float("nan")
    return max(bench.running.values()) - bench.first_offer


def direct_once(api: docker.APIClient, args: argparse.Namespace, count: int, repeat: int) -> float:
    try:
        return direct_start(api, count, args.concurrency, args.cpus, args.mem)
    finally:
        remove_labelled(api, f"{BENCH_LABEL}=direct")


def swarm_once(
    api: docker.APIClient, image_id: str, args: argparse.Namespace, count: int, repeat: int
) -> float:
    return swarm_start(api, image_id, count, args.cpus, args.mem)


def run(args: argparse.Namespace) -> dict[str, object]:
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    api = docker.APIClient(base_url=DOCKER_URL, version=DOCKER_API_VERSION, timeout=120)
    try:
        image_id = api.inspect_image(IMAGE)["Id"]
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise SystemExit(f"no Docker engine with {IMAGE} ({exc}): run scripts/docker-setup") from None
    result: dict[str, Any] = {
        "benchmark": "containers",
        "counts": ",".join(map(str, counts)),
        "cpus_per_container": args.cpus,
        "mem_mib_per_container": args.mem,
        "direct_concurrency": args.concurrency,
        "repeats_median_of": args.repeat,
        "load_average_1m_at_start": os.getloadavg()[0],
        "failed": 0,
    }
    joined_swarm = False
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        root = Path(tmp)
        cluster = Cluster(root)
        try:
            cluster.start_master("--log-level", "WARNING")
            largest = max(counts)
            agent = cluster.start_agent(
                "--containerizers",
                "process,docker",
                "--kill-grace-period",
                "0.5",
                "--usage-interval",
                "5",
                "--log-level",
                "WARNING",
                resources=f"cpus:{largest * args.cpus + 1:g};mem:{largest * args.mem + 1024:g}",
            )
            cluster.wait_agents(1)
            sampler = AgentSampler(agent.pid)
            for key, value in sampler.sample(args.idle_seconds).items():
                result[f"agent_idle_{key}"] = value
            if not args.no_swarm:
                joined_swarm = join_swarm(api)
            failures: list[str] = []
            for count in counts:
                # The agent's own footprint while it holds the most containers, sampled once.
                busy = sampler if count == largest else None
                phases: list[tuple[str, Callable[[int], float]]] = [
                    (
                        "corral",
                        functools.partial(
                            corral_once,
                            cluster.master_address,
                            api,
                            root,
                            args,
                            failures,
                            count,
                            busy,
                            result,
                        ),
                    ),
                    ("direct_sdk", functools.partial(direct_once, api, args, count)),
                ]
                if not args.no_swarm:
                    phases.append(("swarm", functools.partial(swarm_once, api, image_id, args, count)))
                times: dict[str, list[float]] = {name: [] for name, _ in phases}
                for repeat in range(args.repeat):
                    # Rotate the order: the machine's load drifts, and no system should always go first.
                    shift = repeat % len(phases)
                    for name, phase in phases[shift:] + phases[:shift]:
                        times[name].append(phase(repeat))
                medians = {name: statistics.median(values) for name, values in times.items()}
                for name, values in times.items():
                    result[f"n{count}_{name}_runs_s"] = ", ".join(f"{v:.2f}" for v in values)
                result[f"n{count}_corral_s"] = medians["corral"]
                result[f"n{count}_direct_sdk_s"] = medians["direct_sdk"]
                result[f"n{count}_ratio_to_direct"] = medians["corral"] / medians["direct_sdk"]
                if "swarm" in medians:
                    result[f"n{count}_swarm_s"] = medians["swarm"]
                    result[f"n{count}_ratio_to_swarm"] = medians["corral"] / medians["swarm"]
            result["load_average_1m_at_end"] = os.getloadavg()[0]
            result["failed"] = len(failures)
            result["failures"] = failures[:5]
        finally:
            cluster.close()
            for container in ours(api, root):
                api.remove_container(container["Id"], force=True)
            remove_labelled(api, f"{BENCH_LABEL}=direct")
            if joined_swarm:
                docker_cli("swarm", "leave", "--force")
            api.close()
    return result


def ours(api: docker.APIClient, root: Path) -> list[dict[str, Any]]:
    prefix = str(root.resolve())
    return [
        c
        for c in api.containers(all=True, filters={"label": LABEL_SANDBOX})
        if c["Labels"][LABEL_SANDBOX].startswith(prefix)
    ]


def join_swarm(api: docker.APIClient) -> bool:
    """Make this engine a single-node swarm on loopback; False if it already was one."""
    if api.info().get("Swarm", {}).get("LocalNodeState") == "active":
        return False
    docker_cli(
        "swarm",
        "init",
        "--advertise-addr",
        "127.0.0.1",
        "--listen-addr",
        "127.0.0.1:2377",
        "--data-path-addr",
        "127.0.0.1",
    )
    return True
