"""HIGH_SPARSITY.md: the high-sparsity study's pre-registered analysis and its results.

The plan (``PLAN``) was written and committed before any run of the study finished; the code
below computes exactly what it names, from the runs' ``metrics.jsonl`` rows, and nothing it
does not. Statistics come from ``experiments.report`` (paired Student-t intervals, TOST).
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ap_jax import plots, records
from experiments import blocks, report

HIGH_SPARSITY = 0.10  # the primary contrast averages the pruned cycles at or below this remaining share
EQUIVALENCE_MARGIN = 0.01  # "no difference" needs the 90 % interval inside ±1 point
DECIDING_SEEDS = 3  # the plan decides on five paired seeds, or on seeds 0-2 if the budget stops there
CLAIMS_BLOCK = "experiments.high_sparsity claims"  # its section of REPRODUCTION.md
README_BLOCK = "experiments.high_sparsity readme"  # its two sentences in README.md
PENDING = ("The high-sparsity study writes its verdicts on claims 2, 3 and 5 with BatchNorm here: "
           "`python -m experiments.high_sparsity`.")
BUDGET_H = 30.0  # the CPU hours the study may take; past them the plan decides on the seeds done
DENSE_TARGET = 0.88  # the dense accuracy a ResNet-20 should reach on this copy of CIFAR-10

PLAN = f"""## Analysis plan (fixed before the results)

