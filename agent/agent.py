"""The agent: what this host offers, what it runs, and the session that links them.

`Agent` keeps the table of tasks on this host, turns the master's messages into
launches and kills on the containerizers, and turns the tasks' lives into reliable
status updates. Every change happens on the event loop, so nothing here locks.

A task's life on the agent: a `RunTask` makes it STAGING; a successful launch makes
it RUNNING (reported); its exit makes it FINISHED, FAILED or KILLED (reported); a
task that cannot start ends ERROR or FAILED at once. The agent remembers a task
until its terminal update is acknowledged, and reports every task it remembers
when it registers, so a master can rebuild its task table from its agents.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import corral
from agent import files
from agent.checkpoint import Checkpoint, CheckpointError, State, current_boot_id
from agent.config import AgentConfig
from agent.containerizer import (
    DEFAULT_CONTAINERIZER,
    Containerizer,
    ContainerizerOptions,
    LaunchError,
    LaunchSpec,
    RecoverSpec,
    TaskExit,
    TaskKey,
    create,
)
from agent.health import HealthChecker, check_environment
from agent.resources import host_resources, parse_attributes
from agent.session import AgentRefused, Session
from agent.status_updates import StatusUpdateManager
from corral import ids
from corral.states import is_terminal, state_name
from corral.v1 import agent_pb2, common_pb2

logger = logging.getLogger(__name__)

AGENT_ID_FILE: Final = "agent_id"


class AgentError(Exception):
    """The agent cannot start; the message says what to fix."""


@dataclass(slots=True, eq=False)
class _Task:
    """One task in the agent's table."""

    framework_id: str
    info: common_pb2.TaskInfo
    containerizer: Containerizer
    state: common_pb2.TaskState.ValueType = common_pb2.TASK_STAGING
    #: Grace period of a kill that arrived while the task was still STAGING.
    pending_kill: float | None = None
    #: Its framework was shut down: kill it and report nothing more about it.
    framework_removed: bool = False
    #: The running health check, if the task has one (see agent.health).
    health_check: asyncio.Task[None] | None = None
    #: It failed its health check too often and is being killed for it.
    killed_unhealthy: bool = False

    @property
    def key(self) -> TaskKey:
        return (self.framework_id, self.info.task_id)

    @property
    def log_context(self) -> dict[str, str]:
        return {"framework_id": self.framework_id, "task_id": self.info.task_id}


