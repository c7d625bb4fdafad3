"""Docker tasks end to end: a real master, a real agent with `--containerizers process,docker`,
a framework written with the SDK, and containers on this machine's real Docker engine.

The engine and the image `corral-test/busybox:latest` come from scripts/docker-setup
(CI runs it). Without them these tests skip, except under CI (env var CI set),
where they fail. Every container a test made is removed afterwards, also when the
test fails: they are found by their `corral.sandbox` label, which lies in the
test's own tmp dir.
"""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import grpc
import pytest
import requests.exceptions

from agent.containerizer.docker import DOCKER_URL, LABEL_SANDBOX, LABEL_TASK
from corral.states import is_terminal
from corral.testing import Cluster, wait_for
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import CallError, Scheduler, SchedulerDriver, TaskSpec, pack

pytestmark = [pytest.mark.integration, pytest.mark.docker]

S = common_pb2
IMAGE = "corral-test/busybox:latest"
#: Fills in a packed TaskInfo's container (image, port mappings) once its ports are known.
Container = Callable[[common_pb2.TaskInfo], None]


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.APIClient]:
    """The real engine with the test image; missing, it fails the test in CI and skips it elsewhere."""
    client = docker.APIClient(base_url=DOCKER_URL, version="1.41", timeout=30)
    try:
        client.ping()
        client.inspect_image(IMAGE)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        client.close()
        message = f"no Docker engine with {IMAGE} ({exc}); run scripts/docker-setup"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()


#: Host ports apart from the 31000s that other tests' agents offer: a published docker port
#: listens on every address, and would collide with a concurrent run's process task.
RESOURCES = "cpus:4;mem:4096;disk:4096;ports:[33000-33099]"
AGENT_FLAGS = ("--containerizers", "process,docker", "--kill-grace-period", "1", "--usage-interval", "0.5")


@pytest.fixture
def cleaned_cluster(cluster: Cluster, engine: docker.APIClient) -> Iterator[Cluster]:
    """The cluster fixture; removes the test's containers at the end, also on failure."""
    try:
        yield cluster
    finally:
        for container in ours(engine, cluster.root):
            engine.remove_container(container["Id"], force=True)


@pytest.fixture
def docker_cluster(cleaned_cluster: Cluster) -> Cluster:
    """A master and one agent that runs docker tasks."""
    cleaned_cluster.start_master()
    cleaned_cluster.start_agent(*AGENT_FLAGS, name="agent1", resources=RESOURCES)
    cleaned_cluster.wait_agents(1)
    return cleaned_cluster


def ours(engine: docker.APIClient, root: Path) -> list[dict[str, Any]]:
    """Containers, running or not, whose sandbox lies under `root`."""
    prefix = str(root.resolve()) + os.sep
    return [
        c
        for c in engine.containers(all=True, filters={"label": LABEL_SANDBOX})
        if c["Labels"][LABEL_SANDBOX].startswith(prefix)
    ]


