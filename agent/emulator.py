"""Emulated agents: many lightweight agents in one process, for benchmarks and
scale tests.

Each emulated agent is a real agent session to the master (`agent.session.Session`:
register, heartbeats, reconnects) with the real reliable status updates
(`agent.status_updates.StatusUpdateManager`: uuids, in-order resends, batching).
Only running tasks is emulated: a task "runs" for a configured time without
spawning anything, then finishes with exit code 0. It is a load generator for the
master, not a second agent: it has no sandboxes, no containerizers, no checkpoint.

    python -m agent.emulator --master 127.0.0.1:5050 --agents 1000 --task-seconds 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from agent.session import Session
from agent.status_updates import StatusUpdateManager
from corral import __version__, logs
from corral.resources import Resources
from corral.v1 import agent_pb2, common_pb2

logger = logging.getLogger(__name__)

TaskKey = tuple[str, str]

DEFAULT_RESOURCES = "cpus:16;mem:65536;disk:1000000;ports:[31000-32000]"


class EmulatedAgent:
    """One emulated agent: a real session and real status updates, pretend tasks."""

    def __init__(
        self,
        index: int,
        masters: Sequence[str],
        resources: Resources,
        task_seconds: float,
        attributes: Sequence[common_pb2.Attribute] = (),
    ) -> None:
        self.index = index
        self.hostname = f"emu-{index:05d}"
        self.agent_id = ""
        self.resources = resources
        self.attributes = list(attributes)
        self.task_seconds = task_seconds
        self.tasks: dict[TaskKey, agent_pb2.TaskReport] = {}
        self.timers: dict[TaskKey, asyncio.TimerHandle] = {}
        self.launched = 0
        self.finished = 0
        self.registered_at: float | None = None
        #: Called with a task's key when it ends, before its update is sent
        #: (for observers such as scale tests).
        self.on_task_end: Callable[[TaskKey], None] | None = None
        #: Called once, when the master first accepts this agent.
        self.on_first_registration: Callable[[], None] | None = None
        self._loop = asyncio.get_running_loop()
        self.session = Session(masters, self)
        self.updates = StatusUpdateManager(self._send_updates, on_forget=self._forget)

    # -- SessionHandler --------------------------------------------------------

    def registration(self) -> agent_pb2.Register:
        return agent_pb2.Register(
            agent_id=self.agent_id,
            hostname=self.hostname,
            resources=self.resources.to_proto(),
            attributes=self.attributes,
            containerizers=["process"],
            tasks=list(self.tasks.values()),
            version=__version__,
        )

    def registered(self, message: agent_pb2.Registered) -> None:
        self.agent_id = message.agent_id
        if self.registered_at is None:
            self.registered_at = time.monotonic()
            if self.on_first_registration is not None:
                self.on_first_registration()
        self.updates.connected()

    def disconnected(self) -> None:
        self.updates.disconnected()

    def handle(self, message: agent_pb2.MasterMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "run_tasks":
            for run in message.run_tasks.tasks:
                self._run(run.framework.id, run.task)
        elif kind == "kill_task":
            self._end((message.kill_task.framework_id, message.kill_task.task_id), common_pb2.TASK_KILLED)
        elif kind == "acknowledgements":
            for ack in message.acknowledgements.acknowledgements:
                self.updates.acknowledge(ack.framework_id, ack.task_id, ack.uuid)
        elif kind == "shutdown_framework":
            framework_id = message.shutdown_framework.framework_id
            for key in [k for k in self.tasks if k[0] == framework_id]:
                self._end(key, common_pb2.TASK_KILLED)
            self.updates.forget_framework(framework_id)
        elif kind == "read_file":
            request = message.read_file
            self.session.send(
                agent_pb2.AgentMessage(
                    file_data=agent_pb2.FileData(
                        request_id=request.request_id, error="an emulated agent keeps no sandboxes"
                    )
                )
            )

    # -- pretend tasks -------------------------------------------------------

    def _run(self, framework_id: str, task: common_pb2.TaskInfo) -> None:
        key = (framework_id, task.task_id)
        if key in self.tasks:
            return  # a replay of a launch we already have
        self.launched += 1
        self.tasks[key] = agent_pb2.TaskReport(
            framework_id=framework_id, task=task, state=common_pb2.TASK_RUNNING
        )
        self._status(key, common_pb2.TASK_RUNNING)
        self.timers[key] = self._loop.call_later(self.task_seconds, self._end, key, common_pb2.TASK_FINISHED)

    def _end(self, key: TaskKey, state: common_pb2.TaskState.ValueType) -> None:
        report = self.tasks.get(key)
        if report is None:
            if state == common_pb2.TASK_KILLED:
                self._status(key, common_pb2.TASK_LOST, "the emulated agent does not know this task")
            return
        if report.state != common_pb2.TASK_RUNNING:
            return
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        report.state = state
        if state == common_pb2.TASK_FINISHED:
            self.finished += 1
        if self.on_task_end is not None:
            self.on_task_end(key)
        self._status(key, state, exit_code=0 if state == common_pb2.TASK_FINISHED else None)

    def _status(
        self,
        key: TaskKey,
        state: common_pb2.TaskState.ValueType,
        message: str = "",
        exit_code: int | None = None,
    ) -> None:
        status = common_pb2.TaskStatus(
            framework_id=key[0],
            task_id=key[1],
            agent_id=self.agent_id,
            state=state,
            source=common_pb2.SOURCE_AGENT,
            message=message,
        )
        if exit_code is not None:
            status.exit_code = exit_code
            status.reason = common_pb2.REASON_COMMAND_EXITED
        self.updates.update(status)

    def _send_updates(self, statuses: list[common_pb2.TaskStatus]) -> None:
        self.session.send(agent_pb2.AgentMessage(status_updates=agent_pb2.StatusUpdates(updates=statuses)))

    def _forget(self, key: TaskKey) -> None:
        self.tasks.pop(key, None)


class Emulator:
    """`count` emulated agents against `masters`, run until cancelled."""

    def __init__(self, masters: Sequence[str], count: int, resources: Resources, task_seconds: float) -> None:
        self.agents = [EmulatedAgent(i, masters, resources, task_seconds) for i in range(count)]
        self.started_at = time.monotonic()
        self._registered = 0
        self._all_registered = asyncio.Event()
        for agent in self.agents:
            agent.on_first_registration = self._one_registered

    def _one_registered(self) -> None:
        self._registered += 1
        if self._registered == len(self.agents):
            self._all_registered.set()

    def registered(self) -> int:
        """How many agents the master has accepted at least once."""
        return self._registered

    async def wait_registered(self) -> None:
        """Return once every agent has been accepted by the master."""
        await self._all_registered.wait()

    async def run(self) -> None:
        self.started_at = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for agent in self.agents:
                group.create_task(agent.session.run())


async def _main(args: argparse.Namespace) -> None:
    emulator = Emulator(
        args.master.split(","), args.agents, Resources.parse(args.resources), args.task_seconds
    )
    runner = asyncio.create_task(emulator.run())
    while not runner.done():
        await asyncio.sleep(5)
        logger.info(
            "%d of %d emulated agents registered; %d tasks launched, %d finished",
            emulator.registered(),
            len(emulator.agents),
            sum(a.launched for a in emulator.agents),
            sum(a.finished for a in emulator.agents),
        )
    await runner


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.emulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--master", default="127.0.0.1:5050")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--resources", default=DEFAULT_RESOURCES)
    parser.add_argument("--task-seconds", type=float, default=0.1)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logs.setup(args.log_level, name="emulator")
    # Thousands of sessions each logging every (re)connection drown the summary.
    logging.getLogger("agent.session").setLevel(logging.WARNING)
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
