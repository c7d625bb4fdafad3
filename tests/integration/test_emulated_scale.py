"""Correctness at scale: 1,000 emulated agents (real sessions and reliable
updates, pretend tasks) and several SDK frameworks against a real master
process. No resource is ever offered twice, no offer exceeds what its agent
has, and every launched task runs once and is reported finished."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from agent.emulator import Emulator, TaskKey
from corral.resources import EMPTY, Resources
from corral.testing import Cluster
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import Scheduler, SchedulerDriver, TaskSpec, pack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENTS = 1000
FRAMEWORKS = 4
TASKS_EACH = 400
AGENT_TOTAL = Resources.parse("cpus:4;mem:4096;ports:[31000-31009]")


class Ledger:
    """What is handed out on each agent: outstanding offers, and accepted tasks
    until their agent ends them. Frameworks take offers out of the ledger
    before the call that gives them back to the master, and the emulated agent
    reports a task's end before it sends the update that frees its resources,
    so a correct master can never make the ledger overflow an agent."""

    def __init__(self) -> None:
        self.offers: dict[str, dict[str, Resources]] = defaultdict(dict)
        self.tasks: dict[str, dict[TaskKey, Resources]] = defaultdict(dict)
        self.agent_of_task: dict[TaskKey, str] = {}
        self.violations: list[str] = []
        self.offers_seen = 0

    def held(self, agent_id: str) -> Resources:
        total = EMPTY
        for resources in (*self.offers[agent_id].values(), *self.tasks[agent_id].values()):
            total += resources
        return total

    def offered(self, offer: scheduler_pb2.Offer) -> None:
        self.offers_seen += 1
        resources = Resources.from_proto(offer.resources)
        held = self.held(offer.agent_id)
        if not AGENT_TOTAL.contains(held + resources):
            self.violations.append(
                f"offer {offer.id} on {offer.agent_id}: {resources} on top of {held} already handed out "
                f"exceeds the agent's {AGENT_TOTAL}"
            )
        self.offers[offer.agent_id][offer.id] = resources

    def given_back(self, offer: scheduler_pb2.Offer) -> None:
        self.offers[offer.agent_id].pop(offer.id, None)

    def launching(self, framework_id: str, task: common_pb2.TaskInfo) -> None:
        key = (framework_id, task.task_id)
        self.tasks[task.agent_id][key] = Resources.from_proto(task.resources)
        self.agent_of_task[key] = task.agent_id

    def ended(self, key: TaskKey) -> None:
        agent_id = self.agent_of_task.get(key)
        if agent_id is not None:
            self.tasks[agent_id].pop(key, None)


class Greedy(Scheduler):
    """Launches its tasks on whatever it is offered, as fast as it can."""

    def __init__(self, name: str, ledger: Ledger, total: int) -> None:
        self.name = name
        self.ledger = ledger
        self.pending = [TaskSpec("true", cpus=1, mem=256, task_id=f"{name}-{i}") for i in range(total)]
        self.launched: set[str] = set()
        self.finished: set[str] = set()
        self.unexpected: list[str] = []
        self.done = asyncio.Event()

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        for offer in offers:
            self.ledger.offered(offer)
        packing = pack(offers, self.pending)
        for offer in offers:
            self.ledger.given_back(offer)
        for task in packing.tasks:
            self.ledger.launching(driver.framework_id or "", task)
        if packing.tasks:
            await driver.accept(packing.offer_ids, packing.tasks, refuse_seconds=0)
            self.pending = packing.unplaced
            self.launched.update(t.task_id for t in packing.tasks)
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=0 if self.pending else 3600)

    def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        if status.state == common_pb2.TASK_FINISHED:
            self.finished.add(status.task_id)
        elif status.state != common_pb2.TASK_RUNNING:
            self.unexpected.append(f"{status.task_id}: {common_pb2.TaskState.Name(status.state)}")
        if not self.pending and self.finished >= self.launched:
            self.done.set()


def test_a_thousand_emulated_agents_never_see_a_resource_offered_twice(cluster: Cluster) -> None:
    address = cluster.start_master("--offer-timeout", "0", "--log-level", "INFO")

    async def scenario() -> None:
        ledger = Ledger()
        emulator = Emulator([address], AGENTS, AGENT_TOTAL, task_seconds=0.05)
        for agent in emulator.agents:
            agent.on_task_end = ledger.ended
        running = asyncio.create_task(emulator.run())
        frameworks = [Greedy(f"fw{i}", ledger, TASKS_EACH) for i in range(FRAMEWORKS)]
        drivers = [SchedulerDriver(fw, master=address, name=fw.name) for fw in frameworks]
        runs: list[asyncio.Task[None]] = []
        try:
            await asyncio.wait_for(emulator.wait_registered(), 120)
            runs = [asyncio.create_task(d.run()) for d in drivers]
            await asyncio.wait_for(asyncio.gather(*(fw.done.wait() for fw in frameworks)), 180)
            for driver in drivers:
                await driver.teardown()
        finally:
            for driver in drivers:
                driver.stop()
            running.cancel()
            await asyncio.gather(running, *runs, return_exceptions=True)

        assert not ledger.violations, ledger.violations[:5]
        assert ledger.offers_seen >= AGENTS
        for fw in frameworks:
            assert fw.launched == {f"{fw.name}-{i}" for i in range(TASKS_EACH)}
            assert fw.finished == fw.launched
            assert not fw.unexpected, fw.unexpected[:5]
        assert sum(a.launched for a in emulator.agents) == FRAMEWORKS * TASKS_EACH, "a task ran twice"

    asyncio.run(scenario())
