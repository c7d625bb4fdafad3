"""The scheduler driver (frameworks/sdk/driver.py, sync.py) and the runner behind
`corral run` (frameworks/runner.py) against a scripted master.

The master here is a fake, on purpose: these tests need a master that breaks
its stream on cue, falls silent, names a leader, refuses a chosen call or holds
an Acknowledge until the test lets it go, which the real master cannot be made
to do. It is a real gRPC server on 127.0.0.1 (port 0), so the driver's gRPC
handling is exercised for real. Tests against the real master live in
tests/integration.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from corral.net import SERVER_OPTIONS
from corral.resources import Resources
from corral.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from frameworks import (
    CallError,
    NotSubscribed,
    Scheduler,
    SchedulerDriver,
    SyncDriver,
    SyncScheduler,
    TaskSpec,
)
from frameworks.runner import EXIT_NO_CODE, RunError, exit_code, run_command

Event = scheduler_pb2.Event
DEADLINE = 10.0


class FakeMaster(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Records every call; each subscription streams what the test puts in `send`."""

    def __init__(self, heartbeat_interval: float = 15.0) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.subscriptions: list[scheduler_pb2.SubscribeRequest] = []
        self.calls: defaultdict[str, list[Any]] = defaultdict(list)
        self.stream_id = ""
        self.refuse: dict[str, tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]] = {}
        self.ack_gate: asyncio.Event | None = None
        self.confirm_teardown = False
        self.torn_down = False
        self._sent = asyncio.Event()
        self._stream_ended = asyncio.Event()
        self._outbox: asyncio.Queue[Event | grpc.StatusCode | None] = asyncio.Queue()
        self.changed = asyncio.Condition()

    async def send(self, *events: Event) -> None:
        for event in events:
            self._outbox.put_nowait(event)

    async def end_stream(self, code: grpc.StatusCode | None = None) -> None:
        """End the current stream: cleanly (None) or with an error status."""
        self._outbox.put_nowait(code)

    async def wait(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEADLINE):
            async with self.changed:
                await self.changed.wait_for(condition)

    async def _record(self, name: str, request: Any) -> None:
        async with self.changed:
            self.calls[name].append(request)
            self.changed.notify_all()

    async def Subscribe(
        self, request: scheduler_pb2.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Event]:
        async with self.changed:
            self.subscriptions.append(request)
            self.changed.notify_all()
        if "Subscribe" in self.refuse:
            code, details, metadata = self.refuse["Subscribe"]
            await context.abort(code, details, trailing_metadata=metadata)
        stream_id = self.stream_id = f"stream-{len(self.subscriptions)}"
        self._stream_ended.clear()
        outbox: asyncio.Queue[Event | grpc.StatusCode | None] = asyncio.Queue()
        self._outbox = outbox
        try:
            yield Event(
                subscribed=Event.Subscribed(
                    framework_id=request.framework.id or "fw-1",
                    stream_id=stream_id,
                    heartbeat_interval_seconds=self.heartbeat_interval,
                )
            )
            while True:
                item = await outbox.get()
                if item is None:
                    return
                if isinstance(item, grpc.StatusCode):
                    await context.abort(item, "scripted stream failure")
                yield item
                self._sent.set()
        finally:
            # As in the real master: a stream's end makes its id stale.
            if self.stream_id == stream_id:
                self.stream_id = ""
                self._stream_ended.set()

    async def _unary(self, name: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await self._record(name, request)
        if name == "Teardown":
            # A driver that closes its stream before its Teardown arrives is
            # refused, as by the real master; give such a close time to land.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self._stream_ended.wait()
        if request.stream_id != self.stream_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "stale stream id")
        if name in self.refuse:
            code, details, _ = self.refuse[name]
            await context.abort(code, details)
        if name == "Acknowledge" and self.ack_gate is not None:
            await self.ack_gate.wait()
        if name == "Teardown" and self.confirm_teardown:
            # As the real master does: an ERROR event, sent before the answer.
            self._sent.clear()
            self._outbox.put_nowait(Event(error=Event.Error(message="the framework asked for teardown")))
            await self._sent.wait()
        if name == "Teardown":
            self.torn_down = True
        return scheduler_pb2.CallResponse()

    async def Accept(self, request: Any, context: Any) -> Any:
        return await self._unary("Accept", request, context)

    async def Decline(self, request: Any, context: Any) -> Any:
        return await self._unary("Decline", request, context)

    async def Revive(self, request: Any, context: Any) -> Any:
        return await self._unary("Revive", request, context)

    async def Suppress(self, request: Any, context: Any) -> Any:
        return await self._unary("Suppress", request, context)

    async def Kill(self, request: Any, context: Any) -> Any:
        return await self._unary("Kill", request, context)

    async def Acknowledge(self, request: Any, context: Any) -> Any:
        return await self._unary("Acknowledge", request, context)

    async def Reconcile(self, request: Any, context: Any) -> Any:
        return await self._unary("Reconcile", request, context)

    async def Teardown(self, request: Any, context: Any) -> Any:
        return await self._unary("Teardown", request, context)


