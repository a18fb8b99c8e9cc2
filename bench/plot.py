"""Plot the latest benchmark figures (bench/results/*.json) into bench/results/latest.png.

uv run python -m bench.plot
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "latest.png"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _overhead(ax: Any, figures: dict[str, Any]) -> None:
    if "runs" in figures:
        run = figures["runs"][0]  # the run the README quotes
        raw_call, raw_b = run["raw_batch_1"]["call"], run["raw_at_served_batch"]
        against = f"raw at batch {raw_b['batch']}: {raw_b['jobs_per_s']}"
    else:  # written before the bench had a raw loop at the served batch
        run, raw_call, against = figures, figures["raw_pipeline_call"], "no raw loop at that batch"
    seq, sat = run["sequential"], run["saturated"]
    labels = ["raw call (batch 1)", "served end to end", "overhead"]
    p50 = [raw_call["p50_ms"], seq["end_to_end"]["p50_ms"], seq["overhead_per_job"]["p50_ms"]]
    p99 = [raw_call["p99_ms"], seq["end_to_end"]["p99_ms"], seq["overhead_per_job"]["p99_ms"]]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("ms per job")
    ax.set_title(
        f"Stack overhead (tiny SD, {figures['params']['render']['width']}²)\n"
        f"saturated: {sat['jobs_per_s']} jobs/s at mean batch {sat['mean_batch']}"
        f" ({against}), duty {sat['duty_cycle']:.0%}"
    )
    ax.legend()


def _sse(ax: Any, figures: dict[str, Any]) -> None:
    runs = figures.get("runs") or [figures]
    watchers = [run["params"]["watchers"] for run in runs]
    ax.plot(watchers, [run["latency_ms"]["p50"] for run in runs], "o-", label="p50")
    ax.plot(watchers, [run["latency_ms"]["p99"] for run in runs], "o-", label="p99")
    ax.axhline(100, color="grey", linestyle="--", linewidth=1, label="goal p99")
    ax.set_xlabel("SSE watchers on one status process")
    ax.set_ylabel("event delivery latency, ms")
    rss = max(run["rss_mb"]["peak"] for run in runs)
    ax.set_title(f"SSE fan-out (peak RSS {rss:.0f} MB)")
    ax.legend()


def _scaling(ax: Any, figures: dict[str, Any]) -> None:
    runs = figures["runs"]
    ax.bar([str(run["workers"]) for run in runs], [run["jobs_s"] for run in runs])
    ax.set_xlabel(f"workers ({figures['machine']['cpu_count']} CPU cores)")
    ax.set_ylabel("jobs/s")
    ax.set_title("Throughput by worker count (tiny SD)")


def main() -> None:
    drawers = (("stack_overhead", _overhead), ("sse_fanout", _sse), ("scaling", _scaling))
    panels = [
        (name, draw, figures) for name, draw in drawers if (figures := _load(name)) is not None
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (_, draw, figures) in zip(axes[0], panels, strict=True):
        draw(ax, figures)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT} ({', '.join(name for name, _, _ in panels)})")


if __name__ == "__main__":
    main()
