"""The process containerizer with real processes: sandboxes, exit codes, environment, kills.

Processes are started only through the containerizer under test. Each test body runs
inside `containerizer()`, which on the way out (also when the test failed) SIGKILLs
the process group of every task still running and waits for it to be reaped. Those
leaders are not reaped yet, so their group ids cannot belong to anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

import agent.containerizer.process as process_module
from agent.containerizer import ContainerizerOptions, LaunchError, LaunchSpec, TaskExit, create
from agent.containerizer.process import ProcessContainerizer
from agent.isolation import cgroups
from corral.v1 import common_pb2

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _remove_task_cgroups() -> Iterator[None]:
    """As root the containerizer puts tasks in cgroups named by AGENT, framework and
    task; remove them after every test (also a failed one), so that the next test's
    task of the same name never meets a cgroup still being torn down."""
    yield
    found, _ = cgroups.detect(setup=False)
    if found is not None:
        found.remove_agent(AGENT)


FW = "fw-test"
AGENT = "agent-test"
DEADLINE = 15.0


@contextlib.asynccontextmanager
async def containerizer(
    work_dir: Path, environment: Mapping[str, str] | None = None
) -> AsyncIterator[ProcessContainerizer]:
    options = ContainerizerOptions(
        work_dir=work_dir, environment=dict(environment or {"PATH": os.environ["PATH"]})
    )
    made = create("process", options)
    assert isinstance(made, ProcessContainerizer)
    try:
        yield made
    finally:
        running = list(made._processes.values())
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if running:
            await asyncio.wait([p.exited for p in running], timeout=DEADLINE)
        await made.close()


def task(
    task_id: str = "t1",
    shell: str | None = None,
    argv: Sequence[str] = (),
    value: str = "",
    env: Mapping[str, str] | None = None,
    ports: Sequence[tuple[int, int]] = (),
) -> common_pb2.TaskInfo:
    command = common_pb2.CommandInfo(environment=dict(env or {}))
    if shell is not None:
        command.value, command.shell = shell, True
    else:
        command.value = value or argv[0]
        command.arguments.extend(argv)
    info = common_pb2.TaskInfo(task_id=task_id, name=task_id, agent_id=AGENT, command=command)
    if ports:
        info.resources.add(name="ports", ranges=[common_pb2.Range(begin=b, end=e) for b, e in ports])
    return info


def spec(info: common_pb2.TaskInfo, framework_id: str = FW) -> LaunchSpec:
    return LaunchSpec(framework_id=framework_id, agent_id=AGENT, task=info)


async def finish(exited: asyncio.Future[TaskExit]) -> TaskExit:
    return await asyncio.wait_for(exited, DEADLINE)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition`, failing after DEADLINE seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def live_group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group `pgid`."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def sandbox(work_dir: Path, task_id: str = "t1", framework_id: str = FW) -> Path:
    return work_dir / "sandboxes" / framework_id / task_id


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


# -- running commands ---------------------------------------------------------


def test_output_lands_in_the_sandbox_and_exit_zero_is_finished(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            outcome = await finish(await c.launch(spec(task(shell="echo out; echo err >&2; pwd"))))
        assert outcome.state == common_pb2.TASK_FINISHED
        assert outcome.reason == common_pb2.REASON_COMMAND_EXITED
        assert outcome.exit_code == 0
        box = sandbox(tmp_path)
        assert (box / "stdout").read_text() == f"out\n{box}\n"
        assert (box / "stderr").read_text() == "err\n"

    run(body)


def test_argv_commands_run_without_a_shell_with_arguments_as_argv(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            # arguments[0] is argv[0], as in Mesos; `value` is what is executed.
            info = task(value="sh", argv=["my-name", "-c", 'echo "$0" "$1"', "x", "a b"])
            outcome = await finish(await c.launch(spec(info)))
            assert outcome.state == common_pb2.TASK_FINISHED
            assert (sandbox(tmp_path) / "stdout").read_text() == "x a b\n"

            # Without arguments, argv is [value].
            outcome = await finish(await c.launch(spec(task("t2", value="true"))))
            assert outcome.state == common_pb2.TASK_FINISHED

    run(body)


def test_a_non_zero_exit_is_failed_with_its_code(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            outcome = await finish(await c.launch(spec(task(shell="exit 3"))))
        assert outcome.state == common_pb2.TASK_FAILED
        assert outcome.reason == common_pb2.REASON_COMMAND_EXITED
        assert outcome.exit_code == 3
        assert "exited with code 3" in outcome.message

    run(body)


def test_death_by_signal_is_failed_and_names_the_signal(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            outcome = await finish(await c.launch(spec(task(shell="kill -USR1 $$"))))
        assert outcome.state == common_pb2.TASK_FAILED
        assert "SIGUSR1" in outcome.message
        assert outcome.exit_code is None

    run(body)


def test_a_missing_executable_is_a_launch_failure(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            with pytest.raises(LaunchError) as error:
                await c.launch(spec(task(argv=["/no/such/program", "arg"])))
        assert error.value.state == common_pb2.TASK_FAILED
        assert error.value.reason == common_pb2.REASON_LAUNCH_FAILED
        assert "cannot run '/no/such/program'" in error.value.message
        assert "No such file or directory" in error.value.message
        assert "cannot run '/no/such/program'" in (sandbox(tmp_path) / "stderr").read_text()

    run(body)


def test_a_task_without_a_command_is_an_error(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            with pytest.raises(LaunchError) as error:
                await c.launch(spec(common_pb2.TaskInfo(task_id="t1")))
        assert error.value.state == common_pb2.TASK_ERROR
        assert error.value.reason == common_pb2.REASON_TASK_INVALID

    run(body)


def test_the_exit_watcher_without_pidfd_gives_the_same_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels before 5.3 have no pidfd: a thread per child waits instead."""
    monkeypatch.setattr(process_module, "_HAVE_PIDFD", False)

    async def body() -> None:
        async with containerizer(tmp_path) as c:
            ok = await finish(await c.launch(spec(task("ok", shell="echo hi"))))
            bad = await finish(await c.launch(spec(task("bad", shell="exit 7"))))
        assert ok.state == common_pb2.TASK_FINISHED
        assert bad.state == common_pb2.TASK_FAILED
        assert bad.exit_code == 7

    run(body)


