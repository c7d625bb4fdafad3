"""A small asyncio adapter over the blocking `etcd3` client (PyPI `python3-etcd3`).

It exists to handle, in one place, the client's known pitfalls
(shared/ENVIRONMENT.md, shared/reference/python-grpc-etcd-notes.md §4):

- A watch whose stream ends (etcd restarted, or the stream closed) kills the
  client's watch thread with `NameError: six`, and the watch stops silently.
  This module patches the missing name so that the callback receives the
  error, and `Watch` then re-watches from the last revision seen + 1.
- A single-endpoint client marks its endpoint failed for 300 s after one
  UNAVAILABLE, and keeps failing after etcd is back. We always use
  `MultiEndpointEtcd3Client` with failover and a short `time_retry`.
- `grpc_options` must be a list of tuples.
- There is no lease keep-alive: `KeptLease` refreshes at TTL/3 and reports the
  lease lost when no refresh succeeded for 2/3 of the TTL, before etcd can
  expire it, so that its holder stops acting in time (fencing).
- Every call blocks: all run in threads (`asyncio.to_thread`), and watch
  callbacks are handed to the event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Final, TypeVar

import etcd3
import etcd3.events
import etcd3.exceptions
import etcd3.watch
import grpc

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Pitfall 1: etcd3/watch.py calls `six.itervalues` without importing six.
if not hasattr(etcd3.watch, "six"):
    etcd3.watch.six = SimpleNamespace(itervalues=lambda d: iter(d.values()))

#: How long a failed endpoint is skipped before it is tried again.
ENDPOINT_RETRY_SECONDS: Final = 0.5
#: Deadline of every unary call.
CALL_TIMEOUT: Final = 2.0
#: Options for the client's channels: a list of tuples (pitfall 3).
GRPC_OPTIONS: Final[list[tuple[str, int]]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]

_UNAVAILABLE = (
    etcd3.exceptions.Etcd3Exception,
    grpc.RpcError,
    # "Trying to use a failed node" while an endpoint waits out its retry time.
    ValueError,
)


class EtcdUnavailable(ConnectionError):
    """etcd could not be reached or did not answer in time."""


def parse_endpoints(url: str) -> list[tuple[str, int]]:
    """Parse 'etcd://h1:2379,h2:2379' (the scheme is optional) into (host, port) pairs."""
    body = url.removeprefix("etcd://")
    endpoints: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in body.split(","))):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"etcd endpoint {part!r} is not HOST:PORT (in {url!r})")
        endpoints.append((host.strip("[]"), int(port)))
    if not endpoints:
        raise ValueError(f"{url!r} names no etcd endpoint; expected etcd://HOST:PORT[,HOST:PORT...]")
    return endpoints


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change to a watched key; `value` is None for a deletion."""

    key: str
    value: bytes | None
    revision: int
    create_revision: int


class Etcd:
    """An etcd client whose calls are coroutines and whose failures are `EtcdUnavailable`."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], timeout: float = CALL_TIMEOUT) -> None:
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._client = etcd3.MultiEndpointEtcd3Client(
            endpoints=[
                etcd3.Endpoint(host, port, secure=False, time_retry=ENDPOINT_RETRY_SECONDS, opts=GRPC_OPTIONS)
                for host, port in self.endpoints
            ],
            timeout=timeout,
            failover=True,
        )

    @classmethod
    def from_url(cls, url: str, timeout: float = CALL_TIMEOUT) -> Etcd:
        return cls(parse_endpoints(url), timeout)

    @property
    def transactions(self) -> Any:
        """The client's compare/operation builders (`create`, `value`, `put`, ...)."""
        return self._client.transactions

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except _UNAVAILABLE as exc:
            raise EtcdUnavailable(f"etcd at {self.describe()}: {_describe(exc)}") from None

    def describe(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.endpoints)

    async def get(self, key: str) -> KeyValue | None:
        value, meta = await self._call(self._client.get, key)
        if meta is None:
            return None
        return KeyValue(key, value, meta.create_revision, meta.mod_revision)

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        def read() -> list[KeyValue]:
            return [
                KeyValue(meta.key.decode(), value, meta.create_revision, meta.mod_revision)
                for value, meta in self._client.get_prefix(prefix)
            ]

        return await self._call(read)

    async def revision(self) -> int:
        """The store's current revision."""
        response = await self._call(self._client.get_response, "\0")
        return int(response.header.revision)

    async def put(self, key: str, value: bytes, lease: int | None = None) -> None:
        await self._call(self._client.put, key, value, lease=lease)

    async def delete(self, key: str) -> None:
        await self._call(self._client.delete, key)

    async def transaction(
        self, compare: list[Any], success: list[Any], failure: list[Any] | None = None
    ) -> tuple[bool, list[KeyValue]]:
        """Run a transaction: whether the comparisons held, and what its `get`s read, in order."""

        def run() -> tuple[bool, list[KeyValue]]:
            succeeded, responses = self._client.transaction(compare, success, failure or [])
            read = [
                KeyValue(meta.key.decode(), value, meta.create_revision, meta.mod_revision)
                for response in responses
                if isinstance(response, list)
                for value, meta in response
            ]
            return bool(succeeded), read

        return await self._call(run)

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its id."""
        lease = await self._call(self._client.lease, ttl)
        return int(lease.id)

    async def refresh(self, lease_id: int) -> int:
        """One keep-alive; the lease's remaining TTL (0: it has expired)."""

        def keep_alive() -> int:
            responses = list(self._client.refresh_lease(lease_id))
            return int(responses[-1].TTL) if responses else 0

        return await self._call(keep_alive)

    async def revoke(self, lease_id: int) -> None:
        await self._call(self._client.revoke_lease, lease_id)

    def watch(self, key: str, *, prefix: bool = False, start_revision: int | None = None) -> Watch:
        """Changes to `key` (or every key under it) from `start_revision` on, surviving etcd restarts."""
        return Watch(self, key, prefix, start_revision)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    # For Watch: the raw blocking calls.
    def _add_watch(self, key: str, prefix: bool, callback: Callable[[Any], None], start: int | None) -> int:
        kwargs: dict[str, Any] = {}
        if start is not None:
            kwargs["start_revision"] = start
        if prefix:
            return int(self._client.add_watch_prefix_callback(key, callback, **kwargs))
        return int(self._client.add_watch_callback(key, callback, **kwargs))

    def _cancel_watch(self, watch_id: int) -> None:
        self._client.cancel_watch(watch_id)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name} {exc.details()}"
    return str(exc) or type(exc).__name__


