"""Figures and tables from run records: accuracy and DNR against remaining weights, X vs X+AP,
seed means with confidence bands, DNR over epochs, and per-layer DNR heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, NullLocator  # noqa: E402

Rows = Sequence[Mapping[str, Any]]


def comparison_figure(arms: Mapping[str, Rows], path: Path, title: str = "") -> None:
    """Two panels, test accuracy and DNR against remaining weights (log axis, sparser to the right)."""
    fig, (acc_ax, dnr_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for label, rows in arms.items():
        remaining = [100 * r["remaining"] for r in rows]
        acc_ax.plot(remaining, [100 * r["test_accuracy"] for r in rows], marker="o", label=label)
        dnr_ax.plot(remaining, [100 * r["dnr"] for r in rows], marker="o", label=label)
    remaining = [100 * r["remaining"] for rows in arms.values() for r in rows]
    for ax, ylabel in ((acc_ax, "test accuracy (%)"), (dnr_ax, "dead neuron rate (%)")):
        _log_remaining_axis(ax, remaining)
        ax.set_ylabel(ylabel)
        ax.legend()
    _save(fig, path, title)


def _save(fig: plt.Figure, path: Path, title: str) -> None:
    """Title the figure (if ``title``), write it to ``path`` and free it."""
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


def _log_remaining_axis(ax: plt.Axes, remaining_pct: Sequence[float]) -> None:
    """Remaining weights on a log axis, sparser to the right, ticks at every other level."""
    ax.set_xscale("log")
    ax.set_xticks(sorted({round(r, 1) for r in remaining_pct}, reverse=True)[::2])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.invert_xaxis()
    ax.set_xlabel("remaining prunable weights (%)")
    ax.grid(True, which="both", alpha=0.3)


def mean_ci_figure(arms: Mapping[str, Mapping[str, Any]], path: Path, title: str = "") -> None:
    """Accuracy and DNR against remaining weights per arm: seed mean and its CI band.

    ``arms[name]`` holds ``remaining`` (cycles,), ``seeds`` (the number of seeds), and ``acc`` and
    ``dnr`` as ``(mean, half_width)`` arrays over cycles (``experiments.report.band``; a NaN
    half-width, as with one seed, draws no band).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, ylabel in zip(axes, ("acc", "dnr"), ("test accuracy (%)", "dead neuron rate (%)")):
        for name, curve in arms.items():
            x, (mean, hw) = 100 * curve["remaining"], (100 * np.asarray(a) for a in curve[key])
            ax.plot(x, mean, marker="o", markersize=3, label=f"{name} (n={curve['seeds']})")
            ax.fill_between(x, mean - hw, mean + hw, alpha=0.25)
        _log_remaining_axis(ax, list(100 * next(iter(arms.values()))["remaining"]))
        ax.set_ylabel(ylabel)
        ax.legend()
    _save(fig, path, title)


def epoch_dnr_figure(arms: Mapping[str, np.ndarray], epochs_per_cycle: int, path: Path, title: str = "") -> None:
    """DNR after every epoch, cycles one after another, seed mean per arm; ``arms[name]`` is
    (seeds, cycles * epochs). Dotted lines mark the prunes between cycles."""
    fig, ax = plt.subplots(figsize=(10, 3.5), constrained_layout=True)
    for name, values in arms.items():
        epochs = np.arange(1, values.shape[1] + 1)
        ax.plot(epochs, 100 * values.mean(axis=0), label=name, linewidth=1)
    total = next(iter(arms.values())).shape[1]
    for boundary in range(epochs_per_cycle, total, epochs_per_cycle):
        ax.axvline(boundary + 0.5, color="grey", linestyle=":", linewidth=0.6)
    ax.set_xlabel(f"epoch (cycles of {epochs_per_cycle} epochs, a prune at each dotted line)")
    ax.set_ylabel("dead neuron rate (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, path, title)


def layer_heatmaps(arms: Mapping[str, tuple[Sequence[str], np.ndarray]], remaining: np.ndarray,
                   path: Path, title: str = "") -> None:
    """Per-site DNR (rows: ReLU sites, columns: cycles) for each arm, and the last minus the first."""
    names = list(arms)
    panels = [(name, *arms[name]) for name in names]
    if len(names) == 2:
        sites, first = arms[names[0]]
        panels.append((f"{names[1]} - {names[0]}", sites, arms[names[1]][1] - first))
    sites = panels[0][1]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 + 3.5 * len(panels), 1.5 + 0.25 * len(sites)),
                             constrained_layout=True, squeeze=False)
    for ax, (name, sites, values) in zip(axes[0], panels):
        diff = " - " in name
        limit = np.abs(values).max() * 100 if diff else 100
        image = ax.imshow(100 * values, aspect="auto", cmap="coolwarm" if diff else "viridis",
                          vmin=-limit if diff else 0, vmax=limit)
        ax.set_title(name)
        ax.set_yticks(range(len(sites)), sites if ax is axes[0][0] else [""] * len(sites), fontsize=7)
        ax.set_xticks(range(len(remaining)), [f"{100 * r:.0f}" for r in remaining], fontsize=7, rotation=90)
        ax.set_xlabel("remaining weights (%)")
        fig.colorbar(image, ax=ax, shrink=0.8)
    _save(fig, path, title)


def effect_survival_figure(remaining: np.ndarray, curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                           path: Path, title: str = "", ylabel: str = "DNR difference (points)") -> None:
    """Paired differences against remaining weights, one curve per moment of measurement (e.g.
    right after a prune and after retraining), each a seed mean with its CI band, and the zero line."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    x = 100 * np.asarray(remaining)
    for name, (mean, hw) in curves.items():
        mean, hw = 100 * np.asarray(mean), 100 * np.asarray(hw)
        ax.plot(x, mean, marker="o", markersize=3, label=name)
        ax.fill_between(x, mean - hw, mean + hw, alpha=0.25)
    ax.axhline(0.0, color="black", linewidth=0.8)
    _log_remaining_axis(ax, list(x))
    ax.set_ylabel(ylabel)
    ax.legend()
    _save(fig, path, title)
