"""The reproduction study: the paper's six headline claims measured over seeds, as resumable runs.

    python -m experiments.reproduce --help

The grid is (part x arm x seed). A part is a network at a CPU-sized scale: ``mlp`` (no
BatchNorm, the full training set) and ``resnet20`` (BatchNorm, a class-balanced 10k subset).
An arm is one ``RunConfig`` variation of its part's base: X alone (``lth``), X+AP at q = 2 of
p = 20 points (``lth+AP``), the AP share q at 1 and 4 points, the ablation and substitution
variants of ``ap_jax.ap``, and the official code's semantics (``ap_jax.official``). Every
run lives in ``<out>/runs/<part>/<arm>/seed_<s>/`` (``ap_jax.cycle`` run directories): a finished
run is reused, an interrupted one resumes from its last checkpoint, so running the same command
again continues the study where it stopped. ``--report`` (``experiments.report``) then reads the run
directories and writes ``REPRODUCTION.md`` with means, 95 % confidence intervals and verdicts.
The report covers every run in ``<out>`` besides the grid asked for, so running part of a study
(``--parts``, ``--arms``, ``--seeds``) never rewrites its report with fewer runs; where all of
them lie in the default grid, it covers that whole grid and names the command that completes it.

Runs go part by part in the order given, and within a part seed by seed (every arm of seed 0,
then of seed 1, ...), so a study stopped early still has complete, paired seeds to report.
Every bad input is one line on stderr and exit status 2; Ctrl-C stops cleanly (exit 130).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ap_jax import config, cycle, feeds, fetch, official, parallel
from ap_jax.config import RunConfig
from experiments import guard
from experiments._cli import DATA_NOTE, add_run_options, check_fits, check_study_flags, prepare_study, run_options

if TYPE_CHECKING:  # experiments.report imports matplotlib: only once there is something to report
    from experiments.report import Scale

NAME = "reproduce"
PROG = f"python -m experiments.{NAME}"
SEEDS = (0, 1, 2)

PARTS: dict[str, RunConfig] = {
    # The main command's MLP setting (experiments.compare_ap): no BN, full training set.
    "mlp": RunConfig(model="mlp", cycles=20, epochs=5, lr=0.02, augment=False),
    # ResNet-20 as in LTH (LR 0.1, drops at 2/3 and 5/6 of a cycle, wd 1e-4, batch 128), on a
    # class-balanced 10k subset with 12 epochs per cycle, 10 cycles: down to 10.7 % remaining.
    "resnet20": RunConfig(model="resnet20", train_size=10_000, cycles=10, epochs=12, lr=0.1),
}

TRAIN_EXAMPLES = 50_000  # CIFAR-10's training split, for parts that train on all of it
OFFICIAL_WARMUP_SHARE = 20_000 / 39_100  # official warm-up steps / steps of one training (paper.md §5.2-3)


def official_arm(ap_rate: float) -> Callable[[RunConfig], RunConfig]:
    """The official code's semantics (``ap_jax.official.preset``) at the part's scale: its LR,
    augmentation and training length kept, the warm-up the same share of a cycle's steps."""
    def arm(base: RunConfig) -> RunConfig:
        steps = base.epochs * ((base.train_size or TRAIN_EXAMPLES) // base.batch_size)
        return official.preset(base, lr=base.lr, augment=base.augment, ap_rate=ap_rate,
                               warmup_steps=max(1, round(OFFICIAL_WARMUP_SHARE * steps)))
    return arm


# arm -> overrides of the part's base config, or a function of it; "lth" is X alone, and every
# other arm is paired with it seed by seed (the official arms with each other).
ARMS: dict[str, dict[str, Any] | Callable[[RunConfig], RunConfig]] = {
    "lth": {"ap_rate": 0.0},
    "lth+AP": {"ap_rate": 0.02},
    "lth+AP_q1": {"ap_rate": 0.01},
    "lth+AP_q4": {"ap_rate": 0.04},
    "negative_magnitude": {"ap_rate": 0.02, "ap_variant": "negative_magnitude"},
    "negative_random": {"ap_rate": 0.02, "ap_variant": "negative_random"},
    "change_all_signs": {"ap_rate": 0.02, "ap_variant": "change_all_signs"},
    "positive_change": {"ap_rate": 0.02, "ap_variant": "positive_change"},
    "official": official_arm(0.0),
    "official+AP": official_arm(0.02),
}

# Which arms each part runs: the MLP is cheap (~2.5 min a run), ResNet-20 is not (~1.2 h a run).
PART_ARMS: dict[str, tuple[str, ...]] = {
    "mlp": tuple(ARMS),
    "resnet20": ("lth", "lth+AP"),
}


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of the grid."""

    part: str
    arm: str
    seed: int
    cfg: RunConfig

    @property
    def key(self) -> tuple[str, str, int]:
        """Which run of the grid this is, whatever its config."""
        return self.part, self.arm, self.seed

    def run_dir(self, out: Path) -> Path:
        """``<out>/runs/<part>/<arm folder>/seed_<s>`` (``cycle.arm_run_dir``)."""
        return cycle.arm_run_dir(out / "runs" / self.part, self.arm, self.seed)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=1", "train_size=64"]`` -> typed ``RunConfig`` overrides; ``ValueError`` if bad."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.replace("-", "_")
        if name == "seed":
            raise ValueError(f"--set {pair!r}: the seeds are --seeds, e.g. --seeds 0 1 2")
        if not sep or name not in fields:
            raise ValueError(f"--set {pair!r}: expected FIELD=VALUE with FIELD a RunConfig field "
                             f"(e.g. epochs=1); known fields: {', '.join(fields)}")
        try:
            value = config.parse_value(name, text)
        except ValueError as err:
            raise ValueError(f"--set {pair!r}: {err}") from None
        if problem := config.field_problem(name, value):
            raise ValueError(f"--set {pair!r}: --{name.replace('_', '-')} {problem}")
        overrides[name] = value
    return overrides


def grid(parts: list[str], seeds: list[int], overrides: dict[str, Any],
         arms: list[str] | None = None) -> list[Job]:
    """Every job, part by part, then seed by seed, then arm; ``ValueError`` for a bad config.

    ``arms`` replaces every part's own arm list (``PART_ARMS``) when given.
    """
    jobs = []
    for part in parts:
        for seed in seeds:
            for arm in arms or PART_ARMS[part]:
                try:
                    jobs.append(Job(part, arm, seed, arm_config(PARTS[part], arm, overrides, seed)))
                except ValueError as err:
                    raise ValueError(f"part {part}, arm {arm}: {err}") from None
    return jobs


def arm_config(base: RunConfig, arm: str, overrides: dict[str, Any], seed: int) -> RunConfig:
    """One arm's config: the part's base with ``overrides`` and the seed, then the arm's change."""
    cfg = dataclasses.replace(base, **overrides, seed=seed)
    change = ARMS[arm]
    return change(cfg) if callable(change) else dataclasses.replace(cfg, **change)


def study_grid(overrides: dict[str, Any]) -> list[Job]:
    """The whole study's grid under ``overrides``: every part, its own arms, the default seeds.

    A part whose configs ``overrides`` make invalid cannot have runs under them and is left out.
    """
    jobs: list[Job] = []
    for part in PARTS:
        try:
            jobs += grid([part], list(SEEDS), overrides)
        except ValueError:
            continue
    return jobs


ARM_FOLDERS = {cycle.arm_folder(arm): arm for arm in ARMS}


def present(out: Path, overrides: dict[str, Any]) -> list[Job]:
    """The jobs whose run directories ``out`` holds, with configs as ``overrides`` make them."""
    jobs = []
    for run_dir in (out / "runs").glob("*/*/seed_*"):
        part, arm = run_dir.parent.parent.name, ARM_FOLDERS.get(run_dir.parent.name)
        seed = run_dir.name.removeprefix("seed_")
        if part not in PARTS or arm is None or not seed.isdigit():
            continue
        try:
            job = Job(part, arm, int(seed), arm_config(PARTS[part], arm, overrides, int(seed)))
            cycle.check_run_dir(run_dir, job.cfg)
        except ValueError:  # a config these overrides cannot make, or a run of another --set
            continue
        jobs.append(job)
    return jobs


def in_order(jobs: list[Job]) -> list[Job]:
    """``jobs`` without repeats, part by part, then arm, then seed (the report's order)."""
    unique = {j.key: j for j in jobs}
    return sorted(unique.values(), key=lambda j: (list(PARTS).index(j.part), list(ARMS).index(j.arm), j.seed))


def report_jobs(ran: list[Job], out: Path, overrides: dict[str, Any]) -> tuple[list[Job], bool]:
    """The report's jobs, and whether they are the whole study's grid.

    The report covers this command's grid and every run already in ``out``, so a command that
    runs part of a study never rewrites its report with fewer runs. Where all of them lie in the
    study's grid (``study_grid``), the report covers that whole grid, missing runs included.
    """
    study = study_grid(overrides)
    held = {j.key for j in study}
    jobs = in_order([*ran, *present(out, overrides)])
    if all(j.key in held for j in jobs):
        return study, True
    return jobs, False


def study_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command that runs what is missing of the whole study and rewrites its report."""
    words = ["python", "-m", f"experiments.{NAME}"]
    for flag, value in (("--out", args.out), ("--data-dir", args.data_dir), ("--report-path", args.report_path)):
        if value != parser.get_default(flag.lstrip("-").replace("-", "_")):
            words += [flag, value]
    if args.set:
        words += ["--set", *args.set]
    return shlex.join(words)


def this_command(argv: list[str] | None) -> list[str]:
    """This command's words without ``--report``: it runs, then reports, the same grid."""
    given = sys.argv[1:] if argv is None else argv
    return ["python", "-m", f"experiments.{NAME}", *(a for a in given if a != "--report")]


def report_scale(settings: list[str]) -> Scale:
    """The report's scale: the CPU study's own, or its configs as changed by ``--set``."""
    from experiments import report

    if not settings:
        return report.CPU_SCALE
    changed = " ".join(settings)
    return report.Scale(f"--set {changed}", f"The CPU study's configs with `--set {changed}` applied to "
                        "every run (each run's config.json holds its whole config): compare with the "
                        "paper's numbers only where that is its full scale.")


def build_parser() -> argparse.ArgumentParser:
    """The CLI: what to run, where, and how."""
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{NAME}", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="results/reproduce", help="study root (default: results/reproduce)")
    fetch.add_args(parser)
    parser.add_argument("--parts", nargs="+", choices=tuple(PARTS), default=list(PARTS),
                        help=f"networks to run, in order (default: {' '.join(PARTS)})")
    parser.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=None,
                        help="arms to run in every part (default: each part's own list: "
                             + "; ".join(f"{p}: {' '.join(a)}" for p, a in PART_ARMS.items()) + ")")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS),
                        help=f"seeds of every arm (default: {' '.join(map(str, SEEDS))})")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override a config field in every run, e.g. --set epochs=1 cycles=2 "
                             "(for tiny checks; the run directories check the config they hold)")
    parser.add_argument("--report", action="store_true",
                        help="only write the report from the runs present (run nothing)")
    parser.add_argument("--report-path", default="REPRODUCTION.md",
                        help="where the report goes (default: REPRODUCTION.md); figures go to "
                             "<out>/figures")
    add_run_options(parser)
    parallel.add_args(parser)
    return parser


