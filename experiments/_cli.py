"""What every experiment's command line shares: the run-option flags, the fit of a config to
its data, and the note on the offline data copy. The experiments import it; nothing in ``ap_jax``
does."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

from ap_jax import config, conv, cycle, fetch, parallel
from ap_jax.config import RunConfig
from experiments import guard

DATA_NOTE = (
    "Data: the offline CIFAR-10 copy rebuilt from JPEG files (quality 75), so accuracies run "
    "1-3 points under those on the original images."
)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The ``cycle.RunOptions`` flags every experiment shares (not in the config hash)."""
    parser.add_argument("--checkpoint-every", type=config.positive_int, default=1, metavar="N",
                        help="epochs between train-state checkpoints (default: 1)")
    parser.add_argument("--keep-checkpoints", type=config.positive_int, default=2, metavar="K",
                        help="newest train-state checkpoints kept per run (default: 2)")
    parser.add_argument("--skip-nonfinite", action="store_true",
                        help="skip batches whose loss is NaN or inf instead of stopping")


def run_options(args: argparse.Namespace, devices: int | None) -> cycle.RunOptions:
    """``cycle.RunOptions`` from :func:`add_run_options`' flags and the device count."""
    return cycle.RunOptions(checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                            skip_nonfinite=args.skip_nonfinite, devices=devices)


def check_fits(cfg: RunConfig, num_train: int, devices: int) -> str | None:
    """Why ``cfg`` does not fit ``num_train`` training examples on ``devices``, or None: a batch
    larger than the data or not split evenly, DNR examples beyond the data, a rewind step past a
    cycle's steps."""
    if cfg.batch_size > num_train:
        return f"--batch-size {cfg.batch_size} exceeds the {num_train} training examples; pass at most {num_train}"
    if cfg.dnr_size > num_train:
        return (f"--dnr-size {cfg.dnr_size} exceeds the {num_train} training examples (the DNR is measured on "
                f"the first --dnr-size of them); pass at most {num_train}")
    if problem := cycle.check_rewind_step(cfg, num_train):
        return problem
    try:
        parallel.check_split(cfg.batch_size, devices, name="--batch-size")
    except ValueError as err:
        return str(err)
    return None


def check_study_flags(args: argparse.Namespace) -> None:
    """A study's path flags and seeds, checked before its configs are built (``ValueError``)."""
    for flag in ("--out", "--data-dir", "--report-path"):
        guard.check_path_text(getattr(args, flag[2:].replace("-", "_")), flag)
    config.check_seeds(args.seeds)


def prepare_study(args: argparse.Namespace, out: Path, datasets: Iterable[str]) -> None:
    """Everything a study checks or makes before its runs: the conv path, a writable ``out`` and
    report path, the study folder (unless only reporting) and the data (``--download``)."""
    conv.active_impl()  # a bad AP_JAX_CONV now, not at the first trace
    guard.check_out(out)
    guard.check_file_target(Path(args.report_path), "--report-path")  # written last: known writable now
    if not args.report:
        guard.make_dir(out)
    fetch.prepare_if_asked(args, set(datasets))
