"""Task logs through the master: OperatorService.ReadTaskLog as a small proxy.

The master does not store output. For each piece it sends a `ReadFile` on the
agent's stream and waits for the agent's `FileData` with the same request id
(`FileRequests`); `read_task_log` turns those pieces into the client's stream.
With `follow` it polls the agent for new bytes until the task is terminal and
everything was read, or the client goes away (which cancels the generator).
See docs/protocol.md, "Task logs".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

import grpc

from corral.ids import InvalidId, check_id
from corral.states import is_terminal
from corral.v1 import agent_pb2, operator_pb2
from master.validation import Rejected

if TYPE_CHECKING:
    from master.master import Agent, Master, Task

logger = logging.getLogger(__name__)

#: The sandbox files a client may read.
NAMES: Final = ("stdout", "stderr")
#: Bytes asked for per ReadFile (the agent caps it at the same size).
CHUNK: Final = 64 * 1024
#: Pieces in flight at once while a long file is read (each is one round trip to the agent).
PIPELINE: Final = 8
#: Seconds between polls for new output while following a running task.
POLL_INTERVAL: Final = 0.25
#: Seconds an agent may take to answer one ReadFile.
ANSWER_TIMEOUT: Final = 10.0


class AgentGone(Exception):
    """The agent's stream closed while a ReadFile was in flight."""


class FileRequests:
    """ReadFile requests in flight, answered by the agents' FileData by request id."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[agent_pb2.FileData]]] = {}

    async def read(self, agent: Agent, request: agent_pb2.ReadFile) -> agent_pb2.FileData:
        """Send `request` (its request_id is set here) and wait for the agent's answer."""
        if agent.link is None:
            raise AgentGone()
        request_id = next(self._ids)
        request.request_id = request_id
        future: asyncio.Future[agent_pb2.FileData] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (agent.id, future)
        try:
            agent.link.send(agent_pb2.MasterMessage(read_file=request))
            return await asyncio.wait_for(future, ANSWER_TIMEOUT)
        finally:
            self._pending.pop(request_id, None)

    def answer(self, agent_id: str, data: agent_pb2.FileData) -> None:
        """An agent's FileData: complete the request it answers (only from that agent)."""
        entry = self._pending.get(data.request_id)
        if entry is None or entry[0] != agent_id:
            logger.debug(
                "dropping a FileData for request %d: nobody waits for it",
                data.request_id,
                extra={"agent_id": agent_id},
            )
            return
        if not entry[1].done():
            entry[1].set_result(data)

    def agent_gone(self, agent_id: str) -> None:
        """The agent disconnected: its unanswered requests fail now, not at their timeout."""
        for owner, future in self._pending.values():
            if owner == agent_id and not future.done():
                future.set_exception(AgentGone())


def _check_request(request: operator_pb2.ReadTaskLogRequest) -> str:
    """Validate the request; return the file name to read."""
    try:
        check_id("task id", request.task_id)
        if request.framework_id:
            check_id("framework id", request.framework_id)
    except InvalidId as exc:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    name = request.name or "stdout"
    if name not in NAMES:
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"a task's log is its {' or its '.join(NAMES)}, not {name[:64]!r}",
        )
    return name


def find_task(master: Master, task_id: str, framework_id: str = "") -> Task:
    """The task with this id (running, or finished and still remembered)."""
    if framework_id:
        framework = master.frameworks.get(framework_id)
        if framework is None:
            raise Rejected(grpc.StatusCode.NOT_FOUND, f"there is no framework {framework_id}")
        frameworks = [framework]
    else:
        frameworks = list(master.frameworks.values())
    found = []
    for framework in frameworks:
        task = framework.tasks.get(task_id) or framework.completed.get(task_id)
        if task is not None:
            found.append(task)
    if not found:
        where = f" of framework {framework_id}" if framework_id else ""
        raise Rejected(
            grpc.StatusCode.NOT_FOUND,
            f"the master knows no task {task_id}{where} (running, or finished recently)",
        )
    if len(found) > 1:
        owners = ", ".join(sorted(t.framework_id for t in found))
        raise Rejected(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"task id {task_id} is used by several frameworks ({owners}); say which with --framework",
        )
    return found[0]


