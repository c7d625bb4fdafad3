"""The agent's checkpoint: what it runs, kept durably in its work dir.

A restarted agent (an upgrade, a crash, kill -9) reads this back to re-adopt its
tasks, resend their unacknowledged status updates with the same uuids and register
again with the same agent id. It lives in `<work_dir>/meta/`:

- `journal`: JSON lines, one record per change — a task accepted (`task`: its
  FrameworkInfo, TaskInfo and containerizer), where it runs (`handle`: what the
  containerizer needs to find it again, e.g. pid and process start time, or a
  container id), a status update queued (`update`: the whole TaskStatus, uuid
  included), acknowledged (`ack`), a task forgotten (`forget`) or a framework's
  updates dropped (`drop_framework`).
- `boot_id`: the kernel's boot id when the journal was written; another boot id
  means the host rebooted and nothing the journal names can still run.

Why a journal rather than a file per task rewritten by write-then-rename: the hot
path (many launches and updates per event loop turn) then costs one `write` and one
`fdatasync` per batch, whatever the number of changes. Records are buffered and
handed at the end of the loop turn to one writer thread, which appends and
fdatasyncs them; whatever is recorded while it writes goes in its next write (group
commit), so the loop never blocks on the disk and a busy agent needs far fewer
fdatasyncs than changes. A status update leaves the agent only once its record is
on disk (`durable`), so nobody can acknowledge an update a crash could forget.
A crash can only tear the last line, which loading ignores. When the journal
has grown well past what is live, it is compacted: the live state is written to a
temporary file, fsynced, renamed over the journal and the directory fsynced, so the
journal is always either the old one or the new one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.containerizer import TaskKey
from corral.v1 import common_pb2

logger = logging.getLogger(__name__)

META_DIR: Final = "meta"
JOURNAL: Final = "journal"
BOOT_ID: Final = "boot_id"
BOOT_ID_SOURCE: Final = Path("/proc/sys/kernel/random/boot_id")
#: Compact once the journal holds this many records more than the live state needs.
COMPACT_SLACK: Final = 10_000


class CheckpointError(Exception):
    """The checkpoint cannot be read or written; the message says what to do."""


@dataclass(slots=True, eq=False)
class TaskRecord:
    """One checkpointed task."""

    framework: common_pb2.FrameworkInfo
    info: common_pb2.TaskInfo
    containerizer: str
    handle: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> TaskKey:
        return (self.framework.id, self.info.task_id)


@dataclass(slots=True, eq=False)
class State:
    """What a journal says: the tasks, their unacknowledged updates (oldest first),
    and the state of each task's last acknowledged update."""

    tasks: dict[TaskKey, TaskRecord] = field(default_factory=dict)
    pending: dict[TaskKey, list[common_pb2.TaskStatus]] = field(default_factory=dict)
    acked: dict[TaskKey, common_pb2.TaskState.ValueType] = field(default_factory=dict)

    def latest_state(self, key: TaskKey) -> common_pb2.TaskState.ValueType:
        """The task's state as its newest update says (STAGING before any update)."""
        pending = self.pending.get(key)
        if pending:
            return pending[-1].state
        return self.acked.get(key, common_pb2.TASK_STAGING)

    def add_task(self, task: TaskRecord) -> None:
        self.tasks[task.key] = task

    def set_handle(self, key: TaskKey, handle: dict[str, str]) -> None:
        task = self.tasks.get(key)
        if task is not None:
            task.handle = handle

    def add_update(self, status: common_pb2.TaskStatus) -> None:
        self.pending.setdefault((status.framework_id, status.task_id), []).append(status)

    def acknowledge(self, key: TaskKey, update_uuid: bytes) -> None:
        queue = self.pending.get(key)
        if queue and queue[0].uuid == update_uuid:
            self.acked[key] = queue.pop(0).state
            if not queue:
                del self.pending[key]

    def forget(self, key: TaskKey) -> None:
        self.tasks.pop(key, None)
        self.pending.pop(key, None)
        self.acked.pop(key, None)

    def drop_framework(self, framework_id: str) -> None:
        for table in (self.pending, self.acked):
            for key in [k for k in table if k[0] == framework_id]:
                del table[key]

    def apply(self, record: dict[str, Any]) -> None:
        """Replay one journal record."""
        op = record["op"]
        if op == "task":
            framework = common_pb2.FrameworkInfo.FromString(_unb64(record["framework"]))
            info = common_pb2.TaskInfo.FromString(_unb64(record["info"]))
            self.add_task(TaskRecord(framework, info, str(record["containerizer"])))
        elif op == "update":
            self.add_update(common_pb2.TaskStatus.FromString(_unb64(record["status"])))
        elif op == "drop_framework":
            self.drop_framework(str(record["framework_id"]))
        else:
            key = (str(record["framework_id"]), str(record["task_id"]))
            if op == "handle":
                self.set_handle(key, {str(k): str(v) for k, v in record["handle"].items()})
            elif op == "ack":
                self.acknowledge(key, bytes.fromhex(record["uuid"]))
            elif op == "acked":
                self.acked[key] = record["state"]
            elif op == "forget":
                self.forget(key)
            else:
                raise ValueError(f"unknown record {op!r}")

    def records(self) -> list[dict[str, Any]]:
        """The journal records that rebuild this state (for compaction)."""
        out: list[dict[str, Any]] = []
        for task in self.tasks.values():
            out.append(_task_record(task.framework, task.info, task.containerizer))
            if task.handle:
                out.append(_handle_record(task.key, task.handle))
        for key, state in self.acked.items():
            out.append({"op": "acked", "framework_id": key[0], "task_id": key[1], "state": state})
        for queue in self.pending.values():
            out.extend(_update_record(status) for status in queue)
        return out

    @property
    def live_records(self) -> int:
        return 2 * len(self.tasks) + len(self.acked) + sum(len(q) for q in self.pending.values())


