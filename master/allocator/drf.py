"""The default allocator: Dominant Resource Fairness over weighted roles.

Two levels, as in Mesos' hierarchical allocator: roles are ordered by their
weighted dominant share, and within a role its frameworks by their dominant
share in that role. Each agent with something to offer goes, whole, to the
first eligible framework in that order, and the order is updated after every
allocation so that the next agent sees the new shares.

What keeps a pass cheap:

- Only candidate agents are examined: agents whose available resources grew
  or that joined or came back since the last pass. When a framework may have
  become eligible for agents it was not before (added, activated, revived),
  every agent with allocatable leftovers is a candidate; that set is kept up
  to date, so it is never found by scanning all agents. A lapsed refusal
  filter makes only its own agent a candidate.
- Each sorter keeps its eligible clients in a list sorted by (share, count,
  name); an allocation moves one client with two binary searches instead of
  re-sorting. Only a change of the cluster total (an agent joins, leaves,
  disconnects or returns) changes every share, and then each sorter re-sorts
  once, lazily, at its next use.
- Ineligible clients (inactive, suppressed, or only holding resources from a
  role they left) are kept out of the sorted lists, so a pass never walks
  past them.

Simplifications against Mesos, on purpose for now: roles are flat (no role
tree), there is no quota, a refusal filter blocks the whole agent for the
(framework, role) rather than only resources that are a subset of what was
refused, and candidate agents are visited in the order they became
candidates rather than shuffled (deterministic without a seed).
"""

from __future__ import annotations

import heapq
import logging
import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping

from corral.resources import EMPTY, Resources
from master.allocator import Allocation, Allocator, register

log = logging.getLogger(__name__)

#: Mesos' `--min_allocatable_resources` default: an offer must carry at least
#: this much cpu or this much memory to be worth a framework's time.
MIN_ALLOCATABLE_CPUS_MILLI = 10
MIN_ALLOCATABLE_MEM_MILLI = 32_000

#: Mesos caps `refuse_seconds` at a year; longer is a mistake, and an
#: infinite expiry would be useless to a caller that schedules a timer on it.
MAX_REFUSE_SECONDS = 365 * 24 * 3600.0

# A client's place in a sorter: weighted dominant share, then how many times
# it was chosen, then its name, so that the order is total and deterministic.
_SortKey = tuple[float, int, str]


def is_allocatable(resources: Resources) -> bool:
    """True when `resources` are worth offering (cpus >= 0.01 or mem >= 32)."""
    return (
        resources.milli("cpus") >= MIN_ALLOCATABLE_CPUS_MILLI
        or resources.milli("mem") >= MIN_ALLOCATABLE_MEM_MILLI
    )


def _common(held: Resources, asked: Resources) -> Resources:
    """The part of `asked` that `held` really holds (their intersection)."""
    if asked.contains(held):
        return held
    return held - (held - asked)


class _Totals:
    """Scalar totals of the active agents, shared by every sorter.

    `version` changes whenever an amount does, which tells each sorter that
    all of its shares are stale.
    """

    __slots__ = ("amounts", "version")

    def __init__(self) -> None:
        self.amounts: dict[str, int] = {}
        self.version = 0

    def add(self, resources: Resources) -> None:
        for name, amount in resources.scalar_items():
            self.amounts[name] = self.amounts.get(name, 0) + amount
        self.version += 1

    def subtract(self, resources: Resources) -> None:
        for name, amount in resources.scalar_items():
            left = self.amounts.get(name, 0) - amount
            if left > 0:
                self.amounts[name] = left
            else:
                self.amounts.pop(name, None)
        self.version += 1


class _Client:
    """One role in the role sorter, or one framework in a role's sorter."""

    __slots__ = ("active", "allocation", "count", "key", "name", "weight")

    def __init__(self, name: str, weight: float) -> None:
        self.name = name
        self.weight = weight
        self.allocation: dict[str, int] = {}
        self.count = 0
        self.active = False
        self.key: _SortKey = (0.0, 0, name)