def run_jobs(jobs: list[Job], out: Path, data_dir: str | None, options: cycle.RunOptions,
             dense_from: Callable[[Job], Path | None] = lambda job: None) -> Iterator[Job]:
    """Run (or reuse, or resume) every job in order, loading each dataset variant once; a job
    for which ``dense_from`` names a run directory takes its dense cycle from there."""
    datasets: dict[tuple[str, int, int], feeds.AnyDataset] = {}
    for i, job in enumerate(jobs):
        key = (job.cfg.dataset, job.cfg.train_size, job.cfg.seed if job.cfg.train_size else 0)
        if key not in datasets:
            datasets[key] = feeds.load(job.cfg.dataset, data_dir, train_size=job.cfg.train_size or None,
                                      seed=job.cfg.seed)
        dataset = datasets[key]
        if problem := check_fits(job.cfg, dataset.num_train, options.devices):
            raise ValueError(f"{job.part} {job.arm}: {problem}")
        label = f"[{i + 1}/{len(jobs)}] {job.part} {job.arm} seed {job.seed}"
        shared = dataclasses.replace(options, dense_from=dense_from(job))
        cycle.run(job.cfg, dataset, job.run_dir(out), label, shared)
        yield job


@guard.command(PROG)
def main(argv: list[str] | None = None) -> int:
    """Parse, check, run the grid in order, then write the report; 2 on any bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    with guard.usage_errors(parser):
        check_study_flags(args)
        overrides = parse_overrides(args.set)
        jobs = grid(args.parts, args.seeds, overrides, args.arms)
        if problem := next(filter(None, (cycle.check_rewind_step(j.cfg, j.cfg.train_size or TRAIN_EXAMPLES)
                                         for j in jobs)), None):
            raise ValueError(problem.replace("--rewind-step ", "--set rewind_step="))
        devices = parallel.devices_from_args(args)
        prepare_study(args, out, (job.cfg.dataset for job in jobs))

    def body() -> None:
        if not args.report:
            for job in run_jobs(jobs, out, args.data_dir, run_options(args, devices)):
                print(f"done: {job.part} {job.arm} seed {job.seed}", file=sys.stderr)
        from experiments import high_sparsity_report, report  # matplotlib only once there is a report

        reported, whole = report_jobs(jobs, out, overrides)
        command = study_command(parser, args) if whole else shlex.join(this_command(argv))
        earlier = not whole and len(reported) > len(jobs)
        note = DATA_NOTE + (f" Some runs come from earlier commands on {out}." if earlier else "") + \
            " Claims 2 and 3 with BatchNorm at the paper's sparsities (ResNet-20, all of CIFAR-10, down " \
            "to 1.15 %, five seeds, a pre-registered contrast) are the high-sparsity study's: " \
            "`python -m experiments.high_sparsity`, which writes its verdicts after the claims table."
        path = report.write(out, Path(args.report_path), reported, note=note, command=command,
                            scale=report_scale(args.set),
                            carry={high_sparsity_report.CLAIMS_BLOCK: high_sparsity_report.PENDING})
        print(f"written: {path}")

    return guard.guarded(parser, body, out, also=(ValueError,))


if __name__ == "__main__":
    guard.exit_process(main())
