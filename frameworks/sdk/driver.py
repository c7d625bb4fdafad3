"""The asyncio scheduler driver: a framework's one connection to the master.

The driver holds the subscription (the master's event stream), hands events to
the framework's `Scheduler` callbacks, sends the framework's calls, keeps the
subscription alive across broken streams and master restarts, and, unless told
otherwise, acknowledges status updates on the framework's behalf in batches.

    driver = SchedulerDriver(MyScheduler(), name="hello", master="127.0.0.1:5050")
    await driver.run()   # until driver.stop(), driver.teardown() or an ERROR event
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio

from corral import discovery
from corral.net import aio_channel
from corral.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from frameworks.sdk.errors import CallError, NotSubscribed
from frameworks.sdk.scheduler import CallbackResult, Scheduler

if TYPE_CHECKING:
    from corral.v1.scheduler_pb2_grpc import SchedulerServiceAsyncStub

log = logging.getLogger(__name__)

DEFAULT_MASTER: Final = "127.0.0.1:5050"
#: Deadline of every unary call, and of the wait for SUBSCRIBED.
DEFAULT_CALL_TIMEOUT: Final = 10.0
#: Used when SUBSCRIBED does not say (docs/protocol.md: 15 s).
DEFAULT_HEARTBEAT_INTERVAL: Final = 15.0
#: A stream silent for this many heartbeat intervals is dead (as Mesos advises).
MISSED_HEARTBEATS: Final = 5
BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAX: Final = 5.0
#: The longest backoff when several masters are given (replicated masters).
BACKOFF_MAX_REPLICATED: Final = 0.5
#: Trailing metadata with which a standby master names the leader.
LEADER_METADATA_KEY: Final = "x-leader-addr"

#: Subscribe refusals that retrying cannot fix: `run()` raises them.
_FATAL_SUBSCRIBE_CODES: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)

Ack = scheduler_pb2.AcknowledgeRequest.Ack
_Stream = grpc.aio.UnaryStreamCall[scheduler_pb2.SubscribeRequest, scheduler_pb2.Event]


class SchedulerDriver:
    """Connects a `Scheduler` to a Corral master.

    `framework` is the FrameworkInfo to subscribe with; instead of one, pass
    `name`, `roles`, `failover_timeout` (seconds; the master's default of 0
    tears the framework down as soon as its stream breaks) and `principal`.
    An empty name becomes the scheduler's class name, an empty hostname this
    host's name.

    `master` is "host:port", or a comma-separated list of masters that the
    driver tries in turn; a standby that names the leader is followed. Or
    `etcd://HOST:PORT[,...][/CLUSTER]`: the leader named in etcd is looked up
    before every subscription attempt (see corral.discovery).

    With `implicit_acknowledgements` (the default) the driver acknowledges
    every update that carries a uuid once the `update` callback returned,
    batching all updates acknowledged meanwhile into one Acknowledge call.
    Without it the framework calls `acknowledge` itself; until it does, the
    agent keeps resending the update.

    Every call carries the framework id, the current stream id and a deadline
    of `call_timeout` seconds. A call the master refuses raises `CallError`;
    a call made while the driver has no subscription raises `NotSubscribed`.
    Use a driver from one event loop only (the `SyncDriver` facade is for
    threads).
    """

    def __init__(
        self,
        scheduler: Scheduler,
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
        if framework is not None and any(v is not None for v in (name, roles, failover_timeout, principal)):
            raise TypeError("give either a FrameworkInfo or name/roles/failover_timeout/principal, not both")
        info = common_pb2.FrameworkInfo()
        if framework is not None:
            info.CopyFrom(framework)
        else:
            info.name = name or ""
            info.roles.extend(_strings("roles", roles or ()))
            info.failover_timeout_seconds = failover_timeout or 0.0
            info.principal = principal or ""
        info.name = info.name or type(scheduler).__name__
        info.hostname = info.hostname or socket.gethostname()
        if discovery.is_etcd(master):
            discovery.parse(master)  # ValueError names what is wrong with it
            addresses = [master.strip()]
        else:
            addresses = [a.strip() for a in master.split(",") if a.strip()]
        if not addresses:
            raise ValueError(f"no master address in {master!r}; expected host:port[,host:port...]")

        self._scheduler = scheduler
        self._framework = info
        self._addresses = addresses
        self._implicit_acks = implicit_acknowledgements
        self._call_timeout = call_timeout

        self._started = False
        self._stopping = False
        self._wakeup: asyncio.Event | None = None
        self._next_address = 0
        self._redirect: str | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        # The live subscription: set from SUBSCRIBED until the stream ends.
        self._address: str | None = None
        self._stub: SchedulerServiceAsyncStub | None = None
        self._stream_id = ""
        # Events of the current stream, moved there by `_pump`; None marks
        # the end of the stream or a stop() call.
        self._events: asyncio.Queue[scheduler_pb2.Event | Exception | None] | None = None
        self._teardown_on_cancel = False
        # Set once the framework was torn down or removed (see `_forget`).
        self._gone = False
        self._tearing_down = False
        # Implicit acknowledgements waiting for the next batch.
        self._acks: list[scheduler_pb2.AcknowledgeRequest.Ack] = []
        self._ack_task: asyncio.Task[None] | None = None

    # -- state ------------------------------------------------------------

    @property
    def framework_id(self) -> str | None:
        """The id the master assigned (or the one resubscribed with); None before."""
        return self._framework.id or None

    @property
    def framework(self) -> common_pb2.FrameworkInfo:
        """A copy of the FrameworkInfo the driver subscribes with."""
        info = common_pb2.FrameworkInfo()
        info.CopyFrom(self._framework)
        return info

    @property
    def subscribed(self) -> bool:
        """Whether calls can be made now."""
        return bool(self._stream_id)

    @property
    def master(self) -> str | None:
        """The address of the master currently subscribed to, if any."""
        return self._address if self._stream_id else None

    # -- the event loop -----------------------------------------------------

    async def run(self, *, teardown_on_cancel: bool = False) -> None:
        """Subscribe and dispatch events until `stop()`, `teardown()` or an ERROR event.

        A broken or silent stream (no event for 5 heartbeat intervals) calls
        `disconnected`, then resubscribes with the same framework id after a
        backoff (0.1 s doubling to 5 s, or to 0.5 s with several masters;
        jittered), trying the masters in turn, for as long as it takes. A Subscribe the master refuses for
        good (e.g. NOT_FOUND: the framework was torn down) raises `CallError`;
        an exception from a callback is re-raised.

        With `teardown_on_cancel`, cancelling the task that runs `run()` (as
        Ctrl-C does under `asyncio.run`) first tears the framework down, so
        that its tasks do not outlive it; cancellation then proceeds.
        """
        if self._started:
            raise RuntimeError("a SchedulerDriver runs once; create a new one to run again")
        self._started = True
        self._teardown_on_cancel = teardown_on_cancel
        self._wakeup = asyncio.Event()
        delay = BACKOFF_INITIAL
        try:
            while not self._stopping:
                address = self._pick_address()
                discovered = discovery.is_etcd(address)
                if discovered:
                    # Ask etcd who leads now; nobody leading counts as a failed try.
                    address = await discovery.find_leader(address) or ""
                reached = bool(address) and await self._session(address)
                if self._stopping:
                    break
                if reached:
                    delay = BACKOFF_INITIAL
                    await self._invoke(self._scheduler.disconnected)
                await self._pause(delay * random.uniform(0.5, 1.0))
                # With several masters a failover is likely under way (a standby
                # may still name the dead leader until its lease expires): retry briskly.
                replicated = len(self._addresses) > 1 or discovered
                delay = min(delay * 2, BACKOFF_MAX_REPLICATED if replicated else BACKOFF_MAX)
        except asyncio.CancelledError:
            if teardown_on_cancel and not self._gone:
                log.error(
                    "cancelled without tearing the framework down; the master does so after "
                    "its failover timeout (%g s)",
                    self._framework.failover_timeout_seconds,
                    extra=self._context(),
                )
            raise
        finally:
            await self._shutdown()

    def stop(self) -> None:
        """Close the subscription and make `run()` return; no resubscription.

        The master keeps the framework (and its tasks) for its failover
        timeout, so a new driver can resubscribe with the same id; use
        `teardown()` to end the framework for good. Safe to call from a
        callback, from another task, and more than once.
        """
        if self._stopping:
            return
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._events is not None:
            self._events.put_nowait(None)

    async def _session(self, address: str) -> bool:
        """Subscribe at `address` and dispatch its events until the stream ends.

        Returns whether SUBSCRIBED arrived, so the caller knows to call
        `disconnected`. Raises CallError for a refusal retrying cannot fix.
        """
        stub = self._stub_for(address)
        call = stub.Subscribe(scheduler_pb2.SubscribeRequest(framework=self._framework))
        events: asyncio.Queue[scheduler_pb2.Event | Exception | None] = asyncio.Queue()
        self._events = events
        # Reading happens in a task of its own: cancelling `run()` must not
        # cancel the stream, or the master would refuse the teardown that
        # `teardown_on_cancel` sends with this stream's id.
        pump = asyncio.get_running_loop().create_task(_pump(call, events))
        subscribed = False
        try:
            event = await _next(events, self._call_timeout)
            if event is None or event.WhichOneof("event") != "subscribed":
                if not self._stopping:
                    log.error(
                        "master %s broke the protocol: the first event was %s, not SUBSCRIBED",
                        address,
                        "the end of the stream" if event is None else event.WhichOneof("event"),
                    )
                return False
            window = self._on_subscribed(address, stub, event.subscribed)
            subscribed = True
            await self._invoke(self._scheduler.subscribed, self._framework.id)
            while not self._stopping:
                event = await _next(events, window)
                if event is None:
                    if not self._stopping:
                        log.warning("master %s ended the subscription", address, extra=self._context())
                    break
                await self._dispatch(event)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if not subscribed and code in _FATAL_SUBSCRIBE_CODES:
                raise CallError("Subscribe", code, details) from exc
            self._redirect = _leader_hint(exc)
            log.warning(
                "subscription to master %s failed: %s: %s%s",
                address,
                code.name,
                details,
                f"; following the leader at {self._redirect}" if self._redirect else "",
                extra=self._context(),
            )
        except TimeoutError:
            log.warning(
                "no %s from master %s in time; reconnecting",
                "event" if subscribed else "SUBSCRIBED",
                address,
                extra=self._context(),
            )
        except asyncio.CancelledError:
            if subscribed and self._teardown_on_cancel:
                await self._teardown_while_cancelled()
            raise
        finally:
            if subscribed and self._stopping:
                await self._drain_acks()
            call.cancel()
            pump.cancel()
            self._events = None
            self._stream_id = ""
            self._stub = None
        return subscribed

    def _on_subscribed(
        self, address: str, stub: SchedulerServiceAsyncStub, subscribed: scheduler_pb2.Event.Subscribed
    ) -> float:
        """Adopt the subscription; return how long the stream may stay silent."""
        first = not self._framework.id
        self._framework.id = subscribed.framework_id
        self._stream_id = subscribed.stream_id
        self._stub = stub
        self._address = address
        interval = subscribed.heartbeat_interval_seconds or DEFAULT_HEARTBEAT_INTERVAL
        log.info(
            "%s master %s as framework %s",
            "subscribed to" if first else "resubscribed to",
            address,
            subscribed.framework_id,
            extra=self._context(),
        )
        # Acknowledgements queued while disconnected are still valid.
        self._schedule_ack_flush()
        return MISSED_HEARTBEATS * interval

    async def _dispatch(self, event: scheduler_pb2.Event) -> None:
        kind = event.WhichOneof("event")
        if kind == "offers":
            await self._invoke_on_subscription(self._scheduler.offers, list(event.offers.offers))
        elif kind == "rescind":
            await self._invoke_on_subscription(self._scheduler.rescinded, event.rescind.offer_id)
        elif kind == "update":
            status = event.update.status
            await self._invoke_on_subscription(self._scheduler.update, status)
            if self._implicit_acks and status.uuid and not self._gone:
                self._acks.append(Ack(agent_id=status.agent_id, task_id=status.task_id, uuid=status.uuid))
                self._schedule_ack_flush()
        elif kind == "heartbeat":
            log.debug("heartbeat from master %s", self._address, extra=self._context())
        elif kind == "error":
            self._forget()
            if self._tearing_down:
                # The master confirms the teardown this driver asked for.
                log.info("master ended the framework: %s", event.error.message, extra=self._context())
            else:
                log.error("master removed the framework: %s", event.error.message, extra=self._context())
                await self._invoke(self._scheduler.error, event.error.message)
            self.stop()
        else:
            log.warning("ignoring an unexpected %s event", kind, extra=self._context())

    async def _invoke_on_subscription(self, callback: Callable[..., CallbackResult], *args: Any) -> None:
        """Run a callback for an event of the current subscription.

        A call the callback makes can fail only because that subscription
        ended meanwhile (the master failed over, restarted or stalled): see
        `_SUBSCRIPTION_LOST_CODES`. That is no bug of the
        framework's, so it does not stop the driver: the driver resubscribes,
        `disconnected` is called, and fresh offers follow.
        """
        try:
            await self._invoke(callback, *args)
        except CallError as exc:
            if exc.code not in _SUBSCRIPTION_LOST_CODES:
                raise
            log.warning(
                "%s from the %s callback failed because the subscription ended (%s: %s); resubscribing",
                exc.call,
                callback.__name__,
                exc.code.name,
                exc.details,
                extra=self._context(),
            )

    async def _invoke(self, callback: Callable[..., CallbackResult], *args: Any) -> None:
        result = callback(self, *args)
        if inspect.isawaitable(result):
            await result

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when stop() is called."""
        assert self._wakeup is not None
        try:
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()
        except TimeoutError:
            return

    async def _shutdown(self) -> None:
        if self._ack_task is not None:
            self._ack_task.cancel()
        if self._acks:
            log.info(
                "dropping %d unsent acknowledgements; the agents resend those updates",
                len(self._acks),
                extra=self._context(),
            )
            self._acks.clear()
        for channel in self._channels.values():
            await channel.close(grace=1.0)
        self._channels.clear()

    def _pick_address(self) -> str:
        if self._redirect is not None:
            address, self._redirect = self._redirect, None
            return address
        address = self._addresses[self._next_address % len(self._addresses)]
        self._next_address += 1
        return address

    def _stub_for(self, address: str) -> SchedulerServiceAsyncStub:
        # One channel per master, kept for the driver's life: gRPC reconnects
        # it, and closing it would cancel calls other tasks have in flight.
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = aio_channel(address)
        return scheduler_pb2_grpc.SchedulerServiceStub(channel)

    def _context(self) -> dict[str, str]:
        return {"framework_id": self._framework.id} if self._framework.id else {}

    # -- acknowledgements ---------------------------------------------------

    def _schedule_ack_flush(self) -> None:
        # The flush starts on the next loop iteration, so every update
        # dispatched before then shares one call; updates acknowledged while
        # that call is in flight share the next.
        if self._acks and self._ack_task is None and self._stream_id:
            self._ack_task = asyncio.get_running_loop().create_task(self._flush_acks())

    async def _flush_acks(self) -> None:
        try:
            while self._acks and self._stream_id:
                batch, self._acks = self._acks, []
                try:
                    await self._send_acks(batch)
                except CallError as exc:
                    # Once the framework is gone they no longer matter.
                    log.log(
                        logging.DEBUG if self._gone else logging.WARNING,
                        "%d acknowledgements were not delivered (%s); the agents will resend those updates",
                        len(batch),
                        exc,
                        extra=self._context(),
                    )
        finally:
            self._ack_task = None

    async def _drain_acks(self) -> None:
        """Send the queued acknowledgements before the subscription closes."""
        self._schedule_ack_flush()
        if self._ack_task is not None:
            await self._ack_task

    async def _send_acks(self, acks: list[scheduler_pb2.AcknowledgeRequest.Ack]) -> None:
        stub, framework_id, stream_id = self._session_for("Acknowledge")
        request = scheduler_pb2.AcknowledgeRequest(
            framework_id=framework_id, stream_id=stream_id, acknowledgements=acks
        )
        await self._rpc("Acknowledge", stub.Acknowledge(request, timeout=self._call_timeout))

    # -- calls ------------------------------------------------------------

    async def accept(
        self,
        offer_ids: Iterable[str],
        tasks: Iterable[common_pb2.TaskInfo],
        refuse_seconds: float | None = None,
    ) -> None:
        """Launch `tasks` on the named offers, in one call.

        The offers may come from many agents; each task names its agent in
        `agent_id`. The master checks the whole call first and refuses all of
        it (CallError; nothing changed) if any task is wrong. What the tasks
        leave of the offers is declined for `refuse_seconds` (master default:
        5 s). `OfferPacker` builds `offer_ids` and `tasks` for you.
        """
        stub, framework_id, stream_id = self._session_for("Accept")
        request = scheduler_pb2.AcceptRequest(
            framework_id=framework_id,
            stream_id=stream_id,
            offer_ids=_strings("offer_ids", offer_ids),
            filters=_filters(refuse_seconds),
        )
        task_infos = list(tasks)
        if task_infos:
            request.operations.add().launch.task_infos.extend(task_infos)
        await self._rpc("Accept", stub.Accept(request, timeout=self._call_timeout))

    async def decline(self, offer_ids: Iterable[str], refuse_seconds: float | None = None) -> None:
        """Give offers back; their resources are not offered to this framework
        again for `refuse_seconds` (master default: 5 s).

        Declining an offer that is already gone (rescinded or timed out
        meanwhile) is not an error: its resources went back all the same.
        """
        stub, framework_id, stream_id = self._session_for("Decline")
        request = scheduler_pb2.DeclineRequest(
            framework_id=framework_id,
            stream_id=stream_id,
            offer_ids=_strings("offer_ids", offer_ids),
            filters=_filters(refuse_seconds),
        )
        try:
            await self._rpc("Decline", stub.Decline(request, timeout=self._call_timeout))
        except CallError as exc:
            if exc.code != grpc.StatusCode.NOT_FOUND:
                raise
            log.info("declined offers were already gone: %s", exc.details, extra=self._context())

    async def revive(self, roles: Iterable[str] | None = None) -> None:
        """Clear decline filters and resume offers for `roles` (default: all)."""
        stub, framework_id, stream_id = self._session_for("Revive")
        request = scheduler_pb2.ReviveRequest(
            framework_id=framework_id, stream_id=stream_id, roles=_strings("roles", roles or ())
        )
        await self._rpc("Revive", stub.Revive(request, timeout=self._call_timeout))

    async def suppress(self, roles: Iterable[str] | None = None) -> None:
        """Stop offers for `roles` (default: all) until `revive`: a framework with
        nothing to launch should suppress rather than decline forever."""
        stub, framework_id, stream_id = self._session_for("Suppress")
        request = scheduler_pb2.SuppressRequest(
            framework_id=framework_id, stream_id=stream_id, roles=_strings("roles", roles or ())
        )
        await self._rpc("Suppress", stub.Suppress(request, timeout=self._call_timeout))

    async def kill(self, task_id: str, agent_id: str = "", grace_period: float | None = None) -> None:
        """Ask for a task to be killed; its end arrives as an update (KILLED).

        `grace_period` is the time in seconds between SIGTERM and SIGKILL; None
        (or 0) means the agent's default. A task the master does not know is
        answered with TASK_LOST.
        """
        stub, framework_id, stream_id = self._session_for("Kill")
        request = scheduler_pb2.KillRequest(
            framework_id=framework_id, stream_id=stream_id, task_id=task_id, agent_id=agent_id
        )
        if grace_period is not None:
            request.kill_policy.grace_period_seconds = grace_period
        await self._rpc("Kill", stub.Kill(request, timeout=self._call_timeout))

    async def acknowledge(self, statuses: Iterable[common_pb2.TaskStatus]) -> None:
        """Acknowledge many updates in one call (explicit acknowledgements).

        Updates without a uuid (from the master, e.g. reconciliation) need no
        acknowledgement and are skipped. With implicit acknowledgements the
        driver already does this; calling it as well only sends duplicates.
        """
        acks = [Ack(agent_id=s.agent_id, task_id=s.task_id, uuid=s.uuid) for s in statuses if s.uuid]
        if acks:
            await self._send_acks(acks)

    async def reconcile(self, tasks: Iterable[str | tuple[str, str]] | None = None) -> None:
        """Ask the master for the latest state of tasks; answers arrive as updates.

        `tasks` holds task ids or (task_id, agent_id) pairs (explicit
        reconciliation: an unknown task is answered TASK_LOST). None or empty
        asks for every task the master knows for this framework (implicit).
        """
        stub, framework_id, stream_id = self._session_for("Reconcile")
        request = scheduler_pb2.ReconcileRequest(framework_id=framework_id, stream_id=stream_id)
        for item in tasks or ():
            task_id, agent_id = (item, "") if isinstance(item, str) else item
            request.tasks.add(task_id=task_id, agent_id=agent_id)
        await self._rpc("Reconcile", stub.Reconcile(request, timeout=self._call_timeout))

    async def teardown(self) -> None:
        """End the framework: the master kills all its tasks and forgets it.

        Then the driver stops. Raises CallError (and keeps running) if the
        master refused or could not be reached. The ERROR event with which
        the master may confirm the teardown does not reach `error()`.
        """
        stub, framework_id, stream_id = self._session_for("Teardown")
        request = scheduler_pb2.TeardownRequest(framework_id=framework_id, stream_id=stream_id)
        self._tearing_down = True
        try:
            await self._rpc("Teardown", stub.Teardown(request, timeout=self._call_timeout))
        except CallError:
            self._tearing_down = False
            raise
        log.info("tore the framework down", extra=self._context())
        self._forget()
        self.stop()

    def _forget(self) -> None:
        """The framework no longer exists: its updates need no acknowledgement."""
        self._gone = True
        self._acks.clear()

    async def _teardown_while_cancelled(self) -> None:
        try:
            await self.teardown()
        except CallError as exc:
            log.warning("teardown on cancellation failed: %s", exc, extra=self._context())

    def _session_for(self, call: str) -> tuple[SchedulerServiceAsyncStub, str, str]:
        if self._stub is None or not self._stream_id:
            raise NotSubscribed(call)
        return self._stub, self._framework.id, self._stream_id

    async def _rpc(self, call: str, pending: Awaitable[scheduler_pb2.CallResponse]) -> None:
        try:
            await pending
        except grpc.aio.AioRpcError as exc:
            raise CallError(call, exc.code(), exc.details() or "") from exc