class DRFSorter:
    """Clients ordered by weighted dominant share, lowest first.

    A client's share is the largest fraction it holds of any scalar resource
    in the cluster total, divided by its weight. Only active clients are in
    the order; inactive ones still have their allocation tracked so that
    their share is right when they come back.
    """

    __slots__ = ("_clients", "_order", "_seen", "_totals")

    def __init__(self, totals: _Totals) -> None:
        self._totals = totals
        self._seen = totals.version
        self._clients: dict[str, _Client] = {}
        self._order: list[_SortKey] = []

    def __contains__(self, name: str) -> bool:
        return name in self._clients

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def active_count(self) -> int:
        return len(self._order)

    def add(self, name: str, weight: float = 1.0) -> None:
        """Track `name` (inactive) unless it is tracked already."""
        if name not in self._clients:
            self._clients[name] = _Client(name, weight)

    def remove(self, name: str) -> None:
        client = self._clients.pop(name)
        if client.active:
            self._unlink(client)

    def activate(self, name: str) -> None:
        client = self._clients[name]
        if not client.active:
            client.active = True
            client.key = self._key(client)
            insort(self._order, client.key)

    def deactivate(self, name: str) -> None:
        client = self._clients[name]
        if client.active:
            self._unlink(client)
            client.active = False

    def set_weight(self, name: str, weight: float) -> None:
        client = self._clients[name]
        client.weight = weight
        self._reposition(client)

    def allocated(self, name: str, scalars: Iterable[tuple[str, int]], *, chosen: bool) -> None:
        """`name` now holds `scalars` (thousandths) more; `chosen` counts it
        as one more allocation for tie-breaking."""
        client = self._clients[name]
        allocation = client.allocation
        for resource, amount in scalars:
            allocation[resource] = allocation.get(resource, 0) + amount
        if chosen:
            client.count += 1
        self._reposition(client)

    def unallocated(self, name: str, scalars: Iterable[tuple[str, int]]) -> None:
        client = self._clients[name]
        allocation = client.allocation
        for resource, amount in scalars:
            left = allocation.get(resource, 0) - amount
            if left > 0:
                allocation[resource] = left
            else:
                allocation.pop(resource, None)
        self._reposition(client)

    def share(self, name: str) -> float:
        """The weighted dominant share of `name` against the current totals."""
        return self._share(self._clients[name])

    def order(self) -> list[_SortKey]:
        """Active clients as (share, count, name), lowest share first.

        The list is the sorter's own: read it, and stop iterating before
        changing the sorter.
        """
        if self._seen != self._totals.version:
            self._seen = self._totals.version
            for client in self._clients.values():
                if client.active:
                    client.key = self._key(client)
            self._order = sorted(c.key for c in self._clients.values() if c.active)
        return self._order

    def _share(self, client: _Client) -> float:
        totals = self._totals.amounts
        share = 0.0
        for resource, amount in client.allocation.items():
            total = totals.get(resource)
            if total:
                fraction = amount / total
                if fraction > share:
                    share = fraction
        return share / client.weight

    def _key(self, client: _Client) -> _SortKey:
        return (self._share(client), client.count, client.name)

    def _unlink(self, client: _Client) -> None:
        index = bisect_left(self._order, client.key)
        del self._order[index]

    def _reposition(self, client: _Client) -> None:
        key = self._key(client)
        if client.active:
            self._unlink(client)
            insort(self._order, key)
        client.key = key


class _Agent:
    __slots__ = ("active", "allocations", "available", "filtered_by", "id", "total")

    def __init__(self, agent_id: str, total: Resources) -> None:
        self.id = agent_id
        self.total = total
        self.available = total
        self.active = True
        # (framework_id, role) -> what that framework holds here in that role.
        self.allocations: dict[tuple[str, str], Resources] = {}
        # (framework_id, role) pairs with a refusal filter on this agent.
        self.filtered_by: dict[tuple[str, str], None] = {}


