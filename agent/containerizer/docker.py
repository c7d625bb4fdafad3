"""The Docker containerizer: a task is a container on this host's Docker engine.

A task's container is created from `TaskInfo.container.image` with the task's
command, environment, cpu and memory limits and port mappings, and labelled
with `corral.task_id`, `corral.framework_id` and `corral.agent_id` so that a
restarted agent finds its containers again. Its sandbox,
`<work_dir>/sandboxes/<framework_id>/<task_id>/`, is mounted at `/corral/sandbox`
(the working directory, `$CORRAL_SANDBOX`), and its output is streamed into the
sandbox's `stdout` and `stderr` files while it runs, so that the files read
the same as a process task's.

The Docker SDK blocks, so every engine call runs in this containerizer's own
thread pool, never on the event loop. Each running container also has one
thread that copies its output (attached before the container starts, so no
byte is missed) and, when the output ends, reads the exit state and removes
the container. Containers are removed only after their end was seen and their
output saved: a container that exits while the agent is down stays, exited,
until the restarted agent reports it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import docker
import docker.errors
import psutil
import requests.exceptions

from agent.containerizer import (
    Containerizer,
    ContainerizerOptions,
    KillSequence,
    LaunchError,
    LaunchSpec,
    RecoverSpec,
    TaskExit,
    TaskKey,
)
from agent.containerizer.process import SANDBOXES, _new_run_dir, _ports, _task_environment
from corral import ids
from corral.resources import ResourceError, Resources
from corral.v1 import common_pb2

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The engine this containerizer talks to (dockerd's default socket).
DOCKER_URL: Final = "unix:///var/run/docker.sock"
#: Pinned so that building the client does not call the engine (`version="auto"` would).
DOCKER_API_VERSION: Final = "1.41"
#: Seconds an ordinary engine call may take before the launch or kill fails.
CALL_TIMEOUT: Final = 60.0
#: Engine calls in flight at once: launches, kills and removals share them.
POOL_SIZE: Final = 16
#: Containers being created and started at once. The engine serialises much of a
#: start: measured here, 8 at a time start ~2.8x as many per second as 1 at a time,
#: and 16 no more than 8 (scripts/bench containers).
LAUNCH_CONCURRENCY: Final = 8
#: Where the task's sandbox appears inside its container.
SANDBOX_MOUNT: Final = "/corral/sandbox"
#: The address host ports are published on: every interface, as a process task's
#: ports are (offered ports are meant to be reached from other hosts).
PUBLISH_ADDRESS: Final = "0.0.0.0"
LABEL_TASK: Final = "corral.task_id"
LABEL_FRAMEWORK: Final = "corral.framework_id"
LABEL_AGENT: Final = "corral.agent_id"
LABEL_SANDBOX: Final = "corral.sandbox"
MIB: Final = 1024 * 1024
_ENGINE_ERRORS: Final = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


@dataclass(slots=True, eq=False)
class _Container:
    """One running task's container."""

    key: TaskKey
    container_id: str
    sandbox: Path
    exited: asyncio.Future[TaskExit]
    log_context: dict[str, str]
    mem_limit: int = 0
    #: The container's main process on this host, once usage looked it up.
    pid: int = 0
    kill: KillSequence = field(default_factory=KillSequence)
    #: Set by `close`: the output thread stops without touching the container.
    abandoned: threading.Event = field(default_factory=threading.Event)