@contextlib.asynccontextmanager
async def serve(master: FakeMaster) -> AsyncIterator[str]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(master, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


class Recorder(Scheduler):
    """Records callbacks; `hooks` lets a test act inside one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.changed = asyncio.Condition()
        self.hooks: dict[str, Callable[..., Awaitable[None]]] = {}

    async def _note(self, driver: SchedulerDriver, kind: str, value: Any) -> None:
        if kind in self.hooks:
            await self.hooks[kind](driver, value)
        async with self.changed:
            self.events.append((kind, value))
            self.changed.notify_all()

    def kinds(self, kind: str) -> list[Any]:
        return [v for k, v in self.events if k == kind]

    async def wait(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEADLINE):
            async with self.changed:
                await self.changed.wait_for(condition)

    async def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        await self._note(driver, "subscribed", framework_id)

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        await self._note(driver, "offers", offers)

    async def rescinded(self, driver: SchedulerDriver, offer_id: str) -> None:
        await self._note(driver, "rescinded", offer_id)

    async def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        await self._note(driver, "update", status)

    async def error(self, driver: SchedulerDriver, message: str) -> None:
        await self._note(driver, "error", message)

    async def disconnected(self, driver: SchedulerDriver) -> None:
        await self._note(driver, "disconnected", None)


def update(task_id: str, uuid: bytes = b"", state: int = common_pb2.TASK_RUNNING) -> Event:
    status = common_pb2.TaskStatus(task_id=task_id, agent_id="a1", state=state, uuid=uuid)  # type: ignore[arg-type]
    return Event(update=Event.Update(status=status))


def offer_event(*offer_ids: str) -> Event:
    offers = [scheduler_pb2.Offer(id=o, agent_id="a1") for o in offer_ids]
    return Event(offers=Event.Offers(offers=offers))


async def finish(run: asyncio.Task[None]) -> None:
    async with asyncio.timeout(DEADLINE):
        await run


def test_subscribes_dispatches_and_calls_carry_the_subscription() -> None:
    async def main() -> None:
        master, scheduler = FakeMaster(), Recorder()

        async def on_offers(driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
            tasks = [TaskSpec("true", task_id=f"t{i}").to_task_info(agent) for i, agent in enumerate("ab")]
            await driver.accept([o.id for o in offers], tasks, refuse_seconds=30)

        scheduler.hooks["offers"] = on_offers
        async with serve(master) as address:
            driver = SchedulerDriver(scheduler, master=address, name="t", roles=["web"], failover_timeout=60)
            run = asyncio.create_task(driver.run())
            await scheduler.wait(lambda: bool(scheduler.kinds("subscribed")))
            assert driver.framework_id == "fw-1"
            assert driver.subscribed
            await master.send(offer_event("o1", "o2"), Event(rescind=Event.Rescind(offer_id="o3")))
            await scheduler.wait(lambda: bool(scheduler.kinds("rescinded")))
            await driver.decline(["o4"])
            await driver.revive()
            await driver.suppress(["web"])
            await driver.kill("t0", grace_period=2)
            await driver.reconcile(["t0", ("t1", "b")])
            await driver.teardown()
            await finish(run)

        info = master.subscriptions[0].framework
        assert (info.name, list(info.roles), info.failover_timeout_seconds) == ("t", ["web"], 60)
        assert info.hostname
        accept = master.calls["Accept"][0]
        assert (accept.framework_id, accept.stream_id) == ("fw-1", "stream-1")
        assert list(accept.offer_ids) == ["o1", "o2"]
        assert accept.filters.refuse_seconds == 30
        assert len(accept.operations) == 1
        assert [t.agent_id for t in accept.operations[0].launch.task_infos] == ["a", "b"]
        assert not master.calls["Decline"][0].filters.HasField("refuse_seconds")
        assert list(master.calls["Suppress"][0].roles) == ["web"]
        assert master.calls["Kill"][0].kill_policy.grace_period_seconds == 2
        reconciled = [(t.task_id, t.agent_id) for t in master.calls["Reconcile"][0].tasks]
        assert reconciled == [("t0", ""), ("t1", "b")]
        for name, requests in master.calls.items():
            assert all(r.stream_id == "stream-1" for r in requests), name
        assert master.torn_down
        assert scheduler.kinds("rescinded") == ["o3"]
        assert not driver.subscribed

    asyncio.run(main())


def test_implicit_acknowledgements_are_batched() -> None:
    """Updates acknowledged while an Acknowledge is in flight share the next one."""

    async def main() -> None:
        master, scheduler = FakeMaster(), Recorder()
        master.ack_gate = asyncio.Event()
        count = 100

        async def on_update(driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
            if status.task_id == f"t{count - 1}":
                master.ack_gate.set()  # type: ignore[union-attr]

        scheduler.hooks["update"] = on_update
        async with serve(master) as address:
            driver = SchedulerDriver(scheduler, master=address)
            run = asyncio.create_task(driver.run())
            await scheduler.wait(lambda: bool(scheduler.kinds("subscribed")))
            # A master-generated update (no uuid) needs no acknowledgement.
            await master.send(update("reconciled"))
            await master.send(*(update(f"t{i}", uuid=f"u{i}".encode()) for i in range(count)))
            await master.wait(
                lambda: sum(len(r.acknowledgements) for r in master.calls["Acknowledge"]) == count
            )
            driver.stop()
            await finish(run)

        calls = master.calls["Acknowledge"]
        acked = [(a.task_id, a.agent_id, a.uuid) for r in calls for a in r.acknowledgements]
        assert acked == [(f"t{i}", "a1", f"u{i}".encode()) for i in range(count)]
        assert len(calls) <= 2

    asyncio.run(main())


def test_explicit_acknowledgements_are_left_to_the_framework() -> None:
    async def main() -> None:
        master, scheduler = FakeMaster(), Recorder()
        async with serve(master) as address:
            driver = SchedulerDriver(scheduler, master=address, implicit_acknowledgements=False)
            run = asyncio.create_task(driver.run())
            await scheduler.wait(lambda: bool(scheduler.kinds("subscribed")))
            await master.send(update("t1", b"u1"), update("t2", b"u2"), update("t3"))
            await scheduler.wait(lambda: len(scheduler.kinds("update")) == 3)
            assert master.calls["Acknowledge"] == []
            await driver.acknowledge(scheduler.kinds("update"))
            driver.stop()
            await finish(run)

        (call,) = master.calls["Acknowledge"]
        assert [a.uuid for a in call.acknowledgements] == [b"u1", b"u2"]

    asyncio.run(main())


@pytest.mark.parametrize("ending", [None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND])
def test_a_broken_stream_resubscribes_with_the_same_framework_id(ending: grpc.StatusCode | None) -> None:
    async def main() -> None:
        master, scheduler = FakeMaster(), Recorder()
        async with serve(master) as address:
            driver = SchedulerDriver(scheduler, master=address)
            run = asyncio.create_task(driver.run())
            await scheduler.wait(lambda: bool(scheduler.kinds("subscribed")))
            await master.end_stream(ending)
            await scheduler.wait(lambda: len(scheduler.kinds("subscribed")) == 2)
            await driver.revive()
            driver.stop()
            await finish(run)

        assert [k for k, _ in scheduler.events] == ["subscribed", "disconnected", "subscribed"]
        assert [s.framework.id for s in master.subscriptions] == ["", "fw-1"]
        assert master.calls["Revive"][0].stream_id == "stream-2"

    asyncio.run(main())


def test_a_silent_stream_is_dropped_after_five_missed_heartbeats() -> None:
    async def main() -> None:
        master, scheduler = FakeMaster(heartbeat_interval=0.02), Recorder()
        async with serve(master) as address:
            driver = SchedulerDriver(scheduler, master=address)
            run = asyncio.create_task(driver.run())
            await scheduler.wait(lambda: len(scheduler.kinds("subscribed")) == 2)
            driver.stop()
            await finish(run)
        assert scheduler.kinds("disconnected")

    asyncio.run(main())


def test_an_error_event_stops_the_driver_without_resubscribing() -> None:
    async def main() -> None:
        master, scheduler = FakeMaster(), Recorder()
        async with serve(master) as address:
            driver = SchedulerDriver(scheduler, master=address)
            run = asyncio.create_task(driver.run())
            await scheduler.wait(lambda: bool(scheduler.kinds("subscribed")))
            await master.send(Event(error=Event.Error(message="framework removed")))
            await finish(run)
        assert scheduler.kinds("error") == ["framework removed"]
        assert len(master.subscriptions) == 1
        assert not scheduler.kinds("disconnected")

    asyncio.run(main())


def test_the_error_event_confirming_a_teardown_is_not_an_error() -> None:
    async def main() -> None:
        master, scheduler = FakeMaster(), Recorder()
        master.confirm_teardown = True
        async with serve(master) as address:
            driver = SchedulerDriver(scheduler, master=address)
            run = asyncio.create_task(driver.run())
            await scheduler.wait(lambda: bool(scheduler.kinds("subscribed")))
            await driver.teardown()
            await finish(run)
        assert scheduler.kinds("error") == []
        assert len(master.subscriptions) == 1

    asyncio.run(main())


def test_a_refused_call_raises_call_error_and_the_driver_carries_on() -> None:
    async def main() -> None:
        master, scheduler = FakeMaster(), Recorder()
        master.refuse["Accept"] = (grpc.StatusCode.INVALID_ARGUMENT, "task t1: no command", ())
        async with serve(master) as address:
            driver = SchedulerDriver(scheduler, master=address)
            with pytest.raises(NotSubscribed):
                await driver.accept(["o1"], [])
            run = asyncio.create_task(driver.run())
            await scheduler.wait(lambda: bool(scheduler.kinds("subscribed")))
            with pytest.raises(CallError) as caught:
                await driver.accept(["o1"], [])
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details == "task t1: no command"
            assert caught.value.call == "Accept"
            with pytest.raises(TypeError):
                await driver.decline("o1")
            await driver.decline(["o1"])
            driver.stop()
            await finish(run)

    asyncio.run(main())


def test_a_subscription_refused_for_good_raises_from_run() -> None:
    async def main() -> None:
        master = FakeMaster()
        master.refuse["Subscribe"] = (grpc.StatusCode.NOT_FOUND, "framework fw-9 is gone", ())
        async with serve(master) as address:
            info = common_pb2.FrameworkInfo(id="fw-9", name="old")
            driver = SchedulerDriver(Scheduler(), info, master=address)
            with pytest.raises(CallError) as caught:
                await driver.run()
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert master.subscriptions[0].framework.id == "fw-9"

    asyncio.run(main())


def test_masters_are_tried_in_turn_and_a_standby_leads_to_the_leader() -> None:
    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{probe.getsockname()[1]}"
        leader, standby, scheduler = FakeMaster(), FakeMaster(), Recorder()
        async with serve(leader) as leader_address, serve(standby) as standby_address:
            standby.refuse["Subscribe"] = (
                grpc.StatusCode.FAILED_PRECONDITION,
                "not the leader",
                (("x-leader-addr", leader_address),),
            )
            driver = SchedulerDriver(scheduler, master=f"{dead}, {standby_address}")
            run = asyncio.create_task(driver.run())
            await scheduler.wait(lambda: bool(scheduler.kinds("subscribed")))
            assert driver.master == leader_address
            driver.stop()
            await finish(run)
        assert len(standby.subscriptions) == 1
        assert len(leader.subscriptions) == 1

    asyncio.run(main())


def test_an_exception_in_a_callback_ends_run_and_the_update_stays_unacknowledged() -> None:
    async def main() -> None:
        master, scheduler = FakeMaster(), Recorder()

        async def on_update(driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
            raise RuntimeError("framework bug")

        scheduler.hooks["update"] = on_update
        async with serve(master) as address:
            driver = SchedulerDriver(scheduler, master=address)
            run = asyncio.create_task(driver.run())
            await scheduler.wait(lambda: bool(scheduler.kinds("subscribed")))
            await master.send(update("t1", b"u1"))
            with pytest.raises(RuntimeError, match="framework bug"):
                await finish(run)
        assert master.calls["Acknowledge"] == []

    asyncio.run(main())


def test_cancelling_run_can_tear_the_framework_down() -> None:
    async def main() -> None:
        master, scheduler = FakeMaster(), Recorder()
        async with serve(master) as address:
            driver = SchedulerDriver(scheduler, master=address)
            run = asyncio.create_task(driver.run(teardown_on_cancel=True))
            await scheduler.wait(lambda: bool(scheduler.kinds("subscribed")))
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await finish(run)
        assert master.torn_down

    asyncio.run(main())


def test_a_driver_runs_once() -> None:
    async def main() -> None:
        driver = SchedulerDriver(Scheduler(), master="127.0.0.1:1")
        driver.stop()
        await driver.run()  # returns at once: stopped before it started
        with pytest.raises(RuntimeError, match="runs once"):
            await driver.run()

    asyncio.run(main())


def test_the_sync_driver_runs_callbacks_on_its_own_thread_and_blocks_for_calls() -> None:
    """A SyncScheduler may call the blocking driver from a callback (here accept from offers)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    master_box: list[FakeMaster] = []
    address_box: list[str] = []
    done = asyncio.Event()

    async def serve_forever() -> None:
        master = FakeMaster()
        master_box.append(master)
        async with serve(master) as address:
            address_box.append(address)
            ready.set()
            await done.wait()

    server_thread = threading.Thread(target=loop.run_until_complete, args=(serve_forever(),))
    server_thread.start()
    try:
        assert ready.wait(DEADLINE)
        master = master_box[0]

        class Hello(SyncScheduler):
            def __init__(self) -> None:
                self.threads: set[str] = set()
                self.updates: list[common_pb2.TaskStatus] = []
                self.subscribed_event = threading.Event()
                self.updated = threading.Event()

            def subscribed(self, driver: SyncDriver, framework_id: str) -> None:
                self.threads.add(threading.current_thread().name)
                self.subscribed_event.set()

            def offers(self, driver: SyncDriver, offers: list[scheduler_pb2.Offer]) -> None:
                self.threads.add(threading.current_thread().name)
                driver.accept([o.id for o in offers], [TaskSpec("true").to_task_info("a1")])

            def update(self, driver: SyncDriver, status: common_pb2.TaskStatus) -> None:
                self.updates.append(status)
                self.updated.set()

        scheduler = Hello()
        driver = SyncDriver(scheduler, master=address_box[0])
        with pytest.raises(NotSubscribed):
            driver.revive()
        driver.start()
        assert scheduler.subscribed_event.wait(DEADLINE)
        asyncio.run_coroutine_threadsafe(master.send(offer_event("o1"), update("t1", b"u1")), loop).result()
        assert scheduler.updated.wait(DEADLINE)
        driver.teardown()
        assert driver.join(DEADLINE)
        assert driver.framework_id == "fw-1"
        assert len(master.calls["Accept"]) == 1
        assert scheduler.threads == {"corral-scheduler-callbacks_0"}
        assert master.subscriptions[0].framework.name == "Hello"
    finally:
        loop.call_soon_threadsafe(done.set)
        server_thread.join(DEADLINE)
        loop.close()


# -- the runner behind `corral run` (frameworks/runner.py) --------------------


def sized_offer(offer_id: str, cpus: float, mem: float) -> scheduler_pb2.Offer:
    return scheduler_pb2.Offer(
        id=offer_id, agent_id=f"agent-{offer_id}", resources=Resources.of(cpus=cpus, mem=mem).to_proto()
    )


def status_event(task_id: str, state: int, exit_code: int | None = None) -> Event:
    status = common_pb2.TaskStatus(task_id=task_id, agent_id="agent-big", state=state, uuid=b"u")  # type: ignore[arg-type]
    if exit_code is not None:
        status.exit_code = exit_code
    return Event(update=Event.Update(status=status))


def test_run_command_launches_on_a_fitting_offer_and_returns_the_exit_code() -> None:
    async def main() -> None:
        master = FakeMaster()
        seen: list[int] = []
        async with serve(master) as address:
            running = asyncio.create_task(
                run_command(
                    address,
                    "exit 7",
                    cpus=1,
                    mem=64,
                    env={"A": "b"},
                    on_status=lambda s: seen.append(s.state),
                )
            )
            await master.wait(lambda: bool(master.subscriptions))
            await master.send(
                Event(
                    offers=Event.Offers(offers=[sized_offer("small", 0.5, 64), sized_offer("big", 2, 1024)])
                )
            )
            await master.wait(lambda: bool(master.calls["Accept"]))
            (task,) = master.calls["Accept"][0].operations[0].launch.task_infos
            await master.send(
                status_event(task.task_id, common_pb2.TASK_RUNNING),
                status_event(task.task_id, common_pb2.TASK_FAILED, exit_code=7),
            )
            async with asyncio.timeout(DEADLINE):
                assert await running == 7
        assert list(master.calls["Accept"][0].offer_ids) == ["big"]
        assert task.agent_id == "agent-big"
        assert task.command.shell
        assert task.command.value == "exit 7"
        assert dict(task.command.environment) == {"A": "b"}
        assert list(master.calls["Decline"][0].offer_ids) == ["small"]
        assert master.calls["Suppress"]
        assert seen == [common_pb2.TASK_RUNNING, common_pb2.TASK_FAILED]
        assert master.torn_down

    asyncio.run(main())


def test_cancelling_run_command_tears_the_framework_down() -> None:
    async def main() -> None:
        master = FakeMaster()
        async with serve(master) as address:
            running = asyncio.create_task(run_command(address, ["sleep", "60"], shell=False))
            await master.wait(lambda: bool(master.subscriptions))
            await master.send(Event(offers=Event.Offers(offers=[sized_offer("big", 2, 1024)])))
            await master.wait(lambda: bool(master.calls["Accept"]))
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
        (task,) = master.calls["Accept"][0].operations[0].launch.task_infos
        assert list(task.command.arguments) == ["sleep", "60"]
        assert not task.command.shell
        assert master.torn_down

    asyncio.run(main())


def test_run_command_reports_a_removed_framework() -> None:
    async def main() -> None:
        master = FakeMaster()
        async with serve(master) as address:
            running = asyncio.create_task(run_command(address, "true"))
            await master.wait(lambda: bool(master.subscriptions))
            await master.send(Event(error=Event.Error(message="removed by an operator")))
            with pytest.raises(RunError, match="removed by an operator"):
                await running

    asyncio.run(main())


@pytest.mark.parametrize(
    ("state", "code", "expected"),
    [
        (common_pb2.TASK_FINISHED, None, 0),
        (common_pb2.TASK_FINISHED, 0, 0),
        (common_pb2.TASK_FAILED, 3, 3),
        (common_pb2.TASK_FAILED, None, EXIT_NO_CODE),
        (common_pb2.TASK_KILLED, None, EXIT_NO_CODE),
        (common_pb2.TASK_LOST, None, EXIT_NO_CODE),
        (common_pb2.TASK_ERROR, None, EXIT_NO_CODE),
    ],
)
def test_exit_codes_of_terminal_states(state: int, code: int | None, expected: int) -> None:
    status = common_pb2.TaskStatus(state=state)  # type: ignore[arg-type]
    if code is not None:
        status.exit_code = code
    assert exit_code(status) == expected
