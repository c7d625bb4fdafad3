"""Task logs through the master: the real `corral logs` CLI against a real master and
agent, tasks that are real processes writing to their sandboxes."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from corral.testing import Cluster, EtcdServer
from corral.v1 import common_pb2, operator_pb2, operator_pb2_grpc
from frameworks import SchedulerDriver, TaskSpec
from tests.integration.test_end_to_end import Recorder, with_driver
from tests.integration.test_etcd_adapter import require_etcd

pytestmark = pytest.mark.integration

S = common_pb2


async def corral(*args: str, timeout: float = 30) -> tuple[int, bytes, str]:
    """Run the `corral` CLI to its end: (exit status, stdout bytes, stderr text)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "corral", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


def read_log(cluster: Cluster, **request: object) -> bytes:
    """ReadTaskLog without --follow, as bytes; raises grpc.RpcError when refused."""
    return read_log_at(cluster.master_address, **request)


def read_log_at(address: str, **request: object) -> bytes:
    with grpc.insecure_channel(address) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        chunks = stub.ReadTaskLog(operator_pb2.ReadTaskLogRequest(**request), timeout=10)  # type: ignore[arg-type]
        return b"".join(c.data for c in chunks)


def refused(cluster: Cluster, **request: object) -> tuple[grpc.StatusCode, str]:
    return refused_at(cluster.master_address, **request)


def refused_at(address: str, **request: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        read_log_at(address, **request)
    error = info.value
    assert isinstance(error, grpc.Call)
    return error.code(), error.details() or ""


def test_logs_of_a_finished_task_stdout_stderr_and_tail(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    # More than one 64 KiB piece, so the master must read it in several.
    big = "python-free: " + "x" * 100
    command = f"for i in $(seq 1 1000); do echo {big}$i; done; echo oops >&2"
    recorder = Recorder([TaskSpec(command, task_id="writer")])
    expected = b"".join(f"{big}{i}\n".encode() for i in range(1, 1001))
    assert len(expected) > 64 * 1024

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("writer", S.TASK_FINISHED), what="FINISHED")
        address = cluster.master_address
        code, out, err = await corral("logs", "writer", "--master", address)
        assert (code, err) == (0, "")
        assert out == expected
        assert await corral("logs", "writer", "--stderr", "--master", address) == (0, b"oops\n", "")
        code, out, _ = await corral("logs", "writer", "--tail", "5", "--master", address)
        assert (code, out) == (0, b"1000\n")
        # A finished task's log can be followed too: the stream ends at once.
        code, out, _ = await corral("logs", "-f", "writer", "--master", address)
        assert (code, out) == (0, expected)

    asyncio.run(with_driver(recorder, cluster.master_address, body, name="logs"))


def test_follow_streams_what_a_running_task_writes_and_ends_with_it(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)
    go = tmp_path / "go"
    # Writes a line, waits for the test to have seen it, writes another and ends.
    command = f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second"
    recorder = Recorder([TaskSpec(command, task_id="talker")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("talker", S.TASK_RUNNING), what="RUNNING")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "corral",
            "logs",
            "--follow",
            "talker",
            "--master",
            cluster.master_address,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"first\n"
            assert not recorder.in_state("talker", S.TASK_FINISHED)
            go.touch()
            assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"second\n"
            # The task ends, so does the stream, and the CLI exits cleanly.
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            assert await proc.stdout.read() == b""
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert recorder.in_state("talker", S.TASK_FINISHED)

    asyncio.run(with_driver(recorder, cluster.master_address, body, name="logs"))


def test_bad_requests_get_precise_errors(cluster: Cluster) -> None:
    cluster.start_master()
    agent = cluster.start_agent()
    cluster.wait_agents(1)
    first = Recorder([TaskSpec("echo one", task_id="same")])
    second = Recorder([TaskSpec("echo two", task_id="same")])

    async def both(driver: SchedulerDriver) -> None:
        await first.until(lambda: first.in_state("same", S.TASK_FINISHED), what="first FINISHED")

        async def inner(driver2: SchedulerDriver) -> None:
            await second.until(lambda: second.in_state("same", S.TASK_FINISHED), what="second FINISHED")
            await asyncio.to_thread(check_errors)

        await with_driver(second, cluster.master_address, inner, name="two")

    def check_errors() -> None:
        for name in ("../etc/passwd", "/etc/passwd", "stdout/../../x", "cmdline"):
            code, details = refused(cluster, task_id="same", framework_id=first.framework_id, name=name)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
            assert "stdout or its stderr" in details
        code, details = refused(cluster, task_id="../etc")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "task id" in details
        code, details = refused(cluster, task_id="same", framework_id="../fw")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "framework id" in details
        code, details = refused(cluster, task_id="nope")
        assert code == grpc.StatusCode.NOT_FOUND and "nope" in details
        code, details = refused(cluster, task_id="same")
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert first.framework_id in details and second.framework_id in details
        code, details = refused(cluster, task_id="same", framework_id=first.framework_id, offset=1000)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "past the end" in details
        # With the framework named, each gets its own task's output.
        assert read_log(cluster, task_id="same", framework_id=first.framework_id) == b"one\n"
        assert read_log(cluster, task_id="same", framework_id=second.framework_id) == b"two\n"
        # The agent goes away: its sandbox cannot be reached, and the error says so.
        agent.stop()
        cluster.wait_agents(1, status="disconnected")
        code, details = refused(cluster, task_id="same", framework_id=first.framework_id)
        assert code == grpc.StatusCode.UNAVAILABLE and "agent" in details and "disconnected" in details

    asyncio.run(with_driver(first, cluster.master_address, both, name="one"))


def test_cli_errors_are_one_line_with_a_failure_status(cluster: Cluster) -> None:
    cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)

    async def run() -> None:
        code, out, err = await corral("logs", "ghost", "--master", cluster.master_address)
        assert (code, out) == (1, b"")
        assert err.startswith("corral: ") and "ghost" in err and err.count("\n") == 1
        code, _, err = await corral("logs", "ghost", "--tail", "-3", "--master", cluster.master_address)
        assert code == 2 and "positive" in err

    asyncio.run(run())


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd", require_etcd())
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.mark.slow
def test_logs_asked_of_a_standby_master_are_read_through_the_leader(
    cluster: Cluster, etcd: EtcdServer
) -> None:
    masters = cluster.start_masters(2, etcd.url)
    leader = cluster.wait_leader()
    standby = next(m for m in masters if m is not leader)
    cluster.start_agent()
    cluster.wait_agents(1)
    recorder = Recorder([TaskSpec("echo from the task", task_id="quiet")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("quiet", S.TASK_FINISHED), what="FINISHED")
        # The standby refuses, naming the leader; the CLI asks the leader instead.
        code, details = refused_at(standby.address, task_id="quiet")
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "not the leader" in details
        assert await corral("logs", "quiet", "--master", standby.address) == (0, b"from the task\n", "")

    asyncio.run(with_driver(recorder, cluster.master_address, body, name="logs"))