class DockerContainerizer(Containerizer):
    """Runs each task as a Docker container (Mesos' docker containerizer, Nomad's docker driver).

    Create it inside the running event loop that will watch the tasks. Building
    it does not need the engine: an engine that is down (or starts later) makes
    launches fail with TASK_FAILED and a reason, never hang.
    """

    name = "docker"
    concurrent_launches = True

    def __init__(self, options: ContainerizerOptions, *, docker_url: str = DOCKER_URL) -> None:
        super().__init__(options)
        self._loop = asyncio.get_running_loop()
        self._url = docker_url
        #: The engine's socket file, when it is reached by one.
        self._socket = Path(docker_url.removeprefix("unix://")) if docker_url.startswith("unix://") else None
        self._sandboxes = options.work_dir / SANDBOXES
        self._containers: dict[TaskKey, _Container] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="docker")
        self._launching = asyncio.Semaphore(LAUNCH_CONCURRENCY)
        self._api = docker.APIClient(base_url=docker_url, version=DOCKER_API_VERSION, timeout=CALL_TIMEOUT)
        self._pool.submit(self._check_engine)

    def _check_engine(self) -> None:
        """Say at start whether the engine answers; launches check again for themselves."""
        try:
            self._check_socket()
            version = self._api.version(api_version=False)
        except (LaunchError, *_ENGINE_ERRORS) as exc:
            logger.warning(
                "docker containerizer: the Docker engine at %s does not answer (%s); docker tasks "
                "will fail until it does",
                self._url,
                _short(exc),
            )
        else:
            logger.info("docker containerizer: engine %s at %s", version.get("Version", "?"), self._url)

    def _check_socket(self) -> None:
        """Fail at once when the engine's socket file is missing (no engine runs).

        Checked before every launch: it is one stat, and the SDK would leak a socket
        per failed connection attempt.
        """
        if self._socket is not None and not self._socket.exists():
            raise _launch_failed(
                f"the Docker engine is not running: nothing answers at {self._url} (start dockerd, "
                "e.g. with scripts/docker-setup)"
            )

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking SDK call in the pool."""
        return await self._loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    # -- launch -------------------------------------------------------------

    async def launch(self, spec: LaunchSpec) -> asyncio.Future[TaskExit]:
        task = spec.task
        key = spec.key
        context = {"framework_id": spec.framework_id, "task_id": task.task_id}
        try:
            ids.check_id("framework id", spec.framework_id)
            ids.check_id("task id", task.task_id)
        except ids.InvalidId as exc:
            raise _invalid(str(exc)) from None
        if key in self._containers:
            raise _invalid(f"task {task.task_id!r} of framework {spec.framework_id!r} is already running")
        create = _create_arguments(spec)
        async with self._launching:
            return await self._launch(spec, create, context)

    async def _launch(
        self, spec: LaunchSpec, create: dict[str, Any], context: dict[str, str]
    ) -> asyncio.Future[TaskExit]:
        task = spec.task
        key = spec.key
        sandbox = self._make_sandbox(spec.framework_id, task.task_id)
        create["labels"][LABEL_SANDBOX] = str(sandbox)
        create["host_config"]["binds"] = {str(sandbox): {"bind": SANDBOX_MOUNT, "mode": "rw"}}
        stdout, stderr = _open_outputs(sandbox)
        try:
            self._check_socket()
        except LaunchError as exc:
            _write_all(stderr, f"corral: {exc.message}\n".encode())
            os.close(stdout)
            os.close(stderr)
            raise
        try:
            container_id = await self._call(self._create, task.container, create, context)
            entry = _Container(
                key=key,
                container_id=container_id,
                sandbox=sandbox,
                exited=self._loop.create_future(),
                log_context=context,
                mem_limit=create["host_config"].get("mem_limit", 0),
            )
            # Attach before start, as `docker run` does: the stream then holds every byte.
            stream = await self._call(self._attach, container_id)
            try:
                await self._call(self._api.start, container_id)
            except _ENGINE_ERRORS as exc:
                stream.close()
                await self._call(self._remove, entry)
                raise self._engine_failure(f"cannot start the container: {_short(exc)}", exc) from None
        except LaunchError as exc:
            # Say it where the task's author looks first, too.
            _write_all(stderr, f"corral: {exc.message}\n".encode())
            os.close(stdout)
            os.close(stderr)
            raise
        except BaseException:
            os.close(stdout)
            os.close(stderr)
            raise
        self._adopt(entry, stream, stdout, stderr)
        logger.debug("started container %s in %s", container_id[:12], sandbox, extra=context)
        return entry.exited

    def _adopt(self, entry: _Container, stream: Any, stdout: int, stderr: int) -> None:
        """Watch a started container: its own thread copies its output and reports its end."""
        self._containers[entry.key] = entry
        threading.Thread(
            target=self._follow,
            args=(entry, stream, stdout, stderr),
            name=f"docker-{entry.container_id[:12]}",
            daemon=True,
        ).start()

    def _create(
        self, container: common_pb2.ContainerInfo, create: dict[str, Any], context: Mapping[str, str]
    ) -> str:
        """In the pool: create the container, pulling its image first when asked or missing."""
        image = container.image
        arguments = dict(create)
        arguments["host_config"] = self._api.create_host_config(**create["host_config"])
        if container.force_pull:
            self._pull(image, context)
        try:
            try:
                created = self._api.create_container(image, **arguments)
            except docker.errors.ImageNotFound:
                self._pull(image, context)
                created = self._api.create_container(image, **arguments)
        except docker.errors.APIError as exc:
            if exc.is_client_error() and not isinstance(exc, docker.errors.NotFound):
                raise _invalid(f"the Docker engine refused the container: {_short(exc)}") from None
            raise self._engine_failure(f"cannot create the container: {_short(exc)}", exc) from None
        except _ENGINE_ERRORS as exc:
            raise self._engine_failure(f"cannot create the container: {_short(exc)}", exc) from None
        return str(created["Id"])

    def _engine_failure(self, message: str, exc: BaseException) -> LaunchError:
        """A failed engine call; a missing engine gets a message that says so."""
        if isinstance(exc, requests.exceptions.ConnectionError | FileNotFoundError | ConnectionRefusedError):
            message = f"{message} (is the Docker engine running? nothing answers at {self._url})"
        return _launch_failed(message)

    def _pull(self, image: str, context: Mapping[str, str]) -> None:
        """In the pool: pull `image`; fails within CALL_TIMEOUT when no registry answers."""
        logger.info("pulling image %s", image, extra=context)
        repository, tag = _split_tag(image)
        try:
            self._api.pull(repository, tag=tag)
        except _ENGINE_ERRORS as exc:
            raise _launch_failed(
                f"image {image!r} is not on this agent and cannot be pulled: {_short(exc)}"
            ) from None

    def _attach(self, container_id: str, remove_on_failure: bool = True) -> Any:
        try:
            return self._api.attach(container_id, stdout=True, stderr=True, stream=True, demux=True)
        except _ENGINE_ERRORS as exc:
            if remove_on_failure:
                self._remove_quietly(container_id)
            raise self._engine_failure(f"cannot attach to the container: {_short(exc)}", exc) from None

    def _make_sandbox(self, framework_id: str, task_id: str) -> Path:
        parent = self._sandboxes / framework_id
        try:
            parent.mkdir(parents=True, exist_ok=True)
            return _new_run_dir(parent, task_id)
        except OSError as exc:
            raise _launch_failed(f"cannot create a sandbox under {parent}: {exc.strerror or exc}") from None

    # -- output and exits ---------------------------------------------------

    def _follow(self, entry: _Container, stream: Any, stdout: int, stderr: int) -> None:
        """The container's own thread: copy its output until it ends, then report its exit."""
        try:
            _copy_output(stream, stdout, stderr)
        except _ENGINE_ERRORS as exc:
            if not entry.abandoned.is_set():
                logger.warning("lost the container's output stream: %s", _short(exc), extra=entry.log_context)
        finally:
            os.close(stdout)
            os.close(stderr)
        if entry.abandoned.is_set():
            return
        outcome_state = self._wait_state(entry)
        if entry.abandoned.is_set():
            return
        self._remove(entry)
        try:
            self._loop.call_soon_threadsafe(self._finish, entry, outcome_state)
        except RuntimeError:
            logger.debug("container ended after the event loop closed", extra=entry.log_context)

    def _wait_state(self, entry: _Container) -> dict[str, Any] | None:
        """In a thread: wait for the container to stop; its State, or None if it vanished."""
        while not entry.abandoned.is_set():
            try:
                self._api.wait(entry.container_id)
                return dict(self._api.inspect_container(entry.container_id)["State"])
            except docker.errors.NotFound:
                return None
            except _ENGINE_ERRORS as exc:
                # The engine restarted or a call timed out: the container may still run.
                logger.warning(
                    "waiting for the container failed (%s); retrying", _short(exc), extra=entry.log_context
                )
                entry.abandoned.wait(1.0)
        return None

    def _remove(self, entry: _Container) -> None:
        self._remove_quietly(entry.container_id, entry.log_context)

    def _remove_quietly(self, container_id: str, context: Mapping[str, str] | None = None) -> None:
        try:
            self._api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass  # Removed already.
        except _ENGINE_ERRORS as exc:
            logger.error("cannot remove container %s: %s", container_id[:12], _short(exc), extra=context)

    def _finish(self, entry: _Container, state: Mapping[str, Any] | None) -> None:
        if self._containers.get(entry.key) is not entry:
            return  # Closed meanwhile: the agent no longer watches this task.
        entry.kill.cancel()
        del self._containers[entry.key]
        outcome = _outcome(entry, state)
        logger.debug(
            "container %s ended: %s", entry.container_id[:12], outcome.message, extra=entry.log_context
        )
        if not entry.exited.done():
            entry.exited.set_result(outcome)

    # -- kill ---------------------------------------------------------------

    async def kill(self, key: TaskKey, grace_period: float) -> None:
        entry = self._containers.get(key)
        if entry is None:
            return
        if not entry.kill.start(self._loop, grace_period, lambda: self._escalate(entry)):
            return
        logger.info(
            "stopping container %s: SIGTERM, SIGKILL after %g s",
            entry.container_id[:12],
            grace_period,
            extra=entry.log_context,
        )
        await self._call(self._signal, entry, "SIGTERM")

    def _escalate(self, entry: _Container) -> None:
        logger.info(
            "container %s outlived its grace period: SIGKILL",
            entry.container_id[:12],
            extra=entry.log_context,
        )
        self._pool.submit(self._signal, entry, "SIGKILL")

    def _signal(self, entry: _Container, sig: str) -> None:
        """In the pool: signal the container's main process; one that ended already is fine."""
        try:
            self._api.kill(entry.container_id, signal=sig)
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # Gone, or not running any more.
                logger.error("cannot send %s to the container: %s", sig, _short(exc), extra=entry.log_context)
        except _ENGINE_ERRORS as exc:
            logger.error("cannot send %s to the container: %s", sig, _short(exc), extra=entry.log_context)

    # -- usage --------------------------------------------------------------

    async def usage(self) -> dict[TaskKey, common_pb2.ResourceUsage]:
        """Cpu time, rss and process count of each container's process tree.

        `docker stats` takes a second or more per container (it waits for two
        samples), so the usage is read with psutil from the container's main
        process and its descendants, found from the engine's State.Pid.
        """
        entries = list(self._containers.values())
        if not entries:
            return {}
        return await self._loop.run_in_executor(self._pool, self._sample, entries)

    def _sample(self, entries: list[_Container]) -> dict[TaskKey, common_pb2.ResourceUsage]:
        """In the pool: one pass over the host's processes serves every container."""
        for entry in entries:
            if entry.pid <= 0:
                try:
                    entry.pid = int(self._api.inspect_container(entry.container_id)["State"]["Pid"])
                except _ENGINE_ERRORS:
                    continue  # Ended or unreachable: no figure this round.
        roots = {entry.pid: entry.key for entry in entries if entry.pid > 0}
        if not roots:
            return {}
        children: dict[int, list[int]] = {}
        for process in psutil.process_iter(["ppid"]):
            children.setdefault(process.info["ppid"] or 0, []).append(process.pid)
        now = time.time()
        result: dict[TaskKey, common_pb2.ResourceUsage] = {}
        for root, key in roots.items():
            usage = common_pb2.ResourceUsage(timestamp=now)
            tree = [root]
            while tree:
                pid = tree.pop()
                tree.extend(children.get(pid, ()))
                try:
                    process = psutil.Process(pid)
                    with process.oneshot():
                        cpu = process.cpu_times()
                        rss = process.memory_info().rss
                except psutil.Error:
                    continue  # It ended while we looked.
                # children_* holds the cpu of reaped children, which are no longer listed.
                usage.cpu_user_seconds += cpu.user + cpu.children_user
                usage.cpu_system_seconds += cpu.system + cpu.children_system
                usage.mem_rss_bytes += rss
                usage.processes += 1
            if usage.processes:
                result[key] = usage
        return result

    # -- recovery -----------------------------------------------------------

    def handle(self, key: TaskKey) -> Mapping[str, str]:
        entry = self._containers.get(key)
        if entry is None:
            return {}
        return {"container_id": entry.container_id, "sandbox": str(entry.sandbox)}

    async def recover(self, tasks: Sequence[RecoverSpec]) -> dict[TaskKey, asyncio.Future[TaskExit]]:
        """Find each task's container by its labels; re-adopt the running ones, report
        how the others ended from their State, and remove the containers of this agent
        that nobody checkpointed (started just before a crash).

        Output written while the agent was down stays in `docker logs` only: a
        re-adopted container's output is appended to its sandbox from now on.
        """
        results: dict[TaskKey, asyncio.Future[TaskExit]] = {}
        if not tasks:
            return results
        agent_id = tasks[0].agent_id
        try:
            found = await self._call(
                self._api.containers, all=True, filters={"label": f"{LABEL_AGENT}={agent_id}"}
            )
        except _ENGINE_ERRORS as exc:
            logger.error("cannot list this agent's containers: %s", _short(exc))
            found = []
        by_key = {(c["Labels"].get(LABEL_FRAMEWORK, ""), c["Labels"].get(LABEL_TASK, "")): c for c in found}
        for spec in tasks:
            future: asyncio.Future[TaskExit] = self._loop.create_future()
            results[spec.key] = future
            context = {"framework_id": spec.framework_id, "task_id": spec.task.task_id}
            listed = by_key.pop(spec.key, None)
            if listed is None:
                future.set_result(
                    TaskExit(
                        common_pb2.TASK_LOST,
                        common_pb2.REASON_AGENT_RESTARTED,
                        "the agent restarted and the task's container is gone",
                    )
                )
                continue
            await self._recover_one(spec, listed, future, context)
        for orphan in by_key.values():
            logger.warning(
                "removing container %s of task %s: this agent started it but never recorded it",
                orphan["Id"][:12],
                orphan["Labels"].get(LABEL_TASK, "?"),
            )
            await self._call(self._remove_quietly, orphan["Id"])
        return results

    async def _recover_one(
        self,
        spec: RecoverSpec,
        listed: Mapping[str, Any],
        future: asyncio.Future[TaskExit],
        context: dict[str, str],
    ) -> None:
        container_id = str(listed["Id"])
        sandbox = Path(listed["Labels"].get(LABEL_SANDBOX) or spec.handle.get("sandbox", ""))
        entry = _Container(
            key=spec.key,
            container_id=container_id,
            sandbox=sandbox,
            exited=future,
            log_context=context,
            mem_limit=math.ceil(max(Resources.from_proto(spec.task.resources).scalar("mem"), 0) * MIB),
        )
        if listed.get("State") != "running":
            state = await self._call(self._state_of, container_id)
            await self._call(self._remove, entry)
            outcome = _outcome(entry, state)
            logger.info("the container ended while the agent was down: %s", outcome.message, extra=context)
            future.set_result(outcome)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            stream = await self._call(self._attach, container_id, remove_on_failure=False)
            stdout = os.open(sandbox / "stdout", flags, 0o644)
            stderr = os.open(sandbox / "stderr", flags, 0o644)
        except (LaunchError, OSError) as exc:
            # Still running, but its output cannot be followed: watch for its end only.
            logger.warning("cannot follow the container's output: %s", exc, extra=context)
            stream = iter(())
            stdout = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            stderr = os.dup(stdout)
        self._adopt(entry, stream, stdout, stderr)
        logger.info("re-adopted container %s", container_id[:12], extra=context)

    def _state_of(self, container_id: str) -> dict[str, Any] | None:
        try:
            return dict(self._api.inspect_container(container_id)["State"])
        except docker.errors.NotFound:
            return None

    # -- shutdown -----------------------------------------------------------

    async def close(self) -> None:
        """Stop watching; containers keep running. One whose kill was under way is
        SIGKILLed now, since nobody would be left to finish the kill."""
        entries = list(self._containers.values())
        self._containers.clear()
        for entry in entries:
            entry.abandoned.set()
            if entry.kill.requested:
                entry.kill.cancel()
                logger.warning(
                    "agent stopping while stopping container %s: SIGKILL now",
                    entry.container_id[:12],
                    extra=entry.log_context,
                )
                await self._call(self._signal, entry, "SIGKILL")
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._api.close()


