"""The leading master's live state and everything that changes it.

All state lives on one asyncio loop and every method here runs on it, so no
locks are needed (the actor model of Mesos' libprocess). The gRPC services
call into `Master`; `Master` talks back to agents and frameworks through
their links, which only queue messages. Nothing here blocks and nothing here
waits for etcd or disk on the path of a task launch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from corral import __version__
from corral.ids import InvalidId, check_id, new_id
from corral.resources import EMPTY, ResourceError, Resources
from corral.states import is_terminal
from corral.v1 import agent_pb2, common_pb2, operator_pb2, registry_pb2, scheduler_pb2
from master.allocator import DEFAULT_ROLE, Allocator
from master.config import MasterConfig
from master.logs import FileRequests
from master.offers import OfferBook
from master.registry import Registrar
from master.validation import MAX_NAME_CHARS, Rejected, check_framework_info, grace_problem, plan_accept

logger = logging.getLogger(__name__)

ACTIVE = "active"
DISCONNECTED = "disconnected"
UNREACHABLE = "unreachable"

#: Framework ids remembered after teardown, so a torn-down framework cannot
#: come back with its old id.
MAX_REMOVED_FRAMEWORKS = 10_000
MAX_ATTRIBUTES = 128
MAX_UUID_BYTES = 64


class AgentLink(Protocol):
    """The master's end of an agent's stream."""

    def send(self, message: agent_pb2.MasterMessage) -> None: ...
    def close(self) -> None: ...


class FrameworkLink(Protocol):
    """The master's end of a framework's subscription stream."""

    def send(self, event: scheduler_pb2.Event) -> None: ...
    def close(self) -> None: ...


@dataclass(eq=False, slots=True)
class Task:
    framework_id: str
    agent_id: str
    info: common_pb2.TaskInfo
    role: str
    resources: Resources
    state: int = common_pb2.TASK_STAGING
    status: common_pb2.TaskStatus | None = None
    usage: common_pb2.ResourceUsage | None = None
    #: Whether the allocator still counts the task's resources as in use.
    holds_resources: bool = True
    #: A kill that could not be sent yet (agent not connected).
    pending_kill: common_pb2.KillPolicy | None = None
    #: The uuid of the terminal update; its acknowledgement completes the task.
    terminal_uuid: bytes = b""

    @property
    def id(self) -> str:
        return self.info.task_id


@dataclass(eq=False, slots=True)
class Agent:
    id: str
    hostname: str
    total: Resources
    attributes: list[common_pb2.Attribute]
    containerizers: list[str]
    address: str
    version: str
    registered_time: float
    status: str = ACTIVE
    link: AgentLink | None = None
    last_seen: float = 0.0
    disconnected_at: float = 0.0
    #: Whether the allocator knows the agent (not while unreachable).
    in_allocator: bool = False
    #: Known only from the registry of a previous run: it has not re-registered
    #: yet, so the master cannot know what it runs.
    recovering: bool = False
    tasks: dict[tuple[str, str], Task] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Framework:
    info: common_pb2.FrameworkInfo
    roles: list[str]
    registered_time: float
    status: str = DISCONNECTED
    link: FrameworkLink | None = None
    stream_id: str = ""
    tasks: dict[str, Task] = field(default_factory=dict)
    completed: OrderedDict[str, Task] = field(default_factory=OrderedDict)
    failover_timer: asyncio.TimerHandle | None = None

    @property
    def id(self) -> str:
        return self.info.id


def _ctx(**context: str) -> dict[str, str]:
    """Context fields for a log line (see corral.logs)."""
    return context


class Master:
    """The leader's state machine: agents, frameworks, tasks and offers."""

    def __init__(self, config: MasterConfig, allocator: Allocator, registrar: Registrar) -> None:
        self.config = config
        self.allocator = allocator
        self.registrar = registrar
        self.id = new_id("master")
        self.start_time = time.time()
        self.address = config.listen
        self.agents: dict[str, Agent] = {}
        self.frameworks: dict[str, Framework] = {}
        self.removed_frameworks: OrderedDict[str, None] = OrderedDict()
        self.weights: dict[str, float] = {}
        self._loop = asyncio.get_running_loop()
        self.offers = OfferBook(
            self.id.removeprefix("master-")[:12], config.offer_timeout, self._offer_expired
        )
        self._allocation: asyncio.TimerHandle | None = None
        self._filter_timer: asyncio.TimerHandle | None = None
        self._periodic: list[asyncio.Task[None]] = []
        #: ReadFile requests in flight to agents (task logs, see master.logs).
        self.files = FileRequests()
        self._last_sweep = self._loop.time()
        #: Who leads, for operators (set by the server on election).
        self.leader_info: common_pb2.LeaderInfo | None = None
        #: Whether this master may still act as leader (fencing: false once its
        #: lease can no longer be trusted, even before it is torn down).
        self.may_act: Callable[[], bool] = lambda: True
        self._recover_registry()

    # -- lifecycle ---------------------------------------------------------

    def _recover_registry(self) -> None:
        """Know the agents and frameworks of a previous run until they come back."""
        now = self._loop.time()
        for role, weight in self.registrar.role_weights.items():
            self.set_weight(role, weight)
        for entry in self.registrar.agents.values():
            self.agents[entry.id] = Agent(
                id=entry.id,
                hostname=entry.hostname,
                total=Resources.from_proto(entry.resources),
                attributes=list(entry.attributes),
                containerizers=[],
                address="",
                version="",
                registered_time=entry.registered_time,
                status=DISCONNECTED,
                disconnected_at=now,
                recovering=True,
            )
        for fw_entry in self.registrar.frameworks.values():
            info = common_pb2.FrameworkInfo()
            info.CopyFrom(fw_entry.info)
            framework = Framework(
                info=info, roles=list(info.roles) or [DEFAULT_ROLE], registered_time=fw_entry.registered_time
            )
            self.frameworks[info.id] = framework
            self.allocator.add_framework(info.id, framework.roles)
            self.allocator.deactivate_framework(info.id)
            # A master restart must not tear down every framework with a zero
            # failover timeout before it had a chance to resubscribe.
            self._start_failover_timer(framework, at_least=self.config.agent_timeout)
        if self.agents or self.frameworks:
            logger.info(
                "recovered %d agents and %d frameworks from the registry; waiting for them to come back",
                len(self.agents),
                len(self.frameworks),
            )

    def start(self) -> None:
        self._periodic = [
            self._loop.create_task(self._every(self._sweep_agents_interval(), self._sweep_agents)),
            self._loop.create_task(
                self._every(self.config.framework_heartbeat_interval, self._heartbeat_frameworks)
            ),
        ]

    async def stop(self) -> None:
        for task in self._periodic:
            task.cancel()
        for framework in self.frameworks.values():
            if framework.link is not None:
                framework.link.close()
        for agent in self.agents.values():
            if agent.link is not None:
                agent.link.close()
        await self.registrar.flush()

    def _sweep_agents_interval(self) -> float:
        return min(1.0, self.config.agent_heartbeat_interval)

    async def _every(self, interval: float, fn: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self.may_act():
                continue
            try:
                fn()
            except Exception:
                logger.exception("periodic %s failed", fn.__name__)

    def set_weight(self, role: str, weight: float) -> None:
        self.weights[role] = weight
        self.allocator.set_weight(role, weight)

    # -- allocation ----------------------------------------------------------

    def schedule_allocation(self) -> None:
        """Run an allocation pass soon; triggers within the batch interval share it."""
        if self._allocation is None:
            self._allocation = self._loop.call_later(self.config.allocation_interval, self._allocate)

    def _allocate(self) -> None:
        self._allocation = None
        if not self.may_act():
            return
        now = self._loop.time()
        batches: dict[str, list[scheduler_pb2.Offer]] = defaultdict(list)
        for allocation in self.allocator.allocate(now):
            framework = self.frameworks.get(allocation.framework_id)
            agent = self.agents.get(allocation.agent_id)
            if framework is None or framework.link is None or agent is None or agent.status != ACTIVE:
                # The allocator should not do this; give the resources back.
                logger.warning("allocator offered to an inactive framework or agent: %s", allocation)
                self.allocator.recover(
                    allocation.framework_id, allocation.role, allocation.agent_id, allocation.resources, now
                )
                continue
            offer = self.offers.make(allocation, agent.hostname, agent.attributes, agent.containerizers)
            batches[framework.id].append(offer)
        for framework_id, offers in batches.items():
            link = self.frameworks[framework_id].link
            assert link is not None
            link.send(scheduler_pb2.Event(offers=scheduler_pb2.Event.Offers(offers=offers)))
        expiry = self.allocator.next_filter_expiry()
        if expiry is not None:
            if self._filter_timer is not None:
                self._filter_timer.cancel()
            self._filter_timer = self._loop.call_at(max(expiry, now) + 0.001, self.schedule_allocation)

    def _take_offer_back(self, offer_id: str, refuse_seconds: float | None = None) -> None:
        view = self.offers.take(offer_id)
        self.allocator.recover(
            view.framework_id, view.role, view.agent_id, view.resources, self._loop.time(), refuse_seconds
        )

    def _rescind(self, offer_id: str) -> None:
        """Take an offer back and tell its framework."""
        framework_id = self.offers.by_id[offer_id].view.framework_id
        self._take_offer_back(offer_id)
        framework = self.frameworks.get(framework_id)
        if framework is not None and framework.link is not None:
            framework.link.send(scheduler_pb2.Event(rescind=scheduler_pb2.Event.Rescind(offer_id=offer_id)))

    def _offer_expired(self, offer_id: str) -> None:
        if not self.may_act():
            return  # a deposed leader changes nothing; its offers die with its streams
        if offer_id in self.offers.by_id:
            logger.info("offer %s timed out; rescinding it", offer_id, extra=_ctx(offer_id=offer_id))
            self._rescind(offer_id)
            self.schedule_allocation()

    # -- agents --------------------------------------------------------------

    def register_agent(self, link: AgentLink, register: agent_pb2.Register) -> agent_pb2.Registered:
        """(Re-)admit an agent and rebuild what it runs from its report."""
        try:
            total = Resources.from_proto(register.resources)
            if register.agent_id:
                check_id("agent id", register.agent_id)
            for report in register.tasks:
                check_id("framework id", report.framework_id)
                check_id("task id", report.task.task_id)
        except (ResourceError, InvalidId) as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"invalid registration: {exc}") from None
        if len(register.hostname) > MAX_NAME_CHARS or len(register.attributes) > MAX_ATTRIBUTES:
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT, "invalid registration: hostname or attributes too long"
            )

        now = self._loop.time()
        agent_id = register.agent_id or new_id("agent")
        agent = self.agents.get(agent_id)
        was_unreachable = agent is not None and agent.status == UNREACHABLE
        if agent is None:
            agent = Agent(
                id=agent_id,
                hostname=register.hostname,
                total=total,
                attributes=list(register.attributes),
                containerizers=list(register.containerizers),
                address=register.address,
                version=register.version,
                registered_time=time.time(),
            )
            self.agents[agent_id] = agent
            logger.info(
                "agent %s (%s) registered with %s",
                agent_id,
                register.hostname,
                total,
                extra=_ctx(agent_id=agent_id),
            )
        else:
            if agent.link is not None and agent.link is not link:
                agent.link.close()  # superseded by this newer connection
            for offer_id in self.offers.of_agent(agent_id):
                self._rescind(offer_id)
            if agent.in_allocator:
                self.allocator.remove_agent(agent_id)
                agent.in_allocator = False
            agent.hostname = register.hostname
            agent.total = total
            agent.attributes = list(register.attributes)
            agent.containerizers = list(register.containerizers)
            agent.address = register.address
            agent.version = register.version
            logger.info(
                "agent %s (%s) re-registered with %d tasks%s",
                agent_id,
                register.hostname,
                len(register.tasks),
                " after being unreachable" if was_unreachable else "",
                extra=_ctx(agent_id=agent_id),
            )
        agent.status = ACTIVE
        agent.link = link
        agent.last_seen = now
        agent.recovering = False

        used = self._reconcile_agent_tasks(agent, register.tasks, was_unreachable)
        self.allocator.add_agent(agent_id, total, used)
        agent.in_allocator = True
        self.registrar.put_agent(
            registry_pb2.Registry.Agent(
                id=agent_id,
                hostname=agent.hostname,
                resources=total.to_proto(),
                attributes=agent.attributes,
                registered_time=agent.registered_time,
            )
        )
        for task in agent.tasks.values():
            if task.pending_kill is not None and not is_terminal(task.state):
                self._send_kill(agent, task, task.pending_kill)
        self.schedule_allocation()
        return agent_pb2.Registered(
            agent_id=agent_id,
            heartbeat_interval_seconds=self.config.agent_heartbeat_interval,
            master=self.master_info(),
        )

    def _reconcile_agent_tasks(
        self, agent: Agent, reports: Iterable[agent_pb2.TaskReport], was_unreachable: bool
    ) -> dict[tuple[str, str], Resources]:
        """Make the task table agree with what the agent says it runs; return
        what its live tasks hold, by (framework, role)."""
        reported: set[tuple[str, str]] = set()
        orphaned_frameworks: set[str] = set()
        used: dict[tuple[str, str], Resources] = defaultdict(lambda: EMPTY)
        for report in reports:
            key = (report.framework_id, report.task.task_id)
            reported.add(key)
            framework = self.frameworks.get(report.framework_id)
            if framework is None:
                if not is_terminal(report.state):
                    orphaned_frameworks.add(report.framework_id)
                continue
            task = agent.tasks.get(key)
            if task is None:
                try:
                    resources = Resources.from_proto(report.task.resources)
                except ResourceError:
                    resources = EMPTY
                task = Task(
                    framework_id=framework.id,
                    agent_id=agent.id,
                    info=report.task,
                    role=framework.roles[0],
                    resources=resources,
                )
                agent.tasks[key] = task
                framework.tasks[task.id] = task
            changed = task.state != report.state
            task.state = report.state
            task.holds_resources = not is_terminal(report.state)
            if task.holds_resources:
                used[(framework.id, task.role)] += task.resources
            if (was_unreachable or changed) and framework.link is not None:
                self._send_update(
                    framework,
                    self._status(
                        task,
                        report.state,
                        common_pb2.REASON_AGENT_REREGISTERED,
                        "the agent re-registered with this task",
                    ),
                )
        for key, task in list(agent.tasks.items()):
            if key in reported:
                continue
            # The agent no longer knows this task: it never got it, or it ended
            # and its terminal update was acknowledged.
            framework = self.frameworks.get(task.framework_id)
            if not is_terminal(task.state) and framework is not None:
                status = self._status(
                    task,
                    common_pb2.TASK_LOST,
                    common_pb2.REASON_AGENT_REREGISTERED,
                    "the agent re-registered without this task",
                )
                task.state = common_pb2.TASK_LOST
                task.status = status
                self._send_update(framework, status)
            task.holds_resources = False
            self._complete_task(task)
        for framework_id in orphaned_frameworks:
            logger.info(
                "agent %s runs tasks of unknown framework %s; shutting them down",
                agent.id,
                framework_id,
                extra=_ctx(agent_id=agent.id, framework_id=framework_id),
            )
            self._send_agent(
                agent,
                agent_pb2.MasterMessage(
                    shutdown_framework=agent_pb2.ShutdownFramework(framework_id=framework_id)
                ),
            )
        return dict(used)

    def agent_message(self, agent_id: str, link: AgentLink, message: agent_pb2.AgentMessage) -> None:
        agent = self.agents.get(agent_id)
        if agent is None or agent.link is not link:
            return  # a stale stream of a superseded connection
        agent.last_seen = self._loop.time()
        kind = message.WhichOneof("message")
        if kind == "status_updates":
            self._status_updates(agent, message.status_updates.updates)
        elif kind == "usage":
            for usage in message.usage.tasks:
                task = agent.tasks.get((usage.framework_id, usage.task_id))
                if task is not None:
                    task.usage = usage.usage
        elif kind == "file_data":
            self.files.answer(agent_id, message.file_data)
        elif kind == "heartbeat":
            pass
        else:
            logger.warning(
                "agent %s sent an unexpected %s message", agent_id, kind, extra=_ctx(agent_id=agent_id)
            )

    def agent_disconnected(self, agent_id: str, link: AgentLink) -> None:
        agent = self.agents.get(agent_id)
        if agent is None or agent.link is not link:
            return
        agent.link = None
        self.files.agent_gone(agent_id)
        if agent.status != ACTIVE:
            return
        logger.info("agent %s disconnected", agent_id, extra=_ctx(agent_id=agent_id))
        agent.status = DISCONNECTED
        agent.disconnected_at = self._loop.time()
        for offer_id in self.offers.of_agent(agent_id):
            self._rescind(offer_id)
        self.allocator.deactivate_agent(agent_id)

    def _sweep_agents(self) -> None:
        now = self._loop.time()
        timeout = self.config.agent_timeout
        interval = self._sweep_agents_interval()
        stalled = now - self._last_sweep - interval
        self._last_sweep = now
        if stalled > interval:
            # The master itself did not run (paused, swapped out): the agents'
            # messages are still queued, so the silence is ours, not theirs.
            logger.warning("the master stalled for %.1f s; extending agent deadlines", stalled)
            for agent in self.agents.values():
                agent.last_seen += stalled
                agent.disconnected_at += stalled
        for agent in list(self.agents.values()):
            if agent.status == ACTIVE and now - agent.last_seen > timeout:
                logger.warning(
                    "agent %s sent nothing for %.1f s",
                    agent.id,
                    now - agent.last_seen,
                    extra=_ctx(agent_id=agent.id),
                )
                if agent.link is not None:
                    agent.link.close()
                    agent.link = None
                self._mark_unreachable(agent)
            elif agent.status == DISCONNECTED and now - agent.disconnected_at > timeout:
                self._mark_unreachable(agent)

    def _mark_unreachable(self, agent: Agent) -> None:
        agent.recovering = False
        logger.warning(
            "agent %s is unreachable; reporting its tasks", agent.id, extra=_ctx(agent_id=agent.id)
        )
        agent.status = UNREACHABLE
        for offer_id in self.offers.of_agent(agent.id):
            self._rescind(offer_id)
        if agent.in_allocator:
            self.allocator.remove_agent(agent.id)
            agent.in_allocator = False
        for task in agent.tasks.values():
            task.holds_resources = False
            if is_terminal(task.state):
                continue
            task.state = common_pb2.TASK_UNREACHABLE
            status = self._status(
                task,
                common_pb2.TASK_UNREACHABLE,
                common_pb2.REASON_AGENT_UNREACHABLE,
                f"agent {agent.id} is unreachable",
            )
            task.status = status
            framework = self.frameworks.get(task.framework_id)
            if framework is not None:
                self._send_update(framework, status)
        self.schedule_allocation()

    def _send_agent(self, agent: Agent, message: agent_pb2.MasterMessage) -> bool:
        if agent.link is None or agent.status != ACTIVE:
            return False
        agent.link.send(message)
        return True

    # -- status updates ------------------------------------------------------

    def _status_updates(self, agent: Agent, updates: Iterable[common_pb2.TaskStatus]) -> None:
        orphan_acks: list[agent_pb2.Acknowledgement] = []
        freed = False
        for status in updates:
            framework = self.frameworks.get(status.framework_id)
            if framework is None:
                # The framework is gone: acknowledge for it so the agent can forget.
                if status.uuid:
                    orphan_acks.append(
                        agent_pb2.Acknowledgement(
                            framework_id=status.framework_id, task_id=status.task_id, uuid=status.uuid
                        )
                    )
                continue
            status.agent_id = agent.id
            task = agent.tasks.get((status.framework_id, status.task_id))
            if task is not None and not is_terminal(task.state):
                task.state = status.state
                task.status = status
                if is_terminal(status.state):
                    task.terminal_uuid = status.uuid
                    freed |= self._release(task)
                    if not status.uuid:
                        self._complete_task(task)
            if framework.link is not None:
                framework.link.send(scheduler_pb2.Event(update=scheduler_pb2.Event.Update(status=status)))
            # Otherwise the agent resends it after the framework comes back.
        if orphan_acks:
            self._send_agent(
                agent,
                agent_pb2.MasterMessage(
                    acknowledgements=agent_pb2.Acknowledgements(acknowledgements=orphan_acks)
                ),
            )
        if freed:
            self.schedule_allocation()

    def _release(self, task: Task) -> bool:
        """Give a finished task's resources back to the allocator (once)."""
        if not task.holds_resources:
            return False
        task.holds_resources = False
        agent = self.agents.get(task.agent_id)
        if agent is None or not agent.in_allocator:
            return False
        self.allocator.recover(task.framework_id, task.role, task.agent_id, task.resources, self._loop.time())
        return True

    def _complete_task(self, task: Task) -> None:
        """Forget a task whose end is known everywhere; remember it for reconciliation."""
        agent = self.agents.get(task.agent_id)
        if agent is not None:
            agent.tasks.pop((task.framework_id, task.id), None)
        framework = self.frameworks.get(task.framework_id)
        if framework is not None and framework.tasks.get(task.id) is task:
            del framework.tasks[task.id]
            framework.completed[task.id] = task
            framework.completed.move_to_end(task.id)
            while len(framework.completed) > self.config.max_completed_tasks_per_framework:
                framework.completed.popitem(last=False)

    def _status(self, task: Task, state: int, reason: int, message: str) -> common_pb2.TaskStatus:
        """A master-generated (unreliable, un-acknowledged) status for a task."""
        return common_pb2.TaskStatus(
            task_id=task.id,
            framework_id=task.framework_id,
            agent_id=task.agent_id,
            state=state,  # type: ignore[arg-type]
            reason=reason,  # type: ignore[arg-type]
            message=message,
            source=common_pb2.SOURCE_MASTER,
            timestamp=time.time(),
        )

    @staticmethod
    def _send_update(framework: Framework, status: common_pb2.TaskStatus) -> None:
        if framework.link is not None:
            framework.link.send(scheduler_pb2.Event(update=scheduler_pb2.Event.Update(status=status)))

    # -- frameworks ----------------------------------------------------------

    def subscribe(
        self, link: FrameworkLink, request: scheduler_pb2.SubscribeRequest
    ) -> scheduler_pb2.Event.Subscribed:
        info = request.framework
        roles = check_framework_info(info)
        suppressed = list(request.suppressed_roles)
        unknown = [r for r in suppressed if r not in roles]
        if unknown:
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"suppressed_roles {unknown} are not among the framework's roles {roles}",
            )
        framework = self.frameworks.get(info.id) if info.id else None
        if info.id and info.id in self.removed_frameworks:
            raise Rejected(
                grpc.StatusCode.NOT_FOUND,
                f"framework {info.id} was torn down; subscribe without an id to register anew",
            )
        stream_id = uuid.uuid4().hex
        if framework is None:
            stored = common_pb2.FrameworkInfo()
            stored.CopyFrom(info)
            stored.id = info.id or new_id("fw")
            stored.roles[:] = roles
            framework = Framework(info=stored, roles=roles, registered_time=time.time())
            self.frameworks[stored.id] = framework
            self.allocator.add_framework(stored.id, roles, suppressed)
            logger.info(
                "framework %s (%s) subscribed with roles %s",
                stored.id,
                info.name,
                roles,
                extra=_ctx(framework_id=stored.id),
            )
        else:
            if roles != framework.roles:
                raise Rejected(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"framework {info.id} subscribed with roles {framework.roles}; roles cannot change "
                    "on resubscription",
                )
            if framework.link is not None:
                framework.link.send(
                    scheduler_pb2.Event(
                        error=scheduler_pb2.Event.Error(
                            message="another scheduler subscribed with this framework id (failover)"
                        )
                    )
                )
                framework.link.close()
                for offer_id in self.offers.of_framework(framework.id):
                    self._take_offer_back(offer_id)
            framework.info.name = info.name
            framework.info.failover_timeout_seconds = info.failover_timeout_seconds
            framework.info.principal = info.principal
            framework.info.hostname = info.hostname
            if framework.failover_timer is not None:
                framework.failover_timer.cancel()
                framework.failover_timer = None
            self.allocator.activate_framework(framework.id)
            if suppressed:
                self.allocator.suppress(framework.id, suppressed)
            logger.info(
                "framework %s (%s) resubscribed",
                framework.id,
                info.name,
                extra=_ctx(framework_id=framework.id),
            )
        framework.link = link
        framework.stream_id = stream_id
        framework.status = ACTIVE
        self.registrar.put_framework(
            registry_pb2.Registry.Framework(info=framework.info, registered_time=framework.registered_time)
        )
        self.schedule_allocation()
        return scheduler_pb2.Event.Subscribed(
            framework_id=framework.id,
            stream_id=stream_id,
            heartbeat_interval_seconds=self.config.framework_heartbeat_interval,
            master=self.master_info(),
        )

    def framework_disconnected(self, framework_id: str, link: FrameworkLink) -> None:
        framework = self.frameworks.get(framework_id)
        if framework is None or framework.link is not link:
            return
        framework.link = None
        framework.stream_id = ""
        framework.status = DISCONNECTED
        for offer_id in self.offers.of_framework(framework_id):
            self._take_offer_back(offer_id)
        self.allocator.deactivate_framework(framework_id)
        self.schedule_allocation()
        logger.info(
            "framework %s disconnected; failover timeout %.1f s",
            framework_id,
            framework.info.failover_timeout_seconds,
            extra=_ctx(framework_id=framework_id),
        )
        self._start_failover_timer(framework)

    def _start_failover_timer(self, framework: Framework, at_least: float = 0.0) -> None:
        timeout = max(framework.info.failover_timeout_seconds, at_least)
        if timeout <= 0:
            self._loop.call_soon(self._failover_expired, framework.id)
        else:
            framework.failover_timer = self._loop.call_later(timeout, self._failover_expired, framework.id)

    def _failover_expired(self, framework_id: str) -> None:
        if not self.may_act():
            return  # the next leader times the framework out from its own registry
        framework = self.frameworks.get(framework_id)
        if framework is not None and framework.link is None:
            logger.info(
                "framework %s did not come back within its failover timeout; tearing it down",
                framework_id,
                extra=_ctx(framework_id=framework_id),
            )
            self._remove_framework(framework, "its failover timeout expired")

    def _remove_framework(self, framework: Framework, why: str) -> None:
        if framework.failover_timer is not None:
            framework.failover_timer.cancel()
        for offer_id in self.offers.of_framework(framework.id):
            self._take_offer_back(offer_id)
        agents_to_tell: set[str] = set()
        for task in list(framework.tasks.values()):
            self._release(task)
            if not is_terminal(task.state):
                agents_to_tell.add(task.agent_id)
            agent = self.agents.get(task.agent_id)
            if agent is not None:
                agent.tasks.pop((framework.id, task.id), None)
        for agent_id in agents_to_tell:
            agent = self.agents.get(agent_id)
            if agent is not None:
                self._send_agent(
                    agent,
                    agent_pb2.MasterMessage(
                        shutdown_framework=agent_pb2.ShutdownFramework(framework_id=framework.id)
                    ),
                )
        self.allocator.remove_framework(framework.id)
        self.registrar.remove_framework(framework.id)
        del self.frameworks[framework.id]
        self.removed_frameworks[framework.id] = None
        while len(self.removed_frameworks) > MAX_REMOVED_FRAMEWORKS:
            self.removed_frameworks.popitem(last=False)
        if framework.link is not None:
            framework.link.send(
                scheduler_pb2.Event(
                    error=scheduler_pb2.Event.Error(message=f"framework {framework.id} was removed: {why}")
                )
            )
            framework.link.close()
            framework.link = None
        self.schedule_allocation()
        logger.info("framework %s removed: %s", framework.id, why, extra=_ctx(framework_id=framework.id))

    def _heartbeat_frameworks(self) -> None:
        event = scheduler_pb2.Event(heartbeat=scheduler_pb2.Event.Heartbeat())
        for framework in self.frameworks.values():
            if framework.link is not None:
                framework.link.send(event)

    def caller(self, framework_id: str, stream_id: str) -> Framework:
        """The framework making a call, checked against its current stream."""
        framework = self.frameworks.get(framework_id)
        if framework is None:
            raise Rejected(
                grpc.StatusCode.NOT_FOUND,
                f"framework {framework_id[:MAX_NAME_CHARS]!r} is not registered; subscribe first",
            )
        if not stream_id or stream_id != framework.stream_id:
            raise Rejected(
                grpc.StatusCode.PERMISSION_DENIED,
                f"stream id does not match framework {framework_id}'s current subscription; "
                "use the stream_id from the latest SUBSCRIBED event",
            )
        return framework

    # -- scheduler calls -----------------------------------------------------

    def accept(self, request: scheduler_pb2.AcceptRequest) -> None:
        framework = self.caller(request.framework_id, request.stream_id)
        refuse = self._refuse_seconds(request.filters)
        plan = plan_accept(
            framework.id,
            request.offer_ids,
            request.operations,
            {oid: self.offers.by_id[oid].view for oid in request.offer_ids if oid in self.offers.by_id},
            framework.tasks,
        )
        for offer in plan.offers:
            self.offers.take(offer.id)
        now = self._loop.time()
        for (agent_id, role), leftover in plan.leftovers.items():
            self.allocator.recover(framework.id, role, agent_id, leftover, now, refuse)
        info = self._framework_info_for_agents(framework)
        for agent_id, planned in plan.tasks_by_agent.items():
            agent = self.agents[agent_id]
            run = agent_pb2.RunTasks()
            for item in planned:
                task = Task(
                    framework_id=framework.id,
                    agent_id=agent_id,
                    info=item.info,
                    role=item.role,
                    resources=item.resources,
                )
                framework.tasks[task.id] = task
                framework.completed.pop(task.id, None)
                agent.tasks[(framework.id, task.id)] = task
                run.tasks.add(framework=info, task=item.info)
            self._send_agent(agent, agent_pb2.MasterMessage(run_tasks=run))
        if plan.leftovers:
            self.schedule_allocation()

    @staticmethod
    def _framework_info_for_agents(framework: Framework) -> common_pb2.FrameworkInfo:
        return common_pb2.FrameworkInfo(id=framework.id, name=framework.info.name, roles=framework.roles)

    @staticmethod
    def _refuse_seconds(filters: scheduler_pb2.Filters) -> float:
        if not filters.HasField("refuse_seconds"):
            return 5.0
        value = filters.refuse_seconds
        if value != value or value < 0:  # NaN or negative: the default, as in Mesos
            return 5.0
        return min(value, 365 * 24 * 3600.0)

    def decline(self, request: scheduler_pb2.DeclineRequest) -> None:
        framework = self.caller(request.framework_id, request.stream_id)
        refuse = self._refuse_seconds(request.filters)
        if len(set(request.offer_ids)) != len(request.offer_ids):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "an offer id is given more than once")
        missing = [
            oid[:MAX_NAME_CHARS]
            for oid in request.offer_ids
            if oid not in self.offers.by_id or self.offers.by_id[oid].view.framework_id != framework.id
        ]
        if missing:
            raise Rejected(
                grpc.StatusCode.NOT_FOUND,
                f"offers {missing[:10]} are not outstanding for framework {framework.id}",
            )
        for offer_id in request.offer_ids:
            self._take_offer_back(offer_id, refuse)
        self.schedule_allocation()

    def _roles_of_call(self, framework: Framework, roles: Iterable[str]) -> list[str] | None:
        wanted = list(roles)
        unknown = [r for r in wanted if r not in framework.roles]
        if unknown:
            raise Rejected(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"roles {unknown[:10]} are not among the framework's roles {framework.roles}",
            )
        return wanted or None

    def revive(self, request: scheduler_pb2.ReviveRequest) -> None:
        framework = self.caller(request.framework_id, request.stream_id)
        self.allocator.revive(framework.id, self._roles_of_call(framework, request.roles))
        self.schedule_allocation()

    def suppress(self, request: scheduler_pb2.SuppressRequest) -> None:
        framework = self.caller(request.framework_id, request.stream_id)
        self.allocator.suppress(framework.id, self._roles_of_call(framework, request.roles))

    def kill(self, request: scheduler_pb2.KillRequest) -> None:
        framework = self.caller(request.framework_id, request.stream_id)
        try:
            check_id("task id", request.task_id)
        except InvalidId as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        problem = grace_problem(request.kill_policy)
        if problem:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, problem)
        task = framework.tasks.get(request.task_id)
        if task is None or is_terminal(task.state):
            known = task or framework.completed.get(request.task_id)
            if known is not None and known.status is not None:
                self._send_update(framework, self._reconciled(known))
            else:
                self._send_update(framework, self._lost(framework.id, request.task_id, request.agent_id))
            return
        agent = self.agents.get(task.agent_id)
        policy = request.kill_policy if request.HasField("kill_policy") else task.info.kill_policy
        if agent is None or not self._send_kill(agent, task, policy):
            task.pending_kill = policy  # sent when the agent comes back

    def _send_kill(self, agent: Agent, task: Task, policy: common_pb2.KillPolicy) -> bool:
        sent = self._send_agent(
            agent,
            agent_pb2.MasterMessage(
                kill_task=agent_pb2.KillTask(
                    framework_id=task.framework_id, task_id=task.id, kill_policy=policy
                )
            ),
        )
        task.pending_kill = None if sent else policy
        return sent

    def acknowledge(self, request: scheduler_pb2.AcknowledgeRequest) -> None:
        framework = self.caller(request.framework_id, request.stream_id)
        for ack in request.acknowledgements:
            if not ack.uuid or len(ack.uuid) > MAX_UUID_BYTES:
                raise Rejected(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"acknowledgement of task {ack.task_id[:MAX_NAME_CHARS]!r}: "
                    f"uuid must be 1 to {MAX_UUID_BYTES} bytes",
                )
            try:
                check_id("task id", ack.task_id)
                check_id("agent id", ack.agent_id)
            except InvalidId as exc:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"acknowledgement: {exc}") from None
        by_agent: dict[str, list[agent_pb2.Acknowledgement]] = defaultdict(list)
        for ack in request.acknowledgements:
            by_agent[ack.agent_id].append(
                agent_pb2.Acknowledgement(framework_id=framework.id, task_id=ack.task_id, uuid=ack.uuid)
            )
            task = framework.tasks.get(ack.task_id)
            if task is not None and task.terminal_uuid and task.terminal_uuid == ack.uuid:
                self._complete_task(task)
        for agent_id, acks in by_agent.items():
            agent = self.agents.get(agent_id)
            if agent is not None:
                # Dropped when the agent is away: it resends the update later.
                self._send_agent(
                    agent,
                    agent_pb2.MasterMessage(
                        acknowledgements=agent_pb2.Acknowledgements(acknowledgements=acks)
                    ),
                )

    def reconcile(self, request: scheduler_pb2.ReconcileRequest) -> None:
        framework = self.caller(request.framework_id, request.stream_id)
        for item in request.tasks:
            try:
                check_id("task id", item.task_id)
            except InvalidId as exc:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"reconcile: {exc}") from None
        if not request.tasks:
            for task in framework.tasks.values():
                self._send_update(framework, self._reconciled(task))
            return
        for item in request.tasks:
            known = framework.tasks.get(item.task_id) or framework.completed.get(item.task_id)
            if known is not None:
                self._send_update(framework, self._reconciled(known))
            elif item.agent_id in self.agents and self.agents[item.agent_id].status == UNREACHABLE:
                # As in Mesos: the task may run on an agent that is unreachable
                # (after a failover: one that has not come back yet); it is not
                # lost, and is reconciled when the agent returns.
                status = self._lost(framework.id, item.task_id, item.agent_id)
                status.state = common_pb2.TASK_UNREACHABLE
                status.message = f"agent {item.agent_id} is unreachable"
                self._send_update(framework, status)
            elif not self._may_still_report(item.agent_id):
                self._send_update(framework, self._lost(framework.id, item.task_id, item.agent_id))
            # Otherwise no answer yet, as in Mesos: the agent that may run the
            # task has not re-registered since this master started, and the
            # framework reconciles again later.

    def _may_still_report(self, agent_id: str) -> bool:
        """Whether an agent from the previous run, which could run the task,
        has yet to re-register (any such agent when `agent_id` is empty)."""
        if agent_id:
            agent = self.agents.get(agent_id)
            return agent is not None and agent.recovering
        return any(agent.recovering for agent in self.agents.values())

    def _reconciled(self, task: Task) -> common_pb2.TaskStatus:
        message = task.status.message if task.status is not None else ""
        status = self._status(task, task.state, common_pb2.REASON_RECONCILIATION, message)
        if task.status is not None and task.status.HasField("exit_code"):
            status.exit_code = task.status.exit_code
        return status

    def _lost(self, framework_id: str, task_id: str, agent_id: str) -> common_pb2.TaskStatus:
        return common_pb2.TaskStatus(
            task_id=task_id,
            framework_id=framework_id,
            agent_id=agent_id if agent_id in self.agents else "",
            state=common_pb2.TASK_LOST,
            reason=common_pb2.REASON_RECONCILIATION,
            message="the master does not know this task",
            source=common_pb2.SOURCE_MASTER,
            timestamp=time.time(),
        )

    def teardown(self, request: scheduler_pb2.TeardownRequest) -> None:
        framework = self.caller(request.framework_id, request.stream_id)
        self._remove_framework(framework, "the framework asked for teardown")

    # -- operator ------------------------------------------------------------

    def master_info(self) -> common_pb2.MasterInfo:
        return common_pb2.MasterInfo(
            id=self.id, address=self.address, version=__version__, start_time=self.start_time
        )

    def state(self) -> operator_pb2.State:
        state = operator_pb2.State(master=self.master_info(), leading=True, leader=self.leader_info)
        now_mono, now = self._loop.time(), time.time()
        allocated_by_agent: dict[str, Resources] = defaultdict(lambda: EMPTY)
        allocated_by_framework: dict[str, Resources] = defaultdict(lambda: EMPTY)
        allocated_by_role: dict[str, Resources] = defaultdict(lambda: EMPTY)
        for framework in self.frameworks.values():
            for task in framework.tasks.values():
                if task.holds_resources:
                    allocated_by_agent[task.agent_id] += task.resources
                    allocated_by_framework[framework.id] += task.resources
                    allocated_by_role[task.role] += task.resources
            for task in framework.tasks.values():
                state.tasks.add(
                    framework_id=framework.id,
                    agent_id=task.agent_id,
                    task=task.info,
                    state=task.state,
                    last_status=task.status,
                    usage=task.usage,
                )
        offered_by_framework: dict[str, Resources] = defaultdict(lambda: EMPTY)
        for view in self.offers.views():
            offered_by_framework[view.framework_id] += view.resources
            allocated_by_agent[view.agent_id] += view.resources
        for agent in self.agents.values():
            state.agents.add(
                id=agent.id,
                hostname=agent.hostname,
                status=agent.status,
                total=agent.total.to_proto(),
                allocated=allocated_by_agent[agent.id].to_proto(),
                attributes=agent.attributes,
                containerizers=agent.containerizers,
                registered_time=agent.registered_time,
                last_seen=now - (now_mono - agent.last_seen) if agent.last_seen else 0.0,
            )
        roles: dict[str, list[str]] = defaultdict(list)
        for framework in self.frameworks.values():
            state.frameworks.add(
                info=framework.info,
                status=framework.status,
                allocated=allocated_by_framework[framework.id].to_proto(),
                offered=offered_by_framework[framework.id].to_proto(),
                registered_time=framework.registered_time,
            )
            for role in framework.roles:
                roles[role].append(framework.id)
        state.offers.extend(self.offers.protos())
        for role in sorted(set(roles) | set(self.weights)):
            state.roles.add(
                name=role,
                weight=self.weights.get(role, 1.0),
                allocated=allocated_by_role[role].to_proto(),
                frameworks=roles[role],
            )
        return state
