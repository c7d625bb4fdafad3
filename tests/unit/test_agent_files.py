"""The agent's sandbox file reader on a real directory tree: what it serves and what it refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.files import MAX_CHUNK, read_file, task_sandbox
from corral.v1 import agent_pb2


def sandbox(work: Path, task: str = "t1", framework: str = "fw") -> Path:
    path = work / "sandboxes" / framework / task
    path.mkdir(parents=True)
    return path


def ask(work: Path, **fields: object) -> agent_pb2.FileData:
    request = {"request_id": 7, "framework_id": "fw", "task_id": "t1", "name": "stdout", "length": 100}
    request.update(fields)
    return read_file(work, agent_pb2.ReadFile(**request))  # type: ignore[arg-type]


def test_reads_a_piece_and_reports_the_size(tmp_path: Path) -> None:
    (sandbox(tmp_path) / "stdout").write_bytes(b"hello world")
    answer = ask(tmp_path, offset=6, length=3)
    assert (answer.request_id, answer.offset, answer.data, answer.size, answer.error) == (
        7,
        6,
        b"wor",
        11,
        "",
    )
    assert ask(tmp_path, offset=11).data == b""
    assert ask(tmp_path, length=0).size == 11


def test_a_piece_is_capped(tmp_path: Path) -> None:
    (sandbox(tmp_path) / "stderr").write_bytes(b"x" * (3 * MAX_CHUNK))
    answer = ask(tmp_path, name="stderr", length=2**32 - 1)
    assert len(answer.data) == MAX_CHUNK and answer.size == 3 * MAX_CHUNK


def test_the_latest_run_of_a_reused_task_id_is_read(tmp_path: Path) -> None:
    (sandbox(tmp_path) / "stdout").write_bytes(b"first run")
    (sandbox(tmp_path, "t1~1") / "stdout").write_bytes(b"second run")
    assert task_sandbox(tmp_path, "fw", "t1") == tmp_path / "sandboxes" / "fw" / "t1~1"
    assert ask(tmp_path).data == b"second run"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"name": "../../../etc/passwd"}, "only stdout and stderr"),
        ({"name": "/etc/passwd"}, "only stdout and stderr"),
        ({"name": "marker"}, "only stdout and stderr"),
        ({"task_id": "../fw/t1"}, "task id"),
        ({"task_id": ".."}, "task id"),
        ({"framework_id": "../../etc"}, "framework id"),
        ({"task_id": "never-ran"}, "no sandbox"),
    ],
)
def test_hostile_or_unknown_requests_are_refused(tmp_path: Path, fields: dict[str, str], words: str) -> None:
    (sandbox(tmp_path) / "stdout").write_bytes(b"secret-free")
    answer = ask(tmp_path, **fields)
    assert words in answer.error and answer.data == b"" and answer.size == 0


def test_a_symlink_or_fifo_in_place_of_stdout_is_refused(tmp_path: Path) -> None:
    box = sandbox(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("root's secret")
    (box / "stdout").symlink_to(secret)
    os.mkfifo(box / "stderr")
    assert "symbolic link" in ask(tmp_path).error
    # A FIFO would block a reader forever; it is refused without blocking.
    assert "not a regular file" in ask(tmp_path, name="stderr").error


def test_a_sandbox_that_leads_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "stdout").write_text("not a task's")
    (tmp_path / "sandboxes" / "fw").mkdir(parents=True)
    (tmp_path / "sandboxes" / "fw" / "t1").symlink_to(outside)
    assert "outside" in ask(tmp_path).error
