"""A blocking facade over `SchedulerDriver`, for frameworks that do not use asyncio.

The asyncio driver runs on its own event loop in a background thread. The
framework's callbacks run one at a time, in event order, on one callback
thread of their own (not the loop's thread: a callback that calls a blocking
driver method, such as accept() from offers(), needs the loop free to send
the call). Driver methods are thread-safe and block until the master
answered, raising `CallError` as the asyncio driver does.

    class Hello(SyncScheduler):
        def offers(self, driver, offers):
            driver.decline([o.id for o in offers])

    driver = SyncDriver(Hello(), name="hello")
    driver.run()   # start() + join()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from corral.v1 import common_pb2, scheduler_pb2
from frameworks.sdk.driver import DEFAULT_CALL_TIMEOUT, DEFAULT_MASTER, SchedulerDriver
from frameworks.sdk.errors import NotSubscribed
from frameworks.sdk.scheduler import Scheduler

log = logging.getLogger(__name__)

T = TypeVar("T")


class SyncScheduler:
    """The callbacks of a framework driven by a `SyncDriver`: plain methods.

    Same events and meaning as `Scheduler`; every callback has a no-op
    default. Callbacks run on the driver's callback thread, one at a time; they
    may call the driver's methods, which block, but must not call `join()`.
    """

    def subscribed(self, driver: SyncDriver, framework_id: str) -> None:
        """The master accepted the (re)subscription; reconcile here."""

    def offers(self, driver: SyncDriver, offers: list[scheduler_pb2.Offer]) -> None:
        """New offers: accept or decline every one."""

    def rescinded(self, driver: SyncDriver, offer_id: str) -> None:
        """The master withdrew an offer."""

    def update(self, driver: SyncDriver, status: common_pb2.TaskStatus) -> None:
        """A task changed state (delivered at least once, in order per task)."""

    def error(self, driver: SyncDriver, message: str) -> None:
        """The master removed the framework; the driver stops after this."""

    def disconnected(self, driver: SyncDriver) -> None:
        """The subscription broke; the driver resubscribes. Forget all offers."""


class SyncDriver:
    """Runs a `SchedulerDriver` in a background thread; see the module docstring.

    Takes the same arguments as `SchedulerDriver`. `start()` begins, `join()`
    waits for the end (re-raising what ended the driver abnormally), `run()`
    is both, `stop()` ends it. The call methods block for at most about
    `call_timeout` seconds.
    """

    def __init__(
        self,
        scheduler: SyncScheduler,
        framework: common_pb2.FrameworkInfo | None = None,
        master: str = DEFAULT_MASTER,
        *,
        name: str | None = None,
        roles: Iterable[str] | None = None,
        failover_timeout: float | None = None,
        principal: str | None = None,
        implicit_acknowledgements: bool = True,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        if framework is None and not name:
            name = type(scheduler).__name__
        self._callbacks = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="corral-scheduler-callbacks"
        )
        self._driver = SchedulerDriver(
            _Adapter(scheduler, self, self._callbacks),
            framework,
            master,
            name=name,
            roles=roles,
            failover_timeout=failover_timeout,
            principal=principal,
            implicit_acknowledgements=implicit_acknowledgements,
            call_timeout=call_timeout,
        )
        self._call_timeout = call_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def framework_id(self) -> str | None:
        """The framework id once subscribed (kept across resubscriptions)."""
        return self._driver.framework_id

    @property
    def subscribed(self) -> bool:
        return self._driver.subscribed

    def start(self) -> None:
        """Start the driver's thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("a SyncDriver starts once")
        self._thread = threading.Thread(target=self._main, name="corral-scheduler-driver", daemon=True)
        self._thread.start()
        self._ready.wait()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the driver stopped; True if it did within `timeout`.

        Re-raises the exception that ended the driver, if one did (a refused
        subscription, an exception from a callback).
        """
        if self._thread is None:
            raise RuntimeError("join() before start()")
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        if self._failure is not None:
            raise self._failure
        return True

    def run(self) -> None:
        """start() and join(): block until the driver stopped."""
        self.start()
        self.join()

    def stop(self) -> None:
        """Make the driver stop (without tearing down); see SchedulerDriver.stop.

        Before start() it makes the driver end as soon as it starts.
        """
        loop = self._loop
        if loop is None:
            self._driver.stop()
            return
        # A closed loop means the driver has already ended.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._driver.stop)

    def accept(
        self,
        offer_ids: Iterable[str],
        tasks: Iterable[common_pb2.TaskInfo],
        refuse_seconds: float | None = None,
    ) -> None:
        """See SchedulerDriver.accept."""
        self._call("Accept", self._driver.accept(list(offer_ids), list(tasks), refuse_seconds))

    def decline(self, offer_ids: Iterable[str], refuse_seconds: float | None = None) -> None:
        """See SchedulerDriver.decline."""
        self._call("Decline", self._driver.decline(list(offer_ids), refuse_seconds))

    def revive(self, roles: Iterable[str] | None = None) -> None:
        """See SchedulerDriver.revive."""
        self._call("Revive", self._driver.revive(roles))

    def suppress(self, roles: Iterable[str] | None = None) -> None:
        """See SchedulerDriver.suppress."""
        self._call("Suppress", self._driver.suppress(roles))

    def kill(self, task_id: str, agent_id: str = "", grace_period: float | None = None) -> None:
        """See SchedulerDriver.kill."""
        self._call("Kill", self._driver.kill(task_id, agent_id, grace_period))

    def acknowledge(self, statuses: Iterable[common_pb2.TaskStatus]) -> None:
        """See SchedulerDriver.acknowledge."""
        self._call("Acknowledge", self._driver.acknowledge(list(statuses)))

    def reconcile(self, tasks: Iterable[str | tuple[str, str]] | None = None) -> None:
        """See SchedulerDriver.reconcile."""
        self._call("Reconcile", self._driver.reconcile(None if tasks is None else list(tasks)))

    def teardown(self) -> None:
        """See SchedulerDriver.teardown."""
        self._call("Teardown", self._driver.teardown())

    def _call(self, name: str, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        try:
            if loop is None or not loop.is_running():
                raise RuntimeError("the driver's loop is not running")
            future = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:
            coro.close()
            raise NotSubscribed(name) from None
        try:
            # The call's own deadline ends it first; the margin covers scheduling.
            return future.result(timeout=self._call_timeout + 5.0)
        except TimeoutError:
            future.cancel()
            raise

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self._driver.run()

        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to join(), which re-raises it
            self._failure = exc
        finally:
            self._ready.set()
            self._callbacks.shutdown(wait=False)


class _Adapter(Scheduler):
    """Runs a SyncScheduler's callbacks on the callback thread, one at a time."""

    def __init__(
        self, scheduler: SyncScheduler, driver: SyncDriver, executor: concurrent.futures.Executor
    ) -> None:
        self._scheduler = scheduler
        self._sync_driver = driver
        self._executor = executor

    async def _run(self, callback: Callable[..., None], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, functools.partial(callback, self._sync_driver, *args))

    async def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        await self._run(self._scheduler.subscribed, framework_id)

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        await self._run(self._scheduler.offers, offers)

    async def rescinded(self, driver: SchedulerDriver, offer_id: str) -> None:
        await self._run(self._scheduler.rescinded, offer_id)

    async def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        await self._run(self._scheduler.update, status)

    async def error(self, driver: SchedulerDriver, message: str) -> None:
        await self._run(self._scheduler.error, message)

    async def disconnected(self, driver: SchedulerDriver) -> None:
        await self._run(self._scheduler.disconnected)
