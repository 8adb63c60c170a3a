"""Figures a person wants to look at: speed against memory budget, memory breakdowns, time per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GIB = 2**30


def speed_vs_budget(curves: Mapping[str, Sequence[tuple[float, float]]], out: Path,
                    title: str = "decode speed vs memory budget", ylabel: str = "decode tok/s",
                    misses: Mapping[str, Sequence[tuple[float, float]]] | None = None) -> Path:
    """One line per engine/setting: (budget bytes, tok/s) points; optional misses/token on a second axis."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in curves.items():
        xs, ys = zip(*sorted(points))
        ax.plot([x / GIB for x in xs], ys, marker="o", label=label,
                linestyle="--" if "prediction" in label else "-")  # predictions dashed beside measurements
    ax.set_xlabel("memory budget (GiB)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if misses:
        ax2 = ax.twinx()
        for label, points in misses.items():
            xs, ys = zip(*sorted(points))
            ax2.plot([x / GIB for x in xs], ys, linestyle="--", marker="x", color="grey", label=label)
        ax2.set_ylabel("expert misses / token")
        ax2.legend(loc="center right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def memory_breakdown(bars: Mapping[str, Mapping[str, float]], out: Path, budget: float | None = None,
                     title: str = "memory breakdown") -> Path:
    """Stacked bars: for each label, its parts in bytes; a dashed line at the budget."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    parts = list(dict.fromkeys(p for bar in bars.values() for p in bar))
    bottoms = [0.0] * len(bars)
    for part in parts:
        heights = [bar.get(part, 0.0) / GIB for bar in bars.values()]
        ax.bar(list(bars), heights, bottom=bottoms, label=part)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    if budget:
        ax.axhline(budget / GIB, linestyle="--", color="red", label="budget")
    ax.set_ylabel("GiB")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def per_layer_time(times: Sequence[float], out: Path, title: str = "time per layer") -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(times)), [t * 1e3 for t in times])
    ax.set_xlabel("layer")
    ax.set_ylabel("ms (total over the profile)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