def current_boot_id() -> str:
    """This boot's id; "" where the kernel has none (then reboots go unnoticed)."""
    try:
        return BOOT_ID_SOURCE.read_text().strip()
    except OSError:
        return ""


class Checkpoint:
    """The journal of one agent's work dir. Create it inside the running event loop.

    `load()` once at start-up; then record changes as they happen. Every record
    also updates the in-memory `state`, which compaction writes out. Nothing is
    written before `start`.
    """

    def __init__(self, work_dir: Path) -> None:
        self.dir = work_dir / META_DIR
        self.state = State()
        self._loop = asyncio.get_running_loop()
        self._buffer: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._fd = -1
        self._journal_records = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        #: A write is under way in the writer thread.
        self._writing = False
        #: Callbacks waiting for the write under way, and for the buffered records.
        self._in_flight: list[Callable[[], None]] = []
        self._waiting: list[Callable[[], None]] = []

    # -- start-up --------------------------------------------------------------

    def load(self) -> tuple[State, str | None]:
        """Read the journal: (its state, the boot id it was written under, or None
        when there is no checkpoint)."""
        journal = self.dir / JOURNAL
        try:
            data = journal.read_bytes()
        except FileNotFoundError:
            return State(), None
        except OSError as exc:
            raise CheckpointError(f"cannot read {journal}: {exc.strerror or exc}") from None
        try:
            boot_id: str | None = (self.dir / BOOT_ID).read_text().strip()
        except FileNotFoundError:
            boot_id = ""
        except OSError as exc:
            raise CheckpointError(f"cannot read {self.dir / BOOT_ID}: {exc.strerror or exc}") from None
        state = State()
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line:
                continue
            try:
                state.apply(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                if number == len(lines) and not data.endswith(b"\n"):
                    logger.warning("ignoring the torn last record of %s (a crash while writing it)", journal)
                    break
                raise CheckpointError(
                    f"{journal} line {number} is corrupt ({exc}); start the agent with "
                    "--recover=cleanup after removing that file to start afresh"
                ) from None
        self._journal_records = len(lines)
        return state, boot_id

    def start(self, state: State, boot_id: str) -> None:
        """Begin a new journal holding `state` (compacted), under this `boot_id`."""
        self.state = state
        self._buffer.clear()  # Anything recorded before is in `state` or superseded by it.
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.dir / BOOT_ID, (boot_id + "\n").encode())
            self._compact()
        except OSError as exc:
            raise CheckpointError(
                f"cannot write the checkpoint in {self.dir}: {exc.strerror or exc}"
            ) from None

    def discard(self) -> None:
        """Remove the checkpoint (a reboot, or --recover=cleanup): start afresh."""
        for name in (JOURNAL, BOOT_ID):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()
        self.state = State()

    # -- records ---------------------------------------------------------------

    def task(
        self, framework: common_pb2.FrameworkInfo, info: common_pb2.TaskInfo, containerizer: str
    ) -> None:
        """A task was accepted (before it is launched)."""
        self.state.add_task(TaskRecord(framework, info, containerizer))
        self._append(_task_record(framework, info, containerizer))

    def handle(self, key: TaskKey, handle: dict[str, str]) -> None:
        """Where a launched task runs, as its containerizer describes it."""
        self.state.set_handle(key, handle)
        self._append(_handle_record(key, handle))

    def update(self, status: common_pb2.TaskStatus) -> None:
        """A status update was queued (with its uuid)."""
        self.state.add_update(status)
        self._append(_update_record(status))

    def acknowledge(self, key: TaskKey, update_uuid: bytes) -> None:
        """The head update of a task was acknowledged."""
        self.state.acknowledge(key, update_uuid)
        self._append({"op": "ack", "framework_id": key[0], "task_id": key[1], "uuid": update_uuid.hex()})

    def forget(self, key: TaskKey) -> None:
        """The agent is done with a task."""
        self.state.forget(key)
        self._append({"op": "forget", "framework_id": key[0], "task_id": key[1]})

    def forget_framework(self, framework_id: str) -> None:
        """A framework was removed: its updates are dropped."""
        self.state.drop_framework(framework_id)
        self._append({"op": "drop_framework", "framework_id": framework_id})

    # -- writing ---------------------------------------------------------------

    def durable(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the loop once every change recorded so far is on disk.

        Group commit: one writer thread writes and fdatasyncs whatever has been
        recorded since its last write, so under load many loop turns share one
        fdatasync and the loop never waits for the disk.
        """
        if self._buffer:
            self._waiting.append(callback)
            self._write_soon()
        elif self._writing:
            self._in_flight.append(callback)
        else:
            callback()

    def close(self) -> None:
        """Write what is recorded and close the journal (the agent is stopping)."""
        self._executor.shutdown(wait=True)
        if self._fd >= 0:
            data, self._buffer = b"".join(self._buffer), []
            try:
                self._write(data)
            except OSError as exc:
                logger.error("cannot write the checkpoint %s: %s", self.dir / JOURNAL, exc)
            os.close(self._fd)
            self._fd = -1

    def _append(self, record: dict[str, Any]) -> None:
        """Buffer a record whose change `state` holds already; write it soon."""
        self._buffer.append(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._write_soon()

    def _write_soon(self) -> None:
        """Hand the buffer to the writer thread at the end of this loop turn, unless
        a write is under way (its completion hands over what piled up meanwhile)."""
        if self._flush_handle is None and not self._writing and self._fd >= 0:
            self._flush_handle = self._loop.call_soon(self._start_write)

    def _start_write(self) -> None:
        self._flush_handle = None
        if self._writing or not self._buffer:
            return
        data, self._buffer = b"".join(self._buffer), []
        self._in_flight, self._waiting = self._waiting, []
        self._writing = True
        done = self._loop.run_in_executor(self._executor, self._write, data)
        done.add_done_callback(self._written)

    def _write(self, data: bytes) -> None:
        """In the writer thread (or at close): append and fdatasync."""
        _write_all(self._fd, data)
        os.fdatasync(self._fd)
        self._journal_records += data.count(b"\n")

    def _written(self, done: asyncio.Future[None]) -> None:
        self._writing = False
        if done.cancelled() or done.exception() is not None:
            # Keep running: losing the checkpoint must not stop the tasks; a restart
            # before the next successful write may forget these changes.
            logger.error("cannot write the checkpoint %s: %s", self.dir / JOURNAL, done.exception())
        waiters, self._in_flight = self._in_flight, []
        for callback in waiters:
            callback()
        if self._fd < 0:
            return  # Closed meanwhile.
        if self._journal_records > COMPACT_SLACK and (
            self._journal_records > 2 * self.state.live_records + COMPACT_SLACK
        ):
            try:
                self._compact()
            except OSError as exc:
                logger.error("cannot compact the checkpoint %s: %s", self.dir / JOURNAL, exc)
        if self._buffer:
            self._write_soon()

    def _compact(self) -> None:
        """Replace the journal with the live state: temp file, fsync, rename, fsync dir."""
        records = self.state.records()
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        _write_atomically(self.dir / JOURNAL, data)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.dir / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._journal_records = len(records)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _task_record(
    framework: common_pb2.FrameworkInfo, info: common_pb2.TaskInfo, containerizer: str
) -> dict[str, Any]:
    return {
        "op": "task",
        "framework": _b64(framework.SerializeToString()),
        "info": _b64(info.SerializeToString()),
        "containerizer": containerizer,
    }


def _handle_record(key: TaskKey, handle: dict[str, str]) -> dict[str, Any]:
    return {"op": "handle", "framework_id": key[0], "task_id": key[1], "handle": handle}


def _update_record(status: common_pb2.TaskStatus) -> dict[str, Any]:
    return {"op": "update", "status": _b64(status.SerializeToString())}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_atomically(path: Path, data: bytes) -> None:
    """Write-then-rename with fsyncs, so a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
