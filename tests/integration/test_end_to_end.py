"""Two-level scheduling end to end: a real master, real agents, a framework
written with the SDK, tasks that are real processes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from corral.states import is_terminal
from corral.testing import Cluster, wait_for
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import CallError, Scheduler, SchedulerDriver, TaskSpec, pack

pytestmark = pytest.mark.integration

S = common_pb2


class Recorder(Scheduler):
    """Launches the specs it is given as offers allow; records every event."""

    def __init__(self, specs: Iterable[TaskSpec] = (), strategy: str = "first_fit") -> None:
        self.pending = list(specs)
        self.strategy = strategy
        self.updates: dict[str, list[common_pb2.TaskStatus]] = defaultdict(list)
        self.all_updates: list[common_pb2.TaskStatus] = []
        self.agents_of: dict[str, str] = {}
        self.framework_id = ""
        self.errors: list[str] = []
        self.changed = asyncio.Event()
        #: The task running the driver, set by `with_driver`.
        self.runner: asyncio.Task[None] | None = None

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        self.framework_id = framework_id
        self.changed.set()

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        packing = pack(offers, self.pending, self.strategy)  # type: ignore[arg-type]
        if packing.tasks:
            try:
                await driver.accept(packing.offer_ids, packing.tasks, refuse_seconds=0)
            except CallError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                return  # an offer was rescinded meanwhile; the tasks wait for the next offers
        self.pending = packing.unplaced
        for task in packing.tasks:
            self.agents_of[task.task_id] = task.agent_id
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=0 if self.pending else 30)

    def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        self.updates[status.task_id].append(status)
        self.all_updates.append(status)
        self.changed.set()

    def error(self, driver: SchedulerDriver, message: str) -> None:
        self.errors.append(message)
        self.changed.set()

    def states(self, task_id: str) -> list[int]:
        return [u.state for u in self.updates[task_id]]

    def last(self, task_id: str) -> common_pb2.TaskStatus | None:
        updates = self.updates.get(task_id)
        return updates[-1] if updates else None

    async def until(self, condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
        async def loop() -> Any:
            while not (result := condition()):
                if self.runner is not None and self.runner.done():
                    # The driver stopped: say why instead of waiting for nothing.
                    self.runner.result()
                    raise AssertionError(f"the driver stopped while waiting for {what}")
                self.changed.clear()
                await self.changed.wait()
            return result

        try:
            return await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what or condition}; updates: "
                f"{ {t: [S.TaskState.Name(s) for s in self.states(t)] for t in self.updates} }"
            ) from None

    def in_state(self, task_id: str, state: int) -> bool:
        return state in self.states(task_id)


async def with_driver(
    recorder: Recorder, address: str, body: Callable[[SchedulerDriver], Awaitable[None]], **driver_kwargs: Any
) -> None:
    driver = SchedulerDriver(recorder, master=address, **driver_kwargs)
    runner = asyncio.create_task(driver.run())
    recorder.runner = runner
    runner.add_done_callback(lambda _: recorder.changed.set())
    try:
        await recorder.until(lambda: recorder.framework_id or runner.done(), what="SUBSCRIBED")
        await body(driver)
    finally:
        driver.stop()
        await asyncio.gather(runner, return_exceptions=True)


# State order a task may move through; updates must never go backwards.
ORDER = {S.TASK_STAGING: 0, S.TASK_STARTING: 1, S.TASK_RUNNING: 2, S.TASK_KILLING: 3}


def assert_monotonic(states: list[int]) -> None:
    ranks = [ORDER.get(s, 10) for s in states]
    assert ranks == sorted(ranks), [S.TaskState.Name(s) for s in states]
    terminal = [s for s in states if is_terminal(s)]
    assert len(set(terminal)) <= 1, [S.TaskState.Name(s) for s in states]


def sandbox(cluster: Cluster, agent_name: str, framework_id: str, task_id: str) -> Path:
    return cluster.root / agent_name / "sandboxes" / framework_id / task_id


def task_processes(path: Path) -> list[psutil.Process]:
    root = str(path.resolve())
    found = []
    for p in psutil.process_iter(["cwd"]):
        if (p.info.get("cwd") or "").startswith(root):
            found.append(p)
    return found


def test_tasks_run_across_agents_and_every_terminal_state_arrives(cluster: Cluster) -> None:
    cluster.start_master()
    for _ in range(3):
        cluster.start_agent(resources="cpus:2;mem:1024;ports:[31000-31009]")
    state = cluster.wait_agents(3)
    names = {a.id: a.hostname for a in state.agents}

    echo = [
        TaskSpec(
            "echo out-$CORRAL_TASK_ID; echo err-$CORRAL_TASK_ID >&2", cpus=0.5, mem=64, task_id=f"echo-{i}"
        )
        for i in range(6)
    ]
    failing = TaskSpec("exit 3", cpus=0.1, mem=32, task_id="fails")
    argv = TaskSpec(["/bin/sh", "-c", "echo argv-$0 ok", "zero"], cpus=0.1, mem=32, task_id="argv")
    sleeper = TaskSpec("sleep 60", cpus=0.1, mem=32, task_id="sleeper")
    recorder = Recorder([*echo, failing, argv, sleeper], strategy="spread")

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("sleeper", S.TASK_RUNNING), what="sleeper RUNNING")
        await driver.kill("sleeper")
        ids = [t.task_id for t in (*echo, failing, argv, sleeper)]
        await recorder.until(
            lambda: all(recorder.last(i) and is_terminal(recorder.last(i).state) for i in ids),
            what="all tasks terminal",
        )

    asyncio.run(with_driver(recorder, cluster.master_address, body, name="e2e"))

    fw = recorder.framework_id
    for spec in echo:
        assert recorder.last(spec.task_id).state == S.TASK_FINISHED
        agent_name = names[recorder.agents_of[spec.task_id]]
        box = sandbox(cluster, agent_name, fw, spec.task_id)
        assert (box / "stdout").read_text() == f"out-{spec.task_id}\n"
        assert (box / "stderr").read_text() == f"err-{spec.task_id}\n"
    assert len({recorder.agents_of[s.task_id] for s in echo}) == 3, "tasks were not spread over the agents"
    failed = recorder.last("fails")
    assert failed.state == S.TASK_FAILED and failed.exit_code == 3 and "3" in failed.message
    assert (
        sandbox(cluster, names[recorder.agents_of["argv"]], fw, "argv") / "stdout"
    ).read_text() == "argv-zero ok\n"
    killed = recorder.last("sleeper")
    assert killed.state == S.TASK_KILLED
    for task_id, updates in recorder.updates.items():
        assert_monotonic([u.state for u in updates])
        assert S.TASK_RUNNING in [u.state for u in updates] or task_id == "fails"
        assert all(u.uuid for u in updates), "agent updates must be reliable (carry a uuid)"
    # Acknowledgements reached the master: it forgets tasks whose final update was acknowledged.
    wait_for(lambda: not cluster.state().tasks, what="the master to drop acknowledged tasks")


def test_updates_are_resent_until_acknowledged_and_stay_in_order(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    recorder = Recorder([TaskSpec("true", task_id="quick")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("quick", S.TASK_RUNNING), what="RUNNING")
        # Not acknowledged: the agent resends RUNNING and holds FINISHED back.
        await recorder.until(lambda: len(recorder.updates["quick"]) >= 2, timeout=15, what="a resent RUNNING")
        first, second = recorder.updates["quick"][:2]
        assert first.state == second.state == S.TASK_RUNNING and first.uuid == second.uuid
        assert not recorder.in_state("quick", S.TASK_FINISHED)
        await driver.acknowledge([first])
        await recorder.until(
            lambda: recorder.in_state("quick", S.TASK_FINISHED), what="FINISHED after the ack"
        )
        await driver.acknowledge([recorder.last("quick")])

    asyncio.run(with_driver(recorder, cluster.master_address, body, implicit_acknowledgements=False))
    assert_monotonic(recorder.states("quick"))
    wait_for(lambda: not cluster.state().tasks, what="the master to drop the acknowledged task")


def test_agent_killed_with_sigkill_is_detected_and_its_tasks_reported(cluster: Cluster) -> None:
    cluster.start_master()
    agent = cluster.start_agent()
    cluster.wait_agents(1)
    recorder = Recorder([TaskSpec("sleep 120", task_id="orphan")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("orphan", S.TASK_RUNNING), what="RUNNING")
        agent.signal(signal.SIGKILL)
        await recorder.until(
            lambda: recorder.in_state("orphan", S.TASK_UNREACHABLE), timeout=15, what="TASK_UNREACHABLE"
        )

    asyncio.run(with_driver(recorder, cluster.master_address, body, failover_timeout=60))
    status = recorder.last("orphan")
    assert status.reason == S.REASON_AGENT_UNREACHABLE
    assert [a.status for a in cluster.state().agents] == ["unreachable"]


def test_framework_disconnect_and_resubscribe_keeps_its_tasks(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    first = Recorder([TaskSpec("sleep 120", task_id="survivor")])

    async def launch(driver: SchedulerDriver) -> None:
        await first.until(lambda: first.in_state("survivor", S.TASK_RUNNING), what="RUNNING")

    asyncio.run(with_driver(first, cluster.master_address, launch, name="failover", failover_timeout=60))
    # The first scheduler is gone, without a teardown: the master keeps its task.
    state = wait_for(
        lambda: (s := cluster.state()).frameworks[0].status == "disconnected" and s,
        what="the framework to be disconnected",
    )
    assert [(t.task.task_id, t.state) for t in state.tasks] == [("survivor", S.TASK_RUNNING)]

    second = Recorder()
    info = common_pb2.FrameworkInfo(id=first.framework_id, name="failover", failover_timeout_seconds=60)

    async def resume(driver: SchedulerDriver) -> None:
        assert second.framework_id == first.framework_id
        await driver.reconcile()
        await second.until(lambda: second.in_state("survivor", S.TASK_RUNNING), what="reconciled RUNNING")
        assert second.last("survivor").reason == S.REASON_RECONCILIATION
        await driver.reconcile(["never-launched"])
        await second.until(lambda: second.in_state("never-launched", S.TASK_LOST), what="unknown task LOST")
        await driver.kill("survivor")
        await second.until(lambda: second.in_state("survivor", S.TASK_KILLED), what="KILLED")
        await driver.teardown()

    asyncio.run(with_driver(second, cluster.master_address, resume, framework=info))


def test_framework_without_failover_timeout_is_torn_down_when_it_disconnects(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    recorder = Recorder([TaskSpec("sleep 120", task_id="doomed")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("doomed", S.TASK_RUNNING), what="RUNNING")

    asyncio.run(with_driver(recorder, cluster.master_address, body))
    box = sandbox(cluster, "agent1", recorder.framework_id, "doomed")
    wait_for(lambda: not cluster.state().frameworks, what="the framework to be removed")
    wait_for(lambda: not task_processes(box), what="the task's processes to be killed")


def test_master_restart_keeps_agents_frameworks_and_tasks(cluster: Cluster) -> None:
    address = cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    recorder = Recorder([TaskSpec("sleep 120", task_id="steady")])
    master = cluster.processes[0]

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("steady", S.TASK_RUNNING), what="RUNNING")
        framework_id = recorder.framework_id
        await asyncio.to_thread(master.stop)
        port = int(address.rsplit(":", 1)[1])
        await asyncio.to_thread(cluster.start_master, name="master", port=port)
        # The agent and the driver find the restarted master by themselves.
        await asyncio.to_thread(cluster.wait_agents, 1)
        await recorder.until(
            lambda: driver.subscribed and driver.framework_id == framework_id,
            what="resubscription with the same id",
        )
        await driver.reconcile(["steady"])
        await recorder.until(
            lambda: recorder.last("steady").reason == S.REASON_RECONCILIATION,
            what="reconciliation after the restart",
        )
        assert recorder.last("steady").state == S.TASK_RUNNING
        await driver.teardown()

    asyncio.run(with_driver(recorder, address, body, failover_timeout=60))
    assert os.path.exists(cluster.root / "master" / "registry.pb")


def test_running_tasks_report_their_resource_usage_to_the_master(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent("--usage-interval", "0.3")
    cluster.wait_agents(1)
    # Two processes: a shell that waits on a busy child.
    recorder = Recorder([TaskSpec("sh -c 'while :; do :; done' & wait", task_id="busy")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("busy", S.TASK_RUNNING), what="RUNNING")

        def measured() -> common_pb2.ResourceUsage | None:
            for entry in cluster.state().tasks:
                if entry.task.task_id == "busy" and entry.usage.cpu_user_seconds > 0.05:
                    return entry.usage
            return None

        usage = await asyncio.to_thread(wait_for, measured, 20.0, "usage of the busy task")
        assert usage.mem_rss_bytes > 0
        assert usage.processes >= 2
        await driver.teardown()

    asyncio.run(with_driver(recorder, cluster.master_address, body))
