"""The agent's reliable status updates (docs/protocol.md, Agent <-> master, point 5).

The manager's `send` is a recorder here: the messages it would put on the stream.
Every test runs its body with asyncio.run; waits are on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import agent.status_updates as status_updates
from agent.containerizer import TaskKey
from agent.status_updates import StatusUpdateManager
from corral.v1 import common_pb2

FW = "fw-1"
DEADLINE = 10.0


class Recorder:
    """Stands in for the session: records each StatusUpdates message the manager sends."""

    def __init__(self) -> None:
        self.batches: list[list[common_pb2.TaskStatus]] = []
        self.forgotten: list[TaskKey] = []

    def send(self, updates: list[common_pb2.TaskStatus]) -> None:
        self.batches.append([_copy(u) for u in updates])

    def forget(self, key: TaskKey) -> None:
        self.forgotten.append(key)

    @property
    def sent(self) -> list[common_pb2.TaskStatus]:
        return [u for batch in self.batches for u in batch]

    def manager(self, **kwargs: float) -> StatusUpdateManager:
        return StatusUpdateManager(self.send, on_forget=self.forget, **kwargs)


def _copy(status: common_pb2.TaskStatus) -> common_pb2.TaskStatus:
    out = common_pb2.TaskStatus()
    out.CopyFrom(status)
    return out


def status(
    task_id: str, state: common_pb2.TaskState.ValueType = common_pb2.TASK_RUNNING, framework_id: str = FW
) -> common_pb2.TaskStatus:
    return common_pb2.TaskStatus(task_id=task_id, framework_id=framework_id, state=state)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition`, failing after DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


async def batches(recorder: Recorder, count: int) -> None:
    await until(lambda: len(recorder.batches) >= count, f"{count} messages were sent")


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def test_each_update_gets_a_fresh_uuid_and_a_timestamp() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        first, second = status("a"), status("b")
        manager.update(first)
        manager.update(second)
        assert len(first.uuid) == 16
        assert len(second.uuid) == 16
        assert first.uuid != second.uuid
        assert first.timestamp > 0

    run(body)


def test_only_the_head_of_a_task_is_in_flight_and_acks_release_the_next() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        manager.connected()
        running = status("a", common_pb2.TASK_RUNNING)
        finished = status("a", common_pb2.TASK_FINISHED)
        manager.update(running)
        manager.update(finished)
        await batches(recorder, 1)
        assert [u.uuid for u in recorder.sent] == [running.uuid]

        assert manager.acknowledge(FW, "a", running.uuid)
        await batches(recorder, 2)
        assert [u.uuid for u in recorder.batches[1]] == [finished.uuid]
        assert recorder.forgotten == []

        assert manager.acknowledge(FW, "a", finished.uuid)
        assert recorder.forgotten == [(FW, "a")]
        assert list(manager.keys()) == []

    run(body)


def test_all_ready_heads_leave_in_one_message_per_loop_turn() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        manager.connected()
        updates = [status(f"t{i}") for i in range(100)]
        for update in updates:
            manager.update(update)
        await batches(recorder, 1)
        assert len(recorder.batches) == 1
        assert [u.uuid for u in recorder.batches[0]] == [u.uuid for u in updates]

        # Acknowledging them all at once (one Acknowledgements message) releases
        # their next updates together, again as one message.
        following = [status(f"t{i}", common_pb2.TASK_FINISHED) for i in range(100)]
        for update in following:
            manager.update(update)
        for update in updates:
            manager.acknowledge(FW, update.task_id, update.uuid)
        await batches(recorder, 2)
        assert len(recorder.batches) == 2
        assert [u.uuid for u in recorder.batches[1]] == [u.uuid for u in following]

    run(body)


def test_large_batches_are_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_updates, "MAX_BATCH", 3)

    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        manager.connected()
        for i in range(7):
            manager.update(status(f"t{i}"))
        await batches(recorder, 3)
        assert [len(b) for b in recorder.batches] == [3, 3, 1]

    run(body)


def test_nothing_is_sent_before_registration_and_heads_go_out_on_connect() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        a1, a2, b1 = status("a"), status("a", common_pb2.TASK_FAILED), status("b")
        for update in (a1, a2, b1):
            manager.update(update)
        await asyncio.sleep(0)  # A turn of the loop in which nothing may be sent.
        assert recorder.batches == []

        manager.connected()
        await batches(recorder, 1)
        assert [u.uuid for u in recorder.batches[0]] == [a1.uuid, b1.uuid]

    run(body)


def test_unacknowledged_heads_are_resent_after_a_reconnect() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        manager.connected()
        a, b = status("a"), status("b")
        manager.update(a)
        manager.update(b)
        await batches(recorder, 1)
        manager.acknowledge(FW, "b", b.uuid)

        manager.disconnected()
        later = status("c")
        manager.update(later)
        manager.connected()
        await batches(recorder, 2)
        # The same update (same uuid) again, plus what was queued meanwhile.
        assert [u.uuid for u in recorder.batches[1]] == [a.uuid, later.uuid]

    run(body)


def test_heads_are_retried_with_a_doubling_backoff_until_acknowledged() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager(initial_retry=0.02, max_retry=0.08)
        manager.connected()
        update = status("a")
        manager.update(update)
        await batches(recorder, 5)
        assert {u.uuid for u in recorder.sent} == {update.uuid}
        # 0.02 -> 0.04 -> 0.08, then capped.
        assert manager._streams[(FW, "a")].backoff == 0.08

        manager.acknowledge(FW, "a", update.uuid)
        sent = len(recorder.batches)
        # The retry entries of the acknowledged update expire without a resend.
        await until(lambda: not manager._retries and manager._retry_timer is None, "retries expired")
        assert len(recorder.batches) == sent

    run(body)


def test_a_new_head_starts_again_from_the_initial_retry_interval() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager(initial_retry=0.02, max_retry=60)
        manager.connected()
        first, second = status("a"), status("a", common_pb2.TASK_FINISHED)
        manager.update(first)
        manager.update(second)
        await batches(recorder, 3)  # Sent, then retried twice.
        manager.acknowledge(FW, "a", first.uuid)
        assert manager._streams[(FW, "a")].backoff == 0.02

    run(body)


def test_acknowledgements_that_match_no_head_change_nothing() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        manager.connected()
        head, queued = status("a"), status("a", common_pb2.TASK_FINISHED)
        manager.update(head)
        manager.update(queued)
        assert not manager.acknowledge(FW, "a", b"\x00" * 16)  # Unknown uuid.
        assert not manager.acknowledge(FW, "a", queued.uuid)  # Not the head.
        assert not manager.acknowledge(FW, "nope", head.uuid)  # Unknown task.
        assert not manager.acknowledge("fw-other", "a", head.uuid)  # Another framework's.
        assert [u.uuid for u in manager.pending((FW, "a"))] == [head.uuid, queued.uuid]

        assert manager.acknowledge(FW, "a", head.uuid)
        assert not manager.acknowledge(FW, "a", head.uuid)  # A duplicate.
        assert [u.uuid for u in manager.pending((FW, "a"))] == [queued.uuid]

    run(body)


def test_a_task_id_reused_before_the_old_terminal_update_is_acked_is_not_forgotten() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        manager.connected()
        old_end = status("a", common_pb2.TASK_FINISHED)
        new_start = status("a", common_pb2.TASK_RUNNING)
        manager.update(old_end)
        manager.update(new_start)
        manager.acknowledge(FW, "a", old_end.uuid)
        assert recorder.forgotten == []
        assert [u.uuid for u in manager.pending((FW, "a"))] == [new_start.uuid]

    run(body)


def test_a_non_terminal_ack_never_forgets_the_task() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        manager.connected()
        running = status("a", common_pb2.TASK_RUNNING)
        manager.update(running)
        manager.acknowledge(FW, "a", running.uuid)
        assert recorder.forgotten == []
        assert list(manager.keys()) == []

    run(body)


def test_forgetting_a_framework_drops_only_its_updates() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        manager.update(status("a", framework_id="fw-gone"))
        manager.update(status("b", framework_id="fw-gone"))
        manager.update(status("b", common_pb2.TASK_KILLED, framework_id="fw-gone"))
        kept = status("a", framework_id="fw-kept")
        manager.update(kept)
        assert manager.forget_framework("fw-gone") == 3
        manager.connected()
        await batches(recorder, 1)
        assert [u.uuid for u in recorder.sent] == [kept.uuid]

    run(body)


def test_nothing_is_sent_while_disconnected_not_even_retries() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager(initial_retry=0.01)
        manager.connected()
        manager.update(status("a"))
        await batches(recorder, 1)
        manager.disconnected()
        sent = len(recorder.batches)
        manager.update(status("b"))
        assert manager._retry_timer is None
        assert manager._flush_handle is None
        await asyncio.sleep(0)
        assert len(recorder.batches) == sent

    run(body)


def test_a_registration_reports_no_state_whose_update_has_not_left() -> None:
    """`reported_state` is what the master may have been sent already; a newer state
    waits for its reliable update, so the framework never hears of it twice."""

    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        key = (FW, "a")
        running = status("a", common_pb2.TASK_RUNNING)
        manager.update(running)
        # Never sent (not connected): nothing is acknowledged, so STAGING.
        assert manager.reported_state(key, common_pb2.TASK_RUNNING) == common_pb2.TASK_STAGING
        manager.connected()
        await batches(recorder, 1)
        assert manager.reported_state(key, common_pb2.TASK_RUNNING) == common_pb2.TASK_RUNNING
        manager.acknowledge(FW, "a", running.uuid)
        manager.disconnected()
        manager.update(status("a", common_pb2.TASK_FAILED))
        assert manager.reported_state(key, common_pb2.TASK_FAILED) == common_pb2.TASK_RUNNING

    run(body)


def test_restored_updates_keep_their_uuids_and_are_resent_on_connecting() -> None:
    async def body() -> None:
        recorder = Recorder()
        manager = recorder.manager()
        queued = [status("a", common_pb2.TASK_RUNNING), status("a", common_pb2.TASK_FINISHED)]
        for update in queued:
            update.uuid = bytes(16) if update.state == common_pb2.TASK_RUNNING else b"\1" * 16
        manager.restore((FW, "a"), queued, common_pb2.TASK_STAGING)
        # The head may have been sent before the restart.
        assert manager.reported_state((FW, "a"), common_pb2.TASK_FINISHED) == common_pb2.TASK_RUNNING
        manager.connected()
        await batches(recorder, 1)
        assert [u.uuid for u in recorder.sent] == [bytes(16)]
        manager.acknowledge(FW, "a", bytes(16))
        await batches(recorder, 2)
        assert recorder.batches[1][0].uuid == b"\1" * 16

    run(body)
