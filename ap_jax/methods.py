"""Base pruning methods X: what the next cycle's training starts from after a prune.

A method is a reset rule; scoring (global magnitude) and AP are shared by all of them. Every
cycle restarts the LR schedule with a fresh optimizer state.

- ``lth``: Lottery Ticket Hypothesis (Frankle & Carbin 2019): rewind the survivors to the
  original init theta_0 (params and BatchNorm statistics), then retrain.
- ``lrr``: learning-rate rewinding (Renda, Frankle & Carbin 2020): keep the trained survivors
  and their BatchNorm statistics, replay the whole LR schedule.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Method:
    """A base method's reset rule: start the next cycle from ``"init"`` or ``"trained"`` weights."""

    name: str
    start_from: str
    description: str


METHODS = {
    "lth": Method("lth", "init", "Lottery Ticket: rewind survivors to theta_0, retrain"),
    "lrr": Method("lrr", "trained", "LR rewinding: keep trained survivors, replay the LR schedule"),
}


def get(name: str) -> Method:
    """The method called ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def next_start(
    method: Method, init: tuple[PyTree, PyTree], trained: tuple[PyTree, PyTree]
) -> tuple[PyTree, PyTree]:
    """``(params, batch_stats)`` the next cycle starts from (the mask is applied by the caller)."""
    return init if method.start_from == "init" else trained
