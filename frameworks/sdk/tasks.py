"""Describe tasks and fit them into offers, so that nobody does resource arithmetic by hand.

In an `offers` callback:

    specs = [TaskSpec("echo hi", cpus=0.1, mem=32) for _ in range(10)]
    packing = pack(offers, specs, strategy="spread")
    await driver.accept(packing.offer_ids, packing.tasks)
    if packing.leftover_offer_ids:
        await driver.decline(packing.leftover_offer_ids)
    # packing.unplaced did not fit: keep them for the next offers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

from corral.ids import check_id, new_id
from corral.resources import Resources
from corral.v1 import common_pb2, scheduler_pb2

Strategy = Literal["first_fit", "spread"]
STRATEGIES: Final = ("first_fit", "spread")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What one task needs and runs, before it has an agent and ports.

    `command` is a shell command line (a string, run by /bin/sh -c) or an
    argv list (run directly, no shell). `ports` is how many ports the task
    needs; the packer picks concrete ones from the offer and passes them in
    the environment as PORT0, PORT1, ... and PORTS (comma-separated).
    `task_id` defaults to a fresh unique id; `name` to the task id.
    `kill_grace_period` (seconds between SIGTERM and SIGKILL) defaults to the
    agent's. Amounts are validated here, so a bad spec fails where it is
    written, not at the master.
    """

    command: str | Sequence[str]
    cpus: float = 0.1
    mem: float = 32.0
    disk: float = 0.0
    ports: int = 0
    task_id: str = dataclasses.field(default_factory=lambda: new_id("task"))
    name: str = ""
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    containerizer: str = ""
    kill_grace_period: float | None = None

    def __post_init__(self) -> None:
        check_id("task id", self.task_id)
        if isinstance(self.command, str):
            if not self.command.strip():
                raise ValueError(f"task {self.task_id}: the command is empty")
        else:
            object.__setattr__(self, "command", tuple(self.command))
            if not self.command:
                raise ValueError(f"task {self.task_id}: the argv list is empty")
        if isinstance(self.ports, bool) or not isinstance(self.ports, int) or self.ports < 0:
            raise ValueError(f"task {self.task_id}: ports must be a count >= 0, got {self.ports!r}")
        # Raises ResourceError for negative, NaN, infinite or absurd amounts.
        self.scalars()

    def scalars(self) -> Resources:
        """The task's cpus, mem and disk (without ports)."""
        return Resources.of(cpus=self.cpus, mem=self.mem, disk=self.disk)

    def resources(self, ports: Sequence[int] = ()) -> Resources:
        """Everything the task uses once `ports` were chosen for it."""
        if len(ports) != self.ports:
            raise ValueError(f"task {self.task_id} needs {self.ports} ports, got {len(ports)}")
        if not ports:
            return self.scalars()
        return self.scalars() + Resources.of(ranges={"ports": [(p, p) for p in ports]})

    def to_task_info(self, agent_id: str, ports: Sequence[int] = ()) -> common_pb2.TaskInfo:
        """The TaskInfo for running this task on `agent_id` with the chosen `ports`."""
        command = common_pb2.CommandInfo(environment=dict(self.env))
        if isinstance(self.command, str):
            command.value = self.command
            command.shell = True
        else:
            command.value = self.command[0]
            command.arguments.extend(self.command)
        if ports:
            command.environment.update({f"PORT{i}": str(p) for i, p in enumerate(ports)})
            command.environment["PORTS"] = ",".join(str(p) for p in ports)
        info = common_pb2.TaskInfo(
            task_id=self.task_id,
            name=self.name or self.task_id,
            agent_id=agent_id,
            resources=self.resources(ports).to_proto(),
            command=command,
            labels=dict(self.labels),
            containerizer=self.containerizer,
        )
        if self.kill_grace_period is not None:
            info.kill_policy.grace_period_seconds = self.kill_grace_period
        return info


@dataclasses.dataclass
class Packing:
    """The outcome of packing: ready for one `accept()` call.

    `offer_ids` and `tasks` go to `accept`; `leftover_offer_ids` are offers
    that received no task (decline them); `unplaced` are the specs that did
    not fit anywhere (keep them for later offers).
    """

    offer_ids: list[str]
    tasks: list[common_pb2.TaskInfo]
    leftover_offer_ids: list[str]
    unplaced: list[TaskSpec]


