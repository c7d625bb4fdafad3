"""What every `corral` subcommand shares: the error type that ends a command
with one line and an exit status, and the GetState call with its deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Final, TextIO

import grpc

from corral import net
from corral.v1 import operator_pb2, operator_pb2_grpc

DEFAULT_MASTER: Final = "127.0.0.1:5050"
#: The environment variable that names the master when --master is not given.
MASTER_ENV: Final = "CORRAL_MASTER"
#: Seconds an operator call may take before the CLI gives up on the master.
RPC_TIMEOUT: Final = 5.0

#: Exit status when the master cannot be reached or refuses the call.
EXIT_UNREACHABLE: Final = 2

#: Codes that mean "nobody answered", as opposed to "the master said no".
_UNREACHABLE_CODES: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class CliError(Exception):
    """Ends the command: `main` prints the message as one line and exits with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def rpc_failure(address: str, code: grpc.StatusCode | None, details: str, timeout: float) -> CliError:
    """Turn a failed call to the master into an error an operator can act on."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"no answer within {timeout:g} s"
    elif "Connection refused" in details:
        details = "connection refused"
    if code in _UNREACHABLE_CODES:
        return CliError(
            f"cannot reach the master at {address}: {details}; is it running? start one with `corral up`",
            EXIT_UNREACHABLE,
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return CliError(
            f"the server at {address} does not serve Corral's OperatorService; is it a Corral master?",
            EXIT_UNREACHABLE,
        )
    name = code.name if code is not None else "error"
    return CliError(f"the master at {address} refused the call: {name}: {details}", EXIT_UNREACHABLE)


def add_master_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """The --master option, whose default `main` has already taken from the environment."""
    parser.add_argument(
        "--master",
        metavar="HOST:PORT",
        default=default,
        help=f"the master to talk to (default: ${MASTER_ENV}, else {DEFAULT_MASTER}; now {default})",
    )


def fetch_state(address: str, timeout: float = RPC_TIMEOUT) -> operator_pb2.State:
    """The leading master's view of the cluster, or CliError when it cannot be had in time.

    A standby answers too, naming the leader: its view is then replaced by the
    leader's (when the leader answers; otherwise the standby's is returned,
    with `leading` false, for the caller to flag as possibly stale).
    `address` may list several masters, comma-separated: the first that answers is asked.
    """
    *others, last = [a.strip() for a in address.split(",") if a.strip()] or [address]
    for candidate in others:
        with contextlib.suppress(CliError):
            return _leaders_view(candidate, timeout)
    return _leaders_view(last, timeout)


def _leaders_view(address: str, timeout: float) -> operator_pb2.State:
    state = _get_state(address, timeout)
    hint = state.leader.address
    if not state.leading and hint and hint != address:
        try:
            return _get_state(hint, timeout)
        except CliError:
            return state
    return state


def _get_state(address: str, timeout: float) -> operator_pb2.State:
    with net.channel(address) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        try:
            return stub.GetState(operator_pb2.GetStateRequest(), timeout=timeout)
        except grpc.RpcError as error:
            # The errors of blocking calls are also grpc.Call objects, with a code.
            code = error.code() if isinstance(error, grpc.Call) else None
            details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
            raise rpc_failure(address, code, details, timeout) from None


def silence(stream: TextIO) -> None:
    """Send whatever is still written to `stream` to /dev/null: its reader went away."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def emit(text: str, stream: TextIO | None = None) -> None:
    """Write a line to stdout (or `stream`), and survive its reader going away.

    When the reader is gone (`corral up | head`), output is dropped from then
    on, as the Python docs recommend for SIGPIPE: a command that runs on,
    such as `corral up` stopping its cluster, must not die of it.
    """
    out = stream or sys.stdout
    try:
        out.write(text + "\n")
        out.flush()
    except BrokenPipeError:
        silence(out)
