"""Replicated masters against a real etcd: election, failover, fencing, the registry in etcd.

Every test runs real `master` (and `agent`) processes and a real etcd on
127.0.0.1; faults are real: kill -9, SIGSTOP, etcd stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from corral.states import is_terminal
from corral.testing import Cluster, EtcdServer, Process, wait_for
from corral.v1 import common_pb2, registry_pb2, scheduler_pb2, scheduler_pb2_grpc
from frameworks import CallError, NotSubscribed, Scheduler, SchedulerDriver, TaskSpec, pack
from tests.integration.test_end_to_end import Recorder, with_driver
from tests.integration.test_etcd_adapter import require_etcd
from tests.rawclient import RawFramework, launch, task_info

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL = 2.0
#: Time for a standby to notice and win after the leader's lease expired.
MARGIN = 5.0


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd", require_etcd())
    try:
        server.start()
        yield server
    finally:
        server.close()


def etcdctl(server: EtcdServer, *args: str) -> str:
    binary = str(Path(server.binary).with_name("etcdctl"))
    done = subprocess.run(
        [binary, "--endpoints", server.address, *args], capture_output=True, check=True, timeout=10
    )
    return done.stdout.decode()


def refusal(address: str) -> grpc.RpcError:
    """The error a scheduler call to `address` gets."""
    with grpc.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Revive(scheduler_pb2.ReviveRequest(framework_id="f", stream_id="s"), timeout=5)
    return caught.value


def test_three_masters_elect_exactly_one_leader_and_standbys_name_it(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    masters = cluster.start_masters(3, etcd_server.url, ttl=TTL)
    leader = cluster.wait_leader()
    for proc in masters:
        state = cluster.master_state(proc.address)
        assert state.leader.address == leader.address
        assert state.leader.term > 0
        assert state.leading == (proc is leader)
        if proc is not leader:
            error = refusal(proc.address)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"the leader is at {leader.address}" in error.details()
            assert ("x-leader-addr", leader.address) in tuple(error.trailing_metadata())
    stored = json.loads(etcdctl(etcd_server, "get", "--print-value-only", "/corral/default/leader"))
    assert stored["address"] == leader.address


def test_killing_the_leader_elects_another_and_agents_follow(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    cluster.start_masters(3, etcd_server.url, ttl=TTL)
    old = cluster.wait_leader()
    for _ in range(2):
        cluster.start_agent()
    cluster.wait_agents(2)
    term = cluster.state().leader.term

    old.signal(signal.SIGKILL)
    new = cluster.wait_leader(timeout=TTL + MARGIN)
    assert new is not old
    state = cluster.state()
    assert state.leader.term > term
    assert state.leader.failovers >= 1
    # The registry came from etcd: both agents are known, then come back.
    assert len(state.agents) == 2
    cluster.wait_agents(2)


def test_losing_etcd_makes_the_leader_step_down_until_etcd_returns(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    cluster.start_masters(3, etcd_server.url, ttl=TTL)
    cluster.wait_leader()
    cluster.start_agent()
    cluster.wait_agents(1)

    etcd_server.stop()
    # Within 2/3 of the TTL (plus a refresh timeout) nobody leads, and nobody does while etcd is away.
    wait_for(lambda: not cluster.leaders(), TTL + MARGIN, "every master to step down")
    for _ in range(5):
        assert cluster.leaders() == []
    etcd_server.start()
    cluster.wait_leader(timeout=TTL + 15)
    cluster.wait_agents(1)


def test_a_paused_leader_is_fenced_when_it_resumes(cluster: Cluster, etcd_server: EtcdServer) -> None:
    masters = cluster.start_masters(2, etcd_server.url, ttl=TTL)
    old = cluster.wait_leader()
    cluster.start_agent()
    cluster.wait_agents(1)
    old.signal(signal.SIGSTOP)
    try:
        new = wait_for(
            lambda: next((p for p in cluster.leaders() if p is not old), None),
            TTL + MARGIN,
            "the standby to take over",
        )
        assert new is not old
    finally:
        old.signal(signal.SIGCONT)
    # Resumed, the old leader must not act, from its first answer on: it says
    # it does not lead and refuses calls, then tears its state machine down.
    state = wait_for(lambda: cluster.master_state(old.address), 10, "the resumed master to answer")
    assert not state.leading
    error = refusal(old.address)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [p.address for p in cluster.leaders()] == [new.address]
    assert len(masters) == 2
    wait_for(lambda: "stepping down" in old.output(), 10, "the old leader to step down")
    wait_for(
        lambda: cluster.master_state(old.address).leader.address == new.address,
        10,
        "the old leader to name the new one",
    )


def test_a_prefix_holding_garbage_is_refused_and_left_alone(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    etcdctl(etcd_server, "put", "/corral/default/registry", "not a registry")
    etcdctl(etcd_server, "put", "/corral/other/something-else", "hello")
    work = cluster.root / "refusing"
    work.mkdir()
    for cluster_name, expect in (
        ("default", "/corral/default/registry in etcd is not a Corral registry"),
        ("other", "holds keys Corral does not write (/corral/other/something-else)"),
    ):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "master",
                "--listen",
                "127.0.0.1:0",
                "--work-dir",
                str(work),
                "--store",
                etcd_server.url,
                "--cluster",
                cluster_name,
                "--election-ttl",
                "1",
            ],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 1
        assert expect in done.stderr.decode()
        assert "refusing to lead" in done.stderr.decode()
    assert "not a registry" in etcdctl(etcd_server, "get", "/corral/default/registry")
    assert "hello" in etcdctl(etcd_server, "get", "/corral/other/something-else")


def test_a_registry_from_a_newer_version_is_refused(cluster: Cluster, etcd_server: EtcdServer) -> None:
    newer = registry_pb2.Registry(version=99).SerializeToString()
    etcdctl(etcd_server, "put", "/corral/default/registry", newer.decode("latin-1"))
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "master", "--listen", "127.0.0.1:0", "--work-dir", str(cluster.root)),
            *("--store", etcd_server.url),
        ],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "has version 99, newer than this master's" in done.stderr.decode()
    # The stored value is untouched.
    stored = subprocess.run(
        [
            str(Path(etcd_server.binary).with_name("etcdctl")),
            "--endpoints",
            etcd_server.address,
            "get",
            "--print-value-only",
            "/corral/default/registry",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert stored.rstrip(b"\n") == newer


class Workload(Scheduler):
    """Launches `total` short tasks, each appending its id to `runs` when it runs,
    and reconciles what has not ended after every (re)subscription."""

    def __init__(self, total: int, runs: Path) -> None:
        self.total = total
        self.runs = runs
        #: task id -> agent id, for every task accepted.
        self.launched: dict[str, str] = {}
        #: task id -> every terminal state reported for it.
        self.terminal: dict[str, list[int]] = defaultdict(list)
        self.subscriptions = 0
        self.done = asyncio.Event()
        self.third_done = asyncio.Event()

    def pending(self) -> list[tuple[str, str]]:
        return [(task, agent) for task, agent in self.launched.items() if task not in self.terminal]

    async def subscribed(self, driver: SchedulerDriver, framework_id: str) -> None:
        self.subscriptions += 1
        if self.pending():
            await driver.reconcile(self.pending())

    async def offers(self, driver: SchedulerDriver, offers: list[scheduler_pb2.Offer]) -> None:
        want = self.total - len(self.launched)
        specs = [
            TaskSpec(f"echo {task_id} >> {self.runs}; sleep 0.3", cpus=0.1, mem=16, task_id=task_id)
            for task_id in (f"load{len(self.launched) + i}" for i in range(want))
        ]
        packing = pack(offers, specs)
        if packing.tasks:
            for task in packing.tasks:
                self.launched[task.task_id] = task.agent_id
            await driver.accept(packing.offer_ids, packing.tasks, refuse_seconds=0)
        if packing.leftover_offer_ids:
            await driver.decline(packing.leftover_offer_ids, refuse_seconds=0 if want else 60)

    def update(self, driver: SchedulerDriver, status: common_pb2.TaskStatus) -> None:
        if is_terminal(status.state):
            self.terminal[status.task_id].append(status.state)
            if len(self.terminal) >= self.total // 3:
                self.third_done.set()
            if len(self.terminal) >= self.total:
                self.done.set()


def test_failover_under_load_loses_and_duplicates_no_task(cluster: Cluster, etcd_server: EtcdServer) -> None:
    """Kill -9 the leader while a framework runs hundreds of short tasks: every
    task ends exactly once, as reported to the framework, none runs twice, and
    every agent re-registers with the new leader."""
    total = 300
    cluster.start_masters(3, etcd_server.url, ttl=TTL)
    old = cluster.wait_leader()
    for _ in range(3):
        cluster.start_agent(resources="cpus:4;mem:4096;disk:1024")
    cluster.wait_agents(3)
    runs = cluster.root / "runs.log"
    workload = Workload(total, runs)

    async def main() -> Process:
        driver = SchedulerDriver(workload, master=cluster.master_address, name="load", failover_timeout=120)
        runner = asyncio.create_task(driver.run())

        async def reconcile_now_and_then() -> None:
            while True:
                await asyncio.sleep(2)
                with contextlib.suppress(NotSubscribed, CallError):
                    if driver.subscribed and workload.pending():
                        await driver.reconcile(workload.pending())

        reconciler = asyncio.create_task(reconcile_now_and_then())
        try:
            await asyncio.wait_for(workload.third_done.wait(), 60)
            assert not workload.done.is_set()
            old.signal(signal.SIGKILL)
            new = await asyncio.to_thread(cluster.wait_leader, TTL + MARGIN)
            await asyncio.wait_for(workload.done.wait(), 120)
            return new
        finally:
            reconciler.cancel()
            await driver.teardown()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner

    new = asyncio.run(main())
    assert new is not old
    assert workload.subscriptions >= 2
    assert len(workload.launched) == total
    ran = runs.read_text().split()
    assert len(ran) == len(set(ran)), "a task ran twice"
    for task_id in workload.launched:
        states = set(workload.terminal[task_id])
        assert len(states) == 1, f"{task_id}: terminal states {states}"
        if task_id in ran:
            assert states == {common_pb2.TASK_FINISHED}, f"{task_id} ran but ended {states}"
    cluster.wait_agents(3)


def corral_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_corral_leader_and_the_cli_follow_the_leader_from_a_standby(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    masters = cluster.start_masters(2, etcd_server.url, ttl=TTL)
    leader = cluster.wait_leader()
    standby = next(p for p in masters if p is not leader)
    cluster.start_agent()
    cluster.wait_agents(1)

    asked = corral_cli("leader", "--master", standby.address)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.startswith(f"{leader.address} (master-")
    assert "term " in asked.stdout
    from_etcd = corral_cli("leader", "--etcd", etcd_server.url)
    assert from_etcd.returncode == 0, from_etcd.stderr
    assert from_etcd.stdout.startswith(f"{leader.address} (master-")
    # `corral agents` asked at the standby shows the leader's (current) view.
    agents = corral_cli("agents", "--master", standby.address)
    assert agents.returncode == 0, agents.stderr
    assert "agent1" in agents.stdout
    assert "not the leader" not in agents.stderr


def test_corral_up_with_three_masters_runs_the_demo_through_the_leader(tmp_path: Path) -> None:
    require_etcd()
    result = subprocess.run(
        [
            sys.executable,
            *("-m", "corral", "up", "--masters", "3", "--agents", "2", "--port", "0"),
            *("--demo", "--exit-after-demo", "--work-dir", str(tmp_path / "up")),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "starting etcd on 127.0.0.1:" in result.stdout
    assert " leads (term " in result.stdout
    assert len([line for line in result.stdout.splitlines() if "FINISHED" in line]) == 5, result.stdout
    logs = tmp_path / "up" / "logs"
    assert sum("elected leader" in (logs / f"master-{i}.log").read_text() for i in (1, 2, 3)) == 1


def launch_sleepers(fw: RawFramework, count: int) -> dict[str, str]:
    """Launch `count` long tasks, one per offer (so one per agent); task id -> agent id, once RUNNING."""
    placed: dict[str, str] = {}
    while len(placed) < count:
        for offer in fw.offers(timeout=20):
            if len(placed) == count or offer.agent_id in placed.values():
                fw.call("Decline", offer_ids=[offer.id])
                continue
            task_id = f"sleeper{len(placed)}"
            task = task_info(task_id, offer.agent_id, "sleep 600", mem=16)
            fw.call("Accept", offer_ids=[offer.id], operations=launch(task))
            placed[task_id] = offer.agent_id
    wait_updates(fw, {t: common_pb2.TASK_RUNNING for t in placed})
    return placed


def wait_updates(fw: RawFramework, wanted: dict[str, int], timeout: float = 30.0) -> None:
    """Read updates (acknowledging them) until every task in `wanted` was reported in its state."""
    missing = dict(wanted)
    deadline = time.monotonic() + timeout
    while missing:
        status = fw.wait("update", timeout=max(0.1, deadline - time.monotonic())).update.status
        if status.uuid:
            ack = scheduler_pb2.AcknowledgeRequest.Ack(
                agent_id=status.agent_id, task_id=status.task_id, uuid=status.uuid
            )
            fw.call("Acknowledge", acknowledgements=[ack])
        if missing.get(status.task_id) == status.state:
            del missing[status.task_id]


def test_after_failover_a_missing_agent_is_unreachable_then_reconciled_when_it_returns(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    cluster.start_masters(2, etcd_server.url, ttl=TTL)
    old = cluster.wait_leader()
    cluster.start_agent()
    late = cluster.start_agent()
    cluster.wait_agents(2)
    fw = RawFramework(old.address, failover=120)
    fw.subscribe()
    tasks = launch_sleepers(fw, 2)
    late_agent = next(a.id for a in cluster.state().agents if a.hostname == late.name)
    late_task = next(t for t, a in tasks.items() if a == late_agent)
    probe = [scheduler_pb2.ReconcileRequest.Task(task_id=late_task, agent_id=late_agent)]
    fw.close()

    late.signal(signal.SIGSTOP)
    try:
        old.signal(signal.SIGKILL)
        new = cluster.wait_leader(timeout=TTL + MARGIN)
        back = RawFramework(new.address, failover=120, framework_id=fw.framework_id)
        back.subscribe()
        # The paused agent does not come back within the agent timeout: unreachable.
        wait_for(
            lambda: any(a.id == late_agent and a.status == "unreachable" for a in cluster.state().agents),
            what="the paused agent to be marked unreachable",
        )
        back.call("Reconcile", tasks=probe)
        wait_updates(back, {late_task: common_pb2.TASK_UNREACHABLE})
    finally:
        late.signal(signal.SIGCONT)
    cluster.wait_agents(2)
    back.call("Reconcile", tasks=probe)
    wait_updates(back, {late_task: common_pb2.TASK_RUNNING})
    back.close()


def test_a_framework_that_does_not_come_back_after_failover_is_torn_down_after_its_timeout(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    cluster.start_masters(2, etcd_server.url, ttl=TTL)
    old = cluster.wait_leader()
    cluster.start_agent()
    cluster.wait_agents(1)
    fw = RawFramework(old.address, failover=6)
    fw.subscribe()
    launch_sleepers(fw, 1)
    fw.close()

    old.signal(signal.SIGKILL)
    cluster.wait_leader(timeout=TTL + MARGIN)
    cluster.wait_agents(1)
    # Within its failover timeout the framework and its task are kept...
    state = cluster.state()
    assert [f.info.id for f in state.frameworks] == [fw.framework_id]
    assert [t.state for t in state.tasks] == [common_pb2.TASK_RUNNING]
    # ...after it, both are gone and the task's process is killed.
    wait_for(lambda: not cluster.state().frameworks, 30, "the framework to be torn down")
    sandboxes = cluster.root / "agent1" / "sandboxes"
    wait_for(
        lambda: not any(str(sandboxes) in (p.info["cwd"] or "") for p in psutil.process_iter(["cwd"])),
        30,
        "the task's process to end",
    )


def test_agents_and_frameworks_given_only_etcd_find_the_leader_and_follow_it(
    cluster: Cluster, etcd_server: EtcdServer
) -> None:
    cluster.start_masters(3, etcd_server.url, ttl=TTL)
    old = cluster.wait_leader()
    # The masters' addresses are overridden: this agent only knows etcd.
    cluster.start_agent("--master", etcd_server.url)
    cluster.wait_agents(1)
    recorder = Recorder([TaskSpec("sleep 120", task_id="found")])

    async def body(driver: SchedulerDriver) -> None:
        await recorder.until(lambda: recorder.in_state("found", common_pb2.TASK_RUNNING), what="RUNNING")
        assert driver.master == old.address
        old.signal(signal.SIGKILL)
        new = await asyncio.to_thread(cluster.wait_leader, TTL + MARGIN)
        await asyncio.to_thread(cluster.wait_agents, 1, "active", 30.0)
        await recorder.until(
            lambda: driver.subscribed and driver.master == new.address,
            timeout=30,
            what="resubscription at the new leader",
        )
        await driver.teardown()

    asyncio.run(with_driver(recorder, etcd_server.url, body, failover_timeout=60))


def test_a_malformed_etcd_master_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="not HOST:PORT"):
        SchedulerDriver(Scheduler(), master="etcd://nohost")
