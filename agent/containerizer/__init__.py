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
"""

from __future__ import annotations

import abc
import asyncio
import importlib
from collections.abc import Mapping
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
class ContainerizerOptions:
    """What every containerizer is built from.

    `environment` is the part of the agent's own environment that tasks inherit
    (PATH, LANG); entry points choose it, containerizers never read os.environ.
    """

    work_dir: Path
    environment: Mapping[str, str]


class Containerizer(abc.ABC):
    """Runs tasks of one kind (processes, Docker containers) on this host."""

    #: The name operators and TaskInfo.containerizer use.
    name: ClassVar[str]

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
