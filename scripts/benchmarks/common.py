"""What every benchmark shares: percentiles, the machine's description, and
writing a result as JSON plus a printed table."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def report(result: dict[str, object], results_dir: Path) -> Path:
    """Write `result` to RESULTS_DIR/<benchmark>.json and print it as a table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result['benchmark']}.json"
    path.write_text(json.dumps({"machine": machine(), "result": result}, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    print(f"(written to {path})")
    return path
