"""X vs X+AP: run a base pruning method with and without AP and write a table and a plot.

    python -m experiments.compare_ap --help

Both arms share every setting and the seed (so cycle 0, the dense run, is the same network);
they differ only in AP's share ``--ap-rate`` of each cycle's budget ``--rate``. The run
directories, ``report.md`` and ``report.png`` go to ``<out>/compare_ap-<hash8>/``; rerunning the
same command reuses arms that already finished and resumes an unfinished one from its last
checkpoint; ``--resume DIR`` resumes the study in DIR with the config stored there.

Every bad input is one line on stderr and exit status 2, checked before anything is written;
Ctrl-C stops cleanly (exit 130) and the same command resumes. See the README.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ap_jax import config, conv, cycle, feeds, fetch, identity, parallel, plots, records
from ap_jax.config import RunConfig, add_config_args, config_from_args
from experiments import guard
from experiments._cli import DATA_NOTE, add_run_options, check_fits, run_options

NAME = "compare_ap"
PROG = f"python -m experiments.{NAME}"
DEFAULTS = RunConfig(model="mlp", ap_rate=0.02, cycles=20, epochs=5, lr=0.02, augment=False)


def build_parser() -> argparse.ArgumentParser:
    """The CLI: paths, run options (not in the config hash) and one flag per config field."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_args(parser)
    parser.add_argument("--out", default="runs", help="output root (default: runs)")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="resume the study in DIR (a compare_ap-<hash8> directory) with its "
                             "stored config; flags given must agree with it")
    add_run_options(parser)
    add_config_args(parser, DEFAULTS)
    parallel.add_args(parser)
    return parser


def parse(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace, RunConfig]:
    """Parsed flags and the config; with ``--resume DIR`` unset fields come from DIR/config.json.

    Flags given with ``--resume`` that differ from the stored config are an error naming them.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume is None:
        return parser, args, config_from_args(parser, args)
    try:
        guard.check_path_text(args.resume, "--resume")
        stored, resumed = identity.read_study(Path(args.resume), NAME)
    except ValueError as err:
        parser.error(f"--resume {args.resume}: {err}")
    args = parser.parse_args(argv, namespace=argparse.Namespace(**dataclasses.asdict(resumed)))
    cfg = config_from_args(parser, args)
    if diffs := config.differences(stored, cfg):
        parser.error(f"--resume {args.resume} holds another config ({'; '.join(diffs)}, stored vs "
                     "given); drop those flags, or start a new run without --resume")
    return parser, args, cfg


def arm_configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """The two arms: X alone (``ap_rate = 0``) and X+AP (``cfg.ap_rate``)."""
    return {cfg.method: dataclasses.replace(cfg, ap_rate=0.0), f"{cfg.method}+AP": cfg}


def pruning(cfg: RunConfig) -> str:
    """How the run prunes, in words: iterative cycles, or one-shot to the same final share."""
    if cfg.method == "oneshot":
        return f"one prune after the dense run to {100 * (1 - cfg.rate) ** cfg.cycles:.1f} % remaining"
    return f"{cfg.cycles} cycles of p = {cfg.rate}"


def report(cfg: RunConfig, arms: dict[str, list[dict]], root: Path) -> str:
    """Write ``report.md`` and ``report.png`` in ``root`` (process 0 only) and return the Markdown.

    Commands, commits and machines come from the arms' ``provenance.json`` (``records.provenance_lines``)
    and the wall time is the arms' training time from their rows, so a report rewritten later still
    describes the runs.
    """
    cycle_rows = {label: records.cycle_rows(rows) for label, rows in arms.items()}
    title = f"{cfg.model} on {cfg.dataset}: {cfg.method} vs {cfg.method}+AP"
    run_dirs = [cycle.arm_run_dir(root, label, cfg.seed) for label in arms]
    wall_s = sum(rows[-1]["wall_s"] for rows in arms.values())
    size = cfg.train_size or "all"
    text = "\n".join([
        f"# {title}",
        "",
        f"Small-scale run: {cfg.epochs} epochs per cycle, {pruning(cfg)}, "
        f"AP share q = {cfg.ap_rate}, training examples: {size}, seed {cfg.seed}. "
        "The paper reports +3 to 4 points for X+AP over X on CIFAR (abstract; per-table numbers "
        "not recovered), at full-scale training.",
        *([DATA_NOTE] if cfg.dataset == "cifar10" else []),
        "",
        plots.comparison_table(cycle_rows),
        "",
        "![accuracy and DNR against remaining weights](report.png)",
        "",
        *records.provenance_lines(records.read_provenance(run_dirs)),
        f"- training wall time, both arms: {wall_s:.0f} s",
        f"- config hash: `{cfg.hash8()}`; every row in `*/seed_{cfg.seed}/metrics.jsonl`",
        "",
    ])
    if parallel.is_main_process():
        plots.comparison_figure(cycle_rows, root / "report.png", title=title)
        (root / "report.md").write_text(text)
    return text


def run_arms(cfg: RunConfig, args: argparse.Namespace, root: Path, dataset: feeds.AnyDataset) -> dict[str, list[dict]]:
    """Both arms into ``root/<arm>/seed_<s>/`` (finished arms reused, unfinished ones resumed).

    X runs first; X+AP takes X's dense cycle 0 (the same network, bit for bit) where it can.
    """
    options = run_options(args, args.devices)
    (x_label, x_cfg), (ap_label, ap_cfg) = arm_configs(cfg).items()
    x_dir = cycle.arm_run_dir(root, x_label, cfg.seed)
    rows = {x_label: cycle.run(x_cfg, dataset, x_dir, x_label, options)}
    can_share = cycle.can_share_dense(ap_cfg) and cycle.dense_cycle_ready(x_dir)
    shared = dataclasses.replace(options, dense_from=x_dir) if can_share else options
    rows[ap_label] = cycle.run(ap_cfg, dataset, cycle.arm_run_dir(root, ap_label, cfg.seed), ap_label, shared)
    return rows


@guard.command(PROG)
def main(argv: list[str] | None = None) -> int:
    """Parse, check every input, run both arms and write the report; 2 on any bad input."""
    parser, args, cfg = parse(argv)
    if cfg.ap_rate == 0:
        parser.error("--ap-rate must be positive: it is the X+AP arm's share (the X arm uses 0)")
    root = Path(args.resume) if args.resume else Path(args.out) / identity.study_name(NAME, cfg)
    with guard.usage_errors(parser):
        guard.check_path_text(args.out, "--out")
        guard.check_path_text(args.data_dir, "--data-dir")
        devices = parallel.devices_from_args(args)  # before anything touches a device (multi-host init)
        conv.active_impl()  # a bad AP_JAX_CONV now, not at the first trace
        guard.check_out(root)
        fetch.prepare_if_asked(args, [cfg.dataset])
        dataset = feeds.load(cfg.dataset, args.data_dir, train_size=cfg.train_size or None, seed=cfg.seed)
        if problem := check_fits(cfg, dataset.num_train, devices):
            raise ValueError(problem)
        cycle.check_run_dir(root, cfg)
        guard.make_dir(root)

    def body() -> None:
        records.write_json(root / "config.json", cfg.to_dict())
        print(report(cfg, run_arms(cfg, args, root, dataset), root))
        print(f"written: {root / 'report.md'} and {root / 'report.png'}")

    return guard.guarded(parser, body, root)


if __name__ == "__main__":
    guard.exit_process(main())