class _LogReader:
    """Reads one task's file from its agent, piece by piece."""

    def __init__(self, master: Master, request: operator_pb2.ReadTaskLogRequest, name: str) -> None:
        self.master = master
        self.name = name
        self.task = find_task(master, request.task_id, request.framework_id)

    def refresh(self) -> Task:
        """The task as the master knows it now (its agent may have re-registered)."""
        # Rejected: forgotten meanwhile (its framework was torn down), so it has ended.
        with contextlib.suppress(Rejected):
            self.task = find_task(self.master, self.task.id, self.task.framework_id)
        return self.task

    def _agent(self) -> Agent:
        task = self.task
        agent = self.master.agents.get(task.agent_id)
        if agent is None or agent.link is None or agent.status != "active":
            status = agent.status if agent is not None else "gone"
            raise Rejected(
                grpc.StatusCode.UNAVAILABLE,
                f"agent {task.agent_id}, which ran task {task.id}, is {status}: its sandbox can be read "
                "only while it is connected",
            )
        return agent

    async def read(self, offset: int, length: int) -> agent_pb2.FileData:
        agent = self._agent()
        task = self.task
        request = agent_pb2.ReadFile(
            framework_id=task.framework_id, task_id=task.id, name=self.name, offset=offset, length=length
        )
        try:
            data = await self.master.files.read(agent, request)
        except AgentGone:
            raise Rejected(
                grpc.StatusCode.UNAVAILABLE,
                f"agent {agent.id} disconnected while reading the {self.name} of task {task.id}",
            ) from None
        except TimeoutError:
            raise Rejected(
                grpc.StatusCode.UNAVAILABLE,
                f"agent {agent.id} did not answer within {ANSWER_TIMEOUT:g} s",
            ) from None
        if data.error:
            raise Rejected(
                grpc.StatusCode.NOT_FOUND, f"agent {agent.id} cannot serve the {self.name}: {data.error}"
            )
        return data


async def read_task_log(
    master: Master, request: operator_pb2.ReadTaskLogRequest
) -> AsyncIterator[operator_pb2.TaskLogChunk]:
    """The task's stdout or stderr from `request.offset` (negative: from the end).

    Raises `Rejected` with the status to answer: INVALID_ARGUMENT (bad ids, name or
    offset), NOT_FOUND (no such task or file), FAILED_PRECONDITION (an ambiguous id),
    UNAVAILABLE (its agent is not connected).
    """
    name = _check_request(request)
    reader = _LogReader(master, request, name)
    first = await reader.read(0, 0)
    offset = request.offset if request.offset >= 0 else max(0, first.size + request.offset)
    if offset > first.size:
        raise Rejected(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"offset {offset} is past the end of the {name} ({first.size} bytes)",
        )
    window = 1
    while True:
        # Whether the task had ended *before* these reads: then they see all it wrote.
        ended = is_terminal(reader.refresh().state)
        pieces = await asyncio.gather(*(reader.read(offset + i * CHUNK, CHUNK) for i in range(window)))
        got = full = False
        for piece in pieces:
            if not piece.data:
                break
            yield operator_pb2.TaskLogChunk(offset=offset, data=piece.data)
            offset += len(piece.data)
            got, full = True, len(piece.data) == CHUNK
            if not full:
                # The end of the file when it was read: later pieces could only hold
                # bytes written since, after a gap; they are read again next time.
                break
        # In the middle of a long file, keep several pieces in flight.
        window = PIPELINE if full else 1
        if full or (got and request.follow):
            continue
        if got or not request.follow or ended:
            return
        await asyncio.sleep(POLL_INTERVAL)
