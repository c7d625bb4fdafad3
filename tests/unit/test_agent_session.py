"""The agent's session (agent/session.py) and the agent behind it (agent/agent.py)
against a scripted master.

The master here is a fake, on purpose: these tests need a master that refuses on
cue, never answers, breaks the stream while an update is in flight, or withholds
acknowledgements, which the real master cannot be made to do. It is a real gRPC
server on 127.0.0.1 (port 0), so the agent's gRPC handling is exercised for real.
Tests of the agent with the real master and real frameworks are the lead's, in
tests/integration.

Tests marked `integration` run real tasks through the process containerizer; every
task still running when such a test ends (also on failure) has its process group
SIGKILLed and reaped before the agent stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest

import corral
from agent.agent import Agent
from agent.config import AgentConfig
from agent.containerizer.process import ProcessContainerizer
from agent.session import AgentRefused, Session
from corral.net import SERVER_OPTIONS
from corral.v1 import agent_pb2, agent_pb2_grpc, common_pb2

AgentMessage = agent_pb2.AgentMessage
MasterMessage = agent_pb2.MasterMessage
DEADLINE = 10.0
AGENT_ID = "agent-1"
FW = "fw-1"


class FakeMaster(agent_pb2_grpc.AgentServiceServicer):
    """Records what agents send; answers Register as `answer` says; streams what the test sends."""

    def __init__(self, heartbeat_interval: float = 5.0) -> None:
        self.heartbeat_interval = heartbeat_interval
        #: "registered", "refused" or "silent" (never answers Register).
        self.answer = "registered"
        self.streams: list[list[AgentMessage]] = []
        self._outbox: asyncio.Queue[MasterMessage | grpc.StatusCode | None] = asyncio.Queue()

    # -- what tests look at --------------------------------------------------------

    @property
    def registrations(self) -> list[agent_pb2.Register]:
        return [s[0].register for s in self.streams if s and s[0].HasField("register")]

    def of_kind(self, kind: str) -> list[AgentMessage]:
        return [m for s in self.streams for m in s if m.WhichOneof("message") == kind]

    def updates(self) -> list[common_pb2.TaskStatus]:
        return [u for m in self.of_kind("status_updates") for u in m.status_updates.updates]

    def states(self, task_id: str) -> list[int]:
        return [u.state for u in self.updates() if u.task_id == task_id]

    def unique_updates(self) -> list[common_pb2.TaskStatus]:
        """Updates in the order first received, each once (resends are allowed)."""
        seen: dict[bytes, common_pb2.TaskStatus] = {}
        for update in self.updates():
            seen.setdefault(update.uuid, update)
        return list(seen.values())

    async def wait(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds, on the master's or the agent's side."""
        await until(condition)

    # -- what tests do -------------------------------------------------------------

    def send(self, message: MasterMessage) -> None:
        self._outbox.put_nowait(message)

    def end_stream(self, code: grpc.StatusCode | None = None) -> None:
        """End the current stream: cleanly (None) or with an error status."""
        self._outbox.put_nowait(code)

    def acknowledge(self, *updates: common_pb2.TaskStatus) -> None:
        acks = [
            agent_pb2.Acknowledgement(framework_id=u.framework_id, task_id=u.task_id, uuid=u.uuid)
            for u in updates
        ]
        self.send(MasterMessage(acknowledgements=agent_pb2.Acknowledgements(acknowledgements=acks)))

    # -- the service ---------------------------------------------------------------

    async def Connect(
        self,
        request_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[MasterMessage]:
        received: list[AgentMessage] = []
        outbox: asyncio.Queue[MasterMessage | grpc.StatusCode | None] = asyncio.Queue()
        self._outbox = outbox
        self.streams.append(received)
        reader = asyncio.create_task(self._read(request_iterator, received, outbox))
        try:
            while (item := await outbox.get()) is not None:
                if isinstance(item, grpc.StatusCode):
                    await context.abort(item, "scripted stream failure")
                yield item
        finally:
            reader.cancel()

    async def _read(
        self,
        requests: Any,
        received: list[AgentMessage],
        outbox: asyncio.Queue[MasterMessage | grpc.StatusCode | None],
    ) -> None:
        async for message in requests:
            received.append(message)
            if message.HasField("register"):
                if self.answer == "registered":
                    outbox.put_nowait(
                        MasterMessage(
                            registered=agent_pb2.Registered(
                                agent_id=message.register.agent_id or AGENT_ID,
                                heartbeat_interval_seconds=self.heartbeat_interval,
                            )
                        )
                    )
                elif self.answer == "refused":
                    outbox.put_nowait(MasterMessage(refused=agent_pb2.Refused(reason="you were removed")))


def resent_uuids(stream: list[AgentMessage]) -> set[bytes]:
    return {u.uuid for m in stream if m.HasField("status_updates") for u in m.status_updates.updates}


@contextlib.asynccontextmanager
async def serve(master: FakeMaster) -> AsyncIterator[str]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(master, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (it may be about the agent or the master) until it holds;
    fail after DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for a condition")
        await asyncio.sleep(0.005)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def unused_address() -> str:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# -- the session alone -------------------------------------------------------------


class Handler:
    """Records what the session tells the agent."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def registration(self) -> agent_pb2.Register:
        return agent_pb2.Register(hostname="h", version="test")

    def registered(self, message: agent_pb2.Registered) -> None:
        self.events.append(("registered", message.agent_id))

    def handle(self, message: agent_pb2.MasterMessage) -> None:
        self.events.append(("handle", message.WhichOneof("message")))

    def disconnected(self) -> None:
        self.events.append(("disconnected", None))


@contextlib.asynccontextmanager
async def session_task(session: Session) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(session.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait([task])


def test_register_first_then_heartbeats_and_master_messages_reach_the_agent() -> None:
    async def body() -> None:
        master = FakeMaster(heartbeat_interval=0.05)
        handler = Handler()
        async with serve(master) as address:
            session = Session([address], handler)
            assert not session.send(AgentMessage(heartbeat=agent_pb2.Heartbeat()))  # Not registered yet.
            async with session_task(session):
                await master.wait(lambda: len(master.of_kind("heartbeat")) >= 2)
                assert master.streams[0][0].WhichOneof("message") == "register"
                assert handler.events[0] == ("registered", AGENT_ID)
                assert session.registered
                master.send(MasterMessage(kill_task=agent_pb2.KillTask(framework_id=FW, task_id="t")))
                await master.wait(lambda: ("handle", "kill_task") in handler.events)

    run(body)


def test_a_refusal_ends_the_session_with_the_masters_reason() -> None:
    async def body() -> None:
        master = FakeMaster()
        master.answer = "refused"
        async with serve(master) as address:
            with pytest.raises(AgentRefused, match="you were removed"):
                await asyncio.wait_for(Session([address], Handler()).run(), DEADLINE)

    run(body)


@pytest.mark.parametrize("code", [None, grpc.StatusCode.UNAVAILABLE])
def test_the_session_reconnects_and_registers_again_when_the_stream_ends(
    code: grpc.StatusCode | None,
) -> None:
    async def body() -> None:
        master = FakeMaster()
        handler = Handler()
        async with serve(master) as address:
            session = Session([address], handler, initial_backoff=0.01)
            async with session_task(session):
                await master.wait(lambda: len(master.registrations) == 1)
                await master.wait(lambda: session.registered)
                master.end_stream(code)
                await master.wait(lambda: len(master.registrations) == 2)
                await master.wait(lambda: handler.events.count(("registered", AGENT_ID)) == 2)
        assert ("disconnected", None) in handler.events

    run(body)


def test_unreachable_masters_are_skipped_in_turn() -> None:
    async def body() -> None:
        master = FakeMaster()
        async with serve(master) as address:
            session = Session([unused_address(), address], Handler(), initial_backoff=0.01)
            async with session_task(session):
                await master.wait(lambda: len(master.registrations) == 1)

    run(body)


def test_a_master_that_never_answers_the_registration_is_left() -> None:
    async def body() -> None:
        master = FakeMaster()
        master.answer = "silent"
        async with serve(master) as address:
            session = Session([address], Handler(), initial_backoff=0.01, registration_timeout=0.1)
            async with session_task(session):
                await master.wait(lambda: len(master.registrations) >= 2)
            assert not session.registered

    run(body)


# -- the agent ---------------------------------------------------------------------


def config(work_dir: Path, address: str, **overrides: Any) -> AgentConfig:
    settings: dict[str, Any] = {
        "master": address,
        "work_dir": str(work_dir),
        "hostname": "test-host",
        "resources": "cpus:2;mem:1024;disk:100;ports:[31000-31009]",
        "attributes": "rack:r1",
    }
    settings.update(overrides)
    return AgentConfig(**settings)


def run_task(task_id: str, shell: str, framework_id: str = FW, **fields: Any) -> MasterMessage:
    info = common_pb2.TaskInfo(
        task_id=task_id,
        agent_id=AGENT_ID,
        command=common_pb2.CommandInfo(value=shell, shell=True),
        **fields,
    )
    run = agent_pb2.RunTask(framework=common_pb2.FrameworkInfo(id=framework_id), task=info)
    return MasterMessage(run_tasks=agent_pb2.RunTasks(tasks=[run]))


@contextlib.asynccontextmanager
async def running_agent(cfg: AgentConfig) -> AsyncIterator[tuple[Agent, asyncio.Task[int]]]:
    agent = Agent(cfg, environment={"PATH": os.environ["PATH"]})
    task = asyncio.create_task(agent.run())
    try:
        yield agent, task
    finally:
        # An agent never kills its tasks when it stops: end what still runs here.
        containerizer = agent._containerizers["process"]
        assert isinstance(containerizer, ProcessContainerizer)
        running = list(containerizer._processes.values())
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if running:
            await asyncio.wait([p.exited for p in running], timeout=DEADLINE)
        agent.stop()
        await asyncio.wait([task], timeout=DEADLINE)


def test_the_agent_registers_who_it_is_and_keeps_its_id(tmp_path: Path) -> None:
    async def body() -> None:
        master = FakeMaster()
        async with (
            serve(master) as address,
            running_agent(config(tmp_path, address)) as (agent, _),
        ):
            await master.wait(lambda: agent.agent_id == AGENT_ID)
            register = master.registrations[0]
            assert register.agent_id == ""
            assert register.hostname == "test-host"
            assert {r.name for r in register.resources} == {"cpus", "mem", "disk", "ports"}
            assert [(a.name, a.text) for a in register.attributes] == [("rack", "r1")]
            assert list(register.containerizers) == ["process"]
            assert register.version == corral.__version__
            assert (tmp_path / "agent_id").read_text().strip() == AGENT_ID

            # A restarted agent registers with the id it was given.
            async with running_agent(config(tmp_path, address)):
                await master.wait(lambda: len(master.registrations) == 2)
            assert master.registrations[1].agent_id == AGENT_ID

    run(body)


def test_the_agent_refuses_to_start_with_a_corrupt_id_file(tmp_path: Path) -> None:
    from agent.agent import AgentError

    (tmp_path / "agent_id").write_text("../../etc\n")

    async def body() -> None:
        with pytest.raises(AgentError, match="remove it to register as a new agent"):
            Agent(config(tmp_path, unused_address()), environment={})

    run(body)


def test_a_refused_agent_stops_with_status_1(tmp_path: Path) -> None:
    async def body() -> None:
        master = FakeMaster()
        master.answer = "refused"
        async with serve(master) as address:
            agent = Agent(config(tmp_path, address), environment={})
            assert await asyncio.wait_for(agent.run(), DEADLINE) == 1

    run(body)


@pytest.mark.integration
def test_a_task_runs_and_its_updates_are_delivered_in_order_until_acknowledged(tmp_path: Path) -> None:
    async def body() -> None:
        master = FakeMaster()
        async with serve(master) as address, running_agent(config(tmp_path, address)) as (agent, _):
            await master.wait(lambda: agent.agent_id == AGENT_ID)
            master.send(run_task("t1", "echo hi"))
            await master.wait(lambda: len(master.updates()) >= 1)
            running = master.updates()[0]
            assert running.state == common_pb2.TASK_RUNNING
            assert running.agent_id == AGENT_ID
            assert running.source == common_pb2.SOURCE_AGENT
            # The task has long finished, but FINISHED waits for RUNNING's ack.
            await master.wait(lambda: agent._tasks[(FW, "t1")].state == common_pb2.TASK_FINISHED)
            assert [u.uuid for u in master.unique_updates()] == [running.uuid]

            master.acknowledge(running)
            await master.wait(lambda: len(master.unique_updates()) == 2)
            finished = master.unique_updates()[1]
            assert finished.state == common_pb2.TASK_FINISHED
            assert finished.exit_code == 0
            assert (FW, "t1") in agent._tasks  # Until the terminal update is acknowledged.

            master.acknowledge(finished)
            await master.wait(lambda: (FW, "t1") not in agent._tasks)
        assert (tmp_path / "sandboxes" / FW / "t1" / "stdout").read_text() == "hi\n"

    run(body)


@pytest.mark.integration
def test_after_a_reconnect_the_agent_reports_its_tasks_and_resends_the_same_update(tmp_path: Path) -> None:
    async def body() -> None:
        master = FakeMaster()
        async with serve(master) as address, running_agent(config(tmp_path, address)) as (agent, _):
            await master.wait(lambda: agent.agent_id == AGENT_ID)
            master.send(run_task("t1", "exec sleep 100"))
            await master.wait(lambda: len(master.updates()) >= 1)
            first = master.updates()[0]

            master.end_stream(grpc.StatusCode.UNAVAILABLE)
            await master.wait(lambda: len(master.registrations) == 2)
            reports = master.registrations[1].tasks
            assert [(r.framework_id, r.task.task_id, r.state) for r in reports] == [
                (FW, "t1", common_pb2.TASK_RUNNING)
            ]
            # The unacknowledged RUNNING again, on the new stream, with the same uuid.
            await master.wait(lambda: first.uuid in resent_uuids(master.streams[1]))
            assert {u.uuid for u in master.updates()} == {first.uuid}

    run(body)


@pytest.mark.integration
def test_kill_unknown_tasks_shutdown_and_unsupported_containerizers(tmp_path: Path) -> None:
    async def body() -> None:
        master = FakeMaster()
        async with (
            serve(master) as address,
            running_agent(config(tmp_path, address, kill_grace_period=0.2)) as (agent, _),
        ):
            await master.wait(lambda: agent.agent_id == AGENT_ID)

            # A kill of a task the agent does not know: a reliable TASK_LOST.
            master.send(MasterMessage(kill_task=agent_pb2.KillTask(framework_id=FW, task_id="ghost")))
            await master.wait(lambda: common_pb2.TASK_LOST in master.states("ghost"))
            assert master.updates()[-1].uuid

            # A containerizer this agent does not have: TASK_ERROR.
            master.send(run_task("dock", "true", containerizer="docker"))
            await master.wait(lambda: common_pb2.TASK_ERROR in master.states("dock"))
            error = next(u for u in master.updates() if u.task_id == "dock")
            assert error.reason == common_pb2.REASON_CONTAINERIZER_UNSUPPORTED
            assert "'docker'" in error.message

            # A kill of a running task, with the task's own grace period.
            master.send(run_task("victim", "trap '' TERM; echo ready; while :; do sleep 1; done"))
            stdout = tmp_path / "sandboxes" / FW / "victim" / "stdout"
            await master.wait(lambda: stdout.exists() and "ready" in stdout.read_text())
            await master.wait(lambda: common_pb2.TASK_RUNNING in master.states("victim"))
            master.acknowledge(*[u for u in master.updates() if u.task_id == "victim"])
            master.send(MasterMessage(kill_task=agent_pb2.KillTask(framework_id=FW, task_id="victim")))
            await master.wait(lambda: common_pb2.TASK_KILLED in master.states("victim"))
            killed = [u for u in master.updates() if u.task_id == "victim"][-1]
            assert killed.reason == common_pb2.REASON_KILLED_BY_FRAMEWORK
            assert "0.2 s grace period" in killed.message

            # A framework shut down: its tasks die, nothing more is reported for it.
            master.send(run_task("doomed", "exec sleep 100", framework_id="fw-2"))
            await master.wait(lambda: common_pb2.TASK_RUNNING in master.states("doomed"))
            master.send(MasterMessage(shutdown_framework=agent_pb2.ShutdownFramework(framework_id="fw-2")))
            await master.wait(lambda: ("fw-2", "doomed") not in agent._tasks)
            assert set(master.states("doomed")) == {common_pb2.TASK_RUNNING}

    run(body)


@pytest.mark.integration
def test_usage_is_reported_for_running_tasks(tmp_path: Path) -> None:
    async def body() -> None:
        master = FakeMaster()
        async with (
            serve(master) as address,
            running_agent(config(tmp_path, address, usage_interval=0.05)) as (agent, _),
        ):
            await master.wait(lambda: agent.agent_id == AGENT_ID)
            master.send(run_task("t1", "exec sleep 100"))
            await master.wait(lambda: bool(master.of_kind("usage")))
            usage = master.of_kind("usage")[0].usage.tasks[0]
            assert (usage.framework_id, usage.task_id) == (FW, "t1")
            assert usage.usage.processes == 1

    run(body)


# -- the agent command -------------------------------------------------------------


@contextlib.asynccontextmanager
async def agent_command(work_dir: Path, address: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m agent` as a child of this test, killed and reaped on the way out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "--master",
        address,
        "--work-dir",
        str(work_dir),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.integration
def test_the_agent_command_exits_with_status_1_when_refused(tmp_path: Path) -> None:
    async def body() -> None:
        master = FakeMaster()
        master.answer = "refused"
        async with serve(master) as address, agent_command(tmp_path, address) as proc:
            _, stderr = await asyncio.wait_for(proc.communicate(), DEADLINE)
            assert proc.returncode == 1
            assert b"the master refused this agent: you were removed" in stderr

    run(body)


@pytest.mark.integration
def test_the_agent_command_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    async def body() -> None:
        master = FakeMaster()
        async with serve(master) as address, agent_command(tmp_path, address) as proc:
            await master.wait(lambda: len(master.registrations) == 1)
            await master.wait(lambda: (tmp_path / "agent_id").exists())
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), DEADLINE)
            assert proc.returncode == 0
            assert b"SIGTERM received" in stderr
            assert b"keep running" in stderr

    run(body)
