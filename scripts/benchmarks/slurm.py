"""slurm: Corral beside Slurm, the peer, on the same machine in the same run.

N trivial jobs (`true`): Slurm as a single-node cluster (scripts/slurm-setup:
Debian's slurm-wlm with SchedulerParameters=batch_sched_delay=0, one job per
core as Slurm allocates them) runs them as one `sbatch --array`; Corral runs
them as N tasks from one framework on one real agent on the same machine.
Reported: wall time from submission until the last one ended, jobs per second,
and Corral's rate over Slurm's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from corral.testing import Cluster
from scripts.benchmarks.launch import LaunchBench, run_framework

HELP = "N trivial jobs through Slurm (sbatch --array) and through Corral"

SETUP = Path(__file__).resolve().parent.parent / "slurm-setup"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=900.0)


def slurm_rate(jobs: int, timeout: float) -> float:
    """Submit `jobs` trivial jobs as one array; wait until none is left."""
    if shutil.which("sbatch") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        subprocess.run([str(SETUP)], check=True)
    with tempfile.TemporaryDirectory(prefix="corral-slurm-") as tmp:
        start = time.perf_counter()
        submitted = subprocess.run(
            [
                "sbatch",
                "--parsable",
                f"--array=1-{jobs}",
                "--output",
                os.devnull,
                "--chdir",
                tmp,
                "--wrap",
                "true",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        job_id = submitted.stdout.strip().split(";")[0]
        deadline = start + timeout
        while time.perf_counter() < deadline:
            left = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
            if left.returncode == 0 and not left.stdout.strip():
                return jobs / (time.perf_counter() - start)
            time.sleep(0.05)
        subprocess.run(["scancel", job_id], check=False)
        raise TimeoutError(f"slurm did not finish {jobs} jobs in {timeout} s")


def corral_rate(jobs: int, timeout: float) -> float:
    """The same jobs as tasks of one framework on one real agent."""
    with tempfile.TemporaryDirectory(prefix="corral-vs-slurm-") as tmp:
        cluster = Cluster(Path(tmp))
        try:
            cluster.start_master("--log-level", "WARNING")
            cluster.start_agent("--log-level", "WARNING", resources=f"cpus:{os.cpu_count()};mem:2048")
            cluster.wait_agents(1)
            bench = LaunchBench(jobs, "true", 0.1, 16, prefix="s")
            start = time.perf_counter()
            asyncio.run(run_framework(cluster.master_address, bench, timeout))
            last = max(bench.finished_time.values())
        finally:
            cluster.close()
    if bench.failed:
        raise RuntimeError(f"corral tasks failed: {bench.failed[:3]}")
    return jobs / (last - start)


def run(args: argparse.Namespace) -> dict[str, object]:
    slurm = slurm_rate(args.jobs, args.timeout)
    corral = corral_rate(args.jobs, args.timeout)
    return {
        "benchmark": "slurm",
        "jobs": args.jobs,
        "failed": 0,
        "slurm_jobs_per_s": slurm,
        "corral_jobs_per_s": corral,
        "corral_over_slurm": corral / slurm,
    }
