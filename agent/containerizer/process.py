"""The process containerizer: a task is a process tree in its own session.

Each task runs in a fresh sandbox, `<work_dir>/sandboxes/<framework_id>/<task_id>/`,
with its output in the sandbox's `stdout` and `stderr` files, in its own session
and process group (so that one signal reaches all of it), with an environment
built from scratch (see `_environment`).

Exits are seen without a thread per task: a pidfd per child is watched by the event
loop, and the child is reaped with a non-blocking waitpid once it is readable. Before
reaping, whatever the task left behind in its process group is SIGKILLed: the
not-yet-reaped leader keeps the group id reserved, so the signal cannot reach a
stranger that reused the id. That is Mesos' "destroy the container when the executor
exits".

When the agent runs as root on a host with cgroups (v1 or v2), each task is also
born in its own cgroup (agent/isolation/cgroups.py) with cpu, memory and pids
limits: the task's end, or its kill's SIGKILL, kills every process in the cgroup,
a task the kernel killed for exceeding its memory is reported TASK_FAILED with
REASON_CONTAINER_LIMITATION_MEMORY, usage is read from the cgroup, and the cgroup
is removed once empty. Otherwise the agent says once, at start, that it falls back
to process-group kill only.

Recovery: `handle` records each task's pid, the process's start time (psutil's
create_time) and its sandbox. A restarted agent re-adopts a task only when a
process with that pid AND that start time still exists (a pid alone may have been
reused), and watches it with a pidfd, which works for a process that is not the
agent's child. The exit status of such a process is not the agent's to read
(waitpid only works for children; init reaps it): the agent reads it from
`/proc/<pid>/stat` when it catches the zombie, and otherwise reports the task
TASK_FAILED with REASON_AGENT_RESTARTED and says the status is unknown. A task
that ended while the agent was down is reported the same way. See
docs/protocol.md, "Agent recovery and isolation", for why there is no supervising
wrapper process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psutil

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
from agent.isolation import cgroups
from corral import ids
from corral.v1 import common_pb2

logger = logging.getLogger(__name__)

SHELL: Final = "/bin/sh"
SANDBOXES: Final = "sandboxes"
#: Separates a task id from the run number of a reused id's sandbox. It is not
#: allowed in ids, so `a~1` can never be another task's sandbox.
RUN_SEPARATOR: Final = "~"
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Variables the agent sets and a task may not override: they say who it is.
RESERVED_ENV: Final = frozenset(
    {"CORRAL_TASK_ID", "CORRAL_FRAMEWORK_ID", "CORRAL_AGENT_ID", "CORRAL_SANDBOX"}
)
_HAVE_PIDFD: Final = hasattr(os, "pidfd_open")
#: Every task's limit on processes and threads (cgroup pids controller).
TASK_PIDS_LIMIT: Final = 4096
#: How often, and how many times, a task's cgroup is killed again until it is empty and removed.
CGROUP_REMOVE_INTERVAL: Final = 0.02
CGROUP_REMOVE_ATTEMPTS: Final = 500
#: Seconds between checks of a re-adopted process on kernels without pidfds.
ADOPTED_POLL_INTERVAL: Final = 1.0
#: What a re-adopted task's end says when its exit status could not be read.
UNKNOWN_EXIT: Final = (
    "the task ended after the agent restarted; its exit status is unknown (the agent is no "
    "longer its parent process)"
)
ENDED_WHILE_DOWN: Final = (
    "the task ended while the agent was down; its exit status is unknown (the agent was not "
    "there to collect it)"
)


class _Child(subprocess.Popen[bytes]):
    """A Popen whose child the containerizer reaps itself (pidfd, then waitpid).

    Popen would otherwise, once garbage-collected with its child still running
    (an agent that shuts down leaves its tasks running), warn and queue the child
    for reaping on the next Popen call, stealing its exit status from us.
    """

    def __del__(self) -> None:
        """Nothing to do: the containerizer owns the child's lifecycle."""


@dataclass(slots=True, eq=False)
class _Process:
    """One running task."""

    key: TaskKey
    pid: int
    #: None for a process re-adopted after an agent restart: not our child.
    child: _Child | None
    sandbox: Path
    exited: asyncio.Future[TaskExit]
    log_context: dict[str, str]
    pidfd: int | None = None
    kill: KillSequence = field(default_factory=KillSequence)
    #: psutil's create_time of the process, read when first checkpointed.
    start_time: float | None = None
    cgroup: cgroups.TaskCgroup | None = None
    #: Its memory limit in MB (for the out-of-memory message).
    mem_mb: float = 0.0


