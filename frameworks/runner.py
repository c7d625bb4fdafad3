"""The tiny built-in framework behind `corral run`: run one command, return its exit code.

    code = await run_command("127.0.0.1:5050", "make test", cpus=1, mem=512, on_status=print)

`run_command` subscribes as a framework of its own, waits for an offer that
fits, launches the task, reports every status change, and tears the framework
down at the end, also when it is cancelled (Ctrl-C under `asyncio.run`), so
the task never outlives the run. Its framework has no failover timeout: if
this process dies, the master tears the framework (and the task) down at once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from corral.ids import new_id
from corral.states import is_terminal, state_name
from corral.v1 import common_pb2, scheduler_pb2
from frameworks.sdk.driver import SchedulerDriver
from frameworks.sdk.errors import CallError
from frameworks.sdk.scheduler import Scheduler
from frameworks.sdk.tasks import TaskSpec, pack

log = logging.getLogger(__name__)

#: Returned when the task ended without an exit code of its own: killed,
#: lost, refused by its agent, or killed by a signal.
EXIT_NO_CODE = 1
#: How long offers that do not fit are refused before they come back.
RETRY_OFFERS_SECONDS = 1.0

StatusCallback = Callable[[common_pb2.TaskStatus], object]


class RunError(Exception):
    """The command could not be followed to its end (the master removed the framework)."""


async def run_command(
    master: str,
    command: str | Sequence[str],
    cpus: float = 0.1,
    mem: float = 32.0,
    *,
    shell: bool = True,
    env: Mapping[str, str] | None = None,
    on_status: StatusCallback | None = None,
    disk: float = 0.0,
    name: str = "corral-run",
) -> int:
    """Run `command` as one task on the cluster at `master`; return its exit code.

    `command` is a string or an argv list. With `shell` (the default) it runs
    under /bin/sh -c (a list is joined with shell quoting); without, a list is
    the argv and a string the executable alone, run without arguments.
    `env` is added to the task's environment. `on_status` (a function or a
    coroutine function) sees every status update of the task, in order.

    Returns the exit code the task reported (0 for FINISHED), or
    EXIT_NO_CODE (1) when it ended without one (KILLED, LOST, ERROR, a signal).
    Waits as long as it takes for an offer that fits; bound it with
    `asyncio.timeout` if needed (cancellation tears down, as Ctrl-C does).
    Raises CallError when the master refuses the subscription or the launch,
    and RunError when the master removes the framework.
    """
    spec = TaskSpec(
        _command(command, shell),
        cpus=cpus,
        mem=mem,
        disk=disk,
        env=dict(env or {}),
        task_id=new_id("run"),
        name=name,
    )
    loop = asyncio.get_running_loop()
    runner = _Runner(spec, on_status, loop.create_future())
    driver = SchedulerDriver(runner, master=master, name=name)
    driving = asyncio.create_task(driver.run())
    try:
        ends: set[asyncio.Future[Any]] = {driving, runner.result}
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        if runner.result.done():
            return runner.result.result()
        driving.result()  # re-raises what ended the driver
        raise RunError("the driver stopped before the task ended")
    finally:
        if not runner.result.done():
            runner.result.cancel()  # interrupted: nothing may set it any more
        if not driving.done():
            if driver.subscribed:
                try:
                    await driver.teardown()
                except CallError as exc:
                    log.warning("could not tear the framework down: %s", exc)
            driver.stop()
            await driving


def exit_code(status: common_pb2.TaskStatus) -> int:
    """The exit code `run_command` returns for a task's terminal status."""
    if status.HasField("exit_code"):
        return status.exit_code
    return 0 if status.state == common_pb2.TASK_FINISHED else EXIT_NO_CODE


def _command(command: str | Sequence[str], shell: bool) -> str | list[str]:
    if isinstance(command, str):
        return command if shell else [command]
    if shell:
        return shlex.join(command)
    return list(command)


class _Runner(Scheduler):
    """Launches one task on the first offer it fits, then follows it to its end."""

    def __init__(self, spec: TaskSpec, on_status: StatusCallback | None, result: asyncio.Future[int]) -> None:
        self.spec = spec
        self.on_status = on_status
        self.result = result
        self.launched = False
        self.waiting_logged = False

    async def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        if self.launched:
            # After a resubscription, learn what became of the task meanwhile.
            await driver.reconcile([self.spec.task_id])

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        if self.launched:
            await driver.decline([o.id for o in offers], refuse_seconds=3600)
            return
        packing = pack(offers, [self.spec])
        if packing.tasks:
            try:
                await driver.accept(packing.offer_ids, packing.tasks)
            except CallError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                log.info("an offer went away before the launch (%s); waiting for another", exc.details)
            else:
                self.launched = True
                log.info("launched task %s on agent %s", self.spec.task_id, packing.tasks[0].agent_id)
                await driver.suppress()
        elif not self.waiting_logged:
            self.waiting_logged = True
            log.info("waiting for an offer with %s", self.spec.scalars())
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=RETRY_OFFERS_SECONDS)

    async def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        if status.task_id != self.spec.task_id or self.result.done():
            return
        if self.on_status is not None:
            outcome = self.on_status(status)
            if inspect.isawaitable(outcome):
                await outcome
        if is_terminal(status.state):
            log.info("task %s ended: %s", status.task_id, state_name(status.state))
            self.result.set_result(exit_code(status))

    def error(self, driver: SchedulerDriver, message: str) -> None:
        if not self.result.done():
            self.result.set_exception(RunError(f"the master removed the framework: {message}"))