#: What a watch callback may hand to the loop: a response, or the error that ended the stream.
_WatchItem = Any


class Watch:
    """An async iterator of `WatchEvent`s that re-watches after the stream breaks.

    After a break it resumes from the last revision seen + 1, so no event is
    lost or repeated; when etcd compacted those revisions away it yields
    `None` once ("events were missed: read the key again") and resumes from
    the current revision.
    """

    def __init__(self, etcd: Etcd, key: str, prefix: bool, start_revision: int | None) -> None:
        self._etcd = etcd
        self._key = key
        self._prefix = prefix
        self._next_revision = start_revision
        self._queue: asyncio.Queue[_WatchItem] = asyncio.Queue()
        self._watch_id: int | None = None
        self._closed = False
        #: Times the watch was re-established after a break (for tests and logs).
        self.restarts = 0

    def __aiter__(self) -> AsyncIterator[WatchEvent | None]:
        return self._events()

    async def _events(self) -> AsyncIterator[WatchEvent | None]:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while not self._closed:
            # Each established watch tags what it delivers, so that items from
            # a stream that broke earlier are told apart and dropped.
            current = object()

            def deliver(item: _WatchItem, mine: object = current) -> None:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self._queue.put_nowait, (mine, item))

            try:
                self._watch_id = await asyncio.to_thread(
                    self._etcd._add_watch, self._key, self._prefix, deliver, self._next_revision
                )
            except etcd3.exceptions.RevisionCompactedError:
                self._next_revision = None
                yield None
                continue
            except _UNAVAILABLE as exc:
                logger.debug("watch on %s not established: %s; retrying", self._key, _describe(exc))
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            while True:
                mine, item = await self._queue.get()
                if mine is not current:
                    continue  # left over from a broken stream
                if isinstance(item, etcd3.exceptions.RevisionCompactedError):
                    logger.warning("watch on %s: revisions compacted; re-reading", self._key)
                    self._next_revision = None
                    yield None
                    break
                if isinstance(item, BaseException):
                    self.restarts += 1
                    logger.info(
                        "watch on %s broke (%s); resuming from revision %s",
                        self._key,
                        _describe(item),
                        self._next_revision,
                    )
                    break
                self._next_revision = int(item.header.revision) + 1
                for event in item.events:
                    deleted = isinstance(event, etcd3.events.DeleteEvent)
                    yield WatchEvent(
                        key=event.key.decode(),
                        value=None if deleted else bytes(event.value),
                        revision=int(event.mod_revision),
                        create_revision=0 if deleted else int(event.create_revision),
                    )

    async def cancel(self) -> None:
        self._closed = True
        if self._watch_id is not None:
            with contextlib.suppress(EtcdUnavailable):
                await self._etcd._call(self._etcd._cancel_watch, self._watch_id)


class KeptLease:
    """A lease kept alive at TTL/3; `lost` is set once it can no longer be trusted.

    The lease counts as lost when a refresh reports it expired, or when no
    refresh sent within the last `2/3 * ttl` seconds succeeded: its holder
    must stop acting then, while etcd still holds the lease for at least a
    third of its TTL, so that no successor can act at the same time.
    """

    def __init__(self, etcd: Etcd, ttl: float) -> None:
        self.etcd = etcd
        self.ttl = max(1, round(ttl))
        self.id = 0
        self.lost = asyncio.Event()
        #: Monotonic time at which the last successful refresh (or the grant) was sent.
        self.renewed_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def trust_seconds(self) -> float:
        """How long after a refresh was sent the lease is trusted without another."""
        return self.ttl * 2 / 3

    async def grant(self) -> None:
        sent = time.monotonic()
        self.id = await self.etcd.grant(self.ttl)
        self.renewed_at = sent
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    def valid(self) -> bool:
        return not self.lost.is_set() and time.monotonic() - self.renewed_at < self.trust_seconds

    async def _keep_alive(self) -> None:
        interval = self.ttl / 3
        try:
            while True:
                deadline = self.renewed_at + self.trust_seconds
                await asyncio.sleep(max(0.0, min(interval, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    logger.warning("lease %x not renewed within %.1f s: lost", self.id, self.trust_seconds)
                    return
                sent = time.monotonic()
                try:
                    async with asyncio.timeout(max(0.1, deadline - sent)):
                        remaining = await self.etcd.refresh(self.id)
                except (EtcdUnavailable, TimeoutError) as exc:
                    logger.info("lease %x refresh failed: %s", self.id, exc or "timed out")
                    await asyncio.sleep(min(0.2, interval))
                    continue
                if remaining <= 0:
                    logger.warning("lease %x has expired in etcd: lost", self.id)
                    return
                self.renewed_at = sent
        finally:
            self.lost.set()

    async def revoke(self) -> None:
        """Stop refreshing and give the lease back (best effort)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.lost.set()
        if self.id:
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.revoke(self.id)