class _Framework:
    __slots__ = ("active", "filters", "id", "roles", "suppressed")

    def __init__(self, framework_id: str) -> None:
        self.id = framework_id
        self.roles: frozenset[str] = frozenset()
        self.suppressed: set[str] = set()
        self.active = True
        # (role, agent_id) -> when the refusal filter lapses.
        self.filters: dict[tuple[str, str], float] = {}


class DRFAllocator(Allocator):
    """Hierarchical DRF over weighted roles; see the module docstring."""

    __slots__ = (
        "_agents",
        "_all_dirty",
        "_allocatable",
        "_dirty",
        "_expiries",
        "_frameworks",
        "_held",
        "_role_frameworks",
        "_roles",
        "_totals",
        "_weights",
    )

    def __init__(self) -> None:
        self._agents: dict[str, _Agent] = {}
        self._frameworks: dict[str, _Framework] = {}
        self._weights: dict[str, float] = {}
        self._totals = _Totals()
        self._roles = DRFSorter(self._totals)
        self._role_frameworks: dict[str, DRFSorter] = {}
        # framework_id -> role -> agents where it holds something in that role.
        self._held: dict[str, dict[str, dict[str, None]]] = {}
        # Active agents whose available resources are worth offering; dicts
        # rather than sets so that iteration order is deterministic.
        self._allocatable: dict[str, None] = {}
        self._dirty: dict[str, None] = {}
        self._all_dirty = False
        # Heap of (expiry, framework_id, role, agent_id); entries whose filter
        # was replaced or cleared are skipped when they surface.
        self._expiries: list[tuple[float, str, str, str]] = []

    # -- agents -----------------------------------------------------------

    def add_agent(
        self, agent_id: str, total: Resources, used: Mapping[tuple[str, str], Resources] | None = None
    ) -> None:
        if agent_id in self._agents:
            log.info(
                "agent re-registered; its previous allocations are replaced", extra={"agent_id": agent_id}
            )
            self.remove_agent(agent_id)
        agent = _Agent(agent_id, total)
        self._agents[agent_id] = agent
        self._totals.add(total)
        for (framework_id, role), resources in (used or {}).items():
            taken = _common(agent.available, resources)
            if taken != resources:
                log.warning(
                    "agent reports more in use than it has left; counting only %s of %s for %s in role %r",
                    taken,
                    resources,
                    framework_id,
                    role,
                    extra={"agent_id": agent_id, "framework_id": framework_id},
                )
            if taken:
                self._hold(agent, framework_id, role, taken, chosen=False)
        self._refresh(agent)

    def remove_agent(self, agent_id: str) -> None:
        agent = self._agents.pop(agent_id, None)
        if agent is None:
            return
        for (framework_id, role), resources in list(agent.allocations.items()):
            self._release(agent, framework_id, role, resources)
        if agent.active:
            self._totals.subtract(agent.total)
        self._allocatable.pop(agent_id, None)
        self._dirty.pop(agent_id, None)
        for framework_id, role in agent.filtered_by:
            framework = self._frameworks.get(framework_id)
            if framework is not None:
                framework.filters.pop((role, agent_id), None)

    def deactivate_agent(self, agent_id: str) -> None:
        agent = self._known_agent(agent_id, "deactivate")
        if agent is not None and agent.active:
            agent.active = False
            self._totals.subtract(agent.total)
            self._allocatable.pop(agent_id, None)

    def activate_agent(self, agent_id: str) -> None:
        agent = self._known_agent(agent_id, "activate")
        if agent is not None and not agent.active:
            agent.active = True
            self._totals.add(agent.total)
            self._refresh(agent)

    # -- frameworks -------------------------------------------------------

    def add_framework(
        self, framework_id: str, roles: Iterable[str], suppressed_roles: Iterable[str] = ()
    ) -> None:
        """Also updates a framework already known (a resubscription): its
        roles and suppressed roles are replaced, its allocations kept."""
        framework = self._frameworks.get(framework_id)
        if framework is None:
            framework = self._frameworks[framework_id] = _Framework(framework_id)
        before = framework.roles
        framework.roles = frozenset(roles)
        framework.suppressed = set(suppressed_roles) & framework.roles
        framework.active = True
        for role in before | framework.roles:
            self._sync(framework_id, role)
        self._all_dirty = True

    def remove_framework(self, framework_id: str) -> None:
        framework = self._frameworks.pop(framework_id, None)
        leftovers = self._held.get(framework_id)
        if leftovers:
            log.warning(
                "framework removed while still holding resources on %d agent(s); returning them",
                sum(len(agents) for agents in leftovers.values()),
                extra={"framework_id": framework_id},
            )
            for role, agents in list(leftovers.items()):
                for agent_id in list(agents):
                    holder = self._agents[agent_id]
                    self._release(holder, framework_id, role, holder.allocations[(framework_id, role)])
                    self._refresh(holder)
        if framework is None:
            return
        for role, agent_id in framework.filters:
            agent = self._agents.get(agent_id)
            if agent is not None:
                agent.filtered_by.pop((framework_id, role), None)
        for role in framework.roles:
            self._sync(framework_id, role)

    def deactivate_framework(self, framework_id: str) -> None:
        framework = self._known_framework(framework_id, "deactivate")
        if framework is None:
            return
        framework.active = False
        for role in framework.roles:
            self._sync(framework_id, role)

    def activate_framework(self, framework_id: str) -> None:
        framework = self._known_framework(framework_id, "activate")
        if framework is not None and not framework.active:
            framework.active = True
            for role in framework.roles:
                self._sync(framework_id, role)
            self._all_dirty = True

    def suppress(self, framework_id: str, roles: Iterable[str] | None = None) -> None:
        framework = self._known_framework(framework_id, "suppress")
        if framework is None:
            return
        chosen = framework.roles if roles is None else framework.roles & set(roles)
        framework.suppressed |= chosen
        for role in chosen:
            self._sync(framework_id, role)

    def revive(self, framework_id: str, roles: Iterable[str] | None = None) -> None:
        framework = self._known_framework(framework_id, "revive")
        if framework is None:
            return
        chosen = None if roles is None else set(roles)
        for role, agent_id in [k for k in framework.filters if chosen is None or k[0] in chosen]:
            self._drop_filter(framework, role, agent_id)
        unsuppressed = set(framework.suppressed) if chosen is None else framework.suppressed & chosen
        framework.suppressed -= unsuppressed
        for role in unsuppressed:
            self._sync(framework_id, role)
        self._all_dirty = True

    # -- resources --------------------------------------------------------

    def recover(
        self,
        framework_id: str,
        role: str,
        agent_id: str,
        resources: Resources,
        now: float,
        refuse_seconds: float | None = None,
    ) -> None:
        agent = self._agents.get(agent_id)
        if agent is None:
            log.debug(
                "recovered resources of an agent that is gone; nothing to do",
                extra={"agent_id": agent_id, "framework_id": framework_id},
            )
            return
        returned = self._release(agent, framework_id, role, resources)
        if returned != resources:
            log.warning(
                "recover of %s in role %r, but only %s of it was allocated to the framework there",
                resources,
                role,
                returned,
                extra={"agent_id": agent_id, "framework_id": framework_id},
            )
        if returned:
            self._refresh(agent)
        if refuse_seconds is not None and refuse_seconds > 0:
            self._refuse(framework_id, role, agent, now + min(refuse_seconds, MAX_REFUSE_SECONDS))

    def set_weight(self, role: str, weight: float) -> None:
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"role {role!r}: weight must be a positive finite number, got {weight}")
        self._weights[role] = weight
        if role in self._roles:
            self._roles.set_weight(role, weight)

    def allocate(self, now: float) -> list[Allocation]:
        self._expire_filters(now)
        if self._all_dirty:
            candidates = list(self._allocatable)
        else:
            candidates = [a for a in self._dirty if a in self._allocatable]
        self._dirty.clear()
        self._all_dirty = False
        # Anything that could make a framework eligible again marks agents as
        # candidates, so agents nobody could take now may be forgotten here.
        offers: list[Allocation] = []
        if not self._roles.active_count:
            return offers
        for agent_id in candidates:
            agent = self._agents[agent_id]
            chosen = self._choose(agent)
            if chosen is not None:
                framework_id, role = chosen
                offers.append(Allocation(framework_id, role, agent_id, agent.available))
                self._hold(agent, framework_id, role, agent.available, chosen=True)
                del self._allocatable[agent_id]
        return offers

    def next_filter_expiry(self) -> float | None:
        heap = self._expiries
        while heap:
            until, framework_id, role, agent_id = heap[0]
            framework = self._frameworks.get(framework_id)
            if framework is not None and framework.filters.get((role, agent_id)) == until:
                return until
            heapq.heappop(heap)
        return None

    # -- read-only views (state endpoints, tests) -------------------------

    def available(self, agent_id: str) -> Resources:
        """What the agent has that is allocated to nobody."""
        return self._agents[agent_id].available

    def allocations(self, agent_id: str) -> dict[tuple[str, str], Resources]:
        """What each (framework_id, role) holds on the agent: offered or in use."""
        return dict(self._agents[agent_id].allocations)

    def role_share(self, role: str) -> float:
        """The role's weighted dominant share (0 for a role nobody is in)."""
        return self._roles.share(role) if role in self._roles else 0.0

    def framework_share(self, framework_id: str, role: str) -> float:
        """The framework's dominant share within `role` (0 when not in it)."""
        sorter = self._role_frameworks.get(role)
        return sorter.share(framework_id) if sorter is not None and framework_id in sorter else 0.0

    # -- internals --------------------------------------------------------

    def _known_agent(self, agent_id: str, action: str) -> _Agent | None:
        """The agent, or None with a warning: a call about an agent already
        removed is a race in the caller, not a reason to stop allocating."""
        agent = self._agents.get(agent_id)
        if agent is None:
            log.warning("cannot %s unknown agent; ignored", action, extra={"agent_id": agent_id})
        return agent

    def _known_framework(self, framework_id: str, action: str) -> _Framework | None:
        """The framework, or None with a warning (see `_known_agent`)."""
        framework = self._frameworks.get(framework_id)
        if framework is None:
            log.warning("cannot %s unknown framework; ignored", action, extra={"framework_id": framework_id})
        return framework

    def _choose(self, agent: _Agent) -> tuple[str, str] | None:
        """The first eligible (framework_id, role) for the agent in DRF order.

        Every filter still present is in force: `allocate` drops the lapsed
        ones before it chooses.
        """
        agent_id = agent.id
        for _, _, role in self._roles.order():
            for _, _, framework_id in self._role_frameworks[role].order():
                filters = self._frameworks[framework_id].filters
                if filters and (role, agent_id) in filters:
                    continue
                return framework_id, role
        return None

    def _refresh(self, agent: _Agent) -> None:
        """Re-evaluate the agent after its availability or state changed; one
        with something to offer becomes a candidate for the next pass."""
        if agent.active and is_allocatable(agent.available):
            self._allocatable[agent.id] = None
            self._dirty[agent.id] = None
        else:
            self._allocatable.pop(agent.id, None)

    def _hold(
        self, agent: _Agent, framework_id: str, role: str, resources: Resources, *, chosen: bool
    ) -> None:
        """Count `resources` (part of the agent's available) as the framework's."""
        agent.available = EMPTY if resources is agent.available else agent.available - resources
        key = (framework_id, role)
        before = agent.allocations.get(key)
        agent.allocations[key] = resources if before is None else before + resources
        roles_held = self._held.setdefault(framework_id, {})
        agents = roles_held.get(role)
        if agents is None:
            roles_held[role] = {agent.id: None}
            # A framework may hold resources in a role it is not (or not yet)
            # subscribed to, e.g. reported by a re-registering agent.
            self._sync(framework_id, role)
        else:
            agents[agent.id] = None
        scalars = list(resources.scalar_items())
        self._role_frameworks[role].allocated(framework_id, scalars, chosen=chosen)
        self._roles.allocated(role, scalars, chosen=chosen)

    def _release(self, agent: _Agent, framework_id: str, role: str, resources: Resources) -> Resources:
        """Give back what of `resources` the framework holds on the agent in
        the role; return that part."""
        key = (framework_id, role)
        held = agent.allocations.get(key)
        if held is None:
            return EMPTY
        returned = _common(held, resources)
        if not returned:
            return EMPTY
        rest = held - returned
        agent.available = agent.available + returned
        scalars = list(returned.scalar_items())
        self._role_frameworks[role].unallocated(framework_id, scalars)
        self._roles.unallocated(role, scalars)
        if rest:
            agent.allocations[key] = rest
        else:
            del agent.allocations[key]
            roles_held = self._held[framework_id]
            agents = roles_held[role]
            del agents[agent.id]
            if not agents:
                del roles_held[role]
                if not roles_held:
                    del self._held[framework_id]
                self._sync(framework_id, role)
        return returned

    def _sync(self, framework_id: str, role: str) -> None:
        """Bring the sorters in line with one (framework, role).

        The framework is a client of the role's sorter while it is subscribed
        to the role or holds something in it, and active there while it can
        be offered the role's resources. A role is in the role sorter while it
        has clients, and active while one of them is.
        """
        framework = self._frameworks.get(framework_id)
        subscribed = framework is not None and role in framework.roles
        sorter = self._role_frameworks.get(role)
        if subscribed or role in self._held.get(framework_id, ()):
            if sorter is None:
                sorter = self._role_frameworks[role] = DRFSorter(self._totals)
                self._roles.add(role, self._weights.get(role, 1.0))
            sorter.add(framework_id)
            if framework is not None and subscribed and framework.active and role not in framework.suppressed:
                sorter.activate(framework_id)
            else:
                sorter.deactivate(framework_id)
        elif sorter is not None and framework_id in sorter:
            sorter.remove(framework_id)
        if sorter is None:
            return
        if not len(sorter):
            del self._role_frameworks[role]
            self._roles.remove(role)
        elif sorter.active_count:
            self._roles.activate(role)
        else:
            self._roles.deactivate(role)

    def _refuse(self, framework_id: str, role: str, agent: _Agent, until: float) -> None:
        framework = self._frameworks.get(framework_id)
        if framework is None:
            return
        key = (role, agent.id)
        if framework.filters.get(key, -math.inf) >= until:
            return
        framework.filters[key] = until
        agent.filtered_by[(framework_id, role)] = None
        heapq.heappush(self._expiries, (until, framework_id, role, agent.id))

    def _drop_filter(self, framework: _Framework, role: str, agent_id: str) -> None:
        del framework.filters[(role, agent_id)]
        agent = self._agents.get(agent_id)
        if agent is not None:
            agent.filtered_by.pop((framework.id, role), None)

    def _expire_filters(self, now: float) -> None:
        """Drop filters lapsed by `now`; their agents become candidates."""
        heap = self._expiries
        while heap and heap[0][0] <= now:
            until, framework_id, role, agent_id = heapq.heappop(heap)
            framework = self._frameworks.get(framework_id)
            if framework is None or framework.filters.get((role, agent_id)) != until:
                continue
            self._drop_filter(framework, role, agent_id)
            if agent_id in self._allocatable:
                self._dirty[agent_id] = None


register("drf", DRFAllocator)
