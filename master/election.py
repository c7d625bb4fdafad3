"""Leader election behind one interface, as Mesos' contender and detector.

A master campaigns (`Election.campaign`), leads until `Election.wait_lost`
returns, and checks `Election.leading()` before it acts. Every master, leader
or standby, can say who leads (`Election.leader`), which is what standbys
put in their refusals and what operators see.

- `StandaloneElection`: a single master without etcd, always the leader.
- `EtcdElection`: an etcd lease plus a compare-and-swap on one key, whose
  value names the leader (its advertised address and master id) and whose
  create revision is the leader's term. Fencing: the leader counts itself
  deposed once no lease refresh succeeded for 2/3 of the TTL (before etcd can
  expire the lease and let a successor in), and every registry write compares
  the key's create revision with the term (`EtcdStore`), so a deposed leader's
  late writes fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final

from corral.discovery import election_key
from corral.etcd import Etcd, EtcdUnavailable, KeptLease, WatchEvent

logger = logging.getLogger(__name__)

#: Default lease TTL (seconds): a new leader serves within about this long.
DEFAULT_TTL: Final = 3.0


@dataclass(frozen=True, slots=True)
class Leader:
    """Who leads: the election key's content and its term."""

    address: str
    master_id: str
    #: Grows with every election: the election key's create revision (0 standalone).
    term: int
    #: Seconds since the epoch when this leader was elected.
    since: float


class Election(ABC):
    """Campaign for leadership, know who leads, and know when to stop leading."""

    def __init__(self) -> None:
        #: Leader changes this master has seen since it started.
        self.failovers = 0

    @abstractmethod
    async def start(self) -> None:
        """Begin observing who leads (before the first campaign)."""

    @abstractmethod
    async def campaign(self) -> Leader:
        """Return once this master is elected (retrying through etcd outages)."""

    @abstractmethod
    async def wait_lost(self) -> str:
        """Return, with the reason, once this master must stop acting as leader."""

    @abstractmethod
    def leading(self) -> bool:
        """Whether this master may act as leader at this instant (fencing: checked per call)."""

    @abstractmethod
    def leader(self) -> Leader | None:
        """The leader as last seen; None when nobody is known to lead."""

    @abstractmethod
    async def resign(self) -> None:
        """Give up leadership (if held) so that a standby can take over at once."""

    async def close(self) -> None:
        """Resign and stop observing."""
        await self.resign()


class StandaloneElection(Election):
    """A single master: elected at once, never deposed (Mesos' standalone contender)."""

    def __init__(self, address: str, master_id: str) -> None:
        super().__init__()
        self._self = Leader(address, master_id, 0, time.time())
        self._closed = asyncio.Event()

    async def start(self) -> None:
        """Nothing to observe: this master is the only one."""

    async def campaign(self) -> Leader:
        return self._self

    async def wait_lost(self) -> str:
        await self._closed.wait()
        return "the master is stopping"

    def leading(self) -> bool:
        return not self._closed.is_set()

    def leader(self) -> Leader | None:
        return self._self

    async def resign(self) -> None:
        self._closed.set()


def encode_leader(address: str, master_id: str, since: float) -> bytes:
    return json.dumps({"address": address, "master_id": master_id, "since": since}).encode()


def decode_leader(value: bytes, term: int) -> Leader:
    """The leader named by the election key's value; a foreign value yields an empty address."""
    try:
        data = json.loads(value)
        return Leader(str(data["address"]), str(data["master_id"]), term, float(data["since"]))
    except (ValueError, KeyError, TypeError):
        logger.warning("the election key holds a value Corral did not write: %r", value[:100])
        return Leader("", "", term, 0.0)


