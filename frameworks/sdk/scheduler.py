"""The callbacks a framework implements: subclass `Scheduler`, override what you need."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from corral.v1 import common_pb2, scheduler_pb2

if TYPE_CHECKING:
    from frameworks.sdk.driver import SchedulerDriver

#: What a callback may return: nothing, or something to await (an `async def`
#: callback returns a coroutine, which the driver awaits).
CallbackResult = Awaitable[None] | None


class Scheduler:
    """A framework's scheduler, driven by a `SchedulerDriver`.

    Every callback has a no-op default, so a framework overrides only what
    it needs. A callback may be a plain method or an `async def`: the driver
    awaits whatever is awaitable. The driver runs callbacks one at a time, in
    the order the master sent the events, on the driver's event loop; a
    callback that awaits a driver call (e.g. `await driver.accept(...)`) is
    fine, but long work belongs in a task of its own, because the events
    behind it wait until the callback returns.

    An exception raised by a callback stops the driver: `run()` re-raises it.
    With implicit acknowledgements an update is acknowledged only after
    `update` returned, so an update whose callback failed is delivered again.
    """

    def subscribed(self, driver: SchedulerDriver, framework_id: str) -> CallbackResult:
        """The master accepted the subscription (also after every resubscription).

        `framework_id` is the same on every resubscription. Reconcile here:
        after a failover, reconciliation is how the framework learns the truth.
        """
        return None

    def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> CallbackResult:
        """New offers. Accept or decline every one: an offer kept idle holds its
        resources away from everyone until the master rescinds it (30 s)."""
        return None

    def rescinded(self, driver: SchedulerDriver, offer_id: str) -> CallbackResult:
        """The master withdrew an offer; accepting it now fails with NOT_FOUND."""
        return None

    def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> CallbackResult:
        """A task changed state, or reconciliation reported its state.

        Updates are delivered at least once and in order per task: the same
        update may arrive again (after a failover or a lost acknowledgement).
        """
        return None

    def error(self, driver: SchedulerDriver, message: str) -> CallbackResult:
        """The master removed the framework (an ERROR event); the driver stops
        after this callback and does not resubscribe."""
        return None

    def disconnected(self, driver: SchedulerDriver) -> CallbackResult:
        """The subscription broke; the driver is resubscribing with the same
        framework id. Every outstanding offer is void: forget them all."""
        return None
