"""The agent's end of `AgentService.Connect`: one bidirectional stream to the master.

Each connection sends `Register` first and waits for `Registered`; from then on it
sends a `Heartbeat` every interval the master asked for and hands every message
from the master to the agent (`SessionHandler`). Everything the agent writes goes
through one outbound queue that feeds the stream's request iterator, so writes
never interleave. When the stream ends, the session reconnects with exponential
backoff (0.1 s doubling to 5 s, with jitter), trying the configured masters in
turn (or the leader a standby named in its refusal), and registers again.
`Refused` ends the session for good (`AgentRefused`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncIterator, Sequence
from typing import Final, Protocol

import grpc

from corral import discovery, ids, net
from corral.v1 import agent_pb2, agent_pb2_grpc

logger = logging.getLogger(__name__)

INITIAL_BACKOFF: Final = 0.1
MAX_BACKOFF: Final = 5.0
#: How long the master may take to answer Register before the agent tries again.
REGISTRATION_TIMEOUT: Final = 15.0
#: Used when the master's Registered names no usable heartbeat interval.
DEFAULT_HEARTBEAT_INTERVAL: Final = 5.0
#: The longest pause between attempts while masters answer "not the leader",
#: or when several masters are configured (a failover is likely under way).
STANDBY_BACKOFF: Final = 0.4
#: Trailing metadata with which a standby master names the leader.
LEADER_METADATA_KEY: Final = "x-leader-addr"

_Outbound = asyncio.Queue[agent_pb2.AgentMessage | None]


class AgentRefused(Exception):
    """The master refused this agent; the message is the master's reason."""


class SessionHandler(Protocol):
    """What the session needs from the agent."""

    def registration(self) -> agent_pb2.Register:
        """The Register message for a new connection (who we are, what we run)."""

    def registered(self, message: agent_pb2.Registered) -> None:
        """The master accepted us; the session can send from now on."""

    def handle(self, message: agent_pb2.MasterMessage) -> None:
        """One message from the master after Registered (never Refused)."""

    def disconnected(self) -> None:
        """A registered connection ended."""


