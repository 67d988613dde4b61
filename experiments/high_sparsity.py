"""The high-sparsity study: does AP help a BatchNorm network where the paper reports its gain?

    python -m experiments.high_sparsity            # runs what is missing, then writes HIGH_SPARSITY.md
    python -m experiments.high_sparsity --report   # only rewrites HIGH_SPARSITY.md from the runs present

ResNet-20 (option B) on all 50,000 CIFAR-10 training images with augmentation, 20 cycles of
p = 20 % (down to 1.15 % of the weights), X = learning-rate rewinding (LRR) with and without AP
at q = 2 points, seeds 0-4, paired by seed. The schedule is chosen to fit about 30 hours of two
CPU cores and rests on Renda et al. 2020 (*Comparing Rewinding and Fine-tuning in Neural
Network Pruning*): LRR keeps the trained survivors and replays the learning-rate schedule, and
it matches or beats fine-tuning and weight rewinding at every retraining budget they tried,
short ones included. So the dense network trains once per seed for 30 epochs (the LTH recipe's
schedule shape: LR 0.1, ÷10 at 2/3 and 5/6, batch 128, weight decay 1e-4), and each pruned
cycle retrains 3 epochs with that schedule compressed to them. Test accuracy is measured every
third epoch and at every cycle's end (the DNR after every epoch). The X+AP arm takes the X arm's
dense cycle (``cycle.RunOptions.dense_from``: the same network, bit for bit) instead of
training it again.

Runs go seed by seed (X, then X+AP), seeds 0-2 before 3-4, each in
``<out>/runs/resnet20_full/<arm>/seed_<s>/``: finished runs are reused, interrupted ones resume
from their last checkpoint. ``experiments.high_sparsity_report`` writes the report, whose
analysis plan is fixed in that module and was committed before the first result.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from ap_jax import cycle, fetch, parallel
from ap_jax.config import RunConfig
from experiments import guard
from experiments._cli import DATA_NOTE, add_run_options, check_study_flags, prepare_study, run_options
from experiments.reproduce import Job, parse_overrides, run_jobs

NAME = "high_sparsity"
PROG = f"python -m experiments.{NAME}"
PART = "resnet20_full"
SEEDS = (0, 1, 2, 3, 4)
BASE = RunConfig(model="resnet20", method="lrr", rate=0.2, cycles=20, epochs=3, dense_epochs=30,
                 batch_size=128, lr=0.1, augment=True, eval_every=3)
ARMS = {"lrr": 0.0, "lrr+AP": 0.02}  # arm -> AP's share q; the first arm is X alone


def jobs_for(seeds: list[int], overrides: dict[str, Any]) -> list[Job]:
    """Every run, seed by seed, X before X+AP; ``ValueError`` for a bad config."""
    base = dataclasses.replace(BASE, **overrides)
    return [Job(PART, arm, seed, dataclasses.replace(base, ap_rate=q, seed=seed))
            for seed in seeds for arm, q in ARMS.items()]


def dense_source(job: Job, out: Path) -> Path | None:
    """The X arm's run directory of ``job``'s seed when ``job`` may take its dense cycle from it."""
    if job.arm == next(iter(ARMS)) or not cycle.can_share_dense(job.cfg):
        return None
    source = Job(PART, next(iter(ARMS)), job.seed, job.cfg).run_dir(out)
    return source if cycle.dense_cycle_ready(source) else None


def build_parser() -> argparse.ArgumentParser:
    """The CLI: which seeds, where, and how."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="results/high_sparsity",
                        help="study root (default: results/high_sparsity)")
    fetch.add_args(parser)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS),
                        help=f"seeds, run in this order (default: {' '.join(map(str, SEEDS))})")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override a config field in every run, e.g. --set epochs=1 (tiny checks)")
    parser.add_argument("--report", action="store_true", help="only write the report from the runs present")
    parser.add_argument("--report-path", default="HIGH_SPARSITY.md",
                        help="where the report goes (default: HIGH_SPARSITY.md); figures go to <out>/figures; "
                             "the study's marked sections of README.md and REPRODUCTION.md in that folder are "
                             "rewritten too")
    add_run_options(parser)
    parallel.add_args(parser)
    return parser


@guard.command(PROG)
def main(argv: list[str] | None = None) -> int:
    """Parse, check, run the seeds in order, then write the report; 2 on any bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    with guard.usage_errors(parser):
        check_study_flags(args)
        overrides = parse_overrides(args.set)
        jobs = jobs_for(args.seeds, overrides)
        devices = parallel.devices_from_args(args)
        prepare_study(args, out, [BASE.dataset])
    words = ["python", "-m", f"experiments.{NAME}", *(sys.argv[1:] if argv is None else argv)]
    command = shlex.join(w for w in words if w != "--report")

    def body() -> None:
        if not args.report:
            done = run_jobs(jobs, out, args.data_dir, run_options(args, devices),
                            dense_from=lambda job: dense_source(job, out))
            for job in done:
                print(f"done: {job.arm} seed {job.seed}", file=sys.stderr)
        from experiments import high_sparsity_report  # matplotlib only once there is something to report

        path = high_sparsity_report.write(out, Path(args.report_path), jobs_for(list(SEEDS), overrides),
                                          note=DATA_NOTE, command=command)
        print(f"written: {path}")

    return guard.guarded(parser, body, out, also=(ValueError,))


if __name__ == "__main__":
    guard.exit_process(main())