class ProcessContainerizer(Containerizer):
    """Runs each task as a process group on this host (Mesos' posix launcher).

    Create it inside the running event loop that will watch the tasks.
    """

    name = "process"

    def __init__(self, options: ContainerizerOptions) -> None:
        super().__init__(options)
        self._loop = asyncio.get_running_loop()
        self._sandboxes = options.work_dir / SANDBOXES
        self._processes: dict[TaskKey, _Process] = {}
        # Every task's stdin; opened once rather than once per launch.
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if options.isolation == "none":
            self._cgroups, why_not = None, "--isolation none"
        else:
            self._cgroups, why_not = cgroups.detect()
        if self._cgroups is not None:
            logger.info(
                "process containerizer: each task in its own cgroup with cpu, memory and pids limits (%s)",
                self._cgroups.describe(),
            )
        else:
            logger.warning(
                "process containerizer: no cgroup isolation (%s); tasks are contained and killed "
                "by process group only, without cpu, memory or pids limits",
                why_not,
            )

    # -- launch -------------------------------------------------------------

    async def launch(self, spec: LaunchSpec) -> asyncio.Future[TaskExit]:
        # Deliberately no await: a launch is one Popen on the loop, no thread hop.
        return self._spawn(spec)

    def _spawn(self, spec: LaunchSpec) -> asyncio.Future[TaskExit]:
        task = spec.task
        key = spec.key
        context = {"framework_id": spec.framework_id, "task_id": task.task_id}
        # The master validated the ids already; they become paths, so check again.
        try:
            ids.check_id("framework id", spec.framework_id)
            ids.check_id("task id", task.task_id)
        except ids.InvalidId as exc:
            raise _invalid(str(exc)) from None
        if key in self._processes:
            raise _invalid(f"task {task.task_id!r} of framework {spec.framework_id!r} is already running")
        argv, executable = _command(task.command)
        task_env = _task_environment(task.command)
        ports = _ports(task.resources)

        sandbox = self._make_sandbox(spec.framework_id, task.task_id)
        env = dict(self.options.environment)
        env["HOME"] = str(sandbox)
        env["PORTS"] = ",".join(map(str, ports))
        for index, port in enumerate(ports):
            env[f"PORT{index}"] = str(port)
        # The task's own variables may replace the above (the SDK sets PORTn
        # itself, to the same values), but not the ones that say who it is.
        env.update(task_env)
        env["CORRAL_TASK_ID"] = task.task_id
        env["CORRAL_FRAMEWORK_ID"] = spec.framework_id
        env["CORRAL_AGENT_ID"] = spec.agent_id
        env["CORRAL_SANDBOX"] = str(sandbox)

        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            stdout = os.open(sandbox / "stdout", flags, 0o644)
        except OSError as exc:
            raise _launch_failed(f"cannot create {sandbox / 'stdout'}: {exc.strerror}") from None
        try:
            stderr = os.open(sandbox / "stderr", flags, 0o644)
        except OSError as exc:
            os.close(stdout)
            raise _launch_failed(f"cannot create {sandbox / 'stderr'}: {exc.strerror}") from None
        cpus, mem_mb = _scalar(task.resources, "cpus"), _scalar(task.resources, "mem")
        cgroup = None
        try:
            if self._cgroups is not None:
                limits = cgroups.Limits(cpus=cpus, mem_mb=mem_mb, pids=TASK_PIDS_LIMIT)
                cgroup = self._cgroups.create(spec.agent_id, spec.framework_id, task.task_id, limits)
            born_in: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
            if self._cgroups is not None and cgroup is not None:
                born_in = self._cgroups.inside(cgroup)
            with born_in:
                child = _Child(
                    argv,
                    executable=executable,
                    cwd=sandbox,
                    env=env,
                    stdin=self._devnull,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                )
        except cgroups.CgroupError as exc:
            raise _launch_failed(str(exc)) from None
        except OSError as exc:
            if cgroup is not None:
                self._remove_cgroup(cgroup, context)
            message = f"cannot run {executable or argv[0]!r}: {exc.strerror or exc}"
            try:
                # Say it where the task's author looks first, too.
                os.write(stderr, f"corral: {message}\n".encode())
            except OSError as write_error:
                logger.debug("cannot write to %s: %s", sandbox / "stderr", write_error, extra=context)
            raise _launch_failed(message) from None
        finally:
            os.close(stdout)
            os.close(stderr)

        proc = _Process(
            key=key,
            pid=child.pid,
            child=child,
            sandbox=sandbox,
            exited=self._loop.create_future(),
            log_context=context,
            cgroup=cgroup,
            mem_mb=mem_mb,
        )
        self._processes[key] = proc
        self._watch(proc)
        logger.debug("started pid %d in %s", child.pid, sandbox, extra=context)
        return proc.exited

    def _make_sandbox(self, framework_id: str, task_id: str) -> Path:
        """A new directory for this run; a reused task id gets `<task_id>~N`, never an old one."""
        parent = self._sandboxes / framework_id
        try:
            try:
                return _new_run_dir(parent, task_id)
            except FileNotFoundError:
                # The framework's first task here (one syscall saved on every other).
                parent.mkdir(parents=True, exist_ok=True)
                return _new_run_dir(parent, task_id)
        except OSError as exc:
            raise _launch_failed(f"cannot create a sandbox under {parent}: {exc.strerror or exc}") from None

    # -- exits --------------------------------------------------------------

    def _watch(self, proc: _Process) -> None:
        if _HAVE_PIDFD:
            try:
                proc.pidfd = os.pidfd_open(proc.pid)
            except OSError as exc:
                logger.warning(
                    "pidfd_open(%d) failed (%s): watching it with a thread instead",
                    proc.pid,
                    exc,
                    extra=proc.log_context,
                )
            else:
                self._loop.add_reader(proc.pidfd, self._on_pidfd_readable, proc)
                return
        if proc.child is None:
            # Not our child, so waitpid cannot wait for it: poll instead.
            self._loop.call_later(ADOPTED_POLL_INTERVAL, self._poll_adopted, proc)
            return
        # What asyncio's ThreadedChildWatcher did (deprecated in 3.12, gone in 3.14):
        # one thread blocked in waitpid, for kernels without pidfds (before 5.3).
        threading.Thread(
            target=self._wait_in_thread, args=(proc,), name=f"waitpid-{proc.pid}", daemon=True
        ).start()

    def _poll_adopted(self, proc: _Process) -> None:
        if self._processes.get(proc.key) is not proc:
            return  # Finished or closed meanwhile.
        if proc.start_time is not None and _same_process(proc.pid, proc.start_time):
            self._loop.call_later(ADOPTED_POLL_INTERVAL, self._poll_adopted, proc)
        else:
            self._on_adopted_exit(proc)

    def _wait_in_thread(self, proc: _Process) -> None:
        """Runs in the fallback thread: reap the child, hand its status to the loop."""
        try:
            _, status = os.waitpid(proc.pid, 0)
            returncode: int | None = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            returncode = None
        try:
            self._loop.call_soon_threadsafe(self._on_reaped, proc, returncode)
        except RuntimeError:
            logger.debug("pid %d ended after the event loop closed", proc.pid, extra=proc.log_context)

    def _on_pidfd_readable(self, proc: _Process) -> None:
        if proc.child is None:
            self._on_adopted_exit(proc)
            return
        try:
            # Peek (WNOWAIT) so that the leader stays a zombie, holding its group
            # id, while the rest of its group is killed.
            peek = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            self._unwatch(proc)
            self._finish(proc, None)
            return
        if peek is None:
            return  # Not exited after all; the pidfd stays watched.
        self._unwatch(proc)
        self._kill_rest(proc)
        try:
            _, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            self._finish(proc, None)
        else:
            self._finish(proc, os.waitstatus_to_exitcode(status))

    def _on_adopted_exit(self, proc: _Process) -> None:
        """A re-adopted process ended. Its parent (init, or a subreaper) reaps it: the
        exit code is read from the zombie's /proc entry if it is still there."""
        returncode = _zombie_exit_code(proc.pid)
        self._unwatch(proc)
        self._kill_rest(proc)
        self._finish(proc, returncode)

    def _on_reaped(self, proc: _Process, returncode: int | None) -> None:
        """The fallback thread's result, on the loop. The leader is reaped already, so
        its group id could in theory be reused before the clean-up kill below."""
        if self._processes.get(proc.key) is not proc:
            return  # Closed meanwhile: the agent no longer watches this task.
        self._kill_rest(proc)
        self._finish(proc, returncode)

    def _unwatch(self, proc: _Process) -> None:
        if proc.pidfd is not None:
            self._loop.remove_reader(proc.pidfd)
            os.close(proc.pidfd)
            proc.pidfd = None

    def _finish(self, proc: _Process, returncode: int | None) -> None:
        proc.kill.cancel()
        del self._processes[proc.key]
        outcome = _outcome(proc, returncode)
        if proc.cgroup is not None:
            if not proc.kill.requested and proc.cgroup.oom_killed():
                outcome = _out_of_memory(proc.mem_mb, outcome)
            self._remove_cgroup(proc.cgroup, proc.log_context)
        logger.debug("pid %d ended: %s", proc.pid, outcome.message, extra=proc.log_context)
        if not proc.exited.done():
            proc.exited.set_result(outcome)

    # -- kill ---------------------------------------------------------------

    async def kill(self, key: TaskKey, grace_period: float) -> None:
        proc = self._processes.get(key)
        if proc is None:
            return
        if not proc.kill.start(self._loop, grace_period, lambda: self._escalate(proc)):
            return
        logger.info(
            "killing pid %d: SIGTERM, SIGKILL after %g s", proc.pid, grace_period, extra=proc.log_context
        )
        self._signal_group(proc, signal.SIGTERM)

    def _escalate(self, proc: _Process) -> None:
        logger.info("pid %d outlived its grace period: SIGKILL", proc.pid, extra=proc.log_context)
        self._kill_rest(proc)

    def _kill_rest(self, proc: _Process) -> None:
        """SIGKILL the task's process group and, when it has one, its whole cgroup."""
        self._signal_group(proc, signal.SIGKILL)
        if proc.cgroup is not None:
            proc.cgroup.kill()

    def _remove_cgroup(self, cgroup: cgroups.TaskCgroup, context: dict[str, str], attempt: int = 0) -> None:
        """Remove the cgroup; while processes remain, kill them and try again shortly."""
        try:
            if cgroup.remove():
                return
            cgroup.kill()
        except OSError as exc:
            logger.error("cannot remove the cgroup %s: %s", cgroup.paths[0], exc, extra=context)
            return
        if attempt >= CGROUP_REMOVE_ATTEMPTS:
            logger.error(
                "the cgroup %s still holds processes %s after SIGKILL; leaving it",
                cgroup.paths[0],
                cgroup.pids(),
                extra=context,
            )
            return
        self._loop.call_later(CGROUP_REMOVE_INTERVAL, self._remove_cgroup, cgroup, context, attempt + 1)

    def _signal_group(self, proc: _Process, sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass  # The whole group is gone already.
        except PermissionError as exc:
            logger.error(
                "cannot send %s to process group %d: %s", sig.name, proc.pid, exc, extra=proc.log_context
            )

    # -- usage --------------------------------------------------------------

    async def usage(self) -> dict[TaskKey, common_pb2.ResourceUsage]:
        """Read each task's cgroup; without one, sum cpu time, rss and process count
        over the task's process group.

        One pass over the host's processes serves every task; a process counts for
        the task whose group it is in, wherever in the tree it was re-parented.
        """
        totals: dict[TaskKey, common_pb2.ResourceUsage] = {}
        for proc in self._processes.values():
            if proc.cgroup is not None:
                totals[proc.key] = proc.cgroup.usage()
        groups = {proc.pid: proc.key for proc in self._processes.values() if proc.cgroup is None}
        if not groups:
            return totals
        now = time.time()
        for process in psutil.process_iter():
            try:
                key = groups.get(os.getpgid(process.pid))
                if key is None:
                    continue
                with process.oneshot():
                    cpu = process.cpu_times()
                    rss = process.memory_info().rss
            except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # It ended while we looked, or is not ours to read.
            usage = totals.get(key)
            if usage is None:
                usage = totals[key] = common_pb2.ResourceUsage(timestamp=now)
            # children_* holds the cpu of reaped children, which are no longer listed.
            usage.cpu_user_seconds += cpu.user + cpu.children_user
            usage.cpu_system_seconds += cpu.system + cpu.children_system
            usage.mem_rss_bytes += rss
            usage.processes += 1
        return totals

    # -- recovery -----------------------------------------------------------

    def handle(self, key: TaskKey) -> Mapping[str, str]:
        proc = self._processes.get(key)
        if proc is None:
            return {}
        if proc.start_time is None:
            proc.start_time = _start_time(proc.pid)
            if proc.start_time is None:
                return {}  # It ended already: there is nothing to re-adopt.
        handle = {"pid": str(proc.pid), "start_time": repr(proc.start_time), "sandbox": str(proc.sandbox)}
        if proc.cgroup is not None:
            handle["cgroup"] = proc.cgroup.handle()
            handle["mem_mb"] = repr(proc.mem_mb)
        return handle

    async def recover(self, tasks: Sequence[RecoverSpec]) -> dict[TaskKey, asyncio.Future[TaskExit]]:
        results: dict[TaskKey, asyncio.Future[TaskExit]] = {}
        for spec in tasks:
            context = {"framework_id": spec.framework_id, "task_id": spec.task.task_id}
            future: asyncio.Future[TaskExit] = self._loop.create_future()
            results[spec.key] = future
            try:
                pid = int(spec.handle["pid"])
                start_time = float(spec.handle["start_time"])
                sandbox = Path(spec.handle["sandbox"])
            except (KeyError, ValueError):
                future.set_result(
                    TaskExit(
                        common_pb2.TASK_LOST,
                        common_pb2.REASON_AGENT_RESTARTED,
                        "the agent restarted before it recorded the task's process",
                    )
                )
                continue
            cgroup = None
            if self._cgroups is not None and "cgroup" in spec.handle:
                cgroup = self._cgroups.adopt(spec.handle["cgroup"])
            mem_mb = float(spec.handle.get("mem_mb", "0"))
            if not _same_process(pid, start_time):
                logger.info("pid %d is gone: the task ended while the agent was down", pid, extra=context)
                outcome = TaskExit(
                    common_pb2.TASK_FAILED, common_pb2.REASON_AGENT_RESTARTED, ENDED_WHILE_DOWN
                )
                if cgroup is not None:
                    if cgroup.oom_killed():
                        outcome = _out_of_memory(mem_mb, outcome)
                    self._remove_cgroup(cgroup, context)
                future.set_result(outcome)
                continue
            proc = _Process(
                key=spec.key,
                pid=pid,
                child=None,
                sandbox=sandbox,
                exited=future,
                log_context=context,
                start_time=start_time,
                cgroup=cgroup,
                mem_mb=mem_mb,
            )
            self._processes[spec.key] = proc
            self._watch(proc)
            logger.info("re-adopted pid %d", pid, extra=context)
        if self._cgroups is not None and tasks:
            for orphan in self._cgroups.orphans(tasks[0].agent_id, {spec.key for spec in tasks}):
                logger.warning("killing %s: a task cgroup no checkpointed task owns", orphan.paths[0])
                self._remove_cgroup(orphan, {})
        return results

    # -- shutdown -----------------------------------------------------------

    async def close(self) -> None:
        """Stop watching; running tasks keep running. A task whose kill was under
        way is SIGKILLed now, since nobody would be left to finish the kill."""
        for proc in list(self._processes.values()):
            self._unwatch(proc)
            if proc.kill.requested:
                proc.kill.cancel()
                logger.warning(
                    "agent stopping while killing pid %d: SIGKILL now", proc.pid, extra=proc.log_context
                )
                self._signal_group(proc, signal.SIGKILL)
        self._processes.clear()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1


# -- helpers ----------------------------------------------------------------


def _invalid(message: str) -> LaunchError:
    return LaunchError(message, state=common_pb2.TASK_ERROR, reason=common_pb2.REASON_TASK_INVALID)


def _launch_failed(message: str) -> LaunchError:
    return LaunchError(message, state=common_pb2.TASK_FAILED, reason=common_pb2.REASON_LAUNCH_FAILED)


def _new_run_dir(parent: Path, task_id: str) -> Path:
    run = 0
    while True:
        path = parent / (task_id if run == 0 else f"{task_id}{RUN_SEPARATOR}{run}")
        try:
            path.mkdir()
        except FileExistsError:
            run += 1
        else:
            return path


def _command(command: common_pb2.CommandInfo) -> tuple[list[str], str | None]:
    """argv and executable, as the proto says: `sh -c value`, or `value` with argv `arguments`."""
    if not command.value:
        raise _invalid("the task has no command: CommandInfo.value is empty")
    if command.shell:
        argv, executable = [SHELL, "-c", command.value], None
    else:
        argv, executable = list(command.arguments) or [command.value], command.value
    for arg in argv:
        if "\0" in arg:
            raise _invalid(f"the command contains a NUL character: {arg!r}")
    return argv, executable


def _task_environment(command: common_pb2.CommandInfo) -> dict[str, str]:
    env = dict(command.environment)
    for name, value in env.items():
        if not _ENV_NAME_RE.fullmatch(name):
            raise _invalid(
                f"environment variable name {name!r} is not allowed: use letters, digits and '_', "
                "not starting with a digit"
            )
        if name in RESERVED_ENV:
            raise _invalid(f"environment variable {name} is set by the agent; the task may not set it")
        if "\0" in value:
            raise _invalid(f"environment variable {name} contains a NUL character")
    return env


def _ports(resources: Iterable[common_pb2.Resource]) -> list[int]:
    """The task's ports in the order its ranges list them: PORT0, PORT1, ..."""
    return [
        port
        for resource in resources
        if resource.name == "ports"
        for span in resource.ranges
        for port in range(span.begin, span.end + 1)
    ]


def _describe(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return f"killed by signal {name} ({number})"


def _scalar(resources: Iterable[common_pb2.Resource], name: str) -> float:
    return sum(r.scalar for r in resources if r.name == name)


def _out_of_memory(mem_mb: float, outcome: TaskExit) -> TaskExit:
    message = (
        f"out of memory: the kernel killed the task for exceeding its {mem_mb:g} MB memory "
        f"limit ({outcome.message})"
    )
    return TaskExit(
        common_pb2.TASK_FAILED, common_pb2.REASON_CONTAINER_LIMITATION_MEMORY, message, outcome.exit_code
    )


_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


@functools.cache
def _boot_time() -> float:
    """The host's boot time, read once (psutil.boot_time reads /proc/stat each call)."""
    return psutil.boot_time()


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name, or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def _start_time(pid: int) -> float | None:
    """When `pid` started, computed as psutil's create_time is (boot time plus the
    start ticks in /proc/<pid>/stat) but from one read: this runs once per launch."""
    fields = _stat(pid)
    return None if fields is None else _started(fields)


def _started(fields: list[bytes]) -> float:
    return _boot_time() + int(fields[19]) / _CLOCK_TICKS


def _same_process(pid: int, start_time: float) -> bool:
    """Whether `pid` is still the process that started at `start_time`, and alive."""
    fields = _stat(pid)
    if fields is None or fields[0] == b"Z":
        return False
    return abs(_started(fields) - start_time) < 0.01


def _zombie_exit_code(pid: int) -> int | None:
    """The exit status of a zombie that is not our child, from /proc/<pid>/stat
    (field 52, exit_code, Linux 3.5+), if its parent has not reaped it yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    # fields[0] is field 3 (state); exit_code is field 52.
    if len(fields) < 50 or fields[0] != b"Z":
        return None
    try:
        return os.waitstatus_to_exitcode(int(fields[49]))
    except ValueError:
        return None


def _outcome(proc: _Process, returncode: int | None) -> TaskExit:
    exit_code = returncode if returncode is not None and returncode >= 0 else None
    if returncode is None and proc.child is None and not proc.kill.requested:
        return TaskExit(common_pb2.TASK_FAILED, common_pb2.REASON_AGENT_RESTARTED, UNKNOWN_EXIT)
    if returncode is None:
        detail = "its exit status was lost: another process reaped it"
    else:
        detail = _describe(returncode)
    if proc.kill.requested:
        message = f"killed on request ({proc.kill.how()}): {detail}"
        return TaskExit(common_pb2.TASK_KILLED, common_pb2.REASON_KILLED_BY_FRAMEWORK, message, exit_code)
    if returncode == 0:
        return TaskExit(common_pb2.TASK_FINISHED, common_pb2.REASON_COMMAND_EXITED, detail, exit_code)
    return TaskExit(common_pb2.TASK_FAILED, common_pb2.REASON_COMMAND_EXITED, detail, exit_code)
