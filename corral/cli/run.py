"""`corral run`: run one command as a task on the cluster, stream its status,
and exit with its exit code.

It drives the built-in runner framework (`frameworks.runner`), which
subscribes, waits for an offer that fits, launches the task and follows it to
a terminal state.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from corral.cli import common
from corral.states import state_name
from corral.v1 import common_pb2

DEFAULT_CPUS = 0.1
DEFAULT_MEM = 32.0
#: Seconds without any status before `corral run` says it is still waiting for an offer.
WAITING_NOTICE_SECONDS = 3.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: A portable environment variable name (POSIX: letters, digits, underscore).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

DESCRIPTION = """\
Run one command as a task on the cluster, print its status changes on stderr,
and exit with the command's exit code.

How the command is run depends on how many words follow `--`:
  corral run -- echo hi            several words: run as argv, no shell
                                   (`echo` with the argument `hi`)
  corral run -- 'echo hi | wc -c'  one word: run by /bin/sh -c, so pipes,
                                   redirections and $VARS work
"""

EPILOG = """\
exit status: the command's exit code; 1 when the task ended without one
(killed, lost, killed by a signal, failed to launch); 130 or 143 when
`corral run` itself was stopped by Ctrl-C or SIGTERM (the task is killed);
2 when the master cannot be reached or refuses the task.

The task's output stays in its sandbox on the agent: `corral run` shows its
status changes, not its stdout.
"""


@dataclass(frozen=True)
class CommandSpec:
    """What to run: a shell string, or an argv run without a shell."""

    shell: bool
    argv: tuple[str, ...]

    @property
    def command(self) -> str | list[str]:
        """What the runner takes: the shell string, or the argv list."""
        return self.argv[0] if self.shell else list(self.argv)


def command_spec(words: Sequence[str]) -> CommandSpec:
    """One word runs with /bin/sh -c; several run as argv.

    This is the rule of `docker run` versus `sh -c` that users already know:
    quoting the whole command asks for a shell, separate words do not.
    """
    if not words:
        raise ValueError("no command given: put it after `--`, e.g. `corral run -- echo hi`")
    if not words[0]:
        raise ValueError("the command must not be empty")
    return CommandSpec(shell=len(words) == 1, argv=tuple(words))


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """`["K=V", ...]` as a dict; the value may be empty or contain `=`."""
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--env {item!r}: expected NAME=VALUE")
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(
                f"--env {item!r}: {name!r} is not a valid variable name "
                "(letters, digits and '_', not starting with a digit)"
            )
        env[name] = value
    return env


def _positive(text: str) -> float:
    """An argparse type: a finite amount greater than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number greater than zero")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], default_master: str) -> None:
    """Add `run` to the command line."""
    parser = subparsers.add_parser(
        "run",
        usage="corral run [-h] [--cpus C] [--mem MiB] [--env NAME=VALUE ...] [--master HOST:PORT]\n"
        "                  -- COMMAND [ARG ...]",
        help="run one command as a task and exit with its exit code",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--cpus",
        type=_positive,
        default=DEFAULT_CPUS,
        metavar="C",
        help="cpus for the task (default %(default)s)",
    )
    parser.add_argument(
        "--mem",
        type=_positive,
        default=DEFAULT_MEM,
        metavar="MiB",
        help="memory in MiB (default %(default)g)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable in the task's environment; repeat for more",
    )
    common.add_master_argument(parser, default_master)
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG ...]", help="the command, after `--`"
    )
    parser.set_defaults(handler=handle, parser=parser)


def handle(args: argparse.Namespace) -> int:
    """Check the command line, make sure the master answers, then run the task."""
    words: list[str] = list(args.command)
    if words and words[0] == "--":
        words = words[1:]
    try:
        spec = command_spec(words)
        env = parse_env(args.env)
    except ValueError as error:
        args.parser.error(str(error))
    # Ask the master first: an unreachable master is one clear line, not a
    # framework that retries its subscription forever.
    common.fetch_state(args.master)
    return asyncio.run(_run(args.master, spec, args.cpus, args.mem, env))


def print_status(status: common_pb2.TaskStatus) -> None:
    """One line on stderr per status update, keeping stdout for the task's output."""
    parts = [f"corral: task {status.task_id}: {state_name(status.state)}"]
    if status.agent_id:
        parts.append(f"on agent {status.agent_id}")
    if status.HasField("exit_code"):
        parts.append(f"(exit code {status.exit_code})")
    if status.message:
        parts.append(f"- {status.message}")
    _say(" ".join(parts))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _run(master: str, spec: CommandSpec, cpus: float, mem: float, env: dict[str, str]) -> int:
    """Run the task; a stop signal kills it (the runner tears its framework down)."""
    # Imported here: only `run` needs the framework SDK.
    from frameworks.runner import RunError, run_command
    from frameworks.sdk.errors import CallError

    seen_status = asyncio.Event()

    def on_status(status: common_pb2.TaskStatus) -> None:
        seen_status.set()
        print_status(status)

    work = asyncio.create_task(
        run_command(master, spec.command, cpus, mem, shell=spec.shell, env=env, on_status=on_status)
    )
    notice = asyncio.create_task(_notice_waiting(seen_status, cpus, mem))
    stopped_by: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        stopped_by.append(sig)
        work.cancel()

    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await work
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        _say(f"corral: stopped by {stopped_by[0].name}")
        return 128 + stopped_by[0].value
    except (CallError, RunError) as error:
        raise common.CliError(f"the task could not be run: {error}", common.EXIT_UNREACHABLE) from None
    finally:
        notice.cancel()
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def _notice_waiting(seen_status: asyncio.Event, cpus: float, mem: float) -> None:
    """Tell the user why nothing happens when no agent has room for the task."""
    try:
        await asyncio.wait_for(seen_status.wait(), WAITING_NOTICE_SECONDS)
    except TimeoutError:
        _say(
            f"corral: still waiting for an offer with cpus {cpus:g} and mem {mem:g} MiB; "
            "`corral agents` shows what is free"
        )
