"""The durable registry: admitted agents, registered frameworks, role weights.

Task state is deliberately not stored: agents are the source of truth for
what runs and a master rebuilds its task table from their registrations.
`Registrar` holds the current registry in memory and writes it through a
`RegistryStore`, coalescing bursts of changes into one write that never blocks
the event loop. `FileStore` is the store for a single master without etcd;
`EtcdStore` keeps the registry in etcd for replicated masters, and fences
every write on the writer's term of leadership.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from google.protobuf.message import DecodeError

from corral.etcd import Etcd
from corral.v1 import registry_pb2

logger = logging.getLogger(__name__)

#: The registry layout this master writes and understands.
REGISTRY_VERSION = 1


class RegistryError(RuntimeError):
    """The stored registry cannot be used; the message says why and what to do."""


class Fenced(RegistryError):
    """A write was refused because its writer no longer leads."""


class RegistryStore(Protocol):
    """Where the registry lives. Neither call blocks the event loop."""

    def describe(self) -> str:
        """Where, for people (a path, or etcd endpoints and prefix)."""

    async def load(self) -> registry_pb2.Registry | None:
        """The stored registry, None when there is none yet; RegistryError when unusable."""

    async def save(self, registry: registry_pb2.Registry) -> None:
        """Replace the stored registry durably; OSError when it could not (retried),
        `Fenced` when the writer must not write any more."""


class FileStore:
    """The registry as one protobuf file, replaced atomically (write, fsync, rename)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / "registry.pb"

    def describe(self) -> str:
        return str(self.path)

    async def load(self) -> registry_pb2.Registry | None:
        return await asyncio.to_thread(self._load)

    async def save(self, registry: registry_pb2.Registry) -> None:
        await asyncio.to_thread(self._save, registry)

    def _load(self) -> registry_pb2.Registry | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        registry = registry_pb2.Registry()
        try:
            registry.ParseFromString(data)
        except DecodeError as exc:
            raise RegistryError(
                f"{self.path} is not a Corral registry ({exc}); move it away to start afresh"
            ) from None
        check_version(registry, str(self.path))
        return registry

    def _save(self, registry: registry_pb2.Registry) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(registry.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class EtcdStore:
    """The registry as one protobuf value at `/corral/<cluster>/registry`.

    Every write is a transaction conditional on the election key's create
    revision being `term`: a master deposed meanwhile cannot overwrite what
    its successor wrote. `load` refuses a prefix that holds keys Corral did
    not write, a value that is not a registry, or a registry from a newer
    version, and never writes over them.
    """

    def __init__(self, etcd: Etcd, cluster: str, term: int) -> None:
        self.etcd = etcd
        self.prefix = f"/corral/{cluster}/"
        self.key = self.prefix + "registry"
        self.election_key = self.prefix + "leader"
        self.term = term

    def describe(self) -> str:
        return f"etcd {self.etcd.describe()} under {self.prefix}"

    async def load(self) -> registry_pb2.Registry | None:
        known = {self.key, self.election_key}
        stored = await self.etcd.get_prefix(self.prefix)
        foreign = sorted(kv.key for kv in stored if kv.key not in known)
        if foreign:
            raise RegistryError(
                f"the etcd prefix {self.prefix} holds keys Corral does not write ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}); refusing to lead there. Choose another "
                "--cluster or remove those keys"
            )
        value = next((kv.value for kv in stored if kv.key == self.key), None)
        if value is None:
            return None
        registry = registry_pb2.Registry()
        try:
            registry.ParseFromString(value)
        except DecodeError as exc:
            raise RegistryError(
                f"{self.key} in etcd is not a Corral registry ({exc}); refusing to lead. "
                "Remove the key to start afresh"
            ) from None
        if registry.version == 0:
            raise RegistryError(
                f"{self.key} in etcd holds no registry version ({len(value)} bytes that parse as "
                "nothing Corral wrote); refusing to lead. Remove the key to start afresh"
            )
        check_version(registry, f"{self.key} in etcd")
        return registry

    async def save(self, registry: registry_pb2.Registry) -> None:
        tx = self.etcd.transactions
        written, _ = await self.etcd.transaction(
            compare=[tx.create(self.election_key) == self.term],
            success=[tx.put(self.key, registry.SerializeToString())],
        )
        if not written:
            raise Fenced(f"registry write refused: this master no longer leads (term {self.term})")


def check_version(registry: registry_pb2.Registry, where: str) -> None:
    if registry.version > REGISTRY_VERSION:
        raise RegistryError(
            f"the registry at {where} has version {registry.version}, newer than this master's "
            f"{REGISTRY_VERSION}; run a newer master (this one will not overwrite it)"
        )


class Registrar:
    """The in-memory registry plus coalesced, ordered writes to its store.

    Change it through the methods below, which schedule a write; at most one
    write is in flight and the latest state is always written last, so a
    burst of registrations costs one write, not one each.
    """

    def __init__(
        self,
        store: RegistryStore,
        registry: registry_pb2.Registry | None = None,
        on_fenced: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        #: Called when the store refuses a write because this master no longer leads.
        self.on_fenced = on_fenced
        loaded = registry or registry_pb2.Registry()
        self.agents: dict[str, registry_pb2.Registry.Agent] = {a.id: a for a in loaded.agents}
        self.frameworks: dict[str, registry_pb2.Registry.Framework] = {
            f.info.id: f for f in loaded.frameworks
        }
        self.role_weights: dict[str, float] = dict(loaded.role_weights)
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0

    def snapshot(self) -> registry_pb2.Registry:
        return registry_pb2.Registry(
            version=REGISTRY_VERSION,
            agents=self.agents.values(),
            frameworks=self.frameworks.values(),
            role_weights=self.role_weights,
        )

    # -- changes ----------------------------------------------------------

    def put_agent(self, agent: registry_pb2.Registry.Agent) -> None:
        if self.agents.get(agent.id) != agent:
            self.agents[agent.id] = agent
            self._changed()

    def remove_agent(self, agent_id: str) -> None:
        if self.agents.pop(agent_id, None) is not None:
            self._changed()

    def put_framework(self, framework: registry_pb2.Registry.Framework) -> None:
        if self.frameworks.get(framework.info.id) != framework:
            self.frameworks[framework.info.id] = framework
            self._changed()

    def remove_framework(self, framework_id: str) -> None:
        if self.frameworks.pop(framework_id, None) is not None:
            self._changed()

    # -- writing ----------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            snapshot = self.snapshot()
            try:
                await self.store.save(snapshot)
                self.writes += 1
            except Fenced as exc:
                logger.error("%s; the registry is no longer written from here", exc)
                if self.on_fenced is not None:
                    self.on_fenced(str(exc))
                return
            except OSError:
                logger.exception("writing the registry failed; retrying in 1 s")
                self._dirty = True
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        """Wait until everything changed so far is written."""
        while self._writer is not None and not self._writer.done():
            await self._writer

    def close(self) -> None:
        """Stop writing, without waiting (the master stepped down: it must not write)."""
        self._dirty = False
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
