"""What every benchmark shares: latency statistics, the machine, and writing results as JSON,
a markdown table and (when matplotlib is installed) a PNG plot under ``bench/results/``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds."""
    values = sorted(seconds)
    return {
        "p50_ms": round(percentile(values, 0.50) * 1000, 2),
        "p95_ms": round(percentile(values, 0.95) * 1000, 2),
        "p99_ms": round(percentile(values, 0.99) * 1000, 2),
        "max_ms": round((values[-1] if values else float("nan")) * 1000, 2),
    }


def core_speed_ms(rounds: int = 5) -> float:
    """Milliseconds one core takes for a fixed pure-Python loop of a million additions, best
    of ``rounds``.  The work never changes, so it says how fast the machine was when a result
    was taken: this machine's cores are shared, and the same benchmark gave a third of the
    throughput on one day that it gave on another (see docs/performance.md)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def machine() -> dict[str, Any]:
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor()
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "commit": commit,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "core_speed_ms": core_speed_ms(),
    }


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    columns: Sequence[str],
    *,
    extra: dict[str, Any] | None = None,
    plot: tuple[str, str, str] | None = None,
) -> Path:
    """``bench/results/<name>.json`` and ``.md`` (and ``.png`` of ``plot`` = (label column,
    value column, axis title) when matplotlib is there); prints the table; returns the JSON
    path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "machine": machine(), "results": rows, **(extra or {})}
    json_path = RESULTS / f"{name}.json"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows),
    ]
    table = "\n".join(lines)
    m = doc["machine"]
    (RESULTS / f"{name}.md").write_text(
        f"# {name}\n\n{m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB, "
        f"Python {m['python']}, commit {m['commit']}, {m['when']}, a million-addition loop"
        f" in {m['core_speed_ms']} ms\n\n{table}\n"
    )
    print(table)
    if plot is not None:
        try:
            import matplotlib  # noqa: PLC0415

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # noqa: PLC0415
        except ImportError:
            print("(matplotlib not installed: no PNG)")
        else:
            label, value, title = plot
            fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
            ax.barh([str(r[label]) for r in rows], [float(r[value]) for r in rows])
            ax.set_xlabel(title)
            ax.invert_yaxis()
            fig.tight_layout()
            fig.savefig(RESULTS / f"{name}.png", dpi=100)
            plt.close(fig)
    return json_path