# -- helpers ----------------------------------------------------------------


def _invalid(message: str) -> LaunchError:
    return LaunchError(message, state=common_pb2.TASK_ERROR, reason=common_pb2.REASON_TASK_INVALID)


def _launch_failed(message: str) -> LaunchError:
    return LaunchError(message, state=common_pb2.TASK_FAILED, reason=common_pb2.REASON_LAUNCH_FAILED)


def _short(exc: BaseException) -> str:
    """An SDK error in one line: its explanation from the engine when it has one."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _split_tag(image: str) -> tuple[str, str | None]:
    """`repo[:tag]` (a `:` before the last `/` is a registry's port, not a tag)."""
    if "@" in image:
        return image, None
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        return image, "latest"
    return repository, tag


def _command(command: common_pb2.CommandInfo) -> tuple[list[str] | None, list[str] | None]:
    """(entrypoint, cmd) for the container, as docs/protocol.md "Docker tasks" says.

    Shell: `/bin/sh -c value`. Argv with a value: `value` is the executable and
    `arguments[1:]` its arguments (Docker cannot set argv[0]). Argv without a value:
    the image's entrypoint with `arguments` as its command. Nothing: the image's own.
    """
    if command.shell and command.value:
        return ["/bin/sh", "-c", command.value], []
    if command.value:
        return [command.value], list(command.arguments[1:])
    if command.arguments:
        return None, list(command.arguments)
    return None, None


def _create_arguments(spec: LaunchSpec) -> dict[str, Any]:
    """What create_container gets (host_config as create_host_config arguments); checks the task."""
    task = spec.task
    image = task.container.image
    if not image:
        raise _invalid("a docker task needs container.image")
    entrypoint, cmd = _command(task.command)
    for arg in (*(entrypoint or ()), *(cmd or ())):
        if "\0" in arg:
            raise _invalid(f"the command contains a NUL character: {arg!r}")
    try:
        resources = Resources.from_proto(task.resources)
    except ResourceError as exc:
        raise _invalid(str(exc)) from None
    ports = _ports(task.resources)
    env = _task_environment(task.command)
    env.setdefault("PORTS", ",".join(map(str, ports)))
    for index, port in enumerate(ports):
        env.setdefault(f"PORT{index}", str(port))
    env["CORRAL_TASK_ID"] = task.task_id
    env["CORRAL_FRAMEWORK_ID"] = spec.framework_id
    env["CORRAL_AGENT_ID"] = spec.agent_id
    env["CORRAL_SANDBOX"] = SANDBOX_MOUNT

    host_config: dict[str, Any] = {}
    cpus = resources.scalar("cpus")
    if cpus > 0:
        host_config["nano_cpus"] = int(cpus * 1e9)
    mem = resources.scalar("mem")
    if mem > 0:
        limit = math.ceil(mem * MIB)
        # No swap beyond the limit: a task over its memory is OOM-killed, as Mesos does.
        host_config["mem_limit"] = limit
        host_config["memswap_limit"] = limit
    exposed, bindings = _port_bindings(task.container.port_mappings, set(ports))
    if bindings:
        host_config["port_bindings"] = bindings
    return {
        "command": cmd,
        "entrypoint": entrypoint,
        "environment": env,
        "labels": {
            LABEL_TASK: task.task_id,
            LABEL_FRAMEWORK: spec.framework_id,
            LABEL_AGENT: spec.agent_id,
        },
        "working_dir": SANDBOX_MOUNT,
        "ports": exposed,
        "stdin_open": False,
        "tty": False,
        "host_config": host_config,
    }


def _port_bindings(
    mappings: Iterable[common_pb2.PortMapping], task_ports: set[int]
) -> tuple[list[tuple[int, str]], dict[str, tuple[str, int]]]:
    """Exposed ports and host bindings; a host port must be one of the task's own."""
    exposed: list[tuple[int, str]] = []
    bindings: dict[str, tuple[str, int]] = {}
    for mapping in mappings:
        protocol = mapping.protocol or "tcp"
        if protocol not in ("tcp", "udp"):
            raise _invalid(f"port mapping protocol {mapping.protocol!r} is not 'tcp' or 'udp'")
        if not 1 <= mapping.container_port <= 65535:
            raise _invalid(f"container port {mapping.container_port} is not between 1 and 65535")
        if mapping.host_port not in task_ports:
            raise _invalid(f"host port {mapping.host_port} is not one of the task's ports resources")
        spec = f"{mapping.container_port}/{protocol}"
        if spec in bindings:
            raise _invalid(f"container port {spec} is mapped twice")
        exposed.append((mapping.container_port, protocol))
        bindings[spec] = (PUBLISH_ADDRESS, mapping.host_port)
    return exposed, bindings


def _open_outputs(sandbox: Path) -> tuple[int, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_APPEND
    try:
        stdout = os.open(sandbox / "stdout", flags, 0o644)
    except OSError as exc:
        raise _launch_failed(f"cannot create {sandbox / 'stdout'}: {exc.strerror}") from None
    try:
        stderr = os.open(sandbox / "stderr", flags, 0o644)
    except OSError as exc:
        os.close(stdout)
        raise _launch_failed(f"cannot create {sandbox / 'stderr'}: {exc.strerror}") from None
    return stdout, stderr


def _copy_output(stream: Iterator[tuple[bytes | None, bytes | None]], stdout: int, stderr: int) -> None:
    """Write each demultiplexed chunk to its file as it arrives."""
    try:
        for out, err in stream:
            if out:
                _write_all(stdout, out)
            if err:
                _write_all(stderr, err)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _outcome(entry: _Container, state: Mapping[str, Any] | None) -> TaskExit:
    if state is None:
        return TaskExit(
            common_pb2.TASK_FAILED,
            common_pb2.REASON_COMMAND_EXITED,
            "the container was removed behind the agent's back; its exit status is lost",
        )
    exit_code = int(state.get("ExitCode", -1))
    code = exit_code if exit_code >= 0 else None
    detail = f"the container exited with code {exit_code}"
    if state.get("Error"):
        detail += f" ({state['Error']})"
    if entry.kill.requested:
        message = f"killed on request ({entry.kill.how()}): {detail}"
        return TaskExit(common_pb2.TASK_KILLED, common_pb2.REASON_KILLED_BY_FRAMEWORK, message, code)
    if state.get("OOMKilled"):
        limit = f" of {entry.mem_limit // MIB} MiB" if entry.mem_limit else ""
        message = f"the container used more than its memory limit{limit} and was killed (OOM): {detail}"
        return TaskExit(common_pb2.TASK_FAILED, common_pb2.REASON_CONTAINER_LIMITATION_MEMORY, message, code)
    if exit_code == 0:
        return TaskExit(common_pb2.TASK_FINISHED, common_pb2.REASON_COMMAND_EXITED, detail, code)
    return TaskExit(common_pb2.TASK_FAILED, common_pb2.REASON_COMMAND_EXITED, detail, code)
