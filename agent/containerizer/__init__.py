"""The containerizer seam: how the agent runs, watches, measures and kills tasks.

A containerizer is picked per task by `TaskInfo.containerizer` ("process" when empty)
among those the operator enabled (`--containerizers`). Implementations register by
name below and are imported only when enabled, so an agent without Docker never
imports the Docker SDK. The contract, as Nomad's task drivers and Mesos'
containerizers have it:

- `launch` starts a task and returns a future that resolves, exactly once, to how
  the task ended (`TaskExit`); a task that cannot start raises `LaunchError` instead.
- `kill` asks a running task to stop (SIGTERM, a grace period, then SIGKILL or the
  implementation's equivalent); the task's future then resolves to `TASK_KILLED`.
- `usage` samples what every running task uses.
- `close` stops watching without killing anything: tasks outlive the agent.
- `handle` says what to checkpoint about a launched task so that a restarted agent
  can find it again (a pid and its start time, a container id); the agent writes it
  to its work dir beside the task.
- `recover`, after an agent restart, re-adopts the checkpointed tasks that still run
  (watching them again as if just launched) and says how the others ended. The
  default re-adopts nothing: every task is reported TASK_LOST with
  REASON_AGENT_RESTARTED, so a containerizer without recovery is still correct.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

from corral.v1 import common_pb2

#: A task on this agent: (framework id, task id).
TaskKey = tuple[str, str]

#: The containerizer a task gets when its TaskInfo names none.
DEFAULT_CONTAINERIZER: Final = "process"

#: name -> "module:Class"; imported on demand by `create`.
_REGISTRY: Final[Mapping[str, str]] = {
    "process": "agent.containerizer.process:ProcessContainerizer",
    "docker": "agent.containerizer.docker:DockerContainerizer",
}


@dataclass(frozen=True, slots=True)
class TaskExit:
    """How a task ended: the terminal state and what its status update says."""

    state: common_pb2.TaskState.ValueType
    reason: common_pb2.StatusReason.ValueType
    message: str
    exit_code: int | None = None


class LaunchError(Exception):
    """A task that could not be started; its terminal state says whose fault it is.

    `TASK_ERROR` is for a task that is invalid here (bad ids, environment or
    command: retrying it cannot help); `TASK_FAILED` with `REASON_LAUNCH_FAILED` for
    a valid task that failed to start (e.g. its executable does not exist).
    """

    def __init__(
        self,
        message: str,
        *,
        state: common_pb2.TaskState.ValueType,
        reason: common_pb2.StatusReason.ValueType,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.state = state
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """One task to start, with the ids its environment names."""

    framework_id: str
    agent_id: str
    task: common_pb2.TaskInfo

    @property
    def key(self) -> TaskKey:
        return (self.framework_id, self.task.task_id)


@dataclass(frozen=True, slots=True)
class RecoverSpec:
    """A task the agent checkpointed before it restarted, to be re-adopted.

    `handle` is what the containerizer's `handle` returned at launch, read back from
    the checkpoint; it is empty when the agent died before checkpointing it (the
    containerizer may still find the task by other means, e.g. Docker labels).
    """

    framework_id: str
    agent_id: str
    task: common_pb2.TaskInfo
    handle: Mapping[str, str]

    @property
    def key(self) -> TaskKey:
        return (self.framework_id, self.task.task_id)


@dataclass(eq=False, slots=True)
class KillSequence:
    """A kill policy under way, as every containerizer applies it: SIGTERM at
    once, SIGKILL when the grace period ends. A second kill request may only
    bring SIGKILL forward. Containerizers say how to signal; this keeps time."""

    requested: bool = False
    grace_period: float = 0.0
    escalated: bool = False
    timer: asyncio.TimerHandle | None = None

    def start(
        self, loop: asyncio.AbstractEventLoop, grace_period: float, escalate: Callable[[], None]
    ) -> bool:
        """Arm `escalate` (the SIGKILL) `grace_period` seconds from now; True when
        this is the first request, so the caller sends SIGTERM."""
        deadline = loop.time() + grace_period
        if self.requested:
            if self.timer is not None and deadline < self.timer.when():
                self.timer.cancel()
                self.grace_period = grace_period
                self.timer = loop.call_at(deadline, self._escalate, escalate)
            return False
        self.requested = True
        self.grace_period = grace_period
        self.timer = loop.call_at(deadline, self._escalate, escalate)
        return True

    def _escalate(self, escalate: Callable[[], None]) -> None:
        self.timer = None
        self.escalated = True
        escalate()

    def cancel(self) -> None:
        """The task ended (or nobody is left to finish the kill): no SIGKILL timer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def how(self) -> str:
        """How the task was killed, for its terminal status message."""
        if self.escalated:
            return f"SIGTERM, then SIGKILL after the {self.grace_period:g} s grace period"
        return "SIGTERM"


