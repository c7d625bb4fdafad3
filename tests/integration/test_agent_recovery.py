"""Agent checkpointing and recovery with real processes: a real master, a real
agent killed with SIGKILL and started again on the same work dir, a framework
written with the SDK, tasks that are real processes (docs/protocol.md, "Agent
recovery and isolation")."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from agent.checkpoint import BOOT_ID, JOURNAL, META_DIR
from corral.testing import Cluster, Process, wait_for
from corral.v1 import common_pb2
from frameworks import SchedulerDriver, TaskSpec
from tests.integration.test_end_to_end import Recorder, with_driver

pytestmark = pytest.mark.integration

S = common_pb2
#: Long enough that the master never marks the restarted agent unreachable: the
#: framework must see only what the agent itself reports.
MASTER_FLAGS = ("--agent-timeout", "60")


def wait_file(name: str) -> str:
    """A task that runs until a file appears in its sandbox, then exits 3 (the
    polling is the task's own business; the test waits on conditions)."""
    return f"while [ ! -e {name} ]; do sleep 0.05; done; exit 3"


def sandbox(cluster: Cluster, agent: str, framework_id: str, task_id: str) -> Path:
    return cluster.root / agent / "sandboxes" / framework_id / task_id


def leader(path: Path) -> psutil.Process | None:
    """The task's process: the group leader whose cwd is the sandbox."""
    root = str(path.resolve())
    for process in psutil.process_iter(["cwd"]):
        try:
            if process.info.get("cwd") == root and process.pid == os.getpgid(process.pid):
                return process
        except (ProcessLookupError, psutil.Error):
            continue
    return None


def journal_records(cluster: Cluster, agent: str) -> list[dict[str, object]]:
    path = cluster.root / agent / META_DIR / JOURNAL
    records = []
    for line in path.read_bytes().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return records


async def until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll a condition outside the framework's events (processes, files) with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def kill_9(agent: Process) -> None:
    agent.signal(signal.SIGKILL)
    wait_for(lambda: not agent.alive(), what="the agent to die")


def test_agent_kill_9_then_restart_readopts_tasks_and_reports_every_end_once(cluster: Cluster) -> None:
    """Tasks outlive a SIGKILLed agent; the restarted agent keeps the same id and
    pids, reports a task that ended while it was down, the later exit of a
    re-adopted task and the kill of another, and the framework gets every update
    exactly once."""
    cluster.start_master(*MASTER_FLAGS)
    agent = cluster.start_agent(name="agent1")
    agent_id = cluster.wait_agents(1).agents[0].id
    recorder = Recorder(
        [
            TaskSpec(wait_file("go"), task_id="later"),
            TaskSpec(wait_file("go"), task_id="early"),
            TaskSpec("sleep 600", task_id="killed"),
        ]
    )
    names = ("later", "early", "killed")

    async def body(driver: SchedulerDriver) -> None:
        nonlocal agent
        await recorder.until(
            lambda: all(recorder.in_state(t, S.TASK_RUNNING) for t in names), what="all RUNNING"
        )
        fw = recorder.framework_id
        # The RUNNING acknowledgements are checkpointed: none may come back after the restart.
        await until(
            lambda: (
                {r.get("task_id") for r in journal_records(cluster, "agent1") if r["op"] == "ack"}
                >= set(names)
            ),
            "the agent to checkpoint the acknowledgements",
        )
        pids = {}
        for name in names:
            process = leader(sandbox(cluster, "agent1", fw, name))
            assert process is not None, name
            pids[name] = process
        kill_9(agent)
        # One task ends while the agent is down.
        (sandbox(cluster, "agent1", fw, "early") / "go").touch()
        await until(lambda: not pids["early"].is_running(), "the early task to exit")

        agent = cluster.start_agent(name="agent1")
        await recorder.until(
            lambda: recorder.in_state("early", S.TASK_FAILED), what="the end of the early task"
        )
        assert cluster.wait_agents(1).agents[0].id == agent_id
        for name in ("later", "killed"):
            assert pids[name].is_running(), f"{name} did not survive the agent's restart"
            assert leader(sandbox(cluster, "agent1", fw, name)) == pids[name]
        state = cluster.state()
        assert {t.task.task_id: t.state for t in state.tasks if t.task.task_id != "early"} == {
            "later": S.TASK_RUNNING,
            "killed": S.TASK_RUNNING,
        }

        (sandbox(cluster, "agent1", fw, "later") / "go").touch()
        await recorder.until(lambda: recorder.in_state("later", S.TASK_FAILED), what="the later exit")
        await driver.kill("killed")
        await recorder.until(lambda: recorder.in_state("killed", S.TASK_KILLED), what="TASK_KILLED")
        await until(lambda: not pids["killed"].is_running(), "the killed task's process to end")

    asyncio.run(with_driver(recorder, cluster.master_address, body, failover_timeout=60))

    early = recorder.last("early")
    assert early is not None
    assert early.reason == S.REASON_AGENT_RESTARTED
    assert "ended while the agent was down" in early.message and "unknown" in early.message
    later = recorder.last("later")
    assert later is not None
    # Exit code 3, when the agent caught the zombie before init reaped it; else unknown.
    assert later.exit_code == 3 or later.reason == S.REASON_AGENT_RESTARTED, later
    expected = {
        "early": [S.TASK_RUNNING, S.TASK_FAILED],
        "later": [S.TASK_RUNNING, S.TASK_FAILED],
        "killed": [S.TASK_RUNNING, S.TASK_KILLED],
    }
    for name, states in expected.items():
        got = recorder.updates[name]
        assert [u.state for u in got] == states, (name, [S.TaskState.Name(u.state) for u in got])
        uuids = [u.uuid for u in got]
        assert all(uuids) and len(set(uuids)) == len(uuids), name


def test_unacknowledged_updates_are_resent_after_a_restart_with_the_same_uuids(cluster: Cluster) -> None:
    """An update the framework had not acknowledged when the agent died is resent
    by the restarted agent from its checkpoint, with the same uuid, and nothing else."""
    cluster.start_master(*MASTER_FLAGS)
    agent = cluster.start_agent(name="agent1")
    cluster.wait_agents(1)
    recorder = Recorder([TaskSpec(wait_file("go"), task_id="quick")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("quick", S.TASK_RUNNING), what="RUNNING")
        kill_9(agent)
        cluster.start_agent(name="agent1")
        await recorder.until(lambda: len(recorder.updates["quick"]) >= 2, what="RUNNING resent")
        first, second = recorder.updates["quick"][:2]
        assert first.state == second.state == S.TASK_RUNNING and first.uuid == second.uuid
        await driver.acknowledge([second])
        (sandbox(cluster, "agent1", recorder.framework_id, "quick") / "go").touch()
        await recorder.until(lambda: recorder.in_state("quick", S.TASK_FAILED), what="the task's end")
        end = recorder.last("quick")
        assert end is not None
        await driver.acknowledge([end])

    asyncio.run(
        with_driver(
            recorder, cluster.master_address, body, implicit_acknowledgements=False, failover_timeout=60
        )
    )
    states = [u.state for u in recorder.updates["quick"]]
    assert states == [S.TASK_RUNNING, S.TASK_RUNNING, S.TASK_FAILED], [S.TaskState.Name(s) for s in states]


def test_recover_cleanup_kills_the_checkpointed_tasks_and_registers_a_new_agent(cluster: Cluster) -> None:
    cluster.start_master(*MASTER_FLAGS)
    agent = cluster.start_agent(name="agent1")
    old_id = cluster.wait_agents(1).agents[0].id
    recorder = Recorder([TaskSpec("sleep 600", task_id="doomed")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("doomed", S.TASK_RUNNING), what="RUNNING")
        process = leader(sandbox(cluster, "agent1", recorder.framework_id, "doomed"))
        assert process is not None
        kill_9(agent)
        cluster.start_agent("--recover", "cleanup", name="agent1")
        await until(lambda: not process.is_running(), "the checkpointed task to be killed")

    asyncio.run(with_driver(recorder, cluster.master_address, body, failover_timeout=60))
    ids = wait_for(
        lambda: {a.id for a in cluster.state().agents if a.status == "active"} - {old_id},
        what="a new agent to register",
    )
    assert len(ids) == 1


def test_a_checkpoint_from_another_boot_registers_a_fresh_agent(cluster: Cluster) -> None:
    """After a reboot nothing the checkpoint names can run: the agent starts afresh.
    The reboot is simulated by the boot id recorded in the checkpoint."""
    cluster.start_master(*MASTER_FLAGS)
    agent = cluster.start_agent(name="agent1")
    old_id = cluster.wait_agents(1).agents[0].id
    recorder = Recorder([TaskSpec("sleep 600", task_id="before-reboot")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("before-reboot", S.TASK_RUNNING), what="RUNNING")

    asyncio.run(with_driver(recorder, cluster.master_address, body, failover_timeout=60))
    kill_9(agent)
    cluster.kill_tasks()  # A reboot ends every process (and cgroup).
    cluster.remove_cgroups()
    (cluster.root / "agent1" / META_DIR / BOOT_ID).write_text("another-boot\n")
    cluster.start_agent(name="agent1")
    ids = wait_for(
        lambda: {a.id for a in cluster.state().agents if a.status == "active"} - {old_id},
        what="a new agent to register",
    )
    assert len(ids) == 1
    assert not [r for r in journal_records(cluster, "agent1") if r["op"] == "task"]