class EtcdElection(Election):
    """Lease + compare-and-swap on `/corral/<cluster>/leader` (see the module docstring)."""

    def __init__(self, etcd: Etcd, cluster: str, address: str, master_id: str, ttl: float) -> None:
        super().__init__()
        self.etcd = etcd
        self.key = election_key(cluster)
        self.address = address
        self.master_id = master_id
        self.ttl = ttl
        self._leader: Leader | None = None
        self._lease: KeptLease | None = None
        self._term = 0
        self._deposed = asyncio.Event()
        self._changed = asyncio.Event()
        self._observer: asyncio.Task[None] | None = None
        self._last_term = 0

    @property
    def term(self) -> int:
        """The term this master leads in; 0 when it does not lead."""
        return self._term

    async def start(self) -> None:
        self._observer = asyncio.get_running_loop().create_task(self._observe())

    def leading(self) -> bool:
        return (
            self._term != 0 and self._lease is not None and self._lease.valid() and not self._deposed.is_set()
        )

    def leader(self) -> Leader | None:
        return self._leader

    def _see(self, leader: Leader | None, revision: int = 0) -> None:
        """Record the leader seen at `revision` (0: read just now, not from the watch)."""
        if leader is not None:
            if self._last_term and leader.term != self._last_term:
                self.failovers += 1
            self._last_term = leader.term
        self._leader = leader
        # Deposed only by a change made after this master's own election: the
        # watch may still deliver the deletion of the previous leader's key.
        changed_at = revision or (leader.term if leader is not None else 0)
        if self._term and (leader is None or leader.term != self._term) and changed_at > self._term:
            self._deposed.set()
        self._changed.set()

    async def _observe(self) -> None:
        """Follow the election key: who leads, and whether this master was deposed."""
        event: WatchEvent | None
        async for event in self.etcd.watch(self.key):
            if event is None:  # events were missed: the campaign loop re-reads the key
                self._changed.set()
            elif event.value is None:
                logger.info("the leader (term %s) is gone", self._leader.term if self._leader else "?")
                self._see(None, event.revision)
            else:
                self._see(decode_leader(event.value, event.create_revision), event.revision)

    async def _read(self) -> Leader | None:
        kv = await self.etcd.get(self.key)
        return None if kv is None else decode_leader(kv.value, kv.create_revision)

    async def campaign(self) -> Leader:
        backoff = 0.1
        while True:
            self._changed.clear()
            try:
                current = await self._read()
                self._see(current)
                if current is None:
                    won = await self._try_once()
                    if won is not None:
                        return won
                backoff = 0.1
            except EtcdUnavailable as exc:
                logger.info("campaign: %s; retrying", exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 2.0)
                continue
            # Someone leads: wait until the key changes, re-reading now and then
            # in case the watch missed it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.ttl / 2)

    async def _try_once(self) -> Leader | None:
        lease = KeptLease(self.etcd, self.ttl)
        await lease.grant()
        since = time.time()
        tx = self.etcd.transactions
        try:
            won, read = await self.etcd.transaction(
                compare=[tx.create(self.key) == 0],
                success=[
                    tx.put(self.key, encode_leader(self.address, self.master_id, since), lease=lease.id),
                    tx.get(self.key),
                ],
            )
        except EtcdUnavailable:
            await lease.revoke()
            raise
        if not won or not read or not lease.valid():
            await lease.revoke()
            return None
        self._lease = lease
        self._term = read[0].create_revision
        self._deposed.clear()
        leader = Leader(self.address, self.master_id, self._term, since)
        self._see(leader)
        logger.info("elected leader (term %d, lease TTL %g s)", self._term, lease.ttl)
        return leader

    async def wait_lost(self) -> str:
        lease = self._lease
        assert lease is not None, "campaign first"
        lost = asyncio.ensure_future(lease.lost.wait())
        deposed = asyncio.ensure_future(self._deposed.wait())
        try:
            await asyncio.wait([lost, deposed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            deposed.cancel()
        if self._deposed.is_set():
            return "the election key changed or was deleted (another master leads or an operator removed it)"
        return f"the lease could not be renewed within {lease.trust_seconds:.1f} s (etcd unreachable)"

    async def resign(self) -> None:
        lease, self._lease = self._lease, None
        self._term = 0
        if lease is not None:
            # Revoking deletes the election key, so a standby takes over at
            # once rather than after the TTL (best effort: etcd may be gone).
            await lease.revoke()

    async def close(self) -> None:
        await self.resign()
        if self._observer is not None:
            self._observer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._observer
