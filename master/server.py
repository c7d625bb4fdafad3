"""Start a master: load the registry, build the state machine, serve gRPC."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc

from corral.net import SERVER_OPTIONS
from corral.v1 import agent_pb2_grpc, operator_pb2_grpc, scheduler_pb2_grpc
from master import allocator as allocators
from master.config import MasterConfig, parse_weights
from master.master import Master
from master.registry import FileStore, Registrar
from master.services import AgentService, OperatorService, SchedulerService

logger = logging.getLogger(__name__)


class RunningMaster:
    """A serving master: its state machine, its gRPC server and its port."""

    def __init__(self, master: Master, server: grpc.aio.Server, port: int) -> None:
        self.master = master
        self.server = server
        self.port = port

    async def stop(self, grace: float = 1.0) -> None:
        await self.master.stop()
        await self.server.stop(grace)


async def start(config: MasterConfig) -> RunningMaster:
    store = FileStore(config.work_dir)
    registry = await asyncio.to_thread(store.load)
    registrar = Registrar(store, registry)
    master = Master(config, allocators.create(config.allocator), registrar)
    for role, weight in parse_weights(config.weights).items():
        master.set_weight(role, weight)

    server = grpc.aio.server(options=SERVER_OPTIONS)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(master), server)
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerService(master), server)
    operator_pb2_grpc.add_OperatorServiceServicer_to_server(OperatorService(master), server)
    port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}: the address is taken or not valid")
    host = config.listen.rsplit(":", 1)[0]
    master.address = f"{host}:{port}"
    await server.start()
    master.start()
    running = RunningMaster(master, server, port)
    logger.warning("plaintext gRPC (no TLS configured): use only on trusted networks")
    logger.info("master %s listening on %s (registry in %s)", master.id, master.address, store.path)
    if config.port_file:
        try:
            await asyncio.to_thread(_write_port_file, Path(config.port_file), port)
        except OSError:
            await running.stop(0)
            raise
    return running


async def serve(config: MasterConfig) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly."""
    running = await start(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    logger.info("stopping")
    await running.stop()


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(f"{port}\n")
    tmp.replace(path)
