"""The `corral` entry point: version, and one clear line when the master is away."""

from __future__ import annotations

import os
import socket

import grpc
import pytest

import corral
from corral.cli import common
from corral.cli.main import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"corral {corral.__version__}"


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("command", ["agents", "frameworks", "tasks"])
def test_unreachable_master_is_one_line_and_status_2(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A port that was free a moment ago: nothing listens there, so the
    # connection is refused (loopback only).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    assert main([command, "--master", address]) == common.EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"corral: cannot reach the master at {address}: ")
    assert "corral up" in err


def test_deadline_is_reported_as_no_answer() -> None:
    error = common.rpc_failure("h:1", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", 5)
    assert (
        str(error)
        == "cannot reach the master at h:1: no answer within 5 s; is it running? start one with `corral up`"
    )
    assert error.code == common.EXIT_UNREACHABLE


def test_a_refusal_names_the_code() -> None:
    error = common.rpc_failure("h:1", grpc.StatusCode.FAILED_PRECONDITION, "not leader; leader is h:2", 5)
    assert str(error) == "the master at h:1 refused the call: FAILED_PRECONDITION: not leader; leader is h:2"


def test_a_server_without_the_service_is_named() -> None:
    error = common.rpc_failure("h:1", grpc.StatusCode.UNIMPLEMENTED, "Method not found!", 5)
    assert "does not serve Corral's OperatorService" in str(error)


def test_emit_survives_a_reader_that_went_away() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stream:
        common.emit("nobody reads this", stream)  # no BrokenPipeError
        common.emit("nor this", stream)  # now goes to /dev/null
