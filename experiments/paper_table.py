"""The engine behind ``experiments.table1`` ... ``table6``: one paper table, every method with and
without AP, over seeds, at full scale or at a CPU-sized scale.

A table module holds a ``TableSpec``: the network and dataset, the full-scale hyper-parameters
with the source of each (the paper names only the source works, ``docs/method.md`` §7; what
none of them fixes is marked as our choice), the overrides that shrink it to a CPU run, and the
cycles whose accuracy the table shows. ``main`` runs, for every base method and seed, X alone and
X+AP (``ap_rate`` = q) as ``ap_jax.cycle`` run directories under
``<out>/table<N>-<scale>-<hash8>/<method>/<arm>/seed_<s>/`` (finished runs reused, interrupted ones
resumed), then writes ``table.md``: top-1 test accuracy, mean ± std over seeds (the paper's
format), at each remaining-weight level, and the wall time per cycle it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ap_jax import config, conv, cycle, feeds, fetch, identity, parallel, records
from ap_jax.config import RunConfig, add_config_args, config_from_args
from experiments import guard
from experiments._cli import DATA_NOTE, add_run_options, check_fits, run_options

SCALES = ("full", "cpu")


# The paper's five base methods as we read them (see ap_jax.methods): two classical, three competitive.
PAPER_METHODS = ("finetune", "lth", "lth_rewind", "lrr", "oneshot")


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One paper table: what it trains at full scale (with sources) and how it shrinks for a CPU."""

    number: int
    title: str
    full: RunConfig
    sources: Mapping[str, str]
    cpu: Mapping[str, Any]
    levels: tuple[int, ...]
    rewind_step: Mapping[str, int]  # lth_rewind's k per scale
    notes: tuple[str, ...] = ()

    def config(self, scale: str) -> RunConfig:
        """The base config at ``scale`` (``"full"`` or ``"cpu"``)."""
        return self.full if scale == "full" else dataclasses.replace(self.full, **self.cpu)

    @property
    def name(self) -> str:
        return f"table{self.number}"


def build_parser(spec: TableSpec, scale: str) -> argparse.ArgumentParser:
    """The CLI of one table; config flags default to the table's config at ``scale``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{spec.name}",
        description=f"Table {spec.number}: {spec.title}: every base method with and without AP, "
                    "over seeds, at full scale or at a CPU-sized scale.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(spec.notes),
    )
    parser.add_argument("--scale", choices=SCALES, default="full",
                        help="full: the paper's setup (a GPU); cpu: shrunk to run on a CPU (default: full)")
    parser.add_argument("--methods", nargs="+", choices=PAPER_METHODS, default=list(PAPER_METHODS),
                        help="base methods X (default: all five; finetune runs at the schedule's final LR)")
    parser.add_argument("--rewind-step", dest="k", type=int, default=spec.rewind_step[scale], metavar="K",
                        help=f"lth_rewind's step k (default at this scale: {spec.rewind_step[scale]})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default: 0)")
    parser.add_argument("--out", default="runs", help="output root (default: runs)")
    fetch.add_args(parser)
    add_run_options(parser)
    add_config_args(parser, spec.config(scale), skip=("seed", "method", "rewind_step", "finetune_lr"))
    parallel.add_args(parser)
    return parser


def parse(spec: TableSpec, argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace, RunConfig]:
    """Parse twice: ``--scale`` first, since it sets every other flag's default."""
    pre = argparse.ArgumentParser(prog=f"python -m experiments.{spec.name}", add_help=False)
    pre.add_argument("--scale", choices=SCALES, default="full")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(spec, known.scale)
    args = parser.parse_args(argv)
    return parser, args, config_from_args(parser, args)


def method_overrides(cfg: RunConfig, method: str, rewind_step: int) -> dict[str, Any]:
    """The config fields of one base method: lth_rewind's k, and finetune's constant LR, the
    final LR of the schedule (as Renda et al. fine-tune)."""
    if method == "lth_rewind":
        return {"method": method, "rewind_step": rewind_step}
    if method == "finetune":
        return {"method": method, "finetune_lr": cfg.lr * cfg.lr_gamma ** len(cfg.lr_drops)}
    return {"method": method}


