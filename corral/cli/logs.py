"""`corral logs TASK_ID`: a task's stdout (or stderr), read through the master.

The master fetches the bytes from the task's agent (OperatorService.ReadTaskLog);
with --follow the stream stays open and carries what the task writes until it
ends. The bytes are written to stdout as they are, without decoding.
"""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO, Final

import grpc

from corral import net
from corral.cli import common
from corral.v1 import operator_pb2, operator_pb2_grpc
from frameworks.sdk.driver import LEADER_METADATA_KEY

#: Seconds a read without --follow may take in all (a following read has no end).
READ_TIMEOUT: Final = 60.0

#: Codes with which the master answers about the task itself, not about reachability.
_TASK_CODES: Final = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], default_master: str) -> None:
    """Add `logs` to the command line."""
    parser = subparsers.add_parser(
        "logs",
        help="print a task's stdout or stderr (read from its agent through the master)",
        description="Print a task's stdout (or --stderr), read from its agent through the master. "
        "Finished tasks' logs stay readable while their agent is up.",
    )
    parser.add_argument("task_id", metavar="TASK_ID", help="the task whose output to print")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing what the task writes until it ends"
    )
    parser.add_argument("--stderr", action="store_true", help="print the task's stderr instead of its stdout")
    parser.add_argument(
        "--framework", metavar="FRAMEWORK_ID", default="", help="the task's framework, if its id is ambiguous"
    )
    parser.add_argument(
        "--tail", metavar="BYTES", type=_positive, default=None, help="start this many bytes before the end"
    )
    common.add_master_argument(parser, default_master)
    parser.set_defaults(handler=handle)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes, got {value}")
    return value


def handle(args: argparse.Namespace) -> int:
    request = operator_pb2.ReadTaskLogRequest(
        task_id=args.task_id,
        framework_id=args.framework,
        name="stderr" if args.stderr else "stdout",
        offset=-args.tail if args.tail else 0,
        follow=args.follow,
    )
    stream(args.master, request, sys.stdout.buffer)
    return 0


def stream(address: str, request: operator_pb2.ReadTaskLogRequest, out: BinaryIO) -> None:
    """Copy the task's log to `out` as it arrives; CliError when the master says no.

    A standby master refuses, naming the leader (`x-leader-addr`): the read is
    asked again there, once, before anything was written.
    """
    try:
        _stream(address, request, out)
    except _NotLeader as refusal:
        _stream(refusal.leader, request, out)


class _NotLeader(Exception):
    def __init__(self, leader: str) -> None:
        super().__init__(leader)
        self.leader = leader


def _stream(address: str, request: operator_pb2.ReadTaskLogRequest, out: BinaryIO) -> None:
    timeout = None if request.follow else READ_TIMEOUT
    wrote = False
    with net.channel(address) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        try:
            for chunk in stub.ReadTaskLog(request, timeout=timeout):
                out.write(chunk.data)
                out.flush()
                wrote = True
        except grpc.RpcError as error:
            if not isinstance(error, grpc.Call):
                raise common.rpc_failure(address, None, str(error), timeout or 0.0) from None
            code, details = error.code(), error.details() or ""
            leader = dict(error.trailing_metadata() or ()).get(LEADER_METADATA_KEY, "")
            if code == grpc.StatusCode.FAILED_PRECONDITION and leader and leader != address and not wrote:
                raise _NotLeader(str(leader)) from None
            # The master names the agent when the agent (not the master) cannot be reached.
            if code in _TASK_CODES or (code == grpc.StatusCode.UNAVAILABLE and details.startswith("agent ")):
                raise common.CliError(details) from None
            raise common.rpc_failure(address, code, details, timeout or 0.0) from None