- **Primary contrast.** For each seed, the test-accuracy difference X+AP − X averaged over the
  pruned cycles at ≤ {100 * HIGH_SPARSITY:g} % remaining weights (cycles 11-20: 8.6 % down to 1.15 %);
  the mean over the five seeds with its 95 % Student-t interval (paired by seed, 4 degrees of
  freedom). Should the ~{BUDGET_H:g} h budget stop the study after seeds 0-2, the same test runs on those
  three (2 degrees of freedom, each seed's value printed beside the interval) and the report
  says so; seeds 3-4 stay resumable. AP **helps** if the interval lies above 0, **hurts** if below. **No difference** is
  claimed only by equivalence: two one-sided t tests at 5 % with a margin of
  ±{100 * EQUIVALENCE_MARGIN:g} point (the 90 % interval inside it), a third of the smallest gain the
  paper reports (+3 points); anything else is **inconclusive**.
- **Secondary contrast.** The same for the dead neuron rate (DNR): AP lowers it if the interval
  lies below 0.
- **How many intervals.** These two decide; every other interval in this report (the per-cycle
  table, the mechanism figure) is descriptive and unadjusted for multiplicity.
- **Mechanism.** For every prune, the DNR of the trained network right after it, before
  retraining (BatchNorm in eval mode with the trained running statistics), in both arms: how
  much of AP's immediate effect on the DNR survives retraining.
- **Scale.** ResNet-20 (option B), all 50,000 training images with augmentation, LRR, 30 dense
  epochs, 3 epochs per pruned cycle, 20 cycles of p = 20 %, q = 2 points, seeds 0-4. A result
  at this scale is smaller than the paper's full-scale training, and labelled so.
"""


RECENT_EPOCHS = 20  # the projection uses the median of this many latest epochs: today's machine, not last week's


def trained_epochs(run_dir: Path) -> list[float | None]:
    """Wall seconds of each epoch this run trained itself (training and its evaluation), oldest
    first, from the increments of the rows' cumulative ``wall_s`` (None for a run's first epoch,
    which has none); a dense cycle taken from another run (``dense_cycle_from`` in its provenance)
    is that run's work and is left out."""
    rows = [r for r in records.read_rows(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    provenance = records.read_provenance([run_dir])
    taken = bool(provenance and provenance[0].get("dense_cycle_from"))
    walls = [None, *(b["wall_s"] - a["wall_s"] for a, b in zip(rows, rows[1:]))]
    return [w for r, w in zip(rows, walls) if not (taken and r["cycle"] == 0)]


@dataclasses.dataclass(frozen=True)
class Budget:
    """The study's cost so far and its projection: epochs trained of the ``total``, the median
    wall seconds of the latest ones (``recent``, None before any is timed) and hours measured."""

    trained: int
    total: int
    per_seed: int
    recent: float | None
    recent_n: int
    measured_h: float

    @property
    def left_h(self) -> float:
        """Hours the untrained epochs would take at the ``recent`` median."""
        return max(self.total - self.trained, 0) * (self.recent or 0.0) / 3600

    @property
    def exceeded(self) -> bool:
        """Whether finishing every run would take the study past ``BUDGET_H``."""
        return self.left_h > 0 and self.measured_h + self.left_h > BUDGET_H

    def line(self) -> str:
        """The report's budget line."""
        head = f"- budget: {self.trained} of {self.total} epochs trained ({self.per_seed} a seed"
        if self.recent is None:
            return f"{head}); none timed yet"
        return (f"{head}, the dense cycle once); median of the latest {self.recent_n} epochs {self.recent:.0f} s "
                f"(training and evaluation), so about {self.left_h:.1f} h left; {self.measured_h:.1f} h measured "
                f"so far, of a ~{BUDGET_H:g} h budget")

    def reason(self) -> str:
        """Why the study stops short of its plan, in the report's words."""
        return (f"the remaining runs would take about {self.left_h:.1f} h more after {self.measured_h:.1f} h "
                f"measured, past the ~{BUDGET_H:g} h budget")


def measure_budget(jobs: Sequence[Any], out: Path) -> Budget:
    """Epochs trained of the study's total (the dense cycle once a seed), and their wall time."""
    cfg = jobs[0].cfg
    seeds = sorted({job.seed for job in jobs})
    per_seed = cfg.cycle_epochs(0) + len(jobs) // len(seeds) * cfg.cycles * cfg.epochs
    epochs = [w for job in jobs for w in trained_epochs(job.run_dir(out))]  # job order is run order
    seconds = [w for w in epochs if w is not None and w > 0]
    latest = seconds[-RECENT_EPOCHS:]
    recent = statistics.median(latest) if latest else None
    return Budget(len(epochs), per_seed * len(seeds), per_seed, recent, len(latest), sum(seconds) / 3600)


def dense_accuracies(run_dirs: Sequence[Path]) -> list[float]:
    """Test accuracy at the end of the dense cycle 0 of every run that has finished it."""
    rows = (records.read_rows(d / "metrics.jsonl") for d in run_dirs)
    return [r["test_accuracy"] for run in rows for r in run if r["kind"] == "cycle" and r["cycle"] == 0]


def high_cycles(arm: report.Arm) -> list[int]:
    """The pruned cycles at or below ``HIGH_SPARSITY`` remaining."""
    return [c for c, rem in enumerate(report.remaining(arm)) if c > 0 and rem <= HIGH_SPARSITY + 1e-9]


def decide(values: list[float], expect: str, good: str, bad: str) -> str:
    """The plan's verdict on one contrast: ``good`` when the 95 % interval lies wholly on the
    ``expect`` side of 0 (``">0"`` or ``"<0"``), ``bad`` when wholly on the other, no difference
    when equivalence holds, inconclusive otherwise."""
    side = report.verdict(report.estimate(values), expect)
    if side in (report.HOLDS, report.FAILS):
        return good if side == report.HOLDS else bad
    if report.equivalent(values, EQUIVALENCE_MARGIN):
        return f"no difference (equivalent within ±{100 * EQUIVALENCE_MARGIN:g} point)"
    return "inconclusive"


def plan_verdict(values: list[float], expect: str, good: str, bad: str) -> str:
    """``decide`` once ``DECIDING_SEEDS`` paired seeds are in; before that the verdict is pending
    (an interim look is not the plan's test), and from two seeds on it says what the test would read."""
    if len(values) >= DECIDING_SEEDS:
        return decide(values, expect, good, bad)
    pending = f"pending: the plan decides on {DECIDING_SEEDS} or more paired seeds"
    if len(values) < 2:
        return pending
    return f"{pending}; on these {len(values)} the test would read: {decide(values, expect, good, bad)}"


@dataclasses.dataclass(frozen=True)
class Contrast:
    """One of the plan's decisions: X+AP − X per seed, averaged over the high-sparsity cycles."""

    name: str
    estimate: report.Estimate
    verdict: str

    def row(self) -> str:
        """The Markdown table row: name, mean ± 95 % interval with each seed's value, verdict."""
        return f"| {self.name} | {self.estimate.seeds_text()} pts | {self.verdict} |"


def contrast(name: str, x: report.Arm, ap: report.Arm, key: str, expect: str, good: str, bad: str) -> Contrast:
    """The plan's decision on the row field ``key`` (``expect``: the side of 0 AP claims)."""
    cycles = high_cycles(x)
    diffs = [float(np.mean(d[cycles])) for d in report.paired_by_seed(x, ap, key).values()]
    return Contrast(name, report.estimate(diffs), plan_verdict(diffs, expect, good, bad))


def primary(x: report.Arm, ap: report.Arm) -> Contrast:
    """The primary contrast: test accuracy."""
    return contrast("primary: test accuracy, X+AP − X", x, ap, "test_accuracy", ">0", "AP helps", "AP hurts")


def secondary(x: report.Arm, ap: report.Arm) -> Contrast:
    """The secondary contrast: the dead neuron rate."""
    return contrast("secondary: DNR, X+AP − X", x, ap, "dnr", "<0", "AP lowers the DNR", "AP raises the DNR")


def fallback_line(paired: int, planned: int, budget: Budget) -> list[str]:
    """The plan's note when its verdicts rest on fewer seeds than planned (``paired`` of ``planned``):
    the fallback once the ``budget`` is exceeded, an interim reading before."""
    if not DECIDING_SEEDS <= paired < planned:
        return []
    if not budget.exceeded:
        return [f"- These verdicts rest on {paired} of the {planned} planned paired seeds, an interim reading: "
                "the budget leaves time for the rest, and the plan decides on all of them."]
    return [f"- These verdicts rest on {paired} of the {planned} planned paired seeds: the plan's fallback, as "
            f"{budget.reason()}; the remaining seeds stay resumable."]


def claim6_line(budget: Budget) -> str:
    """Claim 6 at this scale comes after the primary runs, and only if the ``budget`` leaves time for it."""
    why = (f"the primary runs alone would go past the ~{BUDGET_H:g} h budget, so none is left for it"
           if budget.exceeded
           else f"it comes after the primary runs, and only if the ~{BUDGET_H:g} h budget leaves time for it")
    return f"- Claim 6 at this scale (the official code's semantics, with BatchNorm): not run; {why}."


def status_line(done: int, total: int, budget: Budget) -> str:
    """The report's first line: runs complete of ``total``, and why the plan decides before the rest."""
    head = f"**Status: {done} of {total} runs complete**"
    if done == total:
        return f"{head}."
    if budget.exceeded:
        return (f"{head}; {budget.reason()}, so the plan decides on the seeds done; rerun the command below "
                "to continue the study.")
    return f"{head}; rerun the command below to continue the study."


def claims_block(x: report.Arm, contrasts: tuple[Contrast, Contrast] | None, status: str, link: str) -> str:
    """The section of REPRODUCTION.md this study owns: the paper's claims at its sparsity with
    BatchNorm, decided by the plan's ``contrasts`` (primary, secondary; None before a seed has
    both arms) (``link``: HIGH_SPARSITY.md from that page)."""
    lines = ["## The claims with BatchNorm at the paper's sparsity (ResNet-20, all of CIFAR-10)", "",
             "Small scale next to the paper: LRR, 30 dense epochs, 3 epochs per pruned cycle, 20 cycles down "
             f"to 1.15 % of the weights. Written by the high-sparsity study ([report]({link})), whose two "
             "contrasts were fixed before its results: X+AP − X paired by seed, averaged over the cycles at "
             f"≤ {100 * HIGH_SPARSITY:g} % remaining. {status}", ""]
    if contrasts is None:
        return "\n".join(lines + ["No seed has both arms complete yet: no verdict."])
    acc, dnr = contrasts
    fall = report.claim_dnr_falls({"resnet20_full": {report.BASE: x}})
    return "\n".join(lines + [
        "| # | claim (paper) | measured | verdict |", "|---:|---|---|---|",
        f"| 3 | AP >= X in test accuracy where sparsity is high (paper: +3 to 4 points) | {acc.name}: "
        f"{acc.estimate.seeds_text()} pts | **{acc.verdict}** |",
        f"| 2, 5 | AP (q = 2 of p = 20 points) lowers the dynamic DNR, with BatchNorm | {dnr.name}: "
        f"{dnr.estimate.seeds_text()} pts | **{dnr.verdict}** |",
        f"| 1 | The dynamic DNR falls as sparsity rises (X = LRR) | descriptive, not one of the plan's contrasts: "
        f"{fall.measurement} | {fall.verdict} |",
        "", "Claims 4 (the ablations) and 6 (the official code's semantics) were not run at this scale."])


def mechanism(x: report.Arm, ap: report.Arm, effect: tuple[np.ndarray, np.ndarray] | None,
              folder: Path) -> tuple[list[str], Path | None]:
    """The per-cycle bookkeeping table and the figure of AP's DNR ``effect`` (``report.dnr_effect``)
    right after each prune and after retraining, over the seeds both arms completed."""
    if effect is None:
        return ["No paired seed is complete yet."], None
    immediate, retrained = effect
    lines = ["| cycle | remaining % | X pruned | AP budget | AP pruned | AP shortfall | DNR gap after prune (pts) "
             "| DNR gap after retraining (pts) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, row in enumerate(next(iter(ap.prune_rows.values()))):
        lines.append(f"| {row['cycle']} | {100 * row['remaining']:.2f} | {row['x_pruned']} | {row['ap_budget']} | "
                     f"{row['ap_pruned']} | {row['ap_shortfall']} | {report.estimate(immediate[:, i]).text()} | "
                     f"{report.estimate(retrained[:, i]).text()} |")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "resnet20_full_dnr_effect.png"
    plots.effect_survival_figure(report.remaining(x)[1:], {
        "right after the prune": report.band(immediate), "after retraining": report.band(retrained)},
        path, title="DNR(X+AP) - DNR(X): mean and 95 % CI over seeds")
    return lines, path


def readme_sentences(x: report.Arm, contrasts: tuple[Contrast, Contrast] | None,
                     effect: tuple[np.ndarray, np.ndarray] | None, status: str, link: str) -> str:
    """What the study found, in two sentences for the README: the plan's ``contrasts`` and how much
    of AP's immediate DNR ``effect`` (``report.dnr_effect``) survives retraining (``link``: the report)."""
    where = ("ResNet-20 with BatchNorm on all of the JPEG-rebuilt CIFAR-10 copy, whose accuracies run 1-3 "
             "points under published ones; LRR down to 1.15 % of the weights; small scale: 3 epochs per "
             "pruned cycle")
    if contrasts is None:
        return f"**High-sparsity study** ({where}): in progress, {status} No verdict yet ([report]({link}))."
    acc, dnr = contrasts
    seeds = report.counted(acc.estimate.n, "paired seed")
    first = (f"**High-sparsity study** ({where}; {seeds}): over the cycles at "
             f"≤ {100 * HIGH_SPARSITY:g} % remaining AP changed test accuracy by {acc.estimate.text()} points "
             f"(**{acc.verdict}**; the paper reports +3 to 4 at full scale) and the dead neuron rate by "
             f"{dnr.estimate.text()} points (**{dnr.verdict}**).")
    if effect is None:
        return f"{first} ([report]({link}))"
    cycles = [c - 1 for c in high_cycles(x)]  # the effect's columns are the pruned cycles 1, 2, ...
    immediate, retrained = (float(np.mean(e[:, cycles])) for e in effect)
    kept = f"{retrained / immediate:.0%}" if abs(immediate) > 1e-12 else "none (there was none)"
    return (f"{first} Over the same cycles AP's DNR gap was {100 * immediate:+.2f} points right after each "
            f"prune and {100 * retrained:+.2f} after retraining, so retraining kept "
            f"{kept} of AP's immediate effect ([report]({link})).")


def write(out: Path, report_path: Path, jobs: Sequence[Any], note: str = "", command: str = "") -> Path:
    """Read every job's run directory and write ``report_path`` and its figure in ``out/figures``,
    and this study's blocks into REPRODUCTION.md and README.md beside it (``blocks.rewrite``)."""
    by_arm: dict[str, dict[int, Path]] = {}
    for job in jobs:
        by_arm.setdefault(job.arm, {})[job.seed] = job.run_dir(out)
    (x_name, x_dirs), (ap_name, ap_dirs) = by_arm.items()
    cycles = jobs[0].cfg.cycles
    x, ap = report.load_arm(x_dirs, cycles), report.load_arm(ap_dirs, cycles)
    done = len(x.cycle_rows) + len(ap.cycle_rows)
    budget = measure_budget(jobs, out)
    lines = ["# Does AP help a BatchNorm network at high sparsity? (ResNet-20, all of CIFAR-10; "
             "small scale: 3 epochs per pruned cycle)", "",
             status_line(done, len(jobs), budget), "",
             f"Regenerate (runs what is missing, then rewrites this file): `{command}`", "",
             note, "", PLAN]
    contrasts = (primary(x, ap), secondary(x, ap)) if x.cycle_rows and ap.cycle_rows else None
    effect = report.dnr_effect(x, ap)
    if contrasts is not None:
        acc, dnr = contrasts
        lines += ["## Results", "", "| contrast (cycles at ≤ 10 % remaining) | mean ± 95 % interval (per seed) | "
                  "verdict |", "|---|---|---|", acc.row(), dnr.row(), "",
                  f"- Claim 3 at this scale (AP ≥ X in accuracy where sparsity is high): {acc.verdict}.",
                  f"- Claim 2 at this scale (AP lowers the DNR of a BatchNorm network): {dnr.verdict}.",
                  "- The paper reports +3 to 4 points for X+AP on CIFAR at full scale (per-table "
                  "numbers not recovered).",
                  *fallback_line(acc.estimate.n, len(x_dirs), budget), claim6_line(budget)]
    dense = report.estimate(dense_accuracies(list(x_dirs.values())))
    if dense.n:
        lines += ["", f"Dense accuracy reached (cycle 0, {report.counted(dense.n, 'seed')}): {dense.level_text()} %"
                  + ("" if dense.mean >= DENSE_TARGET else
                     f", under the {100 * DENSE_TARGET:g} % expected of ResNet-20 on this copy")]
    table, figure = mechanism(x, ap, effect, out / "figures")
    lines += ["", "## Mechanism: what each prune did, and what of AP's DNR effect survives retraining", "",
              *table]
    if figure is not None:
        rel = Path(report._relative(report_path.parent, figure.parent)) / figure.name
        lines += ["", f"![AP's DNR effect]({rel.as_posix()})"]
    if x.cycle_rows and ap.cycle_rows:
        lines += ["", "## Per cycle (descriptive)", "", report.accuracy_table({"resnet20_full": {
            report.BASE: x, report.AP: ap}})]
    status = [f"- {name} seed {s}: complete" for name, arm in ((x_name, x), (ap_name, ap)) for s in arm.cycle_rows]
    status += [f"- {name} {item}" for name, arm in ((x_name, x), (ap_name, ap)) for item in arm.incomplete]
    lines += ["", "## Runs", "", *status, budget.line(),
              *report.provenance_lines({"resnet20_full": {x_name: x, ap_name: ap}}), ""]
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text("\n".join(lines))
    seeds = sorted(set(x.cycle_rows) & set(ap.cycle_rows))
    status = (f"{done} of {len(jobs)} runs complete; seeds with both arms: "
              f"{', '.join(map(str, seeds)) or 'none'} of {len(x_dirs)}.")
    if budget.exceeded and len(seeds) >= DECIDING_SEEDS:
        status += f" The plan decides on these, its fallback: {budget.reason()}; the rest stay resumable."
    for page, name, text in (
            ("REPRODUCTION.md", CLAIMS_BLOCK, claims_block(x, contrasts, status, report_path.name)),
            ("README.md", README_BLOCK, readme_sentences(x, contrasts, effect, status, report_path.name))):
        blocks.rewrite(report_path.parent / page, name, text)
    return report_path
