"""Start a master: serve gRPC, campaign for leadership, lead while elected.

A master always serves. While it does not lead, every call is refused with
FAILED_PRECONDITION "not the leader; the leader is at X" and trailing
metadata ("x-leader-addr", X), except `OperatorService.GetState`, which a
standby answers with `leading=false` and who leads (operators ask any master
who leads). On election the master loads the registry and builds its state
machine (`Master`); on losing leadership it tears it down at once (every
agent and framework stream closed, nothing written any more) and campaigns
again. Without `--store` a single master leads at once with its registry in
a file (`StandaloneElection`, `FileStore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import grpc

from corral import __version__
from corral.etcd import Etcd, EtcdUnavailable
from corral.ids import new_id
from corral.net import SERVER_OPTIONS
from corral.v1 import agent_pb2_grpc, common_pb2, operator_pb2, operator_pb2_grpc, scheduler_pb2_grpc
from master import allocator as allocators
from master.config import MasterConfig, parse_weights
from master.election import Election, EtcdElection, Leader, StandaloneElection
from master.master import Master
from master.registry import EtcdStore, FileStore, Registrar, RegistryError, RegistryStore
from master.services import AgentService, NotLeading, OperatorService, SchedulerService

logger = logging.getLogger(__name__)

#: Trailing metadata key with which a standby names the leader (the SDK and agent follow it).
LEADER_METADATA_KEY: Final = "x-leader-addr"
GET_STATE_METHOD: Final = "/corral.v1.OperatorService/GetState"
#: How long a stopping leader waits for its last registry write.
STOP_FLUSH_TIMEOUT: Final = 5.0


class RunningMaster:
    """A serving master: its gRPC server, its election and, while it leads, its state machine."""

    def __init__(
        self,
        config: MasterConfig,
        election: Election,
        make_store: Callable[[Leader], RegistryStore],
        master_id: str,
        start_time: float,
    ) -> None:
        self.config = config
        self.election = election
        self.make_store = make_store
        self.id = master_id
        self.start_time = start_time
        self.address = ""
        self.port = 0
        self.server: grpc.aio.Server | None = None
        #: The state machine while this master leads.
        self.master: Master | None = None
        self.etcd: Etcd | None = None
        #: Set when this master cannot go on (a registry it must not overwrite).
        self.fatal: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
        self._fenced = asyncio.Event()
        self._leading_task: asyncio.Task[None] | None = None

    # -- what the services and the gate see --------------------------------

    def leading(self) -> bool:
        return self.master is not None and self.election.leading()

    def current(self) -> Master:
        """The leader's state machine; NotLeading when this master must not act."""
        if self.master is None or not self.election.leading():
            raise NotLeading()
        return self.master

    def leader_hint(self) -> str:
        """The leader's address to send clients to; empty when unknown or this master itself."""
        leader = self.election.leader()
        if leader is None or not leader.address or leader.address == self.address:
            return ""
        return leader.address

    def leader_info(self) -> common_pb2.LeaderInfo:
        info = common_pb2.LeaderInfo(failovers=self.election.failovers)
        leader = self.election.leader()
        if leader is not None:
            info.address, info.master_id = leader.address, leader.master_id
            info.since, info.term = leader.since, leader.term
        return info

    def standby_state(self) -> operator_pb2.State:
        return operator_pb2.State(
            master=common_pb2.MasterInfo(
                id=self.id, address=self.address, version=__version__, start_time=self.start_time
            ),
            leading=False,
            leader=self.leader_info(),
        )

    # -- leading -------------------------------------------------------------

    async def take_office(self, leader: Leader) -> None:
        """Load the registry and build the state machine; RegistryError when the registry is unusable."""
        store = self.make_store(leader)
        registry = await store.load()
        self._fenced.clear()
        registrar = Registrar(store, registry, on_fenced=lambda _reason: self._fenced.set())
        master = Master(self.config, allocators.create(self.config.allocator), registrar)
        master.id = self.id
        master.start_time = self.start_time
        master.address = self.address
        master.may_act = self.election.leading
        master.leader_info = self.leader_info()
        for role, weight in parse_weights(self.config.weights).items():
            master.set_weight(role, weight)
        self.master = master
        master.start()
        logger.info(
            "leading (term %d) with the registry in %s: %d agents, %d frameworks to recover",
            leader.term,
            store.describe(),
            len(registrar.agents),
            len(registrar.frameworks),
        )

    async def leave_office(self, reason: str) -> None:
        """Tear the state machine down: close every stream, write nothing more, resign."""
        master, self.master = self.master, None
        if master is not None:
            logger.warning("stepping down: %s", reason)
            master.registrar.close()
            await master.stop()
        await self.election.resign()

    async def _lead_forever(self) -> None:
        """Campaign, lead until leadership is lost, step down; again and again.

        Should this loop fail (a bug), the master stops rather than standing by forever.
        """
        try:
            await self._lead_loop()
        except Exception as exc:
            logger.exception("the leadership loop failed; stopping the master")
            if not self.fatal.done():
                self.fatal.set_result(exc)

    async def _lead_loop(self) -> None:
        while True:
            if self.master is not None:
                # Already in office (a single master takes it in `start`): a
                # second campaign would build a second state machine beside it.
                await self._hold_office()
                continue
            leader = await self.election.campaign()
            try:
                await self.take_office(leader)
            except RegistryError as exc:
                logger.error("refusing to lead: %s", exc)
                await self.election.resign()
                self.fatal.set_result(exc)
                return
            except EtcdUnavailable as exc:
                logger.warning("elected, but the registry could not be read: %s", exc)
                await self.election.resign()
                continue
            await self._hold_office()

    async def _hold_office(self) -> None:
        """Lead until leadership is lost or a registry write is fenced, then step down."""
        assert self.master is not None
        lost = asyncio.ensure_future(self.election.wait_lost())
        fenced = asyncio.ensure_future(self._fenced.wait())
        try:
            await asyncio.wait([lost, fenced], return_when=asyncio.FIRST_COMPLETED)
        finally:
            fenced.cancel()
            lost.cancel()
        reason = lost.result() if lost.done() and not lost.cancelled() else "a registry write was fenced"
        await self.leave_office(reason)

    async def stop(self, grace: float = 1.0) -> None:
        if self._leading_task is not None:
            self._leading_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leading_task
        master, self.master = self.master, None
        if master is not None:
            try:
                # Bounded: with etcd gone the last registry write may never succeed.
                await asyncio.wait_for(master.stop(), STOP_FLUSH_TIMEOUT)
            except TimeoutError:
                logger.warning(
                    "the registry could not be written within %g s; stopping anyway", STOP_FLUSH_TIMEOUT
                )
                master.registrar.close()
        await self.election.close()
        if self.server is not None:
            await self.server.stop(grace)
        if self.etcd is not None:
            await self.etcd.close()


