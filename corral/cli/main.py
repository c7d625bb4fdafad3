"""Entry point of the `corral` command.

The only place in the CLI that reads the environment (CORRAL_MASTER) and sets
up logging; everything else receives what it needs as arguments.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import corral
from corral import logs
from corral.cli import common, leader, logs as logs_cli, run, state, up

DESCRIPTION = """\
Operate a Corral cluster.

  corral up --demo            start a master and an agent here, run hello-world
  corral agents               list the agents of a running cluster
  corral run -- echo hi       run one command as a task
  corral logs -f TASK_ID      follow a task's output
  corral leader               which master leads (replicated masters)
"""


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The full command line; `env` supplies the default master address."""
    default_master = env.get(common.MASTER_ENV) or common.DEFAULT_MASTER
    parser = argparse.ArgumentParser(
        prog="corral", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"corral {corral.__version__}")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="log level of the CLI's own log on stderr (default %(default)s)",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    up.register(subparsers, env)
    run.register(subparsers, default_master)
    state.register(subparsers, default_master)
    logs_cli.register(subparsers, default_master)
    leader.register(subparsers, default_master)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `corral` command; return its exit status."""
    parser = build_parser(os.environ)
    args = parser.parse_args(argv)
    logs.setup(args.log_level, name="corral")
    try:
        code: int = args.handler(args)
    except common.CliError as error:
        print(f"corral: {error}", file=sys.stderr)
        return error.code
    except BrokenPipeError:
        # The reader of our output went away (`corral tasks | head -1`): not an error to report.
        common.silence(sys.stdout)
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        # Ctrl-C outside the commands that handle it themselves (`up`, `run`).
        print(file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
