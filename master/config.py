"""The master's settings: one frozen dataclass, merged once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corral.config import setting
from corral.etcd import parse_endpoints


def _default_work_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/corral/master"
    return str(Path.home() / ".local" / "state" / "corral" / "master")


@dataclass(frozen=True)
class MasterConfig:
    listen: str = setting("127.0.0.1:5050", "address to serve on (port 0 picks a free port)")
    work_dir: str = setting(_default_work_dir(), "directory for the registry file when no --store is given")
    allocator: str = setting("drf", "allocator implementation")
    allocation_interval: float = setting(
        0.005, "seconds over which allocation triggers are coalesced into one pass"
    )
    offer_timeout: float = setting(30.0, "seconds before an unanswered offer is rescinded (0: never)")
    agent_heartbeat_interval: float = setting(5.0, "seconds between agent heartbeats")
    agent_timeout: float = setting(
        15.0, "seconds without a message (or disconnected) before an agent is unreachable"
    )
    framework_heartbeat_interval: float = setting(15.0, "seconds between HEARTBEAT events to frameworks")
    max_completed_tasks_per_framework: int = setting(
        1000, "terminal tasks remembered per framework for reconciliation"
    )
    weights: str = setting("", "role weights for DRF, e.g. 'prod:2;dev:1'")
    log_level: str = setting("INFO", "log level")
    log_json: bool = setting(False, "log JSON lines instead of text")
    port_file: str = setting("", "write the bound port to this file once serving (for scripts)")
    store: str = setting(
        "",
        "where the registry lives: empty for a file in --work-dir (one master), or "
        "etcd://HOST:PORT[,HOST:PORT...] for replicated masters with leader election",
    )
    cluster: str = setting("default", "the cluster's name: its keys in etcd live under /corral/NAME/")
    advertise: str = setting(
        "", "the HOST:PORT others reach this master at (default: the bound --listen address)"
    )
    election_ttl: float = setting(
        3.0, "seconds of the leader's etcd lease: a new leader serves within about this after a crash"
    )

    def __post_init__(self) -> None:
        for name in (
            "allocation_interval",
            "agent_heartbeat_interval",
            "agent_timeout",
            "framework_heartbeat_interval",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.offer_timeout < 0:
            raise ValueError("--offer-timeout must not be negative")
        if self.agent_timeout < self.agent_heartbeat_interval:
            raise ValueError("--agent-timeout must be at least --agent-heartbeat-interval")
        parse_weights(self.weights)
        if self.store:
            if not self.store.startswith("etcd://"):
                raise ValueError(f"--store {self.store!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
            parse_endpoints(self.store)
        if not self.election_ttl >= 1:
            raise ValueError("--election-ttl must be at least 1 second (etcd leases count whole seconds)")
        if not self.cluster or not all(c.isalnum() or c in "-_." for c in self.cluster):
            raise ValueError("--cluster must be letters, digits, '-', '_' or '.'")


def parse_weights(text: str) -> dict[str, float]:
    """Parse 'prod:2;dev:1' into {'prod': 2.0, 'dev': 1.0}; raise ValueError when malformed."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        role, sep, value = part.partition(":")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not role.strip() or not (0 < weight < float("inf")):
            raise ValueError(f"--weights: {part!r} is not ROLE:POSITIVE_NUMBER")
        weights[role.strip()] = weight
    return weights