@dataclass(frozen=True, slots=True)
class ContainerizerOptions:
    """What every containerizer is built from.

    `environment` is the part of the agent's own environment that tasks inherit
    (PATH, LANG); entry points choose it, containerizers never read os.environ.
    `isolation` is the agent's --isolation: "cgroups" or "none".
    """

    work_dir: Path
    environment: Mapping[str, str]
    isolation: str = "cgroups"


class Containerizer(abc.ABC):
    """Runs tasks of one kind (processes, Docker containers) on this host."""

    #: The name operators and TaskInfo.containerizer use.
    name: ClassVar[str]
    #: Whether the agent should start this containerizer's tasks side by side rather
    #: than one after another: true where a launch waits on something slow (the Docker
    #: engine), false where it is one quick system call (a process).
    concurrent_launches: ClassVar[bool] = False

    def __init__(self, options: ContainerizerOptions) -> None:
        self.options = options

    @abc.abstractmethod
    async def launch(self, spec: LaunchSpec) -> asyncio.Future[TaskExit]:
        """Start the task; return a future of its exit. Raise LaunchError if it cannot start."""

    @abc.abstractmethod
    async def kill(self, key: TaskKey, grace_period: float) -> None:
        """Stop the task: SIGTERM now, SIGKILL after `grace_period` seconds.

        Killing a task that is not running (any more) does nothing. A second kill may
        shorten the grace period, never lengthen it.
        """

    @abc.abstractmethod
    async def usage(self) -> dict[TaskKey, common_pb2.ResourceUsage]:
        """What each running task uses now."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching tasks, leaving them running (the agent is shutting down)."""

    def handle(self, key: TaskKey) -> Mapping[str, str]:
        """What to checkpoint about a running task so that `recover` can find it again.

        Called by the agent right after a successful `launch`; the values must be
        plain strings (they are written as JSON). The default records nothing.
        """
        return {}

    async def recover(self, tasks: Sequence[RecoverSpec]) -> dict[TaskKey, asyncio.Future[TaskExit]]:
        """Re-adopt checkpointed tasks after an agent restart; call once, before any launch.

        Returns a future per task, as `launch` does: pending for a task that still
        runs (it is watched again and resolves when it ends, or when `kill` stops
        it); already done for a task that ended while the agent was down, with the
        best account of how it ended the containerizer has (its exit status when
        recorded, else TASK_FAILED or TASK_LOST with REASON_AGENT_RESTARTED). A task
        left out of the result is reported TASK_LOST by the agent. Implementations
        may also stop what they find that nobody checkpointed (orphans).

        The default re-adopts nothing: for a containerizer that cannot find its tasks
        again, losing them is the honest answer.
        """
        loop = asyncio.get_running_loop()
        results: dict[TaskKey, asyncio.Future[TaskExit]] = {}
        for spec in tasks:
            future: asyncio.Future[TaskExit] = loop.create_future()
            future.set_result(
                TaskExit(
                    common_pb2.TASK_LOST,
                    common_pb2.REASON_AGENT_RESTARTED,
                    f"the agent restarted and the {self.name} containerizer cannot re-adopt tasks",
                )
            )
            results[spec.key] = future
        return results


class UnknownContainerizer(ValueError):
    """A containerizer name that no implementation is registered under."""


def known_containerizers() -> frozenset[str]:
    return frozenset(_REGISTRY)


def create(name: str, options: ContainerizerOptions) -> Containerizer:
    """Build the containerizer registered under `name`."""
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownContainerizer(
            f"no containerizer named {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Containerizer)):
        raise TypeError(f"{target} is not a Containerizer")
    return cls(options)
