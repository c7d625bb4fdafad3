"""`corral up`: the pure parts (argv of children, exit statuses, output splitting, flags)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.cli import up
from corral.cli.main import build_parser


def test_exit_status_of_a_signalled_process_is_128_plus_the_signal() -> None:
    assert up.exit_status(0) == 0
    assert up.exit_status(3) == 3
    assert up.exit_status(-signal.SIGTERM) == 143


def test_describe_exit() -> None:
    assert up.describe_exit(1) == "exited with status 1"
    assert up.describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


def test_split_lines_keeps_the_unfinished_line() -> None:
    lines, rest = up.split_lines(b"par", b"tial\nnext\nunfin")
    assert lines == [b"partial", b"next"]
    assert rest == b"unfin"
    assert up.split_lines(b"", b"") == ([], b"")


def test_tail_of_a_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)))
    assert up.tail(log, 2) == ["line 28", "line 29"]
    assert up.tail(tmp_path / "missing.log") == []


def test_children_are_run_with_this_python(tmp_path: Path) -> None:
    assert up.master_argv("py", "127.0.0.1:0", tmp_path / "m", tmp_path / "port") == [
        "py", "-m", "master", "--listen", "127.0.0.1:0",
        "--work-dir", str(tmp_path / "m"), "--port-file", str(tmp_path / "port"),
    ]  # fmt: skip
    assert up.agent_argv("py", "h:1", tmp_path, None) == [
        "py",
        "-m",
        "agent",
        "--master",
        "h:1",
        "--work-dir",
        str(tmp_path),
    ]
    assert up.agent_argv("py", "h:1", tmp_path, "cpus:1")[-2:] == ["--resources", "cpus:1"]
    assert up.demo_argv("py", "h:1") == ["py", "-m", "frameworks.examples.hello", "--master", "h:1"]


def test_read_port(tmp_path: Path) -> None:
    path = tmp_path / "port"
    assert up.read_port(path) is None
    path.write_text("")
    assert up.read_port(path) is None
    path.write_text("5051\n")
    assert up.read_port(path) == 5051


def test_a_bound_port_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind((up.LOCALHOST, 0))
        sock.listen()
        assert not up.port_is_free(up.LOCALHOST, sock.getsockname()[1])


def _options(*argv: str) -> up.UpOptions:
    return up.options(build_parser({}).parse_args(["up", *argv]))


def test_defaults() -> None:
    opts = _options()
    assert (opts.agents, opts.port, opts.work_dir, opts.demo, opts.exit_after_demo) == (
        1,
        5050,
        None,
        False,
        False,
    )


def test_exit_after_demo_implies_demo() -> None:
    assert _options("--exit-after-demo").demo


def test_demo_needs_an_agent(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _options("--demo", "--agents", "0")
    assert "--demo needs at least one agent" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--agents", "-1"], "must not be negative"),
        (["--port", "70000"], "not a port"),
        (["--resources", "cpus:x"], "not a number"),
        (["--resources", "gpu:1"], "unknown resource"),
        (["--stop-timeout", "0"], "greater than zero"),
    ],
)
def test_bad_flags_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _options(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_leftover_task_processes_are_found_by_sandbox_and_stopped(tmp_path: Path) -> None:
    """A real process stands in for a task the agent left running."""
    sandbox = tmp_path / "agent-1" / "sandbox"
    sandbox.mkdir(parents=True)
    env = {"PATH": os.defpath, "CORRAL_SANDBOX": str(sandbox)}
    task = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    elsewhere = subprocess.Popen(
        ["sleep", "60"], env={**env, "CORRAL_SANDBOX": str(tmp_path) + "-other/x"}, start_new_session=True
    )
    try:
        assert [p.pid for p in up.leftover_tasks(tmp_path)] == [task.pid]
        up._stop_leftover_tasks(tmp_path, grace=5)
        # psutil has reaped it already, so only "it ended" can be checked here.
        task.wait(timeout=5)
        assert elsewhere.poll() is None
    finally:
        for process in (task, elsewhere):
            process.kill()
            process.wait()


def _supervisor(tmp_path: Path) -> up.Supervisor:
    layout = up.Layout(tmp_path, created=False)
    layout.logs.mkdir()
    return up.Supervisor(layout, {"PATH": os.defpath}, name_width=6)


async def _until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (a file's content: nothing to await) for up to 10 s."""
    async with asyncio.timeout(10):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    """Real processes stand in for components: one obeys SIGTERM, one ignores it."""

    async def scenario() -> tuple[int | None, int | None]:
        sup = _supervisor(tmp_path)
        stubborn = await sup.spawn(
            "agent-1",
            ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"],
            stage=up.Stage.AGENT,
            echo=False,
        )
        polite = await sup.spawn("master", ["sleep", "30"], stage=up.Stage.MASTER, echo=False)
        # sh prints "ready" after installing its trap: wait for it before the signal.
        await _until(lambda: (tmp_path / "logs" / "agent-1.log").read_text() == "ready\n")
        await sup.stop(grace=0.5)
        return stubborn.process.returncode, polite.process.returncode

    stubborn, polite = asyncio.run(scenario())
    assert stubborn == -signal.SIGKILL
    assert polite == -signal.SIGTERM
    assert (tmp_path / "logs" / "agent-1.log").read_text() == "ready\n"


def test_a_component_that_dies_wakes_the_supervisor(tmp_path: Path) -> None:
    async def scenario() -> tuple[str | None, bool]:
        sup = _supervisor(tmp_path)
        await sup.spawn("demo", ["true"], stage=up.Stage.FRAMEWORK, echo=False)
        await sup.spawn("agent-1", ["sh", "-c", "exit 3"], stage=up.Stage.AGENT, echo=False)
        with pytest.raises(up.Interrupted):
            await sup.guard(asyncio.sleep(30))
        await sup.stop(grace=1)
        return (sup.failed.name if sup.failed else None), sup.stop_signal is None

    assert asyncio.run(scenario()) == ("agent-1", True)


def test_shown_output_is_prefixed_with_the_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> None:
        sup = _supervisor(tmp_path)
        demo = await sup.spawn(
            "demo", ["sh", "-c", "echo one; echo two >&2; printf three"], stage=up.Stage.FRAMEWORK, echo=True
        )
        agent = await sup.spawn("agent-1", ["echo", "not shown"], stage=up.Stage.AGENT, echo=False)
        await demo.process.wait()
        await agent.process.wait()
        await sup.stop(grace=5)  # also waits until the demo's output has been shown

    asyncio.run(scenario())
    shown = [line for line in capsys.readouterr().out.splitlines() if "|" in line]
    assert shown == ["demo   | one", "demo   | two", "demo   | three"]
    assert (tmp_path / "logs" / "agent-1.log").read_text() == "not shown\n"
