"""Reliable status updates, as docs/protocol.md (and Mesos' status update manager) has them.

Every update gets a fresh uuid and joins its task's queue. Only the head of each
queue is in flight: the next update of a task is sent once the framework has
acknowledged the head (master -> agent `Acknowledgements`), so delivery is at least
once and in order per task. Heads are resent after every (re-)registration and on a
retry timer (2 s, doubling to 60 s). Once a task's terminal update is acknowledged,
the task is forgotten.

Throughput comes from batching: whatever becomes ready to send during one turn of
the event loop (many exits, many acknowledgements) leaves as one `StatusUpdates`
message. Retries are batched the same way, by one timer for all tasks.

Durability: the queues' changes go to a `Journal` (the agent's checkpoint) as they
happen — `update` (append), `acknowledge` (pop), `forget_framework` — and a batch
is sent only once the journal says its records are on disk, so an update is durable
before it can be acknowledged. A restarted agent refills the queues with `restore`
(same uuids) before it registers.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

from agent.containerizer import TaskKey
from corral.states import is_terminal
from corral.v1 import common_pb2

logger = logging.getLogger(__name__)

INITIAL_RETRY: Final = 2.0
MAX_RETRY: Final = 60.0
#: Updates per StatusUpdates message: a bound far below the 64 MiB message limit.
MAX_BATCH: Final = 10_000
#: Heads due for a retry within this many seconds of each other go out together.
RETRY_COALESCE: Final = 0.1

SendUpdates = Callable[[list[common_pb2.TaskStatus]], None]


class Journal(Protocol):
    """Where the queues' changes are made durable (agent.checkpoint.Checkpoint)."""

    def update(self, status: common_pb2.TaskStatus) -> None: ...

    def acknowledge(self, key: TaskKey, update_uuid: bytes) -> None: ...

    def forget_framework(self, framework_id: str) -> None: ...

    def durable(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every change recorded so far is on disk."""


@dataclass(slots=True, eq=False)
class _Stream:
    """The queue of one task's unacknowledged updates; the head is the one in flight."""

    pending: deque[common_pb2.TaskStatus] = field(default_factory=deque)
    backoff: float = INITIAL_RETRY
    #: Bumped whenever the head is (re)sent or popped, so that retry entries for an
    #: earlier send can be recognised as stale.
    generation: int = 0
    #: The head has been sent at least once (or may have been, before a restart).
    head_sent: bool = False


class StatusUpdateManager:
    """Per-task queues of reliable updates, sent through `send` while connected.

    The session calls `connected()` once the master has accepted the agent's
    registration, and `disconnected()` when the stream ends. `on_forget(key)` is
    called when a task's terminal update has been acknowledged and nothing else is
    queued for it. Create it inside the running event loop.
    """

    def __init__(
        self,
        send: SendUpdates,
        *,
        on_forget: Callable[[TaskKey], None],
        initial_retry: float = INITIAL_RETRY,
        max_retry: float = MAX_RETRY,
        journal: Journal | None = None,
    ) -> None:
        self._send = send
        self._journal = journal
        self._on_forget = on_forget
        self._initial_retry = initial_retry
        self._max_retry = max_retry
        self._loop = asyncio.get_running_loop()
        self._streams: dict[TaskKey, _Stream] = {}
        #: Tasks whose head should go out at the next flush (an ordered set).
        self._ready: dict[TaskKey, None] = {}
        self._flush_handle: asyncio.Handle | None = None
        #: (due time, key, generation) of every head in flight; stale entries are skipped.
        self._retries: list[tuple[float, TaskKey, int]] = []
        self._retry_timer: asyncio.TimerHandle | None = None
        self._connected = False
        #: The state of each task's last acknowledged update, while the task is known.
        self._acked: dict[TaskKey, common_pb2.TaskState.ValueType] = {}

    # -- what the agent calls ------------------------------------------------

    def update(self, status: common_pb2.TaskStatus) -> None:
        """Queue `status` for its task; give it a fresh uuid and, if unset, a timestamp."""
        status.uuid = uuid.uuid4().bytes
        if not status.timestamp:
            status.timestamp = time.time()
        if self._journal is not None:
            self._journal.update(status)
        key = (status.framework_id, status.task_id)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(backoff=self._initial_retry)
        stream.pending.append(status)
        if len(stream.pending) == 1:
            self._make_ready(key)

    def restore(
        self,
        key: TaskKey,
        pending: list[common_pb2.TaskStatus],
        acked_state: common_pb2.TaskState.ValueType | None,
    ) -> None:
        """Refill one task's queue from the checkpoint, uuids unchanged, before the
        agent registers. The head counts as sent: it may have been, before the restart."""
        if acked_state is not None:
            self._acked[key] = acked_state
        if not pending:
            return
        stream = self._streams[key] = _Stream(backoff=self._initial_retry, head_sent=True)
        stream.pending.extend(pending)

    def reported_state(
        self, key: TaskKey, current: common_pb2.TaskState.ValueType
    ) -> common_pb2.TaskState.ValueType:
        """The state to tell the master a task is in when registering: the newest
        state it may have been sent, so that a registration never announces a state
        whose reliable update has not left yet (the master would report it to the
        framework twice: once from the registration, once from the update)."""
        stream = self._streams.get(key)
        if stream is None or not stream.pending:
            return current
        if stream.head_sent:
            return stream.pending[0].state
        return self._acked.get(key, common_pb2.TASK_STAGING)

    def acknowledge(self, framework_id: str, task_id: str, update_uuid: bytes) -> bool:
        """Pop the task's head if `update_uuid` is its uuid; False if it matches nothing
        (a duplicate acknowledgement, or one for a task forgotten already)."""
        key = (framework_id, task_id)
        stream = self._streams.get(key)
        if stream is None or not stream.pending or stream.pending[0].uuid != update_uuid:
            logger.debug(
                "acknowledgement %s matches no update in flight",
                update_uuid.hex(),
                extra={"framework_id": framework_id, "task_id": task_id},
            )
            return False
        acked = stream.pending.popleft()
        if self._journal is not None:
            self._journal.acknowledge(key, update_uuid)
        stream.generation += 1
        stream.backoff = self._initial_retry
        stream.head_sent = False
        self._acked[key] = acked.state
        if stream.pending:
            self._make_ready(key)
            return True
        del self._streams[key]
        if is_terminal(acked.state):
            del self._acked[key]
            self._on_forget(key)
        return True

    def forget_framework(self, framework_id: str) -> int:
        """Drop every queued update of a framework that was removed; return how many."""
        if self._journal is not None:
            self._journal.forget_framework(framework_id)
        for key in [key for key in self._acked if key[0] == framework_id]:
            del self._acked[key]
        keys = [key for key in self._streams if key[0] == framework_id]
        dropped = 0
        for key in keys:
            dropped += len(self._streams.pop(key).pending)
            self._ready.pop(key, None)
        return dropped

    def pending(self, key: TaskKey) -> list[common_pb2.TaskStatus]:
        """The task's unacknowledged updates, oldest (the one in flight) first."""
        stream = self._streams.get(key)
        return list(stream.pending) if stream is not None else []

    def keys(self) -> Iterator[TaskKey]:
        """Every task with unacknowledged updates."""
        return iter(self._streams)

    # -- what the session calls ------------------------------------------------

    def connected(self) -> None:
        """The master accepted our registration: (re)send every head now."""
        self._connected = True
        self._clear_retries()
        for key, stream in self._streams.items():
            stream.generation += 1
            stream.backoff = self._initial_retry
            self._ready[key] = None
        self._schedule_flush()

    def disconnected(self) -> None:
        """The stream ended: hold everything until `connected` is called again."""
        self._connected = False
        self._ready.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._clear_retries()

    def close(self) -> None:
        """Cancel the timers (the agent is stopping); the queues stay as they are."""
        self.disconnected()

    # -- sending -------------------------------------------------------------

    def _make_ready(self, key: TaskKey) -> None:
        if self._connected:
            self._ready[key] = None
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._ready:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send the head of every ready task, in as few messages as possible."""
        self._flush_handle = None
        now = self._loop.time()
        batch: list[common_pb2.TaskStatus] = []
        for key in self._ready:
            stream = self._streams.get(key)
            if stream is None or not stream.pending:
                continue
            stream.generation += 1
            stream.head_sent = True
            heapq.heappush(self._retries, (now + stream.backoff, key, stream.generation))
            batch.append(stream.pending[0])
            if len(batch) == MAX_BATCH:
                self._emit(batch)
                batch = []
        self._ready.clear()
        if batch:
            self._emit(batch)
        self._arm_retry_timer()

    def _emit(self, batch: list[common_pb2.TaskStatus]) -> None:
        """Send once the updates are on disk: none may be acknowledged and then
        forgotten by a crash."""
        if self._journal is None:
            self._send(batch)
        else:
            self._journal.durable(functools.partial(self._send, batch))

    def _arm_retry_timer(self) -> None:
        if not self._retries:
            return
        due = self._retries[0][0]
        if self._retry_timer is not None:
            if self._retry_timer.when() <= due:
                return
            self._retry_timer.cancel()
        self._retry_timer = self._loop.call_at(due, self._on_retry_timer)

    def _on_retry_timer(self) -> None:
        self._retry_timer = None
        horizon = self._loop.time() + RETRY_COALESCE
        while self._retries and self._retries[0][0] <= horizon:
            _, key, generation = heapq.heappop(self._retries)
            stream = self._streams.get(key)
            if stream is None or stream.generation != generation:
                continue  # Acknowledged or resent since.
            stream.backoff = min(stream.backoff * 2, self._max_retry)
            self._ready[key] = None
        if self._ready:
            logger.debug("resending %d unacknowledged status updates", len(self._ready))
            self._schedule_flush()
        else:
            self._arm_retry_timer()

    def _clear_retries(self) -> None:
        self._retries.clear()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
