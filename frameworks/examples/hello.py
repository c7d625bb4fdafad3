"""Hello world: run N commands across the agents, print how each ended, tear down.

    python -m frameworks.examples.hello --master 127.0.0.1:5050 -n 5

Exits 0 when every task finished, 1 if any did not.
"""

from __future__ import annotations

import argparse
import asyncio

from corral import logs
from corral.states import is_terminal, state_name
from corral.v1 import common_pb2, scheduler_pb2
from frameworks import DEFAULT_MASTER, CallError, Scheduler, SchedulerDriver, TaskSpec, pack


class Hello(Scheduler):
    def __init__(self, count: int, command: str) -> None:
        self.pending = [TaskSpec(command, task_id=f"hello-{i}") for i in range(count)]
        self.count = count
        self.ended: dict[str, int] = {}

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        packing = pack(offers, self.pending, strategy="spread")
        if packing.tasks:
            try:
                await driver.accept(packing.offer_ids, packing.tasks)
            except CallError as exc:  # an offer went away meanwhile: retry with the next ones
                print(f"launch refused ({exc.details}); retrying", flush=True)
                return
        self.pending = packing.unplaced
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids)
        if not self.pending:
            await driver.suppress()  # everything launched: no more offers, please

    async def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        if not is_terminal(status.state) or status.task_id in self.ended:
            return  # still running, or a repeated update
        self.ended[status.task_id] = status.state
        print(f"{status.task_id}: {state_name(status.state)} {status.message}".rstrip(), flush=True)
        if len(self.ended) == self.count:
            await driver.teardown()

    def error(self, driver: SchedulerDriver, message: str) -> None:
        print(f"the master removed the framework: {message}", flush=True)

    def succeeded(self) -> bool:
        states = list(self.ended.values())
        return len(states) == self.count and all(s == common_pb2.TASK_FINISHED for s in states)


async def main(args: argparse.Namespace) -> int:
    hello = Hello(args.n, args.command)
    driver = SchedulerDriver(hello, master=args.master, name="hello")
    await driver.run(teardown_on_cancel=True)  # Ctrl-C tears down too
    return 0 if hello.succeeded() else 1


def cli() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--master", default=DEFAULT_MASTER, help="host:port[,host:port...] (default %(default)s)"
    )
    parser.add_argument("-n", type=int, default=5, help="how many tasks (default %(default)s)")
    parser.add_argument("--command", default="echo hello from $CORRAL_TASK_ID", help="what each task runs")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("-n must be at least 1")
    logs.setup(args.log_level, name="hello")
    try:
        return asyncio.run(main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(cli())