class Session:
    """Keeps the agent connected and registered to a master until cancelled."""

    def __init__(
        self,
        masters: Sequence[str],
        handler: SessionHandler,
        *,
        initial_backoff: float = INITIAL_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        registration_timeout: float = REGISTRATION_TIMEOUT,
    ) -> None:
        if not masters:
            raise ValueError("a session needs at least one master address")
        self._masters = tuple(masters)
        self._handler = handler
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._registration_timeout = registration_timeout
        #: The current connection's outbound queue, while it is registered.
        self._outbound: _Outbound | None = None
        #: The leader a standby master named in its refusal (tried next).
        self._redirect: str | None = None
        self._standby_refused = False

    @property
    def registered(self) -> bool:
        return self._outbound is not None

    def send(self, message: agent_pb2.AgentMessage) -> bool:
        """Queue `message` on the registered stream; False (and dropped) when there is none."""
        if self._outbound is None:
            return False
        self._outbound.put_nowait(message)
        return True

    async def run(self) -> None:
        """Connect, register and serve, reconnecting as needed; raise AgentRefused.

        Returns only by cancellation.
        """
        backoff = self._initial_backoff
        index = 0
        while True:
            address = self._redirect or self._masters[index % len(self._masters)]
            self._redirect = None
            discovered = discovery.is_etcd(address)
            if discovered:
                # Ask etcd who leads now; nobody (or no etcd) counts as a failed try.
                address = await discovery.find_leader(address) or ""
            if address and await self._connect_once(address):
                backoff = self._initial_backoff
            elif not self._redirect:
                # Never got registered there: try the next master (or, when a
                # standby named the leader, that one next).
                index += 1
            if self._standby_refused or len(self._masters) > 1 or discovered:
                # A master answered but does not lead, or one of several masters
                # is gone: an election is under way or just ended (the leader
                # named may still be the dead one until its lease expires), so
                # keep trying briskly.
                backoff = min(backoff, STANDBY_BACKOFF)
                self._standby_refused = False
            delay = min(backoff * random.uniform(0.5, 1.5), self._max_backoff)
            logger.info("reconnecting to a master in %.2f s", delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self._max_backoff)

    async def _connect_once(self, address: str) -> bool:
        """One stream to `address`; return whether it got registered."""
        outbound: _Outbound = asyncio.Queue()
        outbound.put_nowait(agent_pb2.AgentMessage(register=self._handler.registration()))
        channel = net.aio_channel(address)
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        call = stub.Connect(_requests(outbound))
        heartbeat: asyncio.Task[None] | None = None
        registered = False
        logger.info("connecting to master %s", address)
        try:
            async with asyncio.timeout(self._registration_timeout):
                first = await call.read()
            if not isinstance(first, agent_pb2.MasterMessage):
                logger.warning("master %s closed the stream before answering our registration", address)
                return False
            kind = first.WhichOneof("message")
            if kind == "refused":
                raise AgentRefused(first.refused.reason)
            if kind != "registered":
                logger.error(
                    "master %s answered our registration with %s; expected Registered", address, kind
                )
                return False
            try:
                ids.check_id("agent id", first.registered.agent_id)
            except ids.InvalidId as exc:
                logger.error("master %s sent a malformed Registered: %s", address, exc)
                return False
            self._outbound = outbound
            registered = True
            interval = _heartbeat_interval(first.registered.heartbeat_interval_seconds)
            logger.info(
                "registered with master %s as %s; heartbeat every %g s",
                address,
                first.registered.agent_id,
                interval,
                extra={"agent_id": first.registered.agent_id},
            )
            self._handler.registered(first.registered)
            heartbeat = asyncio.create_task(_heartbeats(outbound, interval))
            while True:
                message = await call.read()
                if not isinstance(message, agent_pb2.MasterMessage):
                    logger.warning("master %s closed the stream", address)
                    return True
                if message.WhichOneof("message") == "refused":
                    raise AgentRefused(message.refused.reason)
                self._handler.handle(message)
        except TimeoutError:
            logger.warning(
                "master %s did not answer our registration within %g s", address, self._registration_timeout
            )
            return registered
        except grpc.aio.AioRpcError as exc:
            logger.warning("stream to master %s ended: %s %s", address, exc.code().name, exc.details())
            self._redirect = _leader_hint(exc, address)
            self._standby_refused = exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            return registered
        except asyncio.InvalidStateError as exc:
            # What a write to a stream that has finished raises (not AioRpcError).
            logger.warning("stream to master %s ended: %s", address, exc)
            return registered
        finally:
            self._outbound = None
            outbound.put_nowait(None)
            if heartbeat is not None:
                heartbeat.cancel()
                await asyncio.wait([heartbeat])
            call.cancel()
            if registered:
                self._handler.disconnected()
            await channel.close()


async def _requests(outbound: _Outbound) -> AsyncIterator[agent_pb2.AgentMessage]:
    """The stream's request iterator: the outbound queue until its `None` sentinel."""
    while (message := await outbound.get()) is not None:
        yield message


async def _heartbeats(outbound: _Outbound, interval: float) -> None:
    beat = agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())
    while True:
        await asyncio.sleep(interval)
        outbound.put_nowait(beat)


def _heartbeat_interval(seconds: float) -> float:
    if math.isfinite(seconds) and seconds > 0:
        return seconds
    logger.warning(
        "master gave no usable heartbeat interval (%r); using %g s", seconds, DEFAULT_HEARTBEAT_INTERVAL
    )
    return DEFAULT_HEARTBEAT_INTERVAL


def _leader_hint(exc: grpc.aio.AioRpcError, address: str) -> str | None:
    """The leader's address a standby master named in its refusal, if any (and not `address`)."""
    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    for key, value in exc.trailing_metadata() or ():
        if key == LEADER_METADATA_KEY:
            hint = value if isinstance(value, str) else value.decode()
            return hint if hint and hint != address else None
    return None