async def _pump(call: _Stream, events: asyncio.Queue[scheduler_pb2.Event | Exception | None]) -> None:
    """Move a stream's events into `events`, then None at its end or the error that ended it."""
    try:
        while isinstance(message := await call.read(), scheduler_pb2.Event):
            events.put_nowait(message)
        events.put_nowait(None)
    except Exception as exc:  # handed to the dispatcher, which raises it
        events.put_nowait(exc)


async def _next(
    events: asyncio.Queue[scheduler_pb2.Event | Exception | None], limit: float
) -> scheduler_pb2.Event | None:
    """The next event, or None at the end; raises what ended the stream, or TimeoutError after `limit` s."""
    async with asyncio.timeout(limit):
        item = await events.get()
    if isinstance(item, Exception):
        raise item
    return item


#: What a call fails with when the subscription it was made on has ended: the
#: master is gone or going (UNAVAILABLE; CANCELLED by a server shutting down;
#: DEADLINE_EXCEEDED from one that stopped answering) or no longer knows the
#: stream id (PERMISSION_DENIED).
_SUBSCRIPTION_LOST_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


def _filters(refuse_seconds: float | None) -> scheduler_pb2.Filters:
    if refuse_seconds is None:
        return scheduler_pb2.Filters()
    return scheduler_pb2.Filters(refuse_seconds=refuse_seconds)


def _strings(what: str, values: Iterable[str]) -> list[str]:
    # A lone string is an iterable of characters: catch that mistake here
    # rather than let the master refuse offers named "o", "f", ...
    if isinstance(values, str):
        raise TypeError(f"{what} must be a list of strings, not the string {values!r}")
    return list(values)


def _leader_hint(exc: grpc.aio.AioRpcError) -> str | None:
    """The leader's address a standby master put in its refusal, if any."""
    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    for key, value in exc.trailing_metadata() or ():
        if key == LEADER_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    return None
