"""`corral agents`, `corral frameworks` and `corral tasks`: the master's
OperatorService.GetState shown as tables for people or as JSON for scripts.

The JSON keys are part of the CLI's interface: add keys, never rename them.
Each command prints one object, `{"agents": [...]}` and so on, so that a key
can be added next to the list later without breaking `jq '.agents[]'`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from corral.cli import common
from corral.cli.table import format_amount, format_bytes, format_table, format_used
from corral.states import is_terminal, state_name
from corral.v1 import common_pb2, operator_pb2

AGENT_HEADERS = ("ID", "HOSTNAME", "STATUS", "CPUS", "MEM (MiB)", "DISK (MiB)", "TASKS")
FRAMEWORK_HEADERS = ("ID", "NAME", "ROLES", "STATUS", "TASKS")
TASK_HEADERS = ("ID", "FRAMEWORK", "AGENT", "STATE", "CPUS", "MEM (MiB)", "RSS", "CPU TIME")


def scalars(resources: Iterable[common_pb2.Resource]) -> dict[str, float]:
    """Sum scalar amounts by name.

    Deliberately lenient (no validation): a display tool must show whatever
    the master reports, even a resource name this CLI does not know.
    """
    out: dict[str, float] = {}
    for item in resources:
        if not item.ranges:
            out[item.name] = out.get(item.name, 0.0) + item.scalar
    return out


def resources_dict(resources: Iterable[common_pb2.Resource]) -> dict[str, Any]:
    """JSON view of resources: scalars as numbers, ranges as [[begin, end], ...]."""
    out: dict[str, Any] = {}
    for item in resources:
        if item.ranges:
            out.setdefault(item.name, []).extend([r.begin, r.end] for r in item.ranges)
        else:
            out[item.name] = out.get(item.name, 0.0) + item.scalar
    return dict(sorted(out.items()))


def _active_tasks(state: operator_pb2.State, key: Callable[[operator_pb2.TaskEntry], str]) -> Counter[str]:
    """Non-terminal tasks counted by `key` (an agent id or a framework id)."""
    return Counter(key(t) for t in state.tasks if not is_terminal(t.state))


def _roles(info: common_pb2.FrameworkInfo) -> list[str]:
    # An empty list means the default role, as in Mesos.
    return list(info.roles) or ["*"]


# -- agents ---------------------------------------------------------------


def agent_rows(state: operator_pb2.State) -> list[list[str]]:
    """One row per agent; resource columns are allocated/total."""
    tasks = _active_tasks(state, lambda t: t.agent_id)
    rows = []
    for agent in state.agents:
        total, used = scalars(agent.total), scalars(agent.allocated)
        rows.append(
            [
                agent.id,
                agent.hostname,
                agent.status,
                *(format_used(used.get(n, 0.0), total.get(n, 0.0)) for n in ("cpus", "mem", "disk")),
                str(tasks[agent.id]),
            ]
        )
    return rows


def agent_json(state: operator_pb2.State) -> dict[str, Any]:
    tasks = _active_tasks(state, lambda t: t.agent_id)
    return {
        "agents": [
            {
                "id": a.id,
                "hostname": a.hostname,
                "status": a.status,
                "total": resources_dict(a.total),
                "allocated": resources_dict(a.allocated),
                "attributes": {attr.name: attr.text for attr in a.attributes},
                "containerizers": list(a.containerizers),
                "active_tasks": tasks[a.id],
                "registered_time": a.registered_time,
                "last_seen": a.last_seen,
            }
            for a in state.agents
        ]
    }


# -- frameworks -----------------------------------------------------------


def framework_rows(state: operator_pb2.State) -> list[list[str]]:
    tasks = _active_tasks(state, lambda t: t.framework_id)
    return [
        [f.info.id, f.info.name, ",".join(_roles(f.info)), f.status, str(tasks[f.info.id])]
        for f in state.frameworks
    ]


def framework_json(state: operator_pb2.State) -> dict[str, Any]:
    tasks = _active_tasks(state, lambda t: t.framework_id)
    return {
        "frameworks": [
            {
                "id": f.info.id,
                "name": f.info.name,
                "roles": _roles(f.info),
                "principal": f.info.principal,
                "hostname": f.info.hostname,
                "failover_timeout_seconds": f.info.failover_timeout_seconds,
                "status": f.status,
                "allocated": resources_dict(f.allocated),
                "offered": resources_dict(f.offered),
                "active_tasks": tasks[f.info.id],
                "registered_time": f.registered_time,
            }
            for f in state.frameworks
        ]
    }


# -- tasks ----------------------------------------------------------------


def task_rows(state: operator_pb2.State) -> list[list[str]]:
    """One row per task the master reports; RSS and CPU TIME (user + system, since the
    task started) are `-` until the agent samples usage."""
    rows = []
    for entry in state.tasks:
        amounts = scalars(entry.task.resources)
        rss = format_bytes(entry.usage.mem_rss_bytes) if entry.HasField("usage") else "-"
        cpu = (
            f"{entry.usage.cpu_user_seconds + entry.usage.cpu_system_seconds:.2f} s"
            if entry.HasField("usage")
            else "-"
        )
        rows.append(
            [
                entry.task.task_id,
                entry.framework_id,
                entry.agent_id,
                state_name(entry.state),
                format_amount(amounts.get("cpus", 0.0)),
                format_amount(amounts.get("mem", 0.0)),
                rss,
                cpu,
            ]
        )
    return rows


def _status_json(status: common_pb2.TaskStatus) -> dict[str, Any]:
    return {
        "state": state_name(status.state),
        "message": status.message,
        "reason": common_pb2.StatusReason.Name(status.reason).removeprefix("REASON_"),
        "source": common_pb2.StatusSource.Name(status.source).removeprefix("SOURCE_"),
        "timestamp": status.timestamp,
        "exit_code": status.exit_code if status.HasField("exit_code") else None,
        "healthy": status.healthy if status.HasField("healthy") else None,
    }


def _usage_json(usage: common_pb2.ResourceUsage) -> dict[str, Any]:
    return {
        "cpu_user_seconds": usage.cpu_user_seconds,
        "cpu_system_seconds": usage.cpu_system_seconds,
        "mem_rss_bytes": usage.mem_rss_bytes,
        "processes": usage.processes,
        "timestamp": usage.timestamp,
    }


def task_json(state: operator_pb2.State) -> dict[str, Any]:
    return {
        "tasks": [
            {
                "id": t.task.task_id,
                "name": t.task.name,
                "framework_id": t.framework_id,
                "agent_id": t.agent_id,
                "state": state_name(t.state),
                "resources": resources_dict(t.task.resources),
                "containerizer": t.task.containerizer or "process",
                "last_status": _status_json(t.last_status) if t.HasField("last_status") else None,
                "usage": _usage_json(t.usage) if t.HasField("usage") else None,
            }
            for t in state.tasks
        ]
    }


# -- commands -------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    """How one subcommand turns the state into a table, JSON, and an empty message."""

    name: str
    help: str
    headers: Sequence[str]
    rows: Callable[[operator_pb2.State], list[list[str]]]
    json: Callable[[operator_pb2.State], dict[str, Any]]
    empty: str


VIEWS = (
    _View(
        "agents",
        "list the agents: status, allocated/total cpus, mem and disk, active tasks",
        AGENT_HEADERS,
        agent_rows,
        agent_json,
        "no agents registered",
    ),
    _View(
        "frameworks",
        "list the frameworks: name, roles, status, active tasks",
        FRAMEWORK_HEADERS,
        framework_rows,
        framework_json,
        "no frameworks",
    ),
    _View(
        "tasks",
        "list the tasks the master knows: state, resources, memory in use (RSS), cpu time used",
        TASK_HEADERS,
        task_rows,
        task_json,
        "no tasks",
    ),
)


def render(view: _View, state: operator_pb2.State, *, as_json: bool) -> str:
    """The text a subcommand prints for `state`."""
    if as_json:
        return json.dumps(view.json(state), indent=2)
    rows = view.rows(state)
    return format_table(view.headers, rows) if rows else view.empty


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], default_master: str) -> None:
    """Add `agents`, `frameworks` and `tasks` to the command line."""
    for view in VIEWS:
        parser = subparsers.add_parser(view.name, help=view.help, description=view.help.capitalize() + ".")
        parser.add_argument("--json", action="store_true", help="print JSON with stable keys, for scripts")
        common.add_master_argument(parser, default_master)
        parser.set_defaults(handler=_handler(view))


def _handler(view: _View) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        state = common.fetch_state(args.master)
        if not state.leading:
            print(
                f"corral: note: the master at {args.master} is not the leader; its view may be stale",
                file=sys.stderr,
            )
        print(render(view, state, as_json=args.json))
        return 0

    return handle
