"""The `corral` command against real processes: the README's `corral up
--demo`, `corral run`, and the state tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from corral.testing import Cluster

pytestmark = pytest.mark.integration


def corral(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_corral_up_demo_runs_hello_world_on_a_local_cluster(tmp_path: Path) -> None:
    result = corral(
        "up",
        "--port",
        "0",
        "--agents",
        "2",
        "--demo",
        "--exit-after-demo",
        "--work-dir",
        str(tmp_path / "up"),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    finished = [line for line in result.stdout.splitlines() if "FINISHED" in line]
    assert len(finished) == 5, result.stdout
    # Every task printed into its own sandbox on one of the agents.
    outputs = sorted(p.read_text() for p in (tmp_path / "up").rglob("sandboxes/*/*/stdout"))
    assert outputs == sorted(f"hello from hello-{i}\n" for i in range(5))


def test_corral_run_returns_the_exit_code_and_tables_show_the_cluster(cluster: Cluster) -> None:
    address = cluster.start_master()
    cluster.start_agent()
    cluster.wait_agents(1)

    assert corral("run", "--master", address, "--", "exit 7").returncode == 7
    ok = corral(
        "run",
        "--master",
        address,
        "--cpus",
        "0.5",
        "--env",
        "GREETING=hi",
        "--",
        "sh",
        "-c",
        'test "$GREETING" = hi',
    )
    assert ok.returncode == 0, ok.stderr

    agents = json.loads(corral("agents", "--json", "--master", address).stdout)
    assert [a["status"] for a in agents["agents"]] == ["active"]
    table = corral("agents", "--master", address).stdout
    assert "agent1" in table
    assert corral("tasks", "--master", address).returncode == 0


def test_an_unreachable_master_is_one_clear_line_and_status_2(tmp_path: Path) -> None:
    result = corral("agents", "--master", "127.0.0.1:1", timeout=30)
    assert result.returncode == 2
    assert "cannot reach the master at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