# -- environment --------------------------------------------------------------


def test_the_environment_is_built_for_the_task(tmp_path: Path) -> None:
    async def body() -> None:
        inherited = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
        async with containerizer(tmp_path, inherited) as c:
            info = task(shell="env", env={"GREETING": "hello world"}, ports=[(31000, 31001), (31005, 31005)])
            outcome = await finish(await c.launch(spec(info)))
        assert outcome.state == common_pb2.TASK_FINISHED
        box = sandbox(tmp_path)
        lines = (box / "stdout").read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines if "=" in line)
        assert env["PATH"] == os.environ["PATH"]
        assert env["LANG"] == "C.UTF-8"
        assert env["HOME"] == str(box)
        assert env["CORRAL_TASK_ID"] == "t1"
        assert env["CORRAL_FRAMEWORK_ID"] == FW
        assert env["CORRAL_AGENT_ID"] == AGENT
        assert env["CORRAL_SANDBOX"] == str(box)
        assert env["GREETING"] == "hello world"
        assert (env["PORT0"], env["PORT1"], env["PORT2"]) == ("31000", "31001", "31005")
        assert env["PORTS"] == "31000,31001,31005"
        assert "PORT3" not in env
        # Nothing else of the agent's (here: the test runner's) environment leaks in.
        assert "PYTEST_CURRENT_TEST" not in env

    run(body)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"1BAD": "x"}, "name '1BAD' is not allowed"),
        ({"A=B": "x"}, "name 'A=B' is not allowed"),
        ({"CORRAL_TASK_ID": "someone-else"}, "CORRAL_TASK_ID is set by the agent"),
        ({"NUL": "a\0b"}, "NUL contains a NUL character"),
    ],
)
def test_a_bad_environment_is_a_task_error(tmp_path: Path, env: dict[str, str], message: str) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            with pytest.raises(LaunchError, match=message) as error:
                await c.launch(spec(task(shell="true", env=env)))
        assert error.value.state == common_pb2.TASK_ERROR
        assert error.value.reason == common_pb2.REASON_TASK_INVALID
        assert not (tmp_path / "sandboxes").exists()  # Refused before anything was made.

    run(body)


# -- sandboxes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("framework_id", "task_id"),
    [(FW, "../escape"), (FW, "a/b"), ("../escape", "t1"), (FW, ""), (FW, ".hidden")],
)
def test_path_like_ids_are_refused(tmp_path: Path, framework_id: str, task_id: str) -> None:
    async def body() -> None:
        work_dir = tmp_path / "work"
        async with containerizer(work_dir) as c:
            with pytest.raises(LaunchError) as error:
                await c.launch(spec(task(task_id, shell="touch escaped"), framework_id=framework_id))
        assert error.value.state == common_pb2.TASK_ERROR
        assert error.value.reason == common_pb2.REASON_TASK_INVALID

    run(body)
    assert list(tmp_path.iterdir()) == []  # No sandbox, nothing escaped.