@dataclasses.dataclass
class _Agent:
    """The pooled offers of one agent and what is still free in them."""

    agent_id: str
    offer_ids: list[str]
    free: Resources
    containerizers: set[str]
    placed: int = 0


class OfferPacker:
    """Assigns tasks to offers and picks their ports.

    Offers of the same agent are pooled, as the master pools them in one
    Accept: a task may use the sum of them. Resources given to tasks are
    subtracted from what is free, so tasks never exceed an offer and never
    share a port. `strategy` decides where each task goes among the agents it
    fits on: "first_fit" takes the first in offer order (fills agents up,
    leaving others whole), "spread" takes the one with the fewest tasks from
    this packer so far (ties in offer order).

    A task that names a containerizer only goes to agents whose offers list
    it (offers that list none accept any).
    """

    def __init__(self, offers: Iterable[scheduler_pb2.Offer], strategy: Strategy = "first_fit") -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
        self._strategy = strategy
        self._agents: dict[str, _Agent] = {}
        for offer in offers:
            resources = Resources.from_proto(offer.resources)
            agent = self._agents.get(offer.agent_id)
            if agent is None:
                self._agents[offer.agent_id] = _Agent(
                    offer.agent_id, [offer.id], resources, set(offer.containerizers)
                )
            else:
                agent.offer_ids.append(offer.id)
                agent.free = agent.free + resources
                agent.containerizers |= set(offer.containerizers)
        self._tasks: list[common_pb2.TaskInfo] = []
        self._task_ids: set[str] = set()
        self._unplaced: list[TaskSpec] = []

    def place(self, spec: TaskSpec) -> common_pb2.TaskInfo | None:
        """Place one task; return its TaskInfo, or None if it fits nowhere."""
        if spec.task_id in self._task_ids:
            raise ValueError(f"task id {spec.task_id} is used twice")
        need = spec.scalars()
        fits = [a for a in self._agents.values() if _fits(a, spec, need)]
        if not fits:
            self._unplaced.append(spec)
            return None
        agent = fits[0] if self._strategy == "first_fit" else min(fits, key=lambda a: a.placed)
        ports = _pick_ports(agent.free.ranges("ports"), spec.ports)
        info = spec.to_task_info(agent.agent_id, ports)
        agent.free = agent.free - spec.resources(ports)
        agent.placed += 1
        self._tasks.append(info)
        self._task_ids.add(spec.task_id)
        return info

    def pack(self, specs: Iterable[TaskSpec]) -> list[TaskSpec]:
        """Place tasks in order; return those that did not fit."""
        return [spec for spec in specs if self.place(spec) is None]

    def result(self) -> Packing:
        """What to accept, what to decline and what is left to place."""
        used = [a for a in self._agents.values() if a.placed]
        unused = [a for a in self._agents.values() if not a.placed]
        return Packing(
            offer_ids=[o for a in used for o in a.offer_ids],
            tasks=list(self._tasks),
            leftover_offer_ids=[o for a in unused for o in a.offer_ids],
            unplaced=list(self._unplaced),
        )


def pack(
    offers: Iterable[scheduler_pb2.Offer], specs: Iterable[TaskSpec], strategy: Strategy = "first_fit"
) -> Packing:
    """Pack `specs` into `offers` in one go; see `OfferPacker`."""
    packer = OfferPacker(offers, strategy)
    packer.pack(specs)
    return packer.result()


def _fits(agent: _Agent, spec: TaskSpec, need: Resources) -> bool:
    if spec.containerizer and agent.containerizers and spec.containerizer not in agent.containerizers:
        return False
    if not agent.free.contains(need):
        return False
    return _count(agent.free.ranges("ports")) >= spec.ports


def _count(intervals: Iterable[tuple[int, int]]) -> int:
    return sum(end - begin + 1 for begin, end in intervals)


def _pick_ports(intervals: Iterable[tuple[int, int]], count: int) -> list[int]:
    """The lowest `count` ports in `intervals` (sorted, disjoint)."""
    ports: list[int] = []
    for begin, end in intervals:
        if len(ports) == count:
            break
        ports.extend(range(begin, min(end, begin + count - len(ports) - 1) + 1))
    return ports
