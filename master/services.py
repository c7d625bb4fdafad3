"""The master's gRPC services: thin adapters from calls and streams to `Master`.

Each handler validates nothing itself: `Master` and `master.validation` do,
and raise `Rejected` with the status code to answer with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc

from corral.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from master.links import QueueLink
from master.logs import read_task_log
from master.master import Master
from master.validation import Rejected

logger = logging.getLogger(__name__)

#: How long a new agent stream may take to send its Register.
REGISTER_TIMEOUT = 10.0

Req = TypeVar("Req")


class NotLeading(Rejected):
    """This master does not lead (any more): it must not act."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, "not the leader")


class _UsesMaster:
    """A servicer over the current state machine: a fixed `Master`, or, with
    replicated masters, a function that returns the leader's state machine
    and raises `NotLeading` when this master does not lead at that instant
    (checked on every use, so a stream opened under a lost term stops)."""

    def __init__(self, master: Master | Callable[[], Master]) -> None:
        self._master = master

    @property
    def master(self) -> Master:
        return self._master if isinstance(self._master, Master) else self._master()


class AgentService(_UsesMaster, agent_pb2_grpc.AgentServiceServicer):
    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext[agent_pb2.AgentMessage, agent_pb2.MasterMessage],
    ) -> AsyncIterator[agent_pb2.MasterMessage]:
        messages = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(anext(messages), REGISTER_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            return
        if first.WhichOneof("message") != "register":
            yield agent_pb2.MasterMessage(
                refused=agent_pb2.Refused(reason="the first message must be Register")
            )
            return
        link: QueueLink[agent_pb2.MasterMessage] = QueueLink()
        try:
            registered = self.master.register_agent(link, first.register)
        except Rejected as exc:
            logger.warning("refused an agent registration from %s: %s", context.peer(), exc.message)
            yield agent_pb2.MasterMessage(refused=agent_pb2.Refused(reason=exc.message))
            return
        agent_id = registered.agent_id
        reader = asyncio.create_task(self._read(agent_id, link, messages))
        try:
            yield agent_pb2.MasterMessage(registered=registered)
            while (message := await link.next()) is not None:
                yield message
        finally:
            reader.cancel()
            with contextlib.suppress(NotLeading):  # a deposed master forgot the agent already
                self.master.agent_disconnected(agent_id, link)

    async def _read(
        self,
        agent_id: str,
        link: QueueLink[agent_pb2.MasterMessage],
        messages: AsyncIterator[agent_pb2.AgentMessage],
    ) -> None:
        try:
            async for message in messages:
                self.master.agent_message(agent_id, link, message)
        except grpc.aio.AioRpcError as exc:
            logger.info("agent %s stream broke: %s", agent_id, exc.code(), extra={"agent_id": agent_id})
        except NotLeading:
            logger.info("closing agent %s's stream: not the leader", agent_id, extra={"agent_id": agent_id})
        finally:
            link.close()


class SchedulerService(_UsesMaster, scheduler_pb2_grpc.SchedulerServiceServicer):
    async def Subscribe(
        self,
        request: scheduler_pb2.SubscribeRequest,
        context: grpc.aio.ServicerContext[scheduler_pb2.SubscribeRequest, scheduler_pb2.Event],
    ) -> AsyncIterator[scheduler_pb2.Event]:
        link: QueueLink[scheduler_pb2.Event] = QueueLink()
        try:
            subscribed = self.master.subscribe(link, request)
        except Rejected as exc:
            await context.abort(exc.code, exc.message)
        try:
            yield scheduler_pb2.Event(subscribed=subscribed)
            while (event := await link.next()) is not None:
                yield event
        finally:
            with contextlib.suppress(NotLeading):  # a deposed master forgot the framework already
                self.master.framework_disconnected(subscribed.framework_id, link)

    async def _call(
        self,
        fn: Callable[[Req], None],
        request: Req,
        context: grpc.aio.ServicerContext[Req, scheduler_pb2.CallResponse],
    ) -> scheduler_pb2.CallResponse:
        try:
            fn(request)
        except Rejected as exc:
            await context.abort(exc.code, exc.message)
        return scheduler_pb2.CallResponse()

    async def Accept(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(self.master.accept, request, context)

    async def Decline(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(self.master.decline, request, context)

    async def Revive(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(self.master.revive, request, context)

    async def Suppress(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(self.master.suppress, request, context)

    async def Kill(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(self.master.kill, request, context)

    async def Acknowledge(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(self.master.acknowledge, request, context)

    async def Reconcile(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(self.master.reconcile, request, context)

    async def Teardown(self, request, context):  # type: ignore[no-untyped-def]
        return await self._call(self.master.teardown, request, context)


class OperatorService(_UsesMaster, operator_pb2_grpc.OperatorServiceServicer):
    async def GetState(
        self,
        request: operator_pb2.GetStateRequest,
        context: grpc.aio.ServicerContext[operator_pb2.GetStateRequest, operator_pb2.State],
    ) -> operator_pb2.State:
        return self.master.state()

    async def ReadTaskLog(
        self,
        request: operator_pb2.ReadTaskLogRequest,
        context: grpc.aio.ServicerContext[operator_pb2.ReadTaskLogRequest, operator_pb2.TaskLogChunk],
    ) -> AsyncIterator[operator_pb2.TaskLogChunk]:
        try:
            async for chunk in read_task_log(self.master, request):
                yield chunk
        except Rejected as exc:
            await context.abort(exc.code, exc.message)
