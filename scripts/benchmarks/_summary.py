"""`scripts/bench all`: one Markdown table of every benchmark's figures, and
PNG plots of cost against cluster size (matplotlib, from the bench extra)."""

from __future__ import annotations

from pathlib import Path

from scripts.benchmarks.common import machine


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write_markdown(results: dict[str, dict[str, object]], directory: Path) -> Path:
    info = machine()
    lines = [
        "# Corral benchmark results",
        "",
        f"Machine: {info['cpus']} cpus, {info['platform']}, Python {info['python']}; run {info['when']}.",
        "Command: `scripts/bench all`. Each figure stands beside a limit or a peer measured in the same run.",
        "",
    ]
    for name, result in results.items():
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        for key, value in result.items():
            if key in ("benchmark", "rows", "failures") or isinstance(value, (list, dict)):
                continue
            lines.append(f"| {key} | {_shown(value)} |")
        rows = result.get("rows")
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            keys = list(rows[0])
            lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_shown(row[k]) for k in keys) + " |" for row in rows]
        lines.append("")
    path = directory / "summary.md"
    path.write_text("\n".join(lines))
    return path


def plot_allocator(result: dict[str, object], directory: Path) -> list[Path]:
    """Full and incremental pass time against the number of agents, one line per framework count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.get("rows", []) if isinstance(r, dict)]  # type: ignore[union-attr]
    written = []
    for metric, title, name in (
        ("full_pass_ms", "Full allocation pass", "allocator-full-pass.png"),
        (
            "incremental_pass_ms_p50",
            "Incremental pass after one agent frees resources",
            "allocator-incremental.png",
        ),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for frameworks in sorted({r["frameworks"] for r in rows}):
            points = sorted((r["agents"], r[metric]) for r in rows if r["frameworks"] == frameworks)
            ax.plot(
                [p[0] for p in points], [p[1] for p in points], marker="o", label=f"{frameworks} frameworks"
            )
        if metric == "full_pass_ms":
            ax.plot(
                [10_000],
                [1000],
                marker="*",
                markersize=12,
                linestyle="none",
                color="grey",
                label="Mesos, 10k agents x 1k frameworks (~1 s)",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("agents")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = directory / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
