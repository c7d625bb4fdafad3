"""Task-state facts shared by master, agent and SDK (Mesos semantics)."""

from __future__ import annotations

from typing import Final

from corral.v1 import common_pb2

TaskState = common_pb2.TaskState

#: States after which a task never runs again (Mesos' isTerminalState).
TERMINAL_STATES: Final = frozenset(
    {
        common_pb2.TASK_FINISHED,
        common_pb2.TASK_FAILED,
        common_pb2.TASK_KILLED,
        common_pb2.TASK_ERROR,
        common_pb2.TASK_LOST,
        common_pb2.TASK_DROPPED,
        common_pb2.TASK_GONE,
    }
)


def is_terminal(state: int) -> bool:
    return state in TERMINAL_STATES


def state_name(state: int) -> str:
    """`TASK_RUNNING` -> `RUNNING`, for tables and logs."""
    return common_pb2.TaskState.Name(state).removeprefix("TASK_")  # type: ignore[arg-type]