def arm_configs(base: RunConfig, method: str, seed: int, rewind_step: int) -> dict[str, RunConfig]:
    """``{"X": ..., "X+AP": ...}`` for one method and seed (X alone has ``ap_rate`` 0)."""
    cfg = dataclasses.replace(base, **method_overrides(base, method, rewind_step), seed=seed)
    return {"X": dataclasses.replace(cfg, ap_rate=0.0), "X+AP": cfg}


def row_at(rows: list[dict], remaining: float) -> dict | None:
    """The cycle row at a remaining share (within 0.1 % of it), or None: one-shot runs skip levels."""
    return next((r for r in rows if abs(r["remaining"] - remaining) <= 1e-3 * remaining), None)


def accuracy_table(spec: TableSpec, results: Mapping[str, Mapping[str, list[list[dict]]]], cfg: RunConfig) -> str:
    """Markdown: one row per method and arm, top-1 accuracy mean ± std over seeds per level."""
    levels = [c for c in spec.levels if c <= cfg.cycles] or [cfg.cycles]
    shares = [(1 - cfg.rate) ** c for c in levels]
    header = ["method", "arm", *(f"{100 * share:.1f} %" for share in shares)]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(levels)]
    for method, arms in results.items():
        for arm, runs in arms.items():
            cells = []
            for share in shares:
                found = [row_at(rows, share) for rows in runs]
                values = np.array([100 * r["test_accuracy"] for r in found if r is not None])
                if len(values) < len(runs):
                    cells.append("—")
                    continue
                spread = f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else ""
                cells.append(f"{values.mean():.2f}{spread}")
            lines.append(f"| {method} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _show(value: Any) -> str:
    """A config value for a table: floats to 4 significant digits, tuples element-wise."""
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def sources_table(spec: TableSpec, cfg: RunConfig, scale: str) -> str:
    """Markdown: every hyper-parameter with a source, its full-scale and its used value."""
    lines = ["| setting | full scale | this run | source |", "|---|---|---|---|"]
    for name, source in spec.sources.items():
        lines.append(f"| {name} | {_show(getattr(spec.full, name))} | {_show(getattr(cfg, name))} | {source} |")
    return "\n".join(lines)


def write_report(spec: TableSpec, cfg: RunConfig, scale: str, root: Path,
                 results: Mapping[str, Mapping[str, list[list[dict]]]], cycle_seconds: float,
                 rewind_step: int, run_dirs: Sequence[Path]) -> str:
    """``table.md`` in ``root``: the accuracy table, the setup with sources, provenance of ``run_dirs``."""
    text = "\n".join([
        f"# Table {spec.number}: {spec.title} ({scale} scale)",
        "",
        ("Small-scale CPU run: not comparable with the paper's numbers in size; " if scale == "cpu" else "")
        + f"X = each base method alone, X+AP = with AP at q = {cfg.ap_rate} of p = {cfg.rate}. "
        "Top-1 test accuracy (%), mean ± std over seeds, at each remaining share of prunable weights. "
        "The paper reports +3 to 4 points for X+AP on CIFAR and +2 to 3 on ImageNet and the ViT "
        "(abstract; per-table numbers not recovered).",
        *([DATA_NOTE] if cfg.dataset == "cifar10" else []),
        "",
        accuracy_table(spec, results, cfg),
        "",
        "## Setup",
        "",
        sources_table(spec, cfg, scale),
        "",
        *[f"- {note}" for note in spec.notes],
        f"- lth_rewind rewinds to step k = {rewind_step} (our choice: Frankle et al. 2020 find a few "
        "hundred to a few thousand steps enough); finetune trains at the schedule's final LR, "
        f"{cfg.lr * cfg.lr_gamma ** len(cfg.lr_drops):.4g} (Renda et al. 2020); oneshot prunes once "
        "to the sparsest level, so only that column has its accuracy.",
        "",
        *records.provenance_lines(records.read_provenance(run_dirs)),
        f"- measured wall time per cycle (training and evaluation, median over cycles run): {cycle_seconds:.0f} s",
        "",
    ])
    if parallel.is_main_process():
        (root / "table.md").write_text(text)
    return text


def cycle_wall_seconds(rows: list[dict]) -> list[float]:
    """Wall seconds of each cycle of one run, from its cycle rows' cumulative ``wall_s``."""
    ends = [r["wall_s"] for r in records.cycle_rows(rows)]
    return list(np.diff([0.0, *ends]))


def load_data(cfg: RunConfig, data_dir: str | None, seed: int) -> feeds.AnyDataset:
    """The table's dataset (CIFAR on the device, ImageNet streamed); a class-balanced training
    subset depends on the seed."""
    return feeds.load(cfg.dataset, data_dir, train_size=cfg.train_size or None, seed=seed)


def main_for(spec: TableSpec, argv: list[str] | None = None) -> int:
    """Run one table (see :func:`run_table`); Ctrl-C is exit 130, an unexpected failure exit 1."""
    return guard.command(f"python -m experiments.{spec.name}")(run_table)(spec, argv)


def run_table(spec: TableSpec, argv: list[str] | None = None) -> int:
    """Run one table: every method x {X, X+AP} x seed, then write ``table.md``; 2 on bad input."""
    parser, args, cfg = parse(spec, argv)
    if cfg.ap_rate == 0:
        parser.error("--ap-rate must be positive: it is the X+AP arms' share (the X arms use 0)")
    root = Path(args.out) / identity.study_name(f"{spec.name}-{args.scale}", cfg)
    with guard.usage_errors(parser):
        guard.check_path_text(args.out, "--out")
        guard.check_path_text(args.data_dir, "--data-dir")
        config.check_seeds(args.seeds)
        arms_of = {(m, s): arm_configs(cfg, m, s, args.k) for m in args.methods for s in args.seeds}
        devices = parallel.devices_from_args(args)
        conv.active_impl()  # a bad AP_JAX_CONV now, not at the first trace
        guard.check_out(root)
        fetch.prepare_if_asked(args, [cfg.dataset])
        data_seeds = args.seeds[: 1 if not cfg.train_size else None]  # the whole set is the same for every seed
        datasets = {seed: load_data(cfg, args.data_dir, seed) for seed in data_seeds}
        num_train = next(iter(datasets.values())).num_train
        fits = (check_fits(c, num_train, devices) for arms in arms_of.values() for c in arms.values())
        if problem := next(filter(None, fits), None):
            raise ValueError(problem)
        cycle.check_run_dir(root, cfg)  # a study's stored config is the one its name hashes
        guard.make_dir(root)
    options = run_options(args, devices)

    def body() -> None:
        results: dict[str, dict[str, list[list[dict]]]] = {}
        seconds: list[float] = []
        run_dirs: list[Path] = []
        records.write_json(root / "config.json", {**cfg.to_dict(), "scale": args.scale})
        for method in args.methods:
            for seed in args.seeds:
                dataset = datasets[seed] if cfg.train_size else next(iter(datasets.values()))
                for arm, arm_cfg in arms_of[(method, seed)].items():
                    run_dir = cycle.arm_run_dir(root / method, arm, seed)
                    rows = cycle.run(arm_cfg, dataset, run_dir, f"{spec.name} {method} {arm} seed {seed}", options)
                    results.setdefault(method, {}).setdefault(arm, []).append(records.cycle_rows(rows))
                    seconds += cycle_wall_seconds(rows)
                    run_dirs.append(run_dir)
        print(write_report(spec, cfg, args.scale, root, results, float(np.median(seconds)), args.k, run_dirs))
        print(f"written: {root / 'table.md'}")

    return guard.guarded(parser, body, root)
