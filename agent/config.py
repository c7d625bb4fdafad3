"""The agent's settings: defaults, a TOML file, `CORRAL_AGENT_*` variables and flags,
merged once by `corral.config.load` into the frozen `AgentConfig` that is passed down.

Two defaults depend on the host (the work dir on who runs the agent, the hostname on
the machine); `load_config` fills them in so that every other module sees a complete
configuration and never looks at the environment itself.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pwd
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.containerizer import known_containerizers
from agent.resources import parse_attributes
from corral import discovery
from corral.config import ConfigError, load, setting
from corral.resources import Resources

ENV_PREFIX: Final = "CORRAL_AGENT_"
ROOT_WORK_DIR: Final = Path("/var/lib/corral/agent")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
RECOVER_MODES: Final = ("reconnect", "cleanup")
ISOLATION_MODES: Final = ("cgroups", "none")


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent is told by its operator."""

    master: str = setting(
        "127.0.0.1:5050",
        "the master's HOST:PORT; a comma-separated list is tried in turn; or "
        "etcd://HOST:PORT[,...][/CLUSTER] to look the leader up in etcd before every attempt",
    )
    work_dir: str = setting(
        "",
        "where the agent keeps its id and the tasks' sandboxes "
        "(empty: /var/lib/corral/agent as root, else ~/.local/state/corral/agent)",
    )
    resources: str = setting(
        "",
        "resources to advertise instead of the detected ones, per name, "
        "e.g. 'cpus:4;mem:2048;ports:[31000-32000]'",
    )
    attributes: str = setting("", "host attributes for placement, e.g. 'rack:r1;zone:a'")
    hostname: str = setting("", "the name this agent reports (empty: the machine's hostname)")
    containerizers: str = setting("process", "comma-separated containerizers to offer, e.g. 'process'")
    usage_interval: float = setting(5.0, "seconds between resource usage reports")
    kill_grace_period: float = setting(
        3.0, "seconds between SIGTERM and SIGKILL when a task's kill policy gives none"
    )
    recover: str = setting(
        "reconnect",
        "after a restart: 'reconnect' re-adopts the checkpointed tasks and registers with the "
        "same agent id; 'cleanup' kills them and registers as a new agent",
    )
    isolation: str = setting(
        "cgroups",
        "process tasks: 'cgroups' puts each in its own cgroup with cpu, memory and pids limits "
        "(when root and cgroups exist); 'none' contains them by process group only",
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_json: bool = setting(False, "log JSON lines instead of text")

    def __post_init__(self) -> None:
        # Raising ValueError here makes `corral.config.load` report a usage error
        # that names the flag, before anything starts.
        if not self.masters:
            raise ConfigError("master: give at least one HOST:PORT")
        for address in self.masters:
            _check_address(address)
        known = known_containerizers()
        for name in self.containerizer_names:
            if name not in known:
                raise ConfigError(
                    f"containerizers: {name!r} is not a containerizer; known: {', '.join(sorted(known))}"
                )
        if not self.containerizer_names:
            raise ConfigError("containerizers: give at least one containerizer")
        if not (math.isfinite(self.usage_interval) and self.usage_interval > 0):
            raise ConfigError(
                f"usage_interval: must be a positive number of seconds, got {self.usage_interval}"
            )
        if not (math.isfinite(self.kill_grace_period) and self.kill_grace_period >= 0):
            raise ConfigError(
                f"kill_grace_period: must be a non-negative number of seconds, got {self.kill_grace_period}"
            )
        if self.isolation not in ISOLATION_MODES:
            raise ConfigError(f"isolation: {self.isolation!r} is not one of {', '.join(ISOLATION_MODES)}")
        if self.recover not in RECOVER_MODES:
            raise ConfigError(f"recover: {self.recover!r} is not one of {', '.join(RECOVER_MODES)}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        try:
            Resources.parse(self.resources)
        except ValueError as exc:
            raise ConfigError(f"resources: {exc}") from None
        try:
            parse_attributes(self.attributes)
        except ValueError as exc:
            raise ConfigError(f"attributes: {exc}") from None

    @property
    def masters(self) -> tuple[str, ...]:
        """The master addresses, in the order they are tried; or the one etcd
        spec (etcd://...) the leader is looked up in before every attempt."""
        if discovery.is_etcd(self.master):
            return (self.master.strip(),)
        return tuple(a.strip() for a in self.master.split(",") if a.strip())

    @property
    def containerizer_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n.strip() for n in self.containerizers.split(",") if n.strip()))

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir)


def _check_address(address: str) -> None:
    if discovery.is_etcd(address):
        try:
            discovery.parse(address)
        except ValueError as exc:
            raise ConfigError(f"master: {exc}") from None
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"master: {address!r} is not HOST:PORT (e.g. 127.0.0.1:5050)")


def default_work_dir(euid: int, env: Mapping[str, str]) -> Path:
    """Mesos-like for root, XDG state dir for anyone else (no root needed to try it)."""
    if euid == 0:
        return ROOT_WORK_DIR
    state = env.get("XDG_STATE_HOME")
    if state:
        return Path(state) / "corral" / "agent"
    home = env.get("HOME") or pwd.getpwuid(euid).pw_dir
    return Path(home) / ".local" / "state" / "corral" / "agent"


def load_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> AgentConfig:
    """Parse flags and environment; exit with a usage error when a setting is wrong."""
    config = load(
        AgentConfig,
        argv,
        env,
        prog="agent",
        description="Run a Corral agent: offer this host's resources to a master and run its tasks.",
        env_prefix=ENV_PREFIX,
    )
    work_dir = config.work_dir or str(default_work_dir(os.geteuid(), env))
    hostname = config.hostname or socket.gethostname()
    return dataclasses.replace(config, work_dir=work_dir, hostname=hostname)
