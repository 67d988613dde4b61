"""AP, Activate-while-Pruning (Liu, Ghosh, Motani, TMLR 2023): Algorithm 1 and one step of Algorithm 2.

AP is not a stand-alone importance score: it rides on a base method X. In each cycle, X prunes
``rate - ap_rate`` of the alive weights by its own scores, then AP prunes ``ap_rate`` more among
the alive NEGATIVE weights whose value changed least during the cycle's training
(``|W_T - W_0|`` with ``W_0`` the weights at the start of that training). A negative weight on a
non-negative (post-ReLU) input can only lower a pre-activation, so removing it "activates" units
and lowers the dead neuron rate.

Differences from the official code (``resnet_20.py``), by design: AP prunes exactly
``round(ap_rate * N)`` weights (the code's ``<= sort(s)[k]`` takes k+1 and crashes when fewer
than k+1 negatives are alive); the pool holds each prunable weight once (the code duplicates BN
scales and fc weights); BN scales are not prunable (``official.ap_prune_with_scales`` makes them
so). The official rules themselves are in ``ap_jax.official``.

Ablation and substitution variants (paper §4; ``ap_prune(..., variant=...)``, ``--ap-variant``).
Each is one score function in ``AP_VARIANTS``: its candidate weights get a finite score (lowest
pruned first), every other weight +inf and is never taken by AP. The paper's wording -> name:

- full AP: alive negative weights by smallest ``|W_T - W_0|`` -> ``"ap"`` (the default);
- "negative weights ranked by magnitude" -> ``"negative_magnitude"`` (smallest ``|W_T|``); this
  is also the substitution "``|W_T|`` instead of ``|W_T - W_0|``", so it has no second name;
- "negative weights ranked at random" -> ``"negative_random"`` (needs a PRNG ``key``);
- "``|ΔW|`` over all signs" (no sign rule) -> ``"change_all_signs"``;
- "positive instead of negative weights" -> ``"positive_change"`` (``w > 0``, by ``|W_T - W_0|``).

The AP share q is ``ap_rate``; the cycle AP starts at is ``RunConfig.ap_start_cycle``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ap_jax import masks, prune, scores

PyTree = Any


def ap_scores(params: PyTree, params_ref: PyTree) -> PyTree:
    """Algorithm 1's metric: ``|w - w_ref|`` where ``w < 0`` (strictly), +inf elsewhere."""
    return jax.tree_util.tree_map(
        lambda w, r: jnp.where(w < 0, jnp.abs(w - r), jnp.inf), params, params_ref
    )


def _only(candidate: Callable[[jax.Array], jax.Array], ranking: PyTree, params: PyTree) -> PyTree:
    """``ranking`` where ``candidate(w)`` holds, +inf elsewhere."""
    return jax.tree_util.tree_map(lambda w, r: jnp.where(candidate(w), r, jnp.inf), params, ranking)


def _negative(w: jax.Array) -> jax.Array:
    return w < 0


def _positive(w: jax.Array) -> jax.Array:
    return w > 0


def _need_key(key: jax.Array | None) -> jax.Array:
    if key is None:
        raise ValueError("AP variant 'negative_random' needs a PRNG key (key=...)")
    return key


class ApVariant(NamedTuple):
    """One AP variant: its score function ``(params, params_ref, key) -> scores`` and the
    candidate weights it draws from (named in the short-supply warning)."""

    score: Callable[[PyTree, PyTree, jax.Array | None], PyTree]
    pool: str


AP_VARIANTS: dict[str, ApVariant] = {
    "ap": ApVariant(lambda p, r, key: ap_scores(p, r), "negative"),
    "negative_magnitude": ApVariant(lambda p, r, key: _only(_negative, scores.magnitude(p), p), "negative"),
    "negative_random": ApVariant(
        lambda p, r, key: _only(_negative, scores.random(_need_key(key), p), p), "negative"),
    "change_all_signs": ApVariant(lambda p, r, key: scores.weight_change(p, r), "prunable"),
    "positive_change": ApVariant(lambda p, r, key: _only(_positive, scores.weight_change(p, r), p), "positive"),
}


def check_variant(variant: str) -> None:
    """Raise ``ValueError`` unless ``variant`` names an entry of ``AP_VARIANTS``."""
    if variant not in AP_VARIANTS:
        raise ValueError(f"AP variant must be one of {tuple(AP_VARIANTS)}, got {variant!r}")


def variant_scores(variant: str, params: PyTree, params_ref: PyTree, key: jax.Array | None = None) -> PyTree:
    """The AP scores of ``variant`` (see the module doc): low is pruned first, +inf never by AP.

    ``key`` is used by ``"negative_random"`` only (uniform draws, ``scores.random``).
    """
    check_variant(variant)
    return AP_VARIANTS[variant].score(params, params_ref, key)