def test_a_reused_task_id_gets_a_fresh_sandbox(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            for word in ("first", "second", "third"):
                outcome = await finish(await c.launch(spec(task(shell=f"echo {word}"))))
                assert outcome.state == common_pb2.TASK_FINISHED
        parent = tmp_path / "sandboxes" / FW
        assert sorted(p.name for p in parent.iterdir()) == ["t1", "t1~1", "t1~2"]
        assert (parent / "t1" / "stdout").read_text() == "first\n"
        assert (parent / "t1~1" / "stdout").read_text() == "second\n"
        assert (parent / "t1~2" / "stdout").read_text() == "third\n"

    run(body)


def test_a_task_id_that_is_running_cannot_be_launched_again(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            await c.launch(spec(task(shell="sleep 100")))
            with pytest.raises(LaunchError, match="already running") as error:
                await c.launch(spec(task(shell="true")))
            assert error.value.state == common_pb2.TASK_ERROR

    run(body)


# -- kills --------------------------------------------------------------------


def test_kill_sends_sigterm_first(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            exited = await c.launch(spec(task(shell="echo ready; exec sleep 100")))
            await until(lambda: "ready" in (sandbox(tmp_path) / "stdout").read_text(), "the task is up")
            await c.kill((FW, "t1"), 60)
            outcome = await finish(exited)
        assert outcome.state == common_pb2.TASK_KILLED
        assert outcome.reason == common_pb2.REASON_KILLED_BY_FRAMEWORK
        assert "SIGTERM" in outcome.message
        assert "SIGKILL" not in outcome.message

    run(body)


def test_kill_escalates_to_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            # Ignoring TERM is inherited by the loop's `sleep` children too.
            script = "trap '' TERM; echo ready; while :; do sleep 1; done"
            exited = await c.launch(spec(task(shell=script)))
            pgid = c._processes[(FW, "t1")].pid
            await until(lambda: "ready" in (sandbox(tmp_path) / "stdout").read_text(), "TERM is trapped")
            await c.kill((FW, "t1"), 0.3)
            outcome = await finish(exited)
            assert outcome.state == common_pb2.TASK_KILLED
            assert "SIGKILL after the 0.3 s grace period" in outcome.message
            await until(lambda: not live_group_members(pgid), "the whole group is gone")

    run(body)


def test_a_second_kill_can_shorten_the_grace_period(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            exited = await c.launch(spec(task(shell="trap '' TERM; echo ready; while :; do sleep 1; done")))
            await until(lambda: "ready" in (sandbox(tmp_path) / "stdout").read_text(), "TERM is trapped")
            await c.kill((FW, "t1"), 3600)
            await c.kill((FW, "t1"), 0.1)
            outcome = await finish(exited)
        assert outcome.state == common_pb2.TASK_KILLED
        assert "0.1 s grace period" in outcome.message

    run(body)


def test_kill_reaches_every_process_the_task_forked(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            exited = await c.launch(spec(task(shell="sleep 100 & sleep 100 & wait")))
            pgid = c._processes[(FW, "t1")].pid
            await until(lambda: len(live_group_members(pgid)) == 3, "the shell and both children run")
            await c.kill((FW, "t1"), 5)
            outcome = await finish(exited)
            assert outcome.state == common_pb2.TASK_KILLED
            await until(lambda: not live_group_members(pgid), "no process of the group remains")

    run(body)


def test_children_that_ignore_sigterm_die_with_their_leader(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            # The leader exits on TERM; its child ignores TERM and would linger.
            script = "sh -c \"trap '' TERM; echo ready; sleep 100\" & wait"
            exited = await c.launch(spec(task(shell=script)))
            pgid = c._processes[(FW, "t1")].pid
            await until(lambda: "ready" in (sandbox(tmp_path) / "stdout").read_text(), "the child is up")
            await c.kill((FW, "t1"), 3600)
            outcome = await finish(exited)
            assert outcome.state == common_pb2.TASK_KILLED
            assert "SIGKILL" not in outcome.message  # The leader went at SIGTERM...
            await until(lambda: not live_group_members(pgid), "the stragglers are gone")  # ...and took them.

    run(body)


def test_what_a_finished_task_left_behind_is_killed(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            exited = await c.launch(spec(task(shell="sleep 100 & echo $! > bg.pid")))
            pgid = c._processes[(FW, "t1")].pid
            outcome = await finish(exited)
            assert outcome.state == common_pb2.TASK_FINISHED
            await until(lambda: not live_group_members(pgid), "the background sleep is gone")

    run(body)


def test_killing_an_unknown_task_does_nothing(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            await c.kill((FW, "never-launched"), 1)

    run(body)


# -- usage and shutdown -------------------------------------------------------


def test_usage_covers_the_whole_process_group(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            await c.launch(spec(task(shell="sleep 100 & sleep 100 & wait")))
            pgid = c._processes[(FW, "t1")].pid
            await until(lambda: len(live_group_members(pgid)) == 3, "the shell and both children run")
            usage = (await c.usage())[(FW, "t1")]
            assert usage.processes == 3
            assert usage.mem_rss_bytes > 0
            assert usage.cpu_user_seconds >= 0
            assert usage.timestamp > 0

    run(body)


def test_usage_of_no_tasks_is_empty(tmp_path: Path) -> None:
    async def body() -> None:
        async with containerizer(tmp_path) as c:
            assert await c.usage() == {}

    run(body)


def test_close_leaves_tasks_running(tmp_path: Path) -> None:
    pids: list[int] = []

    async def body() -> None:
        async with containerizer(tmp_path) as c:
            await c.launch(spec(task(shell="exec sleep 100")))
            pids.append(c._processes[(FW, "t1")].pid)
            await c.close()
            assert psutil.Process(pids[0]).status() != psutil.STATUS_ZOMBIE

    try:
        run(body)
    finally:
        # Nobody watches it any more: end and reap it here (it is this process's
        # child, so the pid stays ours until it is reaped).
        for pid in pids:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
