"""Who is offered what: the allocator interface and a registry of implementations.

The allocator is pure: no gRPC, no asyncio, no I/O, deterministic given its
inputs (the caller passes `now`). The master tells it about agents, frameworks
and resources coming back; `allocate` returns what to offer. Everything it
hands out stays counted as allocated to that framework until the master gives
it back with `recover`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from corral.resources import Resources

DEFAULT_ROLE = "*"


@dataclass(frozen=True, slots=True)
class Allocation:
    """Resources of one agent, allocated to one framework in one role."""

    framework_id: str
    role: str
    agent_id: str
    resources: Resources


class Allocator(ABC):
    """The master's view of an allocator; see `master.allocator.drf` for the default."""

    __slots__ = ()

    @abstractmethod
    def add_agent(
        self, agent_id: str, total: Resources, used: Mapping[tuple[str, str], Resources] | None = None
    ) -> None:
        """A new or re-registered agent. `used` maps (framework_id, role) to what
        its running tasks already hold; the rest is available."""

    @abstractmethod
    def remove_agent(self, agent_id: str) -> None:
        """The agent is gone; everything allocated on it is forgotten."""

    @abstractmethod
    def deactivate_agent(self, agent_id: str) -> None:
        """Stop offering this agent's resources (disconnected) until activated."""

    @abstractmethod
    def activate_agent(self, agent_id: str) -> None: ...

    @abstractmethod
    def add_framework(
        self, framework_id: str, roles: Iterable[str], suppressed_roles: Iterable[str] = ()
    ) -> None:
        """A subscribed framework, active at once."""

    @abstractmethod
    def remove_framework(self, framework_id: str) -> None:
        """Torn down; its allocations must already have been recovered."""

    @abstractmethod
    def deactivate_framework(self, framework_id: str) -> None:
        """Disconnected: no offers until activated again."""

    @abstractmethod
    def activate_framework(self, framework_id: str) -> None: ...

    @abstractmethod
    def suppress(self, framework_id: str, roles: Iterable[str] | None = None) -> None:
        """No offers for these roles (all of the framework's when None)."""

    @abstractmethod
    def revive(self, framework_id: str, roles: Iterable[str] | None = None) -> None:
        """Unsuppress these roles (all when None) and clear their refusal filters."""

    @abstractmethod
    def recover(
        self,
        framework_id: str,
        role: str,
        agent_id: str,
        resources: Resources,
        now: float,
        refuse_seconds: float | None = None,
    ) -> None:
        """Resources come back from a framework: a declined or unused offer, a
        rescinded offer, an ended task. With `refuse_seconds` > 0 the agent's
        resources are not offered to that framework in that role again until
        `now + refuse_seconds`."""

    @abstractmethod
    def set_weight(self, role: str, weight: float) -> None:
        """DRF weight of a role (default 1.0); a larger weight gets a larger share."""

    @abstractmethod
    def allocate(self, now: float) -> list[Allocation]:
        """Hand out what is available to eligible frameworks; what is returned is
        now allocated. Cheap when little changed since the last call."""

    @abstractmethod
    def next_filter_expiry(self) -> float | None:
        """When the earliest refusal filter lapses (so the caller can allocate
        again then), or None when there is none."""


AllocatorFactory = Callable[[], Allocator]

_REGISTRY: dict[str, AllocatorFactory] = {}


def register(name: str, factory: AllocatorFactory) -> None:
    _REGISTRY[name] = factory


def create(name: str) -> Allocator:
    """Create the allocator registered under `name` (e.g. `drf`)."""
    if name not in _REGISTRY:
        from master.allocator import drf  # noqa: F401  (registers the built-ins)
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown allocator {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
