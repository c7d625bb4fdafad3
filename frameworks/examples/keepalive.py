"""Keep K long-running tasks alive, replacing any that end or become unreachable.

    python -m frameworks.examples.keepalive --master 127.0.0.1:5050 -k 3

Runs until Ctrl-C (or SIGTERM), then tears the framework down. The framework
has a failover timeout of a week: if this process dies instead, its tasks keep
running, and `--framework-id ID` (printed at start) takes them over again.
After every (re)subscription it reconciles, which is how it learns what
happened while it was away: tasks that ended are replaced; running tasks it
did not know (after a takeover, or back from an unreachable agent) are
adopted, or killed if K are already running.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from corral import logs
from corral.ids import new_id
from corral.states import is_terminal, state_name
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import DEFAULT_MASTER, CallError, Scheduler, SchedulerDriver, TaskSpec, pack

WEEK = 7 * 24 * 3600.0


class KeepAlive(Scheduler):
    def __init__(self, count: int, command: str, cpus: float, mem: float) -> None:
        self.count = count
        self.command = command
        self.cpus = cpus
        self.mem = mem
        self.live: dict[str, str] = {}  # task id -> agent id, for tasks believed alive

    def missing(self) -> int:
        return self.count - len(self.live)

    async def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        print(f"framework {framework_id}: keeping {self.count} tasks alive", flush=True)
        if self.live:
            # Explicit: a task the master no longer knows comes back TASK_LOST.
            await driver.reconcile(list(self.live.items()))
        await driver.reconcile()  # implicit: every task the master knows of ours
        if self.missing() > 0:
            await driver.revive()

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        specs = [
            TaskSpec(self.command, cpus=self.cpus, mem=self.mem, task_id=new_id("keepalive"))
            for _ in range(max(self.missing(), 0))
        ]
        packing = pack(offers, specs, strategy="spread")
        if packing.tasks:
            try:
                await driver.accept(packing.offer_ids, packing.tasks)
            except CallError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                print(f"an offer went away before the launch ({exc.details}); retrying", flush=True)
            else:
                for task in packing.tasks:
                    self.live[task.task_id] = task.agent_id
                    print(f"{task.task_id}: launching on agent {task.agent_id}", flush=True)
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids)
        if self.missing() <= 0:
            await driver.suppress()

    async def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        task_id, state = status.task_id, status.state
        if is_terminal(state) or state == common_pb2.TASK_UNREACHABLE:
            if self.live.pop(task_id, None) is not None:
                print(f"{task_id}: {state_name(state)} {status.message}; replacing it".rstrip(), flush=True)
                await driver.revive()
        elif task_id in self.live:
            self.live[task_id] = status.agent_id
        elif self.missing() > 0:
            print(f"{task_id}: {state_name(state)} on agent {status.agent_id}; adopting it", flush=True)
            self.live[task_id] = status.agent_id
        else:
            print(f"{task_id}: {state_name(state)}, but {self.count} already run; killing it", flush=True)
            await driver.kill(task_id, status.agent_id)

    def error(self, driver: SchedulerDriver, message: str) -> None:
        print(f"the master removed the framework: {message}", flush=True)


async def main(args: argparse.Namespace) -> int:
    # SIGTERM ends it like Ctrl-C does: by cancelling, which tears down.
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    info = common_pb2.FrameworkInfo(id=args.framework_id, name="keepalive", failover_timeout_seconds=WEEK)
    driver = SchedulerDriver(KeepAlive(args.k, args.command, args.cpus, args.mem), info, master=args.master)
    await driver.run(teardown_on_cancel=True)
    return 1  # run() only returns when the master removed the framework


def cli() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--master", default=DEFAULT_MASTER, help="host:port[,host:port...] (default %(default)s)"
    )
    parser.add_argument("-k", type=int, default=3, help="how many tasks to keep alive (default %(default)s)")
    parser.add_argument("--command", default="sleep 3600", help="what each task runs")
    parser.add_argument("--cpus", type=float, default=0.1)
    parser.add_argument("--mem", type=float, default=32.0, metavar="MiB")
    parser.add_argument("--framework-id", default="", help="take over the tasks of this earlier framework")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    if args.k < 1:
        parser.error("-k must be at least 1")
    logs.setup(args.log_level, name="keepalive")
    try:
        return asyncio.run(main(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0  # Ctrl-C or SIGTERM: the framework was torn down on the way out


if __name__ == "__main__":
    raise SystemExit(cli())
