"""A task's sandbox files, found and read for the master (ReadFile -> FileData).

Only a task's `stdout` and `stderr` can be read, and only from its own sandbox:
the ids are checked against the strict id rules (they become path components),
the name against that short list, and the file is opened without following a
symlink and must be a regular file (a task could replace its `stdout` with a
link to /etc/shadow, or with a FIFO that would block the reader). Sandboxes of
finished tasks stay until something removes them, so their logs remain readable.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Final

from agent.containerizer.process import RUN_SEPARATOR, SANDBOXES
from corral import ids
from corral.v1 import agent_pb2

logger = logging.getLogger(__name__)

#: The files of a sandbox that the master may read.
READABLE: Final = ("stdout", "stderr")
#: The most one FileData carries; larger requests are cut to this.
MAX_CHUNK: Final = 64 * 1024


class SandboxFileError(Exception):
    """A file that cannot be served; the message is meant for the operator."""


def task_sandbox(work_dir: Path, framework_id: str, task_id: str) -> Path | None:
    """The sandbox of the task's latest run here, or None if it never ran here.

    A reused task id gets `<task_id>~1`, `~2`, ... (made in order, never
    removed one by one), so the last existing name is the latest run.
    """
    parent = work_dir / SANDBOXES / framework_id
    latest = None
    run = 0
    while True:
        path = parent / (task_id if run == 0 else f"{task_id}{RUN_SEPARATOR}{run}")
        if not path.is_dir():
            return latest
        latest = path
        run += 1


def read_file(work_dir: Path, request: agent_pb2.ReadFile) -> agent_pb2.FileData:
    """Answer one ReadFile: a chunk of the file, or an error saying why not."""
    answer = agent_pb2.FileData(request_id=request.request_id, offset=request.offset)
    try:
        size, data = _read(work_dir, request)
    except SandboxFileError as exc:
        logger.debug(
            "cannot serve %s: %s",
            request.name,
            exc,
            extra={"framework_id": request.framework_id, "task_id": request.task_id},
        )
        answer.error = str(exc)
        return answer
    answer.size = size
    answer.data = data
    return answer


def _read(work_dir: Path, request: agent_pb2.ReadFile) -> tuple[int, bytes]:
    try:
        ids.check_id("framework id", request.framework_id)
        ids.check_id("task id", request.task_id)
    except ids.InvalidId as exc:
        raise SandboxFileError(str(exc)) from None
    if request.name not in READABLE:
        raise SandboxFileError(f"only {' and '.join(READABLE)} can be read, not {request.name[:64]!r}")
    sandbox = task_sandbox(work_dir, request.framework_id, request.task_id)
    if sandbox is None:
        raise SandboxFileError(
            f"this agent has no sandbox for task {request.task_id} of framework {request.framework_id}"
        )
    root = (work_dir / SANDBOXES).resolve()
    if not sandbox.resolve().is_relative_to(root):
        raise SandboxFileError(f"the sandbox of task {request.task_id} leads outside the sandboxes")
    path = sandbox / request.name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SandboxFileError(f"task {request.task_id} has no {request.name} file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SandboxFileError(
                f"the {request.name} of task {request.task_id} is a symbolic link; it is not followed"
            ) from None
        raise SandboxFileError(
            f"cannot open the {request.name} of task {request.task_id}: {exc.strerror}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SandboxFileError(f"the {request.name} of task {request.task_id} is not a regular file")
        length = min(request.length, MAX_CHUNK)
        if length == 0 or request.offset >= info.st_size:
            return info.st_size, b""
        return info.st_size, os.pread(fd, length, request.offset)
    except OSError as exc:
        raise SandboxFileError(
            f"cannot read the {request.name} of task {request.task_id}: {exc.strerror}"
        ) from None
    finally:
        os.close(fd)
