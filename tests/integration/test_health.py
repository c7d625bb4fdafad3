"""Health checks end to end: a real master and agent, tasks that are real processes
serving real sockets, checks run by the agent, results seen by an SDK framework."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from corral.testing import Cluster, wait_for
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import CallError, SchedulerDriver, TaskSpec, pack
from tests.integration.test_end_to_end import Recorder, with_driver

pytestmark = pytest.mark.integration

S = common_pb2
H = common_pb2.HealthCheck

#: Fast timings: probes every 0.2 s, three failures in a row kill. The long grace
#: period covers a slow start of the task (a loaded machine); it ends at the first
#: success, so the failures after that count at once.
FAST = {
    "delay_seconds": 0.1,
    "interval_seconds": 0.2,
    "timeout_seconds": 2.0,
    "consecutive_failures": 3,
    "grace_period_seconds": 30.0,
}

#: A task that serves HTTP on $PORT0: 200 for the first `ok` requests, then 500
#: (with `--close`: stops listening instead), and keeps running either way.
SERVER = """
import os, socket, sys, time
ok, close = int(sys.argv[1]), "--close" in sys.argv
sock = socket.create_server(("127.0.0.1", int(os.environ["PORT0"])))
served = 0
while True:
    conn, _ = sock.accept()
    served += 1
    with conn:
        conn.recv(4096)
        code = b"200 OK" if served <= ok else b"500 Internal Server Error"
        conn.sendall(b"HTTP/1.1 " + code + b"\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
    print("served", served, flush=True)
    if close and served >= ok:
        sock.close()
        time.sleep(600)
"""


class CheckedRecorder(Recorder):
    """A Recorder that attaches a health check to the tasks it launches."""

    def __init__(self, specs: Sequence[TaskSpec], checks: Mapping[str, common_pb2.HealthCheck]) -> None:
        super().__init__(specs)
        self.checks = checks

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        packing = pack(offers, self.pending)
        for task in packing.tasks:
            if task.task_id in self.checks:
                task.health_check.CopyFrom(self.checks[task.task_id])
                if task.health_check.type in (H.TCP, H.HTTP):
                    # The port is known once packed: the task's PORT0.
                    ports = [r.ranges[0].begin for r in task.resources if r.name == "ports"]
                    task.health_check.port = ports[0]
        if packing.tasks:
            await driver.accept(packing.offer_ids, packing.tasks, refuse_seconds=0)
        self.pending = packing.unplaced
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=0 if self.pending else 30)

    def health_updates(self, task_id: str) -> list[common_pb2.TaskStatus]:
        """The updates that carried a new health result for the task, in order (an
        update resent after an agent restart, with the same uuid, counts once)."""
        seen: set[bytes] = set()
        found = []
        for u in self.updates[task_id]:
            health = u.reason == S.REASON_TASK_HEALTH_CHECK_STATUS_UPDATED and u.state == S.TASK_RUNNING
            if health and u.uuid not in seen:
                seen.add(u.uuid)
                found.append(u)
        return found

    def health(self, task_id: str) -> list[bool]:
        """The health results reported for the task, in order."""
        return [u.healthy for u in self.health_updates(task_id) if u.HasField("healthy")]


def server_task(tmp_path: Path, task_id: str, *args: str) -> TaskSpec:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    return TaskSpec([sys.executable, str(script), *args], task_id=task_id, ports=1, mem=64)


def run(cluster: Cluster, recorder: CheckedRecorder, condition: Callable[[], object], what: str) -> None:
    """Drive the framework until `condition` holds."""

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(condition, timeout=30, what=what)

    asyncio.run(with_driver(recorder, cluster.master_address, body, name="health"))


def assert_killed_unhealthy(recorder: CheckedRecorder, task_id: str) -> None:
    last = recorder.last(task_id)
    assert last is not None
    assert last.state == S.TASK_KILLED, S.TaskState.Name(last.state)
    assert last.reason == S.REASON_TASK_UNHEALTHY
    assert last.HasField("healthy") and not last.healthy
    assert "health check" in last.message
    # One update per change, not one per probe: healthy, then unhealthy, then the kill.
    assert recorder.health(task_id) == [True, False]
    assert all(u.uuid for u in recorder.updates[task_id]), "health updates must be reliable"


def test_healthy_http_task_is_reported_healthy_once(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    check = H(type=H.HTTP, path="/status?x=1", **FAST)  # type: ignore[arg-type]
    recorder = CheckedRecorder([server_task(tmp_path, "web", "1000000")], {"web": check})

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.health("web"), timeout=30, what="a health result")
        # Many more probes pass meanwhile; none of them is reported again.
        task = next(t for t in cluster.state().tasks if t.task.task_id == "web")
        assert task.last_status.healthy
        await driver.kill("web")
        await recorder.until(lambda: recorder.in_state("web", S.TASK_KILLED), what="KILLED")

    asyncio.run(with_driver(recorder, cluster.master_address, body, name="health"))
    assert recorder.health("web") == [True]
    running = [u for u in recorder.updates["web"] if u.state == S.TASK_RUNNING]
    assert running[-1].healthy is True and running[-1].reason == S.REASON_TASK_HEALTH_CHECK_STATUS_UPDATED
    killed = recorder.last("web")
    assert killed is not None and killed.reason == S.REASON_KILLED_BY_FRAMEWORK


def test_http_check_that_starts_failing_marks_unhealthy_then_kills(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    check = H(type=H.HTTP, path="/health", **FAST)  # type: ignore[arg-type]
    recorder = CheckedRecorder([server_task(tmp_path, "flaky", "2")], {"flaky": check})
    run(cluster, recorder, lambda: recorder.in_state("flaky", S.TASK_KILLED), "KILLED as unhealthy")
    assert_killed_unhealthy(recorder, "flaky")
    unhealthy = [u for u in recorder.health_updates("flaky") if not u.healthy]
    assert "500" in unhealthy[0].message


def test_tcp_check_that_starts_failing_marks_unhealthy_then_kills(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    check = H(type=H.TCP, **FAST)  # type: ignore[arg-type]
    recorder = CheckedRecorder([server_task(tmp_path, "closer", "3", "--close")], {"closer": check})
    run(cluster, recorder, lambda: recorder.in_state("closer", S.TASK_KILLED), "KILLED as unhealthy")
    assert_killed_unhealthy(recorder, "closer")
    unhealthy = [u for u in recorder.health_updates("closer") if not u.healthy]
    assert "cannot connect" in unhealthy[0].message


def test_command_check_runs_in_the_sandbox_and_fails_when_its_file_goes(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_master()
    cluster.start_agent()
    state = cluster.wait_agents(1)
    agent_name = state.agents[0].hostname
    # Runs in the sandbox (relative path) with the task's environment (MARK).
    check = H(
        type=H.COMMAND,
        command=common_pb2.CommandInfo(
            value='test -f "$MARK" && test "$CORRAL_TASK_ID" = marked', shell=True
        ),
        **FAST,  # type: ignore[arg-type]
    )
    spec = TaskSpec("touch marker && exec sleep 600", task_id="marked", env={"MARK": "marker"})
    recorder = CheckedRecorder([spec], {"marked": check})

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.health("marked") == [True], timeout=30, what="healthy")
        marker = cluster.root / agent_name / "sandboxes" / recorder.framework_id / "marked" / "marker"
        marker.unlink()
        await recorder.until(lambda: recorder.in_state("marked", S.TASK_KILLED), timeout=30, what="KILLED")

    asyncio.run(with_driver(recorder, cluster.master_address, body, name="health"))
    assert_killed_unhealthy(recorder, "marked")


def test_failures_in_the_grace_period_do_not_count(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    # The file appears after a while; failures before it are within the grace period.
    check = H(
        type=H.COMMAND,
        command=common_pb2.CommandInfo(value="test -f ready", shell=True),
        **{**FAST, "grace_period_seconds": 60.0},  # type: ignore[arg-type]
    )
    spec = TaskSpec("sleep 1.5 && touch ready && exec sleep 600", task_id="slow-start")
    recorder = CheckedRecorder([spec], {"slow-start": check})

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.health("slow-start"), timeout=30, what="a health result")
        await driver.kill("slow-start")
        await recorder.until(lambda: recorder.in_state("slow-start", S.TASK_KILLED), what="KILLED")

    asyncio.run(with_driver(recorder, cluster.master_address, body, name="health"))
    # About seven probes failed before the file existed; none was reported or counted.
    assert recorder.health("slow-start") == [True]


def test_a_bad_health_check_is_refused_and_changes_nothing(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    bad = {
        "port": H(type=H.TCP, port=0),
        "path": H(type=H.HTTP, port=31000, path="../etc/passwd"),
        "nan": H(type=H.TCP, port=31000, interval_seconds=float("nan")),
        "command": H(type=H.COMMAND),
        "type": H(port=31000),
    }
    errors: dict[str, str] = {}

    class Refused(CheckedRecorder):
        async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
            for name, check in bad.items():
                if name in errors:
                    continue
                packing = pack(offers, [TaskSpec("sleep 1", task_id=f"bad-{name}")])
                packing.tasks[0].health_check.CopyFrom(check)
                try:
                    await driver.accept(packing.offer_ids, packing.tasks)
                except CallError as exc:
                    errors[name] = f"{exc.code.name}: {exc}"
            self.changed.set()

    recorder = Refused([], {})
    run(cluster, recorder, lambda: len(errors) == len(bad), "every bad check refused")
    assert all(e.startswith("INVALID_ARGUMENT") for e in errors.values()), errors
    assert "port" in errors["port"] and "1 and 65535" in errors["port"]
    assert "start with '/'" in errors["path"]
    assert "interval_seconds" in errors["nan"]
    assert "needs a command" in errors["command"]
    assert "COMMAND, TCP or HTTP" in errors["type"]
    assert not cluster.state().tasks


def test_checks_resume_after_the_agent_restarts(cluster: Cluster) -> None:
    """kill -9 the agent, start it again on its work dir: the re-adopted task is checked
    again, and killed when its check starts failing."""
    cluster.start_master("--agent-timeout", "60")
    agent = cluster.start_agent(name="agent1")
    cluster.wait_agents(1)
    check = H(type=H.COMMAND, command=common_pb2.CommandInfo(value="test -f marker", shell=True), **FAST)  # type: ignore[arg-type]
    recorder = CheckedRecorder(
        [TaskSpec("touch marker && exec sleep 600", task_id="survivor")], {"survivor": check}
    )

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.health("survivor") == [True], timeout=30, what="healthy")
        agent.signal(signal.SIGKILL)
        await asyncio.to_thread(wait_for, lambda: not agent.alive(), 10, "the agent to die")
        cluster.start_agent(name="agent1")
        # The restarted agent checks again from scratch: its first result is reported again.
        await recorder.until(
            lambda: recorder.health("survivor") == [True, True], timeout=30, what="healthy again"
        )
        marker = cluster.root / "agent1" / "sandboxes" / recorder.framework_id / "survivor" / "marker"
        marker.unlink()
        await recorder.until(lambda: recorder.in_state("survivor", S.TASK_KILLED), timeout=30, what="KILLED")

    asyncio.run(with_driver(recorder, cluster.master_address, body, name="health", failover_timeout=60))
    last = recorder.last("survivor")
    assert last is not None and last.reason == S.REASON_TASK_UNHEALTHY and not last.healthy
    assert recorder.health("survivor") == [True, True, False]
