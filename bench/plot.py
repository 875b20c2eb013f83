"""docs/latency.png: latency distributions from the latest results in bench/results/."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import RESULTS_DIR

OUT = Path(__file__).resolve().parent.parent / "docs" / "latency.png"


def _latest(name: str) -> dict[str, object] | None:
    for candidate in (f"{name}-latest.json", f"{name}-quick-latest.json"):
        path = RESULTS_DIR / candidate
        if path.exists():
            data: dict[str, object] = json.loads(path.read_text())
            return data
    return None


def plot() -> Path:
    """Needs matplotlib (`pip install -e '.[bench]'`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ingest, latency = _latest("ingest"), _latest("latency")
    for ax, data, title, keys in (
        (
            axes[0],
            ingest,
            "Ingest: answer latency at 32 connections",
            {
                "baseline": "baseline (INSERT + LPUSH)",
                "shop": "POST /webhooks/shop",
                "adyen": "POST /webhooks/adyen",
            },
        ),
        (
            axes[1],
            latency,
            "Webhook sent → capture request at the PSP",
            {
                "end_to_end": "webhook sent → PSP request",
                "inbox_to_psp": "inbox received_at → PSP request",
                "webhook_answer": "webhook answer (202)",
            },
        ),
    ):
        ax.set_title(title + ("" if data is None or not data.get("quick") else " (quick)"))
        if data is None:
            ax.text(0.5, 0.5, "no result yet", ha="center")
            continue
        # The latency bench keeps one distribution per rate; the lowest is plotted.
        rates = data.get("rates")
        if isinstance(rates, dict) and rates:
            data = rates[min(rates, key=float)]
        series = data["latency_ms"]
        assert isinstance(series, dict)
        for key, label in keys.items():
            values = sorted(series.get(key) or [])
            if not values:
                continue
            ys = [(i + 1) / len(values) * 100 for i in range(len(values))]
            ax.plot(values, ys, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("percentile")
        ax.axhline(99, color="grey", lw=0.5, ls=":")
        ax.axhline(50, color="grey", lw=0.5, ls=":")
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=110)
    return OUT
