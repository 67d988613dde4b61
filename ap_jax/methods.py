"""Base pruning methods X: what each cycle's training starts from, which LR schedule it runs,
and whether the run prunes iteratively or once.

A method is a small policy (``Method``) the driver (``ap_jax.cycle``) reads; scoring (magnitude,
global or layer-wise by ``RunConfig.scope``) and AP are shared by all of them, so every method
runs with and without AP. Cycle 0 is always the dense network trained from theta_0 with the full
LR schedule; every cycle starts a fresh optimizer state. The start weights of a pruned cycle are
always masked by the new mask (the caller applies it):

- ``lth``: Lottery Ticket Hypothesis (Frankle & Carbin 2019): rewind the survivors to the
  original init theta_0 (params and BatchNorm statistics), replay the whole LR schedule.
- ``lth_rewind``: LTH with rewinding to step k (Frankle et al. 2020, "Linear mode connectivity
  and the LTH"): rewind the survivors to the params and BatchNorm statistics the dense cycle 0
  had after ``RunConfig.rewind_step`` = k optimizer steps (1 <= k < the steps of a cycle), replay
  the whole schedule. The step is exact, not rounded to an epoch: the epoch holding step k
  copies the state after its k-th step (``train.train_epoch``'s ``after_step``), and the copy is
  saved at once in the run's checkpoints (``rewind/<k>/``), so a resumed run rewinds to the same
  weights. Each pruned cycle then trains all its steps with the whole schedule from there, the
  same budget as every other method; Frankle et al. and Renda et al. ("weight rewinding") train
  only the T - k steps after k, with the schedule from step k on: for their small k (about 1-3 %
  of T) that is k extra steps at the peak LR here.
- ``lrr``: learning-rate rewinding (Renda, Frankle & Carbin 2020): keep the trained survivors
  and their BatchNorm statistics, replay the whole LR schedule.
- ``finetune``: IMP fine-tuning (Han et al. 2015, as compared in Renda et al. 2020): keep the
  trained survivors and BatchNorm statistics and train every pruned cycle at the constant LR
  ``RunConfig.finetune_lr`` (momentum and weight decay as configured, no warm-up). Renda et
  al. fine-tune at the final LR of the original schedule; the default 1e-3 is that LR for the
  default schedule (0.1 dropped twice by 10x).
- ``oneshot``: one-shot magnitude pruning: train dense (cycle 0), prune once straight to the
  final sparsity, i.e. remove the share ``1 - (1 - rate)^cycles`` of the weights (the remaining
  share the iterative methods reach after ``cycles`` prunes), then retrain once, keeping the
  trained survivors and replaying the whole schedule (one-shot LRR, Renda et al.'s strongest
  one-shot retraining). The run has two cycles and two cycle rows: cycle 0 (dense) and cycle 1
  at ``(1 - rate)^cycles`` remaining. AP keeps its share of the budget: it takes ``ap_rate /
  rate`` of that single prune (e.g. 2/20 of it for the paper's p = 20 %, q = 2 %), X the rest.
  AP's W_0 is the start of cycle 0, theta_0. ``ap_start_cycle`` must be 0 (there is one prune).

Layer-wise instead of global scope is not a method here: it is ``RunConfig.scope =
"layerwise"``, which changes the scoring of every method above (AP included) and so crosses them.

**The paper's five methods.** The paper compares X and X+AP for "two classical and three
competitive" pruning methods without naming them in what we have (see paper.md §3; the released
code implements LTH-style IMP only). Our choice, not the paper's word: the two classical ones
are ``finetune`` (IMP with fine-tuning, Han et al. 2015) and ``lth`` (Frankle & Carbin 2019), the
two that define iterative magnitude pruning; the three competitive ones are ``lth_rewind``
(rewinding to an early step is what makes LTH work on deeper networks), ``lrr`` (named
state-of-the-art beside LTH by the same authors' SILO paper) and ``oneshot``, which we take over
layer-wise scoring because it is a distinct policy (one prune, one retraining, a fraction of the
cost) that Renda et al. show competitive at moderate sparsity, whereas layer-wise scoring is a
scope that applies to all five and is available for each of them with ``--scope layerwise``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PyTree = Any
START_FROM = ("init", "rewind", "trained")
SCHEDULES = ("replay", "constant")
PRUNING = ("iterative", "oneshot")


@dataclasses.dataclass(frozen=True)
class Method:
    """A base method's policy for every pruned cycle (cycle 0 is always the dense run).

    ``start_from``: the weights training starts from, masked: theta_0 (``"init"``), the dense
    run's weights at step ``rewind_step`` (``"rewind"``) or the previous cycle's end
    (``"trained"``). ``schedule``: replay the whole LR schedule (``"replay"``) or train at the
    constant ``finetune_lr`` (``"constant"``). ``pruning``: one prune per cycle for ``cycles``
    cycles (``"iterative"``) or a single prune to the final sparsity after cycle 0 (``"oneshot"``).
    """

    name: str
    start_from: str
    schedule: str
    pruning: str
    description: str


METHODS = {
    "lth": Method("lth", "init", "replay", "iterative",
                  "Lottery Ticket: rewind survivors to theta_0, retrain"),
    "lth_rewind": Method("lth_rewind", "rewind", "replay", "iterative",
                         "Lottery Ticket with rewinding: rewind survivors to step k of the dense run, retrain"),
    "lrr": Method("lrr", "trained", "replay", "iterative",
                  "LR rewinding: keep trained survivors, replay the LR schedule"),
    "finetune": Method("finetune", "trained", "constant", "iterative",
                       "IMP fine-tuning: keep trained survivors, train at a small constant LR"),
    "oneshot": Method("oneshot", "trained", "replay", "oneshot",
                      "one-shot magnitude: one prune to the final sparsity, then LRR-style retraining"),
}


def get(name: str) -> Method:
    """The method called ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def next_start(method: Method, init: PyTree, trained: PyTree, rewind: PyTree | None = None) -> PyTree:
    """The variables (params and BatchNorm statistics) the next cycle starts from, one of ``init``
    (theta_0), ``trained`` (the cycle's end) and ``rewind`` (the dense run's variables at step k,
    needed by ``start_from == "rewind"`` only); the mask is applied by the caller."""
    if method.start_from == "rewind":
        if rewind is None:
            raise ValueError(f"method {method.name!r} rewinds to step k, but no rewind point was given")
        return rewind
    return init if method.start_from == "init" else trained


