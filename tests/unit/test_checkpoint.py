"""The agent's checkpoint journal (agent/checkpoint.py): what is written is read back,
a torn last record is ignored, a corrupt middle one is refused, compaction keeps
only what is live. Real files in a tmp dir."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from agent.checkpoint import JOURNAL, META_DIR, Checkpoint, CheckpointError, State
from corral.v1 import common_pb2

FW = common_pb2.FrameworkInfo(id="fw-1", name="test")


def status(task_id: str, state: common_pb2.TaskState.ValueType) -> common_pb2.TaskStatus:
    return common_pb2.TaskStatus(framework_id=FW.id, task_id=task_id, state=state, uuid=uuid.uuid4().bytes)


def write_some(work: Path) -> tuple[common_pb2.TaskStatus, common_pb2.TaskStatus]:
    async def body() -> tuple[common_pb2.TaskStatus, common_pb2.TaskStatus]:
        checkpoint = Checkpoint(work)
        checkpoint.start(State(), "boot-1")
        checkpoint.task(FW, common_pb2.TaskInfo(task_id="a"), "process")
        checkpoint.handle(("fw-1", "a"), {"pid": "123", "start_time": "1.5"})
        running, finished = status("a", common_pb2.TASK_RUNNING), status("a", common_pb2.TASK_FINISHED)
        checkpoint.update(running)
        checkpoint.update(finished)
        checkpoint.acknowledge(("fw-1", "a"), running.uuid)
        checkpoint.task(FW, common_pb2.TaskInfo(task_id="b"), "process")
        checkpoint.forget(("fw-1", "b"))
        checkpoint.close()
        return running, finished

    return asyncio.run(body())


def load(work: Path) -> tuple[State, str | None]:
    async def body() -> tuple[State, str | None]:
        return Checkpoint(work).load()

    return asyncio.run(body())


def test_what_is_recorded_is_read_back_with_the_same_uuids(tmp_path: Path) -> None:
    _, finished = write_some(tmp_path)
    state, boot_id = load(tmp_path)
    assert boot_id == "boot-1"
    assert list(state.tasks) == [("fw-1", "a")]
    assert state.tasks[("fw-1", "a")].handle == {"pid": "123", "start_time": "1.5"}
    assert state.tasks[("fw-1", "a")].framework == FW
    assert [u.uuid for u in state.pending[("fw-1", "a")]] == [finished.uuid]
    assert state.acked[("fw-1", "a")] == common_pb2.TASK_RUNNING
    assert state.latest_state(("fw-1", "a")) == common_pb2.TASK_FINISHED


def test_no_checkpoint_loads_as_none(tmp_path: Path) -> None:
    state, boot_id = load(tmp_path)
    assert boot_id is None and not state.tasks


def test_a_torn_last_record_is_ignored(tmp_path: Path) -> None:
    write_some(tmp_path)
    journal = tmp_path / META_DIR / JOURNAL
    with open(journal, "ab") as file:
        file.write(b'{"op":"forget","framework_id":"fw-1","ta')
    state, _ = load(tmp_path)
    assert list(state.tasks) == [("fw-1", "a")]


def test_a_corrupt_record_in_the_middle_is_refused_with_a_way_out(tmp_path: Path) -> None:
    write_some(tmp_path)
    journal = tmp_path / META_DIR / JOURNAL
    journal.write_bytes(b"not json\n" + journal.read_bytes())
    with pytest.raises(CheckpointError, match="line 1 is corrupt"):
        load(tmp_path)


def test_starting_compacts_the_journal_to_what_is_live(tmp_path: Path) -> None:
    write_some(tmp_path)
    journal = tmp_path / META_DIR / JOURNAL
    before = journal.read_bytes().count(b"\n")

    async def restart() -> None:
        checkpoint = Checkpoint(tmp_path)
        state, boot_id = checkpoint.load()
        checkpoint.start(state, boot_id or "")
        checkpoint.close()

    asyncio.run(restart())
    after = journal.read_bytes().count(b"\n")
    assert after < before
    state, _ = load(tmp_path)
    assert list(state.tasks) == [("fw-1", "a")]
    assert state.acked[("fw-1", "a")] == common_pb2.TASK_RUNNING
    assert len(state.pending[("fw-1", "a")]) == 1
