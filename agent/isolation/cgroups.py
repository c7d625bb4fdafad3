"""Control groups for process tasks: limits, whole-task kill, OOM detection, usage.

Each task gets its own cgroup, `.../corral/<agent id>/<framework id>/<task id>`, with
a cpu share and quota from its `cpus`, a memory limit from its `mem` (swap not
allowed beyond it), and a pids limit. Killing a task kills every process in its
cgroup, wherever they re-parented or whatever session they made; a task killed by
the kernel for exceeding its memory is recognised by the cgroup's OOM counter.

Both cgroup versions are supported, as Mesos and runc do:

- v2 (unified, `/sys/fs/cgroup/cgroup.controllers` exists): one tree. The task
  cgroups live under the agent's own cgroup. Since v2 lets a cgroup hand
  controllers to its children only when no process lives in it directly (the root
  excepted), an agent in a non-root cgroup first moves itself into a leaf
  (`corral-agent`) beside `corral`.
- v1 (or hybrid, where the controllers are mounted as v1 hierarchies under
  `/sys/fs/cgroup/<controller>` and cgroup2 at `/sys/fs/cgroup/unified` holds
  none): one directory per hierarchy (cpu, cpuacct, memory, pids), each under
  the agent's own cgroup in that hierarchy.

Starting a task inside its cgroup without a race: the agent moves itself into the
task's cgroup, spawns, and moves back (`Cgroups.inside`). The child is born in the
cgroup, so nothing it forks can escape; this costs two writes per hierarchy (about
0.1 ms here), far less than a `preexec_fn` (which forces a full fork: measured 2.4x
slower spawns) and not racy like moving the child after it started.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from corral.v1 import common_pb2

logger = logging.getLogger(__name__)

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
V1_CONTROLLERS: Final = ("cpu", "cpuacct", "memory", "pids")
V2_CONTROLLERS: Final = ("cpu", "memory", "pids")
CORRAL: Final = "corral"
AGENT_LEAF: Final = "corral-agent"
CFS_PERIOD_US: Final = 100_000
MIN_QUOTA_US: Final = 1_000


class CgroupError(Exception):
    """A cgroup could not be made or configured; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a task may use: cpus (fractional), memory in MB, processes."""

    cpus: float
    mem_mb: float
    pids: int


@dataclass(frozen=True, slots=True)
class TaskCgroup:
    """One task's cgroup: one directory (v2) or one per hierarchy (v1)."""

    version: int
    #: controller -> directory (v2: the same directory for every controller).
    dirs: dict[str, Path]

    @property
    def paths(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def handle(self) -> str:
        """A string that `Cgroups.adopt` turns back into this cgroup (for checkpoints)."""
        return ",".join(f"{name}={path}" for name, path in self.dirs.items())

    def pids(self) -> list[int]:
        """Every process in the cgroup now (a task's processes are in each of its
        hierarchies, so one is read: the pids or memory one)."""
        path = self.dirs.get("pids") or self.dirs["memory"]
        try:
            return [int(line) for line in (path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill(self) -> int:
        """SIGKILL every process in the cgroup; return how many were signalled."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                (self.dirs["memory"] / "cgroup.kill").write_text("1")
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process here for exceeding the memory limit."""
        memory = self.dirs.get("memory")
        if memory is None:
            return False
        if self.version == 2:
            return _field(memory / "memory.events", "oom_kill") > 0
        kills = _field(memory / "memory.oom_control", "oom_kill")
        if kills >= 0:
            return kills > 0
        # Kernels before 4.13 have no oom_kill counter: hitting the limit is the best sign.
        return _read_int(memory / "memory.failcnt") > 0

    def remove(self) -> bool:
        """Remove the cgroup; False while processes remain in it (kill first)."""
        for path in self.paths:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    return False
                raise
            # The framework's and the agent's directories go with their last task.
            with contextlib.suppress(OSError):
                path.parent.rmdir()
                path.parent.parent.rmdir()
        return True

    def exists(self) -> bool:
        return any(path.is_dir() for path in self.paths)

    def usage(self) -> common_pb2.ResourceUsage:
        """cpu time, resident memory and process count, as the cgroup accounts them."""
        usage = common_pb2.ResourceUsage(timestamp=time.time())
        if self.version == 2:
            stat = _fields(self.dirs["cpu"] / "cpu.stat") if "cpu" in self.dirs else {}
            usage.cpu_user_seconds = stat.get("user_usec", 0) / 1e6
            usage.cpu_system_seconds = stat.get("system_usec", 0) / 1e6
            memory = _fields(self.dirs["memory"] / "memory.stat")
            usage.mem_rss_bytes = memory.get("anon", 0)
        else:
            if "cpuacct" in self.dirs:
                ticks = os.sysconf("SC_CLK_TCK")
                stat = _fields(self.dirs["cpuacct"] / "cpuacct.stat")
                usage.cpu_user_seconds = stat.get("user", 0) / ticks
                usage.cpu_system_seconds = stat.get("system", 0) / ticks
            memory = _fields(self.dirs["memory"] / "memory.stat")
            usage.mem_rss_bytes = memory.get("total_rss", memory.get("rss", 0))
        if "pids" in self.dirs:
            usage.processes = max(_read_int(self.dirs["pids"] / "pids.current"), 0)
        else:
            usage.processes = len(self.pids())
        return usage


class Cgroups:
    """The cgroup tree this agent puts its tasks in; made by `detect`."""

    def __init__(self, version: int, bases: dict[str, Path], homes: dict[str, Path]) -> None:
        self.version = version
        #: controller -> the `corral` directory tasks go under.
        self._bases = bases
        #: controller -> the agent's own cgroup, where it returns after a spawn.
        self._homes = homes

    def describe(self) -> str:
        return (
            f"cgroup v{self.version} under {', '.join(str(p) for p in dict.fromkeys(self._bases.values()))}"
        )

    def create(self, agent_id: str, framework_id: str, task_id: str, limits: Limits) -> TaskCgroup:
        """Make the task's cgroup with its limits (replacing a stale one of the same name)."""
        cgroup = self.task(agent_id, framework_id, task_id)
        if cgroup.exists():
            cgroup.kill()
            cgroup.remove()
        try:
            for path in cgroup.paths:
                if self.version == 2:
                    for parent in (path.parent.parent.parent, path.parent.parent, path.parent):
                        if not parent.is_dir():
                            parent.mkdir()
                            _enable_controllers(parent)
                    path.mkdir()
                else:
                    path.mkdir(parents=True)
            self._limit(cgroup, limits)
        except OSError as exc:
            cgroup.kill()
            with contextlib.suppress(OSError):
                cgroup.remove()
            raise CgroupError(f"cannot set up the cgroup {cgroup.paths[0]}: {exc.strerror or exc}") from None
        return cgroup

    def task(self, agent_id: str, framework_id: str, task_id: str) -> TaskCgroup:
        """Where a task's cgroup is (whether or not it exists)."""
        dirs = {name: base / agent_id / framework_id / task_id for name, base in self._bases.items()}
        return TaskCgroup(self.version, dirs)

    def agent_dirs(self, agent_id: str) -> list[Path]:
        """The parent cgroups of one agent's tasks, one per hierarchy."""
        return list(dict.fromkeys(base / agent_id for base in self._bases.values()))

    def remove_agent(self, agent_id: str, timeout: float = 10.0) -> bool:
        """Kill every process in an agent's cgroups and remove them all, blocking for at
        most `timeout` seconds; False if some remain. For clean-up (test harnesses),
        never on the agent's event loop."""
        deadline = time.monotonic() + timeout
        for agent_dir in self.agent_dirs(agent_id):
            if not agent_dir.is_dir():
                continue
            nested = sorted((p for p in agent_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for path in [*nested, agent_dir]:
                while path.is_dir():
                    with contextlib.suppress(OSError, ValueError):
                        for pid in (path / "cgroup.procs").read_text().split():
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(int(pid), signal.SIGKILL)
                    try:
                        path.rmdir()
                    except OSError:
                        if time.monotonic() > deadline:
                            return False
                        time.sleep(0.01)  # SIGKILLed processes take a moment to exit.
            with contextlib.suppress(OSError):
                agent_dir.parent.rmdir()  # The `corral` parent, unless other agents use it.
        return True

    def adopt(self, handle: str) -> TaskCgroup | None:
        """The cgroup a checkpoint names, if it is one of ours and still exists."""
        dirs: dict[str, Path] = {}
        for item in handle.split(","):
            name, sep, path = item.partition("=")
            base = self._bases.get(name)
            if not sep or base is None or not Path(path).is_relative_to(base):
                return None
            dirs[name] = Path(path)
        cgroup = TaskCgroup(self.version, dirs)
        return cgroup if dirs and cgroup.exists() else None

    def orphans(self, agent_id: str, known: set[tuple[str, str]]) -> list[TaskCgroup]:
        """Task cgroups of this agent that no checkpointed task owns (a crash between
        a spawn and its checkpoint): the agent kills and removes them."""
        found: dict[tuple[str, str], dict[str, Path]] = {}
        for name, base in self._bases.items():
            agent_dir = base / agent_id
            with contextlib.suppress(OSError):
                for framework_dir in agent_dir.iterdir():
                    if not framework_dir.is_dir():
                        continue
                    for task_dir in framework_dir.iterdir():
                        if task_dir.is_dir() and (framework_dir.name, task_dir.name) not in known:
                            found.setdefault((framework_dir.name, task_dir.name), {})[name] = task_dir
        return [TaskCgroup(self.version, dirs) for dirs in found.values()]

    @contextlib.contextmanager
    def inside(self, cgroup: TaskCgroup) -> Iterator[None]:
        """Run the block with the agent in the task's cgroup, so that a process it
        spawns is born there; the agent moves back home whatever happens."""
        pid = str(os.getpid())
        homes = {path: self._homes[name] for name, path in cgroup.dirs.items()}
        moved: list[Path] = []
        try:
            for path in cgroup.paths:
                (path / "cgroup.procs").write_text(pid)
                moved.append(path)
            yield
        finally:
            for path in moved:
                try:
                    (homes[path] / "cgroup.procs").write_text(pid)
                except OSError as exc:
                    # The child is running: fail nothing, but say the agent is stranded.
                    logger.error("cannot move the agent back to %s: %s", homes[path], exc)

    def _limit(self, cgroup: TaskCgroup, limits: Limits) -> None:
        """Write the limits; an amount the task did not ask for (zero) is not limited."""
        dirs = cgroup.dirs
        cpu, memory, pids = dirs.get("cpu"), dirs["memory"], dirs.get("pids")
        shares = max(2, int(limits.cpus * 1024))
        quota = max(MIN_QUOTA_US, int(limits.cpus * CFS_PERIOD_US))
        mem = str(int(limits.mem_mb * 1024 * 1024))
        if self.version == 2:
            if cpu is not None and limits.cpus > 0:
                # systemd's conversion of cpu.shares (2..262144) to cpu.weight (1..10000).
                weight = 1 + ((min(shares, 262144) - 2) * 9999) // 262142
                (cpu / "cpu.weight").write_text(str(weight))
                (cpu / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
            if limits.mem_mb > 0:
                (memory / "memory.max").write_text(mem)
                if (memory / "memory.swap.max").exists():
                    (memory / "memory.swap.max").write_text("0")
        else:
            if cpu is not None and limits.cpus > 0:
                (cpu / "cpu.shares").write_text(str(shares))
                (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
                (cpu / "cpu.cfs_quota_us").write_text(str(quota))
            if limits.mem_mb > 0:
                (memory / "memory.limit_in_bytes").write_text(mem)
                if (memory / "memory.memsw.limit_in_bytes").exists():
                    (memory / "memory.memsw.limit_in_bytes").write_text(mem)
        if pids is not None:
            (pids / "pids.max").write_text(str(limits.pids))


def detect(root: Path = CGROUP_ROOT, *, setup: bool = True) -> tuple[Cgroups | None, str]:
    """The cgroup tree to use, or None and why not (logged once by the caller).

    With `setup` false nothing is created or moved: only where the cgroups are (for
    clean-up by a test harness, which must not move itself into a leaf)."""
    if os.geteuid() != 0:
        return None, "not running as root"
    try:
        own = _own_cgroups()
        if (root / "cgroup.controllers").exists():
            return _detect_v2(root, own.get("", "/"), setup)
        if (root / "memory" / "cgroup.procs").exists():
            return _detect_v1(root, own, setup)
    except OSError as exc:
        return None, f"cannot set up cgroups: {exc.strerror or exc}"
    return None, f"no cgroup v2 ({root}/cgroup.controllers) nor v1 memory hierarchy ({root}/memory)"


def _detect_v1(root: Path, own: dict[str, str], setup: bool) -> tuple[Cgroups | None, str]:
    bases: dict[str, Path] = {}
    homes: dict[str, Path] = {}
    for name in V1_CONTROLLERS:
        mount = root / name
        if not (mount / "cgroup.procs").exists():
            continue
        home = mount / own.get(name, "/").lstrip("/")
        homes[name] = home
        bases[name] = home / CORRAL
        if setup:
            bases[name].mkdir(exist_ok=True)
    if "memory" not in bases:
        return None, "the cgroup v1 memory controller is not mounted"
    return Cgroups(1, bases, homes), ""


def _detect_v2(root: Path, own: str, setup: bool) -> tuple[Cgroups | None, str]:
    home = root / own.lstrip("/")
    available = set((home / "cgroup.controllers").read_text().split())
    controllers = [c for c in V2_CONTROLLERS if c in available]
    if "memory" not in controllers:
        return None, f"the memory controller is not available in {home}"
    base = home / CORRAL
    if not setup:
        if home.name == AGENT_LEAF:  # This process is an agent that moved itself already.
            home, base = home.parent, home.parent / CORRAL
        return Cgroups(2, {c: base for c in controllers}, {c: home for c in controllers}), ""
    if home != root:
        # No internal processes in v2: the agent leaves its cgroup for a leaf first.
        leaf = home / AGENT_LEAF
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
        agent_home = leaf
    else:
        agent_home = home
    try:
        _enable_controllers(home, controllers)
        base.mkdir(exist_ok=True)
        _enable_controllers(base, controllers)
    except OSError as exc:
        return None, f"cannot delegate controllers under {home}: {exc.strerror or exc}"
    return Cgroups(2, {c: base for c in controllers}, {c: agent_home for c in controllers}), ""


def _enable_controllers(path: Path, controllers: Sequence[str] | None = None) -> None:
    """Hand the controllers to the children of `path` (v2)."""
    if controllers is None:
        available = (path / "cgroup.controllers").read_text().split()
        controllers = [c for c in V2_CONTROLLERS if c in available]
    (path / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in controllers))


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per v1 controller, and under "" its v2 cgroup."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            own[name] = path
    return own


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1


def _fields(path: Path) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat, memory.events, ...)."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _field(path: Path, key: str) -> int:
    """One field of a `key value` file, -1 if absent."""
    return _fields(path).get(key, -1)
