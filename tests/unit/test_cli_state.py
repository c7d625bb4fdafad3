"""`corral agents|frameworks|tasks`: tables and JSON from a GetState answer."""

from __future__ import annotations

import json

from corral.cli import state as view
from corral.v1 import common_pb2, operator_pb2


def _res(**amounts: float) -> list[common_pb2.Resource]:
    return [common_pb2.Resource(name=name, scalar=amount) for name, amount in amounts.items()]


def _cluster() -> operator_pb2.State:
    """Two agents, two frameworks, three tasks (one finished)."""
    ports = common_pb2.Resource(name="ports", ranges=[common_pb2.Range(begin=31000, end=31999)])
    return operator_pb2.State(
        leading=True,
        agents=[
            operator_pb2.AgentState(
                id="agent-a",
                hostname="host1",
                status="active",
                total=[*_res(cpus=4, mem=2048, disk=10000), ports],
                allocated=_res(cpus=1.5, mem=256),
                attributes=[common_pb2.Attribute(name="rack", text="r1")],
                containerizers=["process"],
            ),
            operator_pb2.AgentState(id="agent-b", hostname="host2", status="unreachable", total=_res(cpus=2)),
        ],
        frameworks=[
            operator_pb2.FrameworkState(
                info=common_pb2.FrameworkInfo(id="fw-1", name="hello", roles=["dev", "prod"]),
                status="active",
            ),
            operator_pb2.FrameworkState(
                info=common_pb2.FrameworkInfo(id="fw-2", name="runner"), status="disconnected"
            ),
        ],
        tasks=[
            operator_pb2.TaskEntry(
                framework_id="fw-1",
                agent_id="agent-a",
                task=common_pb2.TaskInfo(task_id="t1", resources=_res(cpus=1, mem=128)),
                state=common_pb2.TASK_RUNNING,
                usage=common_pb2.ResourceUsage(
                    mem_rss_bytes=5 * 1024 * 1024, cpu_user_seconds=1.5, cpu_system_seconds=0.25
                ),
            ),
            operator_pb2.TaskEntry(
                framework_id="fw-1",
                agent_id="agent-a",
                task=common_pb2.TaskInfo(task_id="t2", resources=_res(cpus=0.5, mem=128)),
                state=common_pb2.TASK_STAGING,
            ),
            operator_pb2.TaskEntry(
                framework_id="fw-2",
                agent_id="agent-a",
                task=common_pb2.TaskInfo(task_id="t3", resources=_res(cpus=0.1, mem=32)),
                state=common_pb2.TASK_FINISHED,
                last_status=common_pb2.TaskStatus(
                    task_id="t3",
                    state=common_pb2.TASK_FINISHED,
                    exit_code=0,
                    reason=common_pb2.REASON_COMMAND_EXITED,
                ),
            ),
        ],
    )


def test_agent_rows_show_allocated_over_total_and_active_tasks() -> None:
    assert view.agent_rows(_cluster()) == [
        ["agent-a", "host1", "active", "1.5/4", "256/2048", "0/10000", "2"],
        ["agent-b", "host2", "unreachable", "0/2", "0/0", "0/0", "0"],
    ]


def test_framework_rows_default_the_role_and_count_active_tasks() -> None:
    assert view.framework_rows(_cluster()) == [
        ["fw-1", "hello", "dev,prod", "active", "2"],
        ["fw-2", "runner", "*", "disconnected", "0"],
    ]


def test_task_rows_show_state_names_and_usage_when_sampled() -> None:
    assert view.task_rows(_cluster()) == [
        ["t1", "fw-1", "agent-a", "RUNNING", "1", "128", "5.0 MiB", "1.75 s"],
        ["t2", "fw-1", "agent-a", "STAGING", "0.5", "128", "-", "-"],
        ["t3", "fw-2", "agent-a", "FINISHED", "0.1", "32", "-", "-"],
    ]


def test_agent_json_has_stable_keys_and_ranges() -> None:
    agent = view.agent_json(_cluster())["agents"][0]
    assert set(agent) == {
        "id",
        "hostname",
        "status",
        "total",
        "allocated",
        "attributes",
        "containerizers",
        "active_tasks",
        "registered_time",
        "last_seen",
    }
    assert agent["total"] == {"cpus": 4, "disk": 10000, "mem": 2048, "ports": [[31000, 31999]]}
    assert agent["attributes"] == {"rack": "r1"}
    assert agent["active_tasks"] == 2


def test_framework_json() -> None:
    frameworks = view.framework_json(_cluster())["frameworks"]
    assert [(f["id"], f["roles"], f["active_tasks"]) for f in frameworks] == [
        ("fw-1", ["dev", "prod"], 2),
        ("fw-2", ["*"], 0),
    ]


def test_task_json_reports_last_status_and_usage_or_null() -> None:
    tasks = view.task_json(_cluster())["tasks"]
    assert tasks[0]["usage"]["mem_rss_bytes"] == 5 * 1024 * 1024
    assert tasks[0]["last_status"] is None
    assert tasks[1]["usage"] is None
    assert tasks[2]["state"] == "FINISHED"
    assert tasks[2]["last_status"]["exit_code"] == 0
    assert tasks[2]["last_status"]["reason"] == "COMMAND_EXITED"
    assert tasks[2]["last_status"]["healthy"] is None
    assert tasks[2]["containerizer"] == "process"


def test_render_json_is_parseable() -> None:
    for v in view.VIEWS:
        data = json.loads(view.render(v, _cluster(), as_json=True))
        assert list(data) == [v.name]


def test_render_says_so_when_empty() -> None:
    empty = operator_pb2.State(leading=True)
    assert [view.render(v, empty, as_json=False) for v in view.VIEWS] == [
        "no agents registered",
        "no frameworks",
        "no tasks",
    ]
    assert json.loads(view.render(view.VIEWS[0], empty, as_json=True)) == {"agents": []}


def test_render_table_starts_with_headers() -> None:
    text = view.render(view.VIEWS[2], _cluster(), as_json=False)
    assert text.splitlines()[0].split() == [
        "ID",
        "FRAMEWORK",
        "AGENT",
        "STATE",
        "CPUS",
        "MEM",
        "(MiB)",
        "RSS",
        "CPU",
        "TIME",
    ]