def _check_rates(rate: Any, ap_rate: Any) -> None:
    prune.check_fraction(rate, "rate")
    prune.check_fraction(ap_rate, "ap_rate")
    if prune.is_concrete(rate) and prune.is_concrete(ap_rate) and float(ap_rate) > float(rate):
        raise ValueError(f"ap_rate ({float(ap_rate)}) must not exceed rate ({float(rate)})")


def _warn_if_short(before: PyTree, after: PyTree, requested: Any, scope: str, pool: str) -> None:
    """Eagerly warn when AP found fewer alive candidate (``pool``) weights than its budget."""
    taken = np.asarray(prune.alive_counts(before, scope)) - np.asarray(prune.alive_counts(after, scope))
    wanted = np.asarray(requested)
    if np.any(taken < wanted):
        warnings.warn(
            f"AP budget {wanted.sum()} weights but only {taken.sum()} alive {pool} weights were "
            "available; pruned those",
            stacklevel=3,
        )


class PruneResult(NamedTuple):
    """One X-then-AP prune: the mask after X's share, the final mask, and AP's budget (its
    requested count, summed over leaves when layer-wise)."""

    after_x: PyTree
    mask: PyTree
    ap_budget: Any


def ap_prune(
    mask: PyTree,
    params: PyTree,
    params_ref: PyTree,
    rate: Any = 0.2,
    ap_rate: Any = 0.02,
    base_scores: PyTree | None = None,
    scope: str = "global",
    variant: str = "ap",
    key: jax.Array | None = None,
) -> PyTree:
    """One X-then-AP pruning step (Algorithm 2 with Algorithm 1 as the AP metric).

    With N the alive prunable count before the step (per leaf when ``scope="layerwise"``), first
    remove ``round((rate - ap_rate) * N)`` weights by ``base_scores`` (``|params|`` when None), then
    ``round(ap_rate * N)`` more among the still-alive negative weights with the smallest
    ``|params - params_ref|``. With fewer alive negatives than that, all of them go and a warning
    is emitted (eager calls only). ``rate`` and ``ap_rate`` may be traced scalars.

    ``variant`` (static under ``jit``) swaps AP's score for an ablation or substitution from
    ``AP_VARIANTS``; ``key`` is the PRNG key ``"negative_random"`` needs.
    ``ap_prune_result`` gives the same step with what X and AP each took.
    """
    return ap_prune_result(mask, params, params_ref, rate, ap_rate, base_scores, scope, variant, key).mask


def ap_prune_result(
    mask: PyTree,
    params: PyTree,
    params_ref: PyTree,
    rate: Any = 0.2,
    ap_rate: Any = 0.02,
    base_scores: PyTree | None = None,
    scope: str = "global",
    variant: str = "ap",
    key: jax.Array | None = None,
) -> PruneResult:
    """``ap_prune`` returning a ``PruneResult``: X's mask, the final mask and AP's budget."""
    _check_rates(rate, ap_rate)
    check_variant(variant)
    masks.check_match(params, mask)
    masks.check_match(params_ref, mask)
    if base_scores is None:
        base_scores = scores.magnitude(params)
    alive = prune.alive_counts(mask, scope)
    base_rate = jnp.asarray(rate - ap_rate, jnp.float32)
    if scope == "global":
        base_count, ap_count = prune.budget(alive, base_rate), prune.budget(alive, ap_rate)
    else:
        base_count = [prune.budget(a, base_rate) for a in alive]
        ap_count = [prune.budget(a, ap_rate) for a in alive]
    after_base = prune.prune_count(mask, base_scores, base_count, scope)
    after_ap = prune.prune_count(
        after_base, variant_scores(variant, params, params_ref, key), ap_count, scope, spare_inf=True
    )
    if all(prune.is_concrete(leaf) for leaf in jax.tree_util.tree_leaves(after_ap)):
        _warn_if_short(after_base, after_ap, ap_count, scope, AP_VARIANTS[variant].pool)
    return PruneResult(after_base, after_ap, sum(ap_count) if scope != "global" else ap_count)


def prune_record(before: PyTree, result: PruneResult) -> dict[str, Any]:
    """What one prune did, for a run's records: weights X took, AP's budget, weights AP took, the
    shortfall (budget not met for want of candidates) and AP's picks per prunable leaf.

    ``before`` and ``result``'s masks are counted by their prunable (``ndim >= 2``) leaves: pass
    ``official.scales_as_kernels`` views of all three to count BatchNorm scales too.
    """
    def alive(mask: PyTree) -> dict[str, int]:
        return {name: int(np.sum(leaf)) for name, leaf in masks.prunable_leaves(mask)}

    start, after_x, end = alive(before), alive(result.after_x), alive(result.mask)
    ap_per_layer = {name: after_x[name] - end[name] for name in start}
    budget, taken = int(np.asarray(result.ap_budget)), sum(ap_per_layer.values())
    return {"x_pruned": sum(start.values()) - sum(after_x.values()), "ap_budget": budget,
            "ap_pruned": taken, "ap_shortfall": max(budget - taken, 0), "ap_pruned_per_layer": ap_per_layer}
