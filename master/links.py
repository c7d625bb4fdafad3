"""Queue-backed links: how the master's state machine talks to streams.

`Master` never writes to a gRPC stream itself; it puts messages on a link,
and the stream's servicer coroutine drains the queue. Closing a link ends the
stream after what was queued before it.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

M = TypeVar("M")


class QueueLink(Generic[M]):
    """An unbounded queue of outbound messages with an end marker."""

    __slots__ = ("closed", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[M | None] = asyncio.Queue()
        self.closed = False

    def send(self, message: M) -> None:
        if not self.closed:
            self.queue.put_nowait(message)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)

    async def next(self) -> M | None:
        """The next message, or None once the link is closed and drained."""
        return await self.queue.get()

    def drain_ready(self) -> list[M]:
        """Messages already queued, without waiting (stops at the end marker)."""
        out: list[M] = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is None:
                self.queue.put_nowait(None)
                break
            out.append(item)
        return out
