"""Process tasks in real cgroups (the agent runs as root here): memory limit and
out-of-memory report, whole-cgroup kill of a task that forks (even into a new
session), limits written from the task's resources, cgroups re-adopted by a
restarted agent and removed when their task ends. Tests cover the cgroup version
the machine has (v1 controllers on these hybrid hosts)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator

import psutil
import pytest

from agent.isolation import cgroups
from corral.testing import Cluster, wait_for
from corral.v1 import common_pb2
from frameworks import SchedulerDriver, TaskSpec
from tests.integration.test_agent_recovery import MASTER_FLAGS, journal_records, kill_9, until
from tests.integration.test_end_to_end import Recorder, with_driver

pytestmark = pytest.mark.integration

S = common_pb2
#: Three processes, one in a session of its own (out of the task's process group):
#: only a cgroup kill reaches it.
FORKS = "sleep 600 & setsid sleep 600 & sleep 600 & wait"


@pytest.fixture
def tree(cluster: Cluster) -> Iterator[cgroups.Cgroups]:
    """The host's cgroups as the agent sees them. Afterwards the cgroups of this
    test's agents are killed and removed, also when the test failed, and so is the
    `corral` parent unless other agents use it."""
    found, why = cgroups.detect(setup=False)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"cgroups are needed in CI: {why}")
        pytest.skip(f"no cgroups: {why}")
    bases = {path.parent for path in found.agent_dirs("x")}
    try:
        yield found
    finally:
        for id_file in cluster.root.glob("*/agent_id"):
            found.remove_agent(id_file.read_text().strip())
        for base in bases:
            with contextlib.suppress(OSError):
                base.rmdir()  # Fails, as it should, while other agents use it.


def _forked(cgroup: cgroups.TaskCgroup) -> bool:
    """FORKS has started all its processes, and one has left the task's session."""
    pids = cgroup.pids()
    try:
        return len(pids) == 4 and len({os.getsid(pid) for pid in pids}) == 2
    except ProcessLookupError:
        return False


def _gone(cgroup: cgroups.TaskCgroup) -> bool:
    return not cgroup.exists()


def test_a_task_over_its_memory_limit_is_killed_and_reported_out_of_memory(
    cluster: Cluster, tree: cgroups.Cgroups
) -> None:
    cluster.start_master()
    cluster.start_agent()
    agent_id = cluster.wait_agents(1).agents[0].id
    hog = [sys.executable, "-c", "data = b'x' * (256 << 20); print(len(data))"]
    recorder = Recorder([TaskSpec(hog, mem=64, task_id="hog")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("hog", S.TASK_FAILED), what="TASK_FAILED")

    asyncio.run(with_driver(recorder, cluster.master_address, body))
    status = recorder.last("hog")
    assert status is not None
    assert status.reason == S.REASON_CONTAINER_LIMITATION_MEMORY, status
    assert "out of memory" in status.message and "64 MB" in status.message
    wait_for(lambda: _gone(tree.task(agent_id, recorder.framework_id, "hog")), what="the cgroup removed")


def test_killing_a_task_that_forks_kills_every_process_and_removes_its_cgroup(
    cluster: Cluster, tree: cgroups.Cgroups
) -> None:
    cluster.start_master()
    cluster.start_agent()
    agent_id = cluster.wait_agents(1).agents[0].id
    recorder = Recorder([TaskSpec(FORKS, cpus=0.5, mem=48, task_id="forks")])
    processes: list[psutil.Process] = []

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("forks", S.TASK_RUNNING), what="RUNNING")
        cgroup = tree.task(agent_id, recorder.framework_id, "forks")
        await until(lambda: _forked(cgroup), "the shell and its three children, one in its own session")
        processes.extend(psutil.Process(pid) for pid in cgroup.pids())
        _assert_limits(cgroup, cpus=0.5, mem_mb=48)
        await driver.kill("forks")
        await recorder.until(lambda: recorder.in_state("forks", S.TASK_KILLED), what="TASK_KILLED")
        await until(lambda: not any(p.is_running() for p in processes), "every process to end")
        await until(lambda: _gone(cgroup), "the cgroup to be removed")

    asyncio.run(with_driver(recorder, cluster.master_address, body))
    assert len(processes) == 4


def test_a_restarted_agent_readopts_task_cgroups(cluster: Cluster, tree: cgroups.Cgroups) -> None:
    """After kill -9 and a restart, killing a re-adopted task still ends every process
    in its cgroup (even one in another session), and the cgroup is removed."""
    cluster.start_master(*MASTER_FLAGS)
    agent = cluster.start_agent(name="agent1")
    agent_id = cluster.wait_agents(1).agents[0].id
    recorder = Recorder([TaskSpec(FORKS, task_id="forks")])
    processes: list[psutil.Process] = []

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("forks", S.TASK_RUNNING), what="RUNNING")
        cgroup = tree.task(agent_id, recorder.framework_id, "forks")
        await until(lambda: _forked(cgroup), "the shell and its three children, one in its own session")
        processes.extend(psutil.Process(pid) for pid in cgroup.pids())
        await until(
            lambda: any(r["op"] == "ack" for r in journal_records(cluster, "agent1")),
            "the agent to checkpoint the acknowledgement of RUNNING",
        )
        kill_9(agent)
        cluster.start_agent(name="agent1")
        await until(
            lambda: "re-adopted pid" in (cluster.root / "agent1.log").read_text(), "the agent to re-adopt"
        )
        assert all(p.is_running() for p in processes)
        await driver.kill("forks")
        await recorder.until(lambda: recorder.in_state("forks", S.TASK_KILLED), what="TASK_KILLED")
        await until(lambda: not any(p.is_running() for p in processes), "every process to end")
        await until(lambda: _gone(cgroup), "the cgroup to be removed")

    asyncio.run(with_driver(recorder, cluster.master_address, body, failover_timeout=60))
    assert [u.state for u in recorder.updates["forks"]] == [S.TASK_RUNNING, S.TASK_KILLED]


def _assert_limits(cgroup: cgroups.TaskCgroup, *, cpus: float, mem_mb: float) -> None:
    mem = str(int(mem_mb * 1024 * 1024))
    dirs = cgroup.dirs
    if cgroup.version == 2:
        assert (dirs["memory"] / "memory.max").read_text().strip() == mem
        assert (dirs["cpu"] / "cpu.max").read_text().split()[0] == str(int(cpus * 100_000))
        assert (dirs["pids"] / "pids.max").read_text().strip() != "max"
    else:
        assert (dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == mem
        assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == str(int(cpus * 100_000))
        assert (dirs["cpu"] / "cpu.shares").read_text().strip() == str(int(cpus * 1024))
        assert (dirs["pids"] / "pids.max").read_text().strip() != "max"


def test_with_isolation_none_a_task_gets_no_cgroup(cluster: Cluster, tree: cgroups.Cgroups) -> None:
    cluster.start_master()
    cluster.start_agent("--isolation", "none")
    agent_id = cluster.wait_agents(1).agents[0].id
    recorder = Recorder([TaskSpec("sleep 60", task_id="plain")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("plain", S.TASK_RUNNING), what="RUNNING")
        assert not tree.task(agent_id, recorder.framework_id, "plain").exists()
        await driver.teardown()

    asyncio.run(with_driver(recorder, cluster.master_address, body))