class Agent:
    """One agent: create it inside the running event loop, then `await run()`."""

    def __init__(self, config: AgentConfig, *, environment: Mapping[str, str]) -> None:
        self.config = config
        work_dir = config.work_path
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AgentError(f"cannot create the work dir {work_dir}: {exc.strerror or exc}") from None
        self._agent_id_path = work_dir / AGENT_ID_FILE
        self._checkpoint = Checkpoint(work_dir)
        self._boot_id = current_boot_id()
        self._recovered = self._load_checkpoint()
        self.agent_id = _read_agent_id(self._agent_id_path)
        self.resources = host_resources(work_dir, config.resources)
        self.attributes = parse_attributes(config.attributes)
        options = ContainerizerOptions(
            work_dir=work_dir, environment=dict(environment), isolation=config.isolation
        )
        self._task_environment = options.environment
        self._containerizers = {name: create(name, options) for name in config.containerizer_names}
        self._tasks: dict[TaskKey, _Task] = {}
        self._updates = StatusUpdateManager(
            self._send_updates, on_forget=self._forget, journal=self._checkpoint
        )
        self._session = Session(config.masters, self)
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        """Serve until `stop()` (returns 0) or until the master refuses us (returns 1)."""
        logger.info(
            "agent %s on %s offering %s from work dir %s",
            self.agent_id or "(new)",
            self.config.hostname,
            self.resources,
            self.config.work_dir,
        )
        try:
            await self._recover()
        except CheckpointError as exc:
            raise AgentError(str(exc)) from None
        session = asyncio.create_task(self._session.run(), name="agent-session")
        usage = asyncio.create_task(self._report_usage(), name="agent-usage")
        stop = asyncio.create_task(self._stopping.wait(), name="agent-stop")
        try:
            await asyncio.wait({session, usage, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in (session, usage):
                if task.done():
                    task.result()  # Raises what ended it: AgentRefused or a bug.
            return 0
        except AgentRefused as exc:
            logger.error("the master refused this agent: %s", exc)
            return 1
        finally:
            pending: set[asyncio.Task[Any]] = {session, usage, stop, *self._background}
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
            self._updates.close()
            for containerizer in self._containerizers.values():
                await containerizer.close()
            self._checkpoint.close()
            running = sum(1 for t in self._tasks.values() if not is_terminal(t.state))
            logger.info(
                "agent stopped; its %d running tasks keep running (an agent never kills its tasks "
                "when it stops)",
                running,
            )

    def stop(self) -> None:
        """Ask `run` to return: close the session, leave every task running."""
        self._stopping.set()

    # -- checkpoint and recovery ---------------------------------------------------

    def _load_checkpoint(self) -> State | None:
        """What the agent ran before it restarted, or None when it starts afresh: no
        checkpoint, or the host rebooted since (every task is gone; like Mesos, the
        agent then registers as a new agent)."""
        try:
            state, boot_id = self._checkpoint.load()
        except CheckpointError as exc:
            raise AgentError(str(exc)) from None
        if boot_id is None:
            return None
        if boot_id and self._boot_id and boot_id != self._boot_id:
            logger.warning(
                "the host rebooted since the checkpoint was written (boot id %s, now %s): its %d "
                "tasks are gone; registering as a new agent",
                boot_id,
                self._boot_id,
                len(state.tasks),
            )
            self._start_afresh()
            return None
        return state

    def _start_afresh(self) -> None:
        """Forget the checkpoint and the agent id: the next registration is a new agent's."""
        self._checkpoint.discard()
        try:
            self._agent_id_path.unlink(missing_ok=True)
        except OSError as exc:
            raise AgentError(f"cannot remove {self._agent_id_path}: {exc.strerror or exc}") from None

    async def _recover(self) -> None:
        """Re-adopt the checkpointed tasks (--recover=reconnect) or kill them and start
        afresh (--recover=cleanup), before the first registration."""
        state, self._recovered = self._recovered, None
        if state is None:
            self._checkpoint.start(State(), self._boot_id)
            return
        if self.config.recover == "cleanup":
            await self._cleanup(state)
            return
        self._checkpoint.start(state, self._boot_id)
        for key in state.tasks.keys() | state.pending.keys():
            self._updates.restore(key, list(state.pending.get(key, ())), state.acked.get(key))
        specs: dict[str, list[RecoverSpec]] = {}
        for key, record in list(state.tasks.items()):
            if is_terminal(state.latest_state(key)) and key not in state.pending:
                self._checkpoint.forget(key)  # Its end was acknowledged already.
                continue
            containerizer = self._containerizers.get(record.containerizer)
            task = _Task(
                record.framework.id,
                record.info,
                containerizer or next(iter(self._containerizers.values())),
                state=state.latest_state(key),
            )
            self._tasks[key] = task
            if is_terminal(task.state):
                continue
            if containerizer is None:
                self._finish(
                    task,
                    TaskExit(
                        common_pb2.TASK_LOST,
                        common_pb2.REASON_AGENT_RESTARTED,
                        f"the agent restarted without the {record.containerizer!r} containerizer "
                        "that ran this task",
                    ),
                )
                continue
            spec = RecoverSpec(record.framework.id, self.agent_id, record.info, dict(record.handle))
            specs.setdefault(record.containerizer, []).append(spec)
        adopted = 0
        for name, batch in specs.items():
            containerizer = self._containerizers[name]
            results = await containerizer.recover(batch)
            for spec in batch:
                task = self._tasks[spec.key]
                exited = results.get(spec.key)
                if exited is None:
                    self._finish(
                        task,
                        TaskExit(
                            common_pb2.TASK_LOST,
                            common_pb2.REASON_AGENT_RESTARTED,
                            f"the agent restarted and the {name} containerizer did not find the task",
                        ),
                    )
                elif exited.done():
                    self._exited(task, exited)
                else:
                    adopted += 1
                    self._checkpoint.handle(spec.key, dict(containerizer.handle(spec.key)))
                    if task.state != common_pb2.TASK_RUNNING:
                        task.state = common_pb2.TASK_RUNNING
                        self._report(task.framework_id, task.info.task_id, common_pb2.TASK_RUNNING)
                    exited.add_done_callback(functools.partial(self._exited, task))
                    if task.info.HasField("health_check"):
                        self.start_health_check(task)
        logger.info(
            "recovered from the checkpoint: %d tasks re-adopted, %d known in all, %d with "
            "unacknowledged updates",
            adopted,
            len(self._tasks),
            len(state.pending),
        )

    async def _cleanup(self, state: State) -> None:
        """--recover=cleanup: kill every checkpointed task that still runs, then start
        afresh as a new agent (Mesos' `--recover=cleanup`)."""
        specs: dict[str, list[RecoverSpec]] = {}
        for key, record in state.tasks.items():
            if record.containerizer in self._containerizers and not is_terminal(state.latest_state(key)):
                spec = RecoverSpec(record.framework.id, self.agent_id, record.info, dict(record.handle))
                specs.setdefault(record.containerizer, []).append(spec)
        running: list[asyncio.Future[TaskExit]] = []
        for name, batch in specs.items():
            containerizer = self._containerizers[name]
            for key, exited in (await containerizer.recover(batch)).items():
                if not exited.done():
                    running.append(exited)
                    await containerizer.kill(key, 0.0)
        if running:
            await asyncio.wait(running)
        logger.warning(
            "--recover=cleanup: killed %d checkpointed tasks that still ran; registering as a new agent",
            len(running),
        )
        self._start_afresh()
        self.agent_id = ""
        self._checkpoint.start(State(), self._boot_id)

    # -- the session's handler ---------------------------------------------------

    def registration(self) -> agent_pb2.Register:
        return agent_pb2.Register(
            agent_id=self.agent_id,
            hostname=self.config.hostname,
            resources=self.resources.to_proto(),
            attributes=self.attributes,
            containerizers=list(self._containerizers),
            tasks=[
                agent_pb2.TaskReport(
                    framework_id=t.framework_id,
                    task=t.info,
                    state=self._updates.reported_state(t.key, t.state),
                )
                for t in self._tasks.values()
            ],
            version=corral.__version__,
        )

    def registered(self, message: agent_pb2.Registered) -> None:
        if message.agent_id != self.agent_id:
            if self.agent_id:
                logger.warning(
                    "the master gave this agent a new id %s (it was %s)",
                    message.agent_id,
                    self.agent_id,
                    extra={"agent_id": message.agent_id},
                )
            self.agent_id = message.agent_id
            try:
                _write_agent_id(self._agent_id_path, message.agent_id)
            except OSError as exc:
                logger.error(
                    "cannot save the agent id to %s (%s): after a restart this agent would "
                    "register as a new one",
                    self._agent_id_path,
                    exc,
                    extra={"agent_id": message.agent_id},
                )
        self._updates.connected()

    def disconnected(self) -> None:
        self._updates.disconnected()

    def handle(self, message: agent_pb2.MasterMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "run_tasks":
            self._run_tasks(message.run_tasks)
        elif kind == "kill_task":
            self._kill_task(message.kill_task)
        elif kind == "acknowledgements":
            for ack in message.acknowledgements.acknowledgements:
                self._updates.acknowledge(ack.framework_id, ack.task_id, ack.uuid)
        elif kind == "shutdown_framework":
            self._shutdown_framework(message.shutdown_framework.framework_id)
        elif kind == "read_file":
            self._in_background(self._read_file(message.read_file))
        else:
            logger.warning("ignoring an unexpected %s message from the master", kind)

    # -- launches ----------------------------------------------------------------

    def _run_tasks(self, message: agent_pb2.RunTasks) -> None:
        batch: list[_Task] = []
        for run in message.tasks:
            framework_id, info = run.framework.id, run.task
            key = (framework_id, info.task_id)
            context = {"framework_id": framework_id, "task_id": info.task_id}
            existing = self._tasks.get(key)
            if existing is not None and not is_terminal(existing.state):
                logger.warning(
                    "ignoring a launch of a task that is already %s here",
                    state_name(existing.state),
                    extra=context,
                )
                continue
            if info.agent_id and info.agent_id != self.agent_id:
                self._report(
                    framework_id,
                    info.task_id,
                    common_pb2.TASK_ERROR,
                    common_pb2.REASON_TASK_INVALID,
                    f"the task is meant for agent {info.agent_id}, not for {self.agent_id}",
                )
                continue
            name = info.containerizer or DEFAULT_CONTAINERIZER
            containerizer = self._containerizers.get(name)
            if containerizer is None:
                self._report(
                    framework_id,
                    info.task_id,
                    common_pb2.TASK_ERROR,
                    common_pb2.REASON_CONTAINERIZER_UNSUPPORTED,
                    f"this agent has no {name!r} containerizer; it has {', '.join(self._containerizers)}",
                )
                continue
            task = _Task(framework_id, info, containerizer)
            self._tasks[key] = task
            self._checkpoint.task(run.framework, info, name)
            batch.append(task)
        serial = [task for task in batch if not task.containerizer.concurrent_launches]
        if serial:
            self._in_background(self._launch(serial))
        for task in batch:
            if task.containerizer.concurrent_launches:
                self._in_background(self._launch([task]))

    async def _launch(self, batch: list[_Task]) -> None:
        """Start each task in turn (one Popen each for processes: no await suspends)."""
        for task in batch:
            if task.framework_removed or task.pending_kill is not None:
                self._finish(
                    task,
                    TaskExit(
                        common_pb2.TASK_KILLED,
                        common_pb2.REASON_KILLED_BY_FRAMEWORK,
                        "killed before it was launched",
                    ),
                )
                continue
            spec = LaunchSpec(framework_id=task.framework_id, agent_id=self.agent_id, task=task.info)
            try:
                exited = await task.containerizer.launch(spec)
            except LaunchError as exc:
                logger.warning("cannot launch the task: %s", exc.message, extra=task.log_context)
                self._finish(task, TaskExit(exc.state, exc.reason, exc.message))
                continue
            task.state = common_pb2.TASK_RUNNING
            self._checkpoint.handle(task.key, dict(task.containerizer.handle(task.key)))
            self._report(task.framework_id, task.info.task_id, common_pb2.TASK_RUNNING)
            exited.add_done_callback(functools.partial(self._exited, task))
            if task.info.HasField("health_check") and not exited.done():
                self.start_health_check(task)
            if task.framework_removed or task.pending_kill is not None:
                # Killed while an asynchronous containerizer was starting it.
                await task.containerizer.kill(task.key, task.pending_kill or self._grace_period(task))

    def _exited(self, task: _Task, exited: asyncio.Future[TaskExit]) -> None:
        if not exited.cancelled():
            self._finish(task, exited.result())

    def _finish(self, task: _Task, outcome: TaskExit) -> None:
        """Record the task's end and report it (unless its framework is gone)."""
        self._stop_health_check(task)
        healthy = None
        if task.killed_unhealthy and outcome.state == common_pb2.TASK_KILLED:
            # Mesos reports TASK_KILLED with healthy=false here and leaves the reason
            # unset (a TODO in its executor); Corral names it. See docs/protocol.md.
            healthy = False
            outcome = TaskExit(
                outcome.state,
                common_pb2.REASON_TASK_UNHEALTHY,
                f"killed for failing its health check: {outcome.message}",
                outcome.exit_code,
            )
        task.state = outcome.state
        logger.info("task %s: %s", state_name(outcome.state), outcome.message, extra=task.log_context)
        if task.framework_removed:
            if self._tasks.get(task.key) is task:
                del self._tasks[task.key]
                self._checkpoint.forget(task.key)
            return
        self._report(
            task.framework_id,
            task.info.task_id,
            outcome.state,
            outcome.reason,
            outcome.message,
            outcome.exit_code,
            healthy,
        )

    # -- health checks -------------------------------------------------------------

    def start_health_check(self, task: _Task) -> None:
        """Run the task's health check until it ends, is killed, or is found unhealthy."""
        sandbox = files.task_sandbox(self.config.work_path, task.framework_id, task.info.task_id)
        checker = HealthChecker(
            task.info.health_check,
            sandbox=sandbox,
            environment=check_environment(
                self._task_environment,
                task=task.info,
                framework_id=task.framework_id,
                agent_id=self.agent_id,
                sandbox=sandbox,
            ),
            on_change=functools.partial(self._health_changed, task),
            on_unhealthy=functools.partial(self._unhealthy, task),
            log_context=task.log_context,
        )
        task.health_check = self._in_background(checker.run())

    def _stop_health_check(self, task: _Task) -> None:
        if task.health_check is not None:
            task.health_check.cancel()
            task.health_check = None

    def _health_changed(self, task: _Task, healthy: bool, why: str) -> None:
        """A new result: a reliable TASK_RUNNING update carries it (Mesos does the same)."""
        if task.state != common_pb2.TASK_RUNNING or task.framework_removed:
            return
        logger.info("task is now %s: %s", "healthy" if healthy else "unhealthy", why, extra=task.log_context)
        self._report(
            task.framework_id,
            task.info.task_id,
            common_pb2.TASK_RUNNING,
            common_pb2.REASON_TASK_HEALTH_CHECK_STATUS_UPDATED,
            why,
            healthy=healthy,
        )

    def _unhealthy(self, task: _Task, why: str) -> None:
        """It failed too often: kill it by its kill policy; `_finish` reports why."""
        task.health_check = None  # The checker returns after this call.
        if task.state != common_pb2.TASK_RUNNING:
            return
        logger.warning("killing the task: %s", why, extra=task.log_context)
        task.killed_unhealthy = True
        self._in_background(task.containerizer.kill(task.key, self._grace_period(task)))

    # -- sandbox files ---------------------------------------------------------------

    async def _read_file(self, request: agent_pb2.ReadFile) -> None:
        """Answer the master's ReadFile (a thread: a slow disk must not stall the loop)."""
        answer = await asyncio.to_thread(files.read_file, self.config.work_path, request)
        self._session.send(agent_pb2.AgentMessage(file_data=answer))

    # -- kills -------------------------------------------------------------------

    def _kill_task(self, message: agent_pb2.KillTask) -> None:
        key = (message.framework_id, message.task_id)
        task = self._tasks.get(key)
        if task is None:
            logger.info(
                "asked to kill a task this agent does not know: reporting it LOST",
                extra={"framework_id": message.framework_id, "task_id": message.task_id},
            )
            self._report(
                message.framework_id,
                message.task_id,
                common_pb2.TASK_LOST,
                common_pb2.REASON_RECONCILIATION,
                "this agent does not know the task",
            )
            return
        if is_terminal(task.state):
            logger.debug("asked to kill a task that has ended already", extra=task.log_context)
            return
        override = message.kill_policy if message.HasField("kill_policy") else None
        grace = self._grace_period(task, override)
        # Mesos stops checking a task once it is being killed.
        self._stop_health_check(task)
        if task.state == common_pb2.TASK_STAGING:
            task.pending_kill = grace
        else:
            self._in_background(task.containerizer.kill(key, grace))

    def _shutdown_framework(self, framework_id: str) -> None:
        """Kill every task of a framework that was torn down, and drop its updates:
        nobody is left to acknowledge them."""
        dropped = self._updates.forget_framework(framework_id)
        killed = 0
        for task in [t for t in self._tasks.values() if t.framework_id == framework_id]:
            task.framework_removed = True
            if is_terminal(task.state):
                del self._tasks[task.key]
                self._checkpoint.forget(task.key)
            elif task.state != common_pb2.TASK_STAGING:
                killed += 1
                self._in_background(task.containerizer.kill(task.key, self._grace_period(task)))
        logger.info(
            "framework shut down: killing its %d tasks, dropping %d unacknowledged updates",
            killed,
            dropped,
            extra={"framework_id": framework_id},
        )

    def _grace_period(self, task: _Task, override: common_pb2.KillPolicy | None = None) -> float:
        """The kill's own policy, else the task's, else the agent's default (zero means unset)."""
        for policy in (override, task.info.kill_policy):
            if policy is not None:
                seconds = policy.grace_period_seconds
                if math.isfinite(seconds) and seconds > 0:
                    return seconds
        return self.config.kill_grace_period

    # -- status updates and usage ---------------------------------------------------

    def _report(
        self,
        framework_id: str,
        task_id: str,
        state: common_pb2.TaskState.ValueType,
        reason: common_pb2.StatusReason.ValueType = common_pb2.REASON_UNSPECIFIED,
        message: str = "",
        exit_code: int | None = None,
        healthy: bool | None = None,
    ) -> None:
        status = common_pb2.TaskStatus(
            task_id=task_id,
            framework_id=framework_id,
            agent_id=self.agent_id,
            state=state,
            message=message,
            source=common_pb2.SOURCE_AGENT,
            reason=reason,
        )
        if exit_code is not None:
            status.exit_code = exit_code
        if healthy is not None:
            status.healthy = healthy
        self._updates.update(status)

    def _send_updates(self, updates: list[common_pb2.TaskStatus]) -> None:
        message = agent_pb2.AgentMessage(status_updates=agent_pb2.StatusUpdates(updates=updates))
        if not self._session.send(message):
            logger.debug("not registered: %d status updates wait for the next connection", len(updates))

    def _forget(self, key: TaskKey) -> None:
        """Its terminal update was acknowledged: the agent is done with the task."""
        task = self._tasks.get(key)
        if task is not None and is_terminal(task.state):
            del self._tasks[key]
            self._checkpoint.forget(key)

    async def _report_usage(self) -> None:
        while True:
            await asyncio.sleep(self.config.usage_interval)
            if not self._session.registered:
                continue
            report = agent_pb2.UsageReport()
            for containerizer in self._containerizers.values():
                for (framework_id, task_id), usage in (await containerizer.usage()).items():
                    report.tasks.add(framework_id=framework_id, task_id=task_id, usage=usage)
            if report.tasks:
                self._session.send(agent_pb2.AgentMessage(usage=report))

    # -- helpers -------------------------------------------------------------------

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background work failed", exc_info=task.exception())


def _read_agent_id(path: Path) -> str:
    """The id a master gave this agent before, or "" for a new agent."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise AgentError(f"cannot read the agent id from {path}: {exc.strerror or exc}") from None
    try:
        return ids.check_id("agent id", text)
    except ids.InvalidId as exc:
        raise AgentError(
            f"{path} does not hold a valid agent id ({exc}); remove it to register as a new agent"
        ) from None


def _write_agent_id(path: Path, agent_id: str) -> None:
    """Replace the file atomically, so that a crash leaves the old id or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as file:
        file.write(agent_id + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