class LeaderGate(grpc.aio.ServerInterceptor):
    """Refuses every call while this master does not lead, naming the leader.

    `OperatorService.GetState` is answered instead: a standby reports
    `leading=false` and who leads, so that operators can ask any master.
    """

    def __init__(self) -> None:
        #: Set once the master is built (after the server, which takes its interceptors first).
        self.running: RunningMaster | None = None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or self.running is None or self.running.leading():
            return handler
        if handler_call_details.method == GET_STATE_METHOD:
            return grpc.unary_unary_rpc_method_handler(
                self._standby_state,
                request_deserializer=operator_pb2.GetStateRequest.FromString,
                response_serializer=operator_pb2.State.SerializeToString,
            )
        return self._refusal(handler)

    async def _standby_state(self, _request: Any, _context: Any) -> operator_pb2.State:
        assert self.running is not None
        return self.running.standby_state()

    def _refusal(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        assert self.running is not None
        hint = self.running.leader_hint()
        message = (
            f"not the leader; the leader is at {hint}"
            if hint
            else "not the leader; no leader is elected right now, retry shortly"
        )
        metadata = ((LEADER_METADATA_KEY, hint),) if hint else ()

        async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message, trailing_metadata=metadata)

        kinds = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        make: Any = kinds[(handler.request_streaming, handler.response_streaming)]
        return make(  # type: ignore[no-any-return]
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def start(config: MasterConfig) -> RunningMaster:
    master_id = new_id("master")
    start_time = time.time()
    gate = LeaderGate()
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[gate])
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}: the address is taken or not valid")
    address = config.advertise or f"{config.listen.rsplit(':', 1)[0]}:{port}"

    etcd: Etcd | None = None
    election: Election
    make_store: Callable[[Leader], RegistryStore]
    if config.store:
        etcd = Etcd.from_url(config.store)
        election = EtcdElection(etcd, config.cluster, address, master_id, config.election_ttl)
        make_store = lambda leader: EtcdStore(etcd, config.cluster, leader.term)  # noqa: E731
    else:
        election = StandaloneElection(address, master_id)
        make_store = lambda _leader: FileStore(config.work_dir)  # noqa: E731
    running = RunningMaster(config, election, make_store, master_id, start_time)
    running.etcd, running.address, running.port, running.server = etcd, address, port, server
    gate.running = running
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(running.current), server)
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerService(running.current), server)
    operator_pb2_grpc.add_OperatorServiceServicer_to_server(OperatorService(running.current), server)

    await election.start()
    if not config.store:
        # One master: lead at once; an unusable registry file stops the start.
        await running.take_office(await election.campaign())
    await server.start()
    running._leading_task = asyncio.get_running_loop().create_task(running._lead_forever())
    logger.warning("plaintext gRPC (no TLS configured): use only on trusted networks")
    logger.info(
        "master %s listening on %s (%s)",
        master_id,
        address,
        f"replicated: etcd {config.store}, cluster {config.cluster!r}" if config.store else "single master",
    )
    if config.port_file:
        try:
            await asyncio.to_thread(_write_port_file, Path(config.port_file), port)
        except OSError:
            await running.stop(0)
            raise
    return running


async def serve(config: MasterConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly; RegistryError when it must not lead."""
    running = await start(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    stop_wait: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
    fatal: asyncio.Future[Any] = running.fatal
    await asyncio.wait([stop_wait, fatal], return_when=asyncio.FIRST_COMPLETED)
    stop_wait.cancel()
    logger.info("stopping")
    await running.stop()
    if running.fatal.done():
        raise running.fatal.result()


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(f"{port}\n")
    tmp.replace(path)
