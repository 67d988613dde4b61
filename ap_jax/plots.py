"""Figures and tables from run records: accuracy and DNR against remaining weights, X vs X+AP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, NullLocator  # noqa: E402

Rows = Sequence[Mapping[str, Any]]


def comparison_figure(arms: Mapping[str, Rows], path: Path, title: str = "") -> None:
    """Two panels, test accuracy and DNR against remaining weights (log axis, sparser to the right)."""
    fig, (acc_ax, dnr_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    levels = sorted({round(100 * r["remaining"], 1) for rows in arms.values() for r in rows}, reverse=True)
    for label, rows in arms.items():
        remaining = [100 * r["remaining"] for r in rows]
        acc_ax.plot(remaining, [100 * r["test_accuracy"] for r in rows], marker="o", label=label)
        dnr_ax.plot(remaining, [100 * r["dnr"] for r in rows], marker="o", label=label)
    for ax, ylabel in ((acc_ax, "test accuracy (%)"), (dnr_ax, "dead neuron rate (%)")):
        ax.set_xscale("log")
        ax.set_xticks(levels[::2])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.invert_xaxis()
        ax.set_xlabel("remaining prunable weights (%)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def comparison_table(arms: Mapping[str, Rows]) -> str:
    """Markdown table: per cycle, remaining share, then accuracy and DNR of every arm, and deltas."""
    labels = list(arms)
    base, other = (labels + labels)[:2]
    header = ["cycle", "remaining %"]
    header += [f"acc {label} %" for label in labels] + [f"DNR {label} %" for label in labels]
    if len(labels) == 2:
        header += [f"acc {other} - {base}", f"DNR {other} - {base}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for cycle_rows in zip(*arms.values()):
        cells = [str(cycle_rows[0]["cycle"]), f"{100 * cycle_rows[0]['remaining']:.1f}"]
        cells += [f"{100 * r['test_accuracy']:.2f}" for r in cycle_rows]
        cells += [f"{100 * r['dnr']:.2f}" for r in cycle_rows]
        if len(labels) == 2:
            a, b = cycle_rows
            cells += [f"{100 * (b['test_accuracy'] - a['test_accuracy']):+.2f}",
                      f"{100 * (b['dnr'] - a['dnr']):+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