def schedule_of(method: Method, cycle: int) -> str:
    """The LR schedule cycle ``cycle`` trains with: ``"replay"`` (the full one) or ``"constant"``."""
    return method.schedule if cycle > 0 else "replay"


def last_cycle(method: Method, cycles: int) -> int:
    """The last cycle a run trains: ``cycles`` when pruning iteratively, 1 for one-shot."""
    return 1 if method.pruning == "oneshot" else cycles


def prune_rates(method: Method, rate: float, ap_rate: float, cycles: int) -> tuple[float, float]:
    """``(rate, ap_rate)`` of one prune: as configured, or for one-shot the whole
    ``1 - (1 - rate)^cycles`` with AP's share ``ap_rate / rate`` of it."""
    if method.pruning != "oneshot":
        return rate, ap_rate
    total = 1.0 - (1.0 - rate) ** cycles
    return total, (total * (ap_rate / rate) if rate > 0 else 0.0)


def rewind_problem(method: Method, rewind_step: int, steps_per_cycle: int) -> str | None:
    """Why ``rewind_step`` cannot be used with ``steps_per_cycle`` training steps a cycle, or None."""
    if method.start_from == "rewind" and not 1 <= rewind_step < steps_per_cycle:
        return (f"--rewind-step {rewind_step} must be in [1, {steps_per_cycle}): a cycle has "
                f"{steps_per_cycle} training steps (epochs x examples // batch size)")
    return None