class DockerFramework(Scheduler):
    """Launches its specs as docker tasks when offers allow; records every update."""

    def __init__(self, specs: Iterable[tuple[TaskSpec, Container]]) -> None:
        self.pending = [spec for spec, _ in specs]
        self.containers = {spec.task_id: container for spec, container in specs}
        self.updates: dict[str, list[common_pb2.TaskStatus]] = defaultdict(list)
        self.framework_id = ""
        self.rejected: list[CallError] = []
        self.launched: dict[str, common_pb2.TaskInfo] = {}
        self.changed = asyncio.Event()

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        self.framework_id = framework_id
        self.changed.set()

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        packing = pack(offers, self.pending)
        for info in packing.tasks:
            self.containers[info.task_id](info)
        if packing.tasks:
            # Refused or not, these specs were tried: the test decides what comes next.
            self.pending = packing.unplaced
            try:
                await driver.accept(packing.offer_ids, packing.tasks, refuse_seconds=0)
            except CallError as exc:
                self.rejected.append(exc)
                self.changed.set()
                await driver.decline(packing.offer_ids, refuse_seconds=0)
                return
            self.launched.update((info.task_id, info) for info in packing.tasks)
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=0 if self.pending else 30)

    def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        self.updates[status.task_id].append(status)
        self.changed.set()

    def last(self, task_id: str) -> common_pb2.TaskStatus | None:
        updates = self.updates.get(task_id)
        return updates[-1] if updates else None

    def ended(self, task_id: str) -> common_pb2.TaskStatus | None:
        last = self.last(task_id)
        return last if last is not None and is_terminal(last.state) else None

    def running(self, task_id: str) -> bool:
        return any(u.state == S.TASK_RUNNING for u in self.updates[task_id])

    async def until(self, condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
        async def loop() -> Any:
            while not (result := condition()):
                self.changed.clear()
                await self.changed.wait()
            return result

        try:
            return await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            seen = {t: [S.TaskState.Name(u.state) for u in us] for t, us in self.updates.items()}
            raise AssertionError(f"timed out waiting for {what}; updates: {seen}") from None


def run_framework(
    cluster: Cluster, framework: DockerFramework, body: Callable[[SchedulerDriver], Awaitable[None]]
) -> None:
    async def main() -> None:
        driver = SchedulerDriver(framework, master=cluster.master_address, name="docker-tests")
        runner = asyncio.create_task(driver.run())
        try:
            await framework.until(lambda: framework.framework_id or runner.done(), what="SUBSCRIBED")
            await body(driver)
        finally:
            driver.stop()
            await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(main())


def image(name: str = IMAGE, *mappings: tuple[int, int]) -> Container:
    """Use image `name`; map container port c to the task's host port number i for each (c, i)."""

    def fill(info: common_pb2.TaskInfo) -> None:
        info.containerizer = "docker"
        info.container.image = name
        ports = [int(p) for p in info.command.environment.get("PORTS", "").split(",") if p]
        for container_port, index in mappings:
            info.container.port_mappings.add(container_port=container_port, host_port=ports[index])

    return fill


def sandbox(cluster: Cluster, framework_id: str, task_id: str) -> Path:
    return cluster.root / "agent1" / "sandboxes" / framework_id / task_id


def test_a_docker_task_runs_writes_its_sandbox_and_ends_with_its_exit_code(
    docker_cluster: Cluster, engine: docker.APIClient
) -> None:
    cluster = docker_cluster
    ok = TaskSpec(
        "echo out-$CORRAL_TASK_ID; echo err >&2; echo inside > $CORRAL_SANDBOX/made-inside; "
        "echo env-$GREETING",
        env={"GREETING": "hello"},
        mem=32,
        task_id="ok",
        containerizer="docker",
    )
    fails = TaskSpec("exit 7", task_id="fails", containerizer="docker")
    framework = DockerFramework([(ok, image()), (fails, image())])

    async def body(driver: SchedulerDriver) -> None:
        await framework.until(lambda: framework.ended("ok") and framework.ended("fails"), what="both ended")

    run_framework(cluster, framework, body)
    assert framework.running("ok")
    finished = framework.last("ok")
    assert finished.state == S.TASK_FINISHED, finished
    assert finished.exit_code == 0
    box = sandbox(cluster, framework.framework_id, "ok")
    assert (box / "stdout").read_text() == "out-ok\nenv-hello\n"
    assert (box / "stderr").read_text() == "err\n"
    assert (box / "made-inside").read_text() == "inside\n"
    failed = framework.last("fails")
    assert failed.state == S.TASK_FAILED and failed.exit_code == 7, failed
    assert failed.reason == S.REASON_COMMAND_EXITED and "7" in failed.message
    # Ended, their output saved: the agent removed their containers.
    wait_for(lambda: not ours(engine, cluster.root), what="the ended containers to be removed")


def test_a_mapped_port_is_reachable_on_loopback_and_usage_is_reported(docker_cluster: Cluster) -> None:
    cluster = docker_cluster
    web = TaskSpec(
        "echo served-by-$CORRAL_TASK_ID > /tmp/index.html && exec httpd -f -p 8080 -h /tmp",
        ports=1,
        task_id="web",
        containerizer="docker",
    )
    framework = DockerFramework([(web, image(IMAGE, (8080, 0)))])

    def fetch() -> str | None:
        port = framework.launched["web"].container.port_mappings[0].host_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as response:
            return str(response.read().decode())

    def web_usage() -> common_pb2.ResourceUsage | None:
        for task in cluster.state().tasks:
            if task.task.task_id == "web" and task.usage.processes >= 1:
                return task.usage
        return None

    async def body(driver: SchedulerDriver) -> None:
        await framework.until(lambda: framework.running("web") or framework.ended("web"), what="web RUNNING")
        assert framework.running("web"), framework.last("web")
        page = await asyncio.to_thread(wait_for, fetch, 20.0, "the mapped port to answer")
        assert page == "served-by-web\n"
        usage = await asyncio.to_thread(wait_for, web_usage, 20.0, "web's usage at the master")
        assert usage.mem_rss_bytes > 0
        await driver.kill("web")
        await framework.until(lambda: framework.ended("web"), what="web killed")

    run_framework(cluster, framework, body)
    assert framework.last("web").state == S.TASK_KILLED


def test_a_container_over_its_memory_limit_is_killed_and_reported(docker_cluster: Cluster) -> None:
    cluster = docker_cluster
    # dd fills a 64 MiB buffer: four times the 16 MiB the task asked for.
    hungry = TaskSpec(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        mem=16,
        task_id="hungry",
        containerizer="docker",
    )
    framework = DockerFramework([(hungry, image())])

    async def body(driver: SchedulerDriver) -> None:
        await framework.until(lambda: framework.ended("hungry"), what="hungry ended")

    run_framework(cluster, framework, body)
    status = framework.last("hungry")
    assert status.state == S.TASK_FAILED, status
    assert status.reason == S.REASON_CONTAINER_LIMITATION_MEMORY, status
    assert "16 MiB" in status.message


def test_a_kill_sends_sigterm_and_waits_the_grace_period_before_sigkill(docker_cluster: Cluster) -> None:
    cluster = docker_cluster
    # As pid 1 in its container, sh gets SIGTERM only because it traps it.
    stubborn = TaskSpec(
        "trap 'echo got-term' TERM; echo up; while true; do echo tick; sleep 0.2; done",
        task_id="stubborn",
        containerizer="docker",
        kill_grace_period=2.0,
    )
    polite = TaskSpec(
        "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.2; done",
        task_id="polite",
        containerizer="docker",
        kill_grace_period=60.0,
    )
    framework = DockerFramework([(stubborn, image()), (polite, image())])

    def said_up(task_id: str) -> bool:
        path = sandbox(cluster, framework.framework_id, task_id) / "stdout"
        return path.exists() and path.read_text().startswith("up\n")

    async def body(driver: SchedulerDriver) -> None:
        for task_id in ("stubborn", "polite"):
            await asyncio.to_thread(wait_for, lambda t=task_id: said_up(t), 20.0, f"{task_id} to start")
            await driver.kill(task_id)
        await framework.until(
            lambda: framework.ended("stubborn") and framework.ended("polite"), what="both killed"
        )

    run_framework(cluster, framework, body)
    stubborn_end = framework.last("stubborn")
    assert stubborn_end.state == S.TASK_KILLED
    assert "SIGKILL after the 2 s grace period" in stubborn_end.message, stubborn_end.message
    output = (sandbox(cluster, framework.framework_id, "stubborn") / "stdout").read_text()
    # It saw SIGTERM and kept running (ticking) until the SIGKILL.
    assert "got-term\n" in output
    assert "tick" in output.split("got-term\n", 1)[1]
    polite_end = framework.last("polite")
    assert polite_end.state == S.TASK_KILLED
    assert "SIGKILL" not in polite_end.message, polite_end.message
    assert (sandbox(cluster, framework.framework_id, "polite") / "stdout").read_text() == "up\nbye\n"


def test_hostile_image_names_and_arguments_are_data_not_shell(
    docker_cluster: Cluster, engine: docker.APIClient
) -> None:
    cluster = docker_cluster
    bad_image = TaskSpec("true", task_id="bad-image", containerizer="docker")
    no_image = TaskSpec("true", task_id="no-image", containerizer="docker")
    argv = TaskSpec(
        ["echo", "$(touch /corral/sandbox/pwned)", "; touch /corral/sandbox/pwned2", "`id`"],
        task_id="argv",
        containerizer="docker",
    )
    framework = DockerFramework(
        [(bad_image, image("busybox; rm -rf /")), (no_image, image("")), (argv, image())]
    )

    async def body(driver: SchedulerDriver) -> None:
        await framework.until(lambda: framework.rejected, what="the accept to be refused")
        # The refused tasks are dropped; the argv task is launched alone.
        framework.pending = [argv]
        await driver.revive()
        await framework.until(lambda: framework.ended("argv"), what="argv ended")

    run_framework(cluster, framework, body)
    refusal = framework.rejected[0]
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'busybox; rm -rf /' is not an image reference" in refusal.details
    assert "task 'no-image': a docker task needs container.image" in refusal.details
    assert "bad-image" not in framework.updates and "no-image" not in framework.updates
    assert framework.last("argv").state == S.TASK_FINISHED
    box = sandbox(cluster, framework.framework_id, "argv")
    assert (
        box / "stdout"
    ).read_text() == "$(touch /corral/sandbox/pwned) ; touch /corral/sandbox/pwned2 `id`\n"
    assert not (box / "pwned").exists() and not (box / "pwned2").exists()
    labels = [c["Labels"][LABEL_TASK] for c in ours(engine, cluster.root)]
    assert "bad-image" not in labels


def test_a_restarted_agent_readopts_its_containers_and_reports_one_that_ended_meanwhile(
    cleaned_cluster: Cluster, engine: docker.APIClient
) -> None:
    """kill -9 the agent while two containers run; one exits (code 3) while it is down.
    The restarted agent reports that exit with its real code, re-adopts the other (its
    later output still reaches the sandbox) and reports its kill; each end arrives once."""
    cluster = cleaned_cluster
    # Long enough that the master never marks the agent unreachable while it restarts.
    cluster.start_master("--agent-timeout", "60")
    agent = cluster.start_agent(*AGENT_FLAGS, name="agent1", resources=RESOURCES)
    cluster.wait_agents(1)
    lives = TaskSpec(
        "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.1; done",
        task_id="lives",
        containerizer="docker",
        kill_grace_period=30.0,
    )
    ends = TaskSpec(
        "echo up; while [ ! -e go ]; do sleep 0.05; done; exit 3", task_id="ends", containerizer="docker"
    )
    framework = DockerFramework([(lives, image()), (ends, image())])

    def container_state(task_id: str) -> str | None:
        for container in ours(engine, cluster.root):
            if container["Labels"][LABEL_TASK] == task_id:
                return str(container["State"])
        return None

    async def body(driver: SchedulerDriver) -> None:
        await framework.until(
            lambda: framework.running("lives") and framework.running("ends"), what="both RUNNING"
        )
        agent.signal(signal.SIGKILL)
        await asyncio.to_thread(wait_for, lambda: not agent.alive(), 10.0, "the agent to die")
        (sandbox(cluster, framework.framework_id, "ends") / "go").touch()
        await asyncio.to_thread(wait_for, lambda: container_state("ends") == "exited", 20.0, "ends to exit")
        assert not framework.ended("ends"), "nobody could have reported it yet"
        cluster.start_agent(*AGENT_FLAGS, name="agent1", resources=RESOURCES)
        await framework.until(lambda: framework.ended("ends"), what="the restarted agent to report ends")
        await driver.kill("lives")
        await framework.until(lambda: framework.ended("lives"), what="lives killed")

    run_framework(cluster, framework, body)
    ended = framework.last("ends")
    assert ended.state == S.TASK_FAILED and ended.exit_code == 3, ended
    killed = framework.last("lives")
    assert killed.state == S.TASK_KILLED and "SIGKILL" not in killed.message, killed
    assert (sandbox(cluster, framework.framework_id, "lives") / "stdout").read_text() == "up\nbye\n"
    for task_id in ("lives", "ends"):
        terminal = [u for u in framework.updates[task_id] if is_terminal(u.state)]
        assert len({u.uuid for u in terminal}) == 1, terminal
    wait_for(lambda: not ours(engine, cluster.root), what="the ended containers to be removed")


def test_an_absent_image_fails_the_task_at_once_with_the_reason(docker_cluster: Cluster) -> None:
    """No registry answers here: the pull fails, the task ends TASK_FAILED, nothing hangs."""
    cluster = docker_cluster
    absent = TaskSpec("true", task_id="absent", containerizer="docker")
    framework = DockerFramework([(absent, image("corral-test/absent:latest"))])

    async def body(driver: SchedulerDriver) -> None:
        await framework.until(lambda: framework.ended("absent"), timeout=90, what="absent ended")

    run_framework(cluster, framework, body)
    status = framework.last("absent")
    assert status.state == S.TASK_FAILED and status.reason == S.REASON_LAUNCH_FAILED, status
    assert "image 'corral-test/absent:latest' is not on this agent and cannot be pulled" in status.message
    stderr = (sandbox(cluster, framework.framework_id, "absent") / "stderr").read_text()
    assert stderr.startswith("corral: image 'corral-test/absent:latest'")


def test_without_an_engine_a_docker_launch_fails_with_a_reason_instead_of_hanging(tmp_path: Path) -> None:
    """A real containerizer pointed at a socket where no engine listens (this engine is
    not stopped: other tests use it)."""
    from agent.containerizer import ContainerizerOptions, LaunchError, LaunchSpec
    from agent.containerizer.docker import DockerContainerizer

    missing = f"unix://{tmp_path}/docker.sock"

    async def main() -> LaunchError:
        containerizer = DockerContainerizer(
            ContainerizerOptions(work_dir=tmp_path, environment={}), docker_url=missing
        )
        task = common_pb2.TaskInfo(task_id="t1", command=common_pb2.CommandInfo(value="true", shell=True))
        task.container.image = IMAGE
        try:
            await asyncio.wait_for(containerizer.launch(LaunchSpec("fw-1", "agent-1", task)), 30)
        except LaunchError as exc:
            return exc
        finally:
            await containerizer.close()
        raise AssertionError("the launch succeeded without an engine")

    error = asyncio.run(main())
    assert error.state == S.TASK_FAILED and error.reason == S.REASON_LAUNCH_FAILED
    assert f"the Docker engine is not running: nothing answers at {missing}" in error.message
