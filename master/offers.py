"""Where offers are made: turning allocations into offers, timing them out,
and taking them back.

The allocator decides *what* each framework may use; the `OfferBook` turns
each decision into an `Offer` with an id, remembers it until the framework
accepts or declines it, and rescinds it when it times out or its agent goes
away. Outstanding offers stay allocated in the allocator until recovered.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from corral.v1 import common_pb2, scheduler_pb2
from master.allocator import Allocation
from master.validation import OfferView


@dataclass(eq=False, slots=True)
class OutstandingOffer:
    view: OfferView
    proto: scheduler_pb2.Offer
    timer: asyncio.TimerHandle | None


class OfferBook:
    """Outstanding offers by id, framework and agent."""

    def __init__(self, prefix: str, timeout: float, on_timeout: Callable[[str], None]) -> None:
        self._prefix = prefix
        self._counter = itertools.count(1)
        self._timeout = timeout
        self._on_timeout = on_timeout
        self.by_id: dict[str, OutstandingOffer] = {}
        self._by_framework: dict[str, set[str]] = {}
        self._by_agent: dict[str, set[str]] = {}

    def make(
        self,
        allocation: Allocation,
        hostname: str,
        attributes: list[common_pb2.Attribute],
        containerizers: list[str],
    ) -> scheduler_pb2.Offer:
        """Record a new offer for `allocation` and return it for sending."""
        offer_id = f"{self._prefix}-o{next(self._counter)}"
        proto = scheduler_pb2.Offer(
            id=offer_id,
            framework_id=allocation.framework_id,
            agent_id=allocation.agent_id,
            hostname=hostname,
            role=allocation.role,
            resources=allocation.resources.to_proto(),
            attributes=attributes,
            containerizers=containerizers,
        )
        view = OfferView(
            id=offer_id,
            framework_id=allocation.framework_id,
            agent_id=allocation.agent_id,
            role=allocation.role,
            resources=allocation.resources,
        )
        timer = None
        if self._timeout > 0:
            timer = asyncio.get_running_loop().call_later(self._timeout, self._on_timeout, offer_id)
        self.by_id[offer_id] = OutstandingOffer(view, proto, timer)
        self._by_framework.setdefault(allocation.framework_id, set()).add(offer_id)
        self._by_agent.setdefault(allocation.agent_id, set()).add(offer_id)
        return proto

    def take(self, offer_id: str) -> OfferView:
        """Remove an outstanding offer (used, declined, rescinded) and return it."""
        offer = self.by_id.pop(offer_id)
        if offer.timer is not None:
            offer.timer.cancel()
        view = offer.view
        self._discard(self._by_framework, view.framework_id, offer_id)
        self._discard(self._by_agent, view.agent_id, offer_id)
        return view

    def of_framework(self, framework_id: str) -> list[str]:
        return list(self._by_framework.get(framework_id, ()))

    def of_agent(self, agent_id: str) -> list[str]:
        return list(self._by_agent.get(agent_id, ()))

    def views(self) -> Iterator[OfferView]:
        return (o.view for o in self.by_id.values())

    def protos(self) -> Iterator[scheduler_pb2.Offer]:
        return (o.proto for o in self.by_id.values())

    @staticmethod
    def _discard(index: dict[str, set[str]], key: str, offer_id: str) -> None:
        ids = index.get(key)
        if ids is not None:
            ids.discard(offer_id)
            if not ids:
                del index[key]
