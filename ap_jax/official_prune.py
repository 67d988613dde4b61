"""The official AP code's prune (``resnet_20.py:297-390``): what it counts as prunable, its
threshold rules and its pool, and the paper's exact-count prune with the prunable set widened the
same way.

The official code prunes every tensor PyTorch names ``weight``: conv and dense kernels and
BatchNorm scales. ``scales_as_kernels`` views each scale as a ``(C, 1)`` kernel, so the
``ndim >= 2`` rule of ``ap_jax.masks`` and ``ap_jax.prune`` counts it, and ``restore_shapes``
undoes the view. ``ap_jax.official`` picks among these for a run's config; ``docs/official.md``
maps each rule to its lines of the official code.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ap_jax import ap, masks

PyTree = Any
WEIGHT_NAMES = ("kernel", "scale")  # the Flax leaves PyTorch names ``weight``


def pytorch_weights(params: PyTree) -> PyTree:
    """One Python bool per leaf: True where PyTorch would name the tensor ``weight`` (Flax
    ``kernel`` and ``scale``), the tensors the official AP code masks and freezes by value."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: masks.leaf_key(path) in WEIGHT_NAMES, params)


def scales_as_kernels(tree: PyTree) -> PyTree:
    """``tree`` with every leaf named ``scale`` (BatchNorm/LayerNorm gamma) reshaped to ``(C, 1)``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.reshape(leaf, (-1, 1)) if masks.leaf_key(path) == "scale" else leaf, tree)


def restore_shapes(tree: PyTree, like: PyTree) -> PyTree:
    """``tree``'s leaves reshaped to the shapes of ``like``'s (undoes ``scales_as_kernels``)."""
    return jax.tree_util.tree_map(lambda leaf, ref: jnp.reshape(leaf, jnp.shape(ref)), tree, like)


def ap_prune_with_scales(mask: PyTree, params: PyTree, params_ref: PyTree, rate: Any = 0.2, ap_rate: Any = 0.02,
                         base_scores: PyTree | None = None, **options: Any) -> ap.PruneResult:
    """``ap.ap_prune_result`` (``options``: ``scope``, ``variant``, ``key``) with BatchNorm scales
    prunable too, the official code's prunable set (``mask_bn_scale``): the paper's exact counts
    over kernels and scales, the masks in params' shapes."""
    view = scales_as_kernels
    base = None if base_scores is None else view(base_scores)
    result = ap.ap_prune_result(view(mask), view(params), view(params_ref), rate, ap_rate, base, **options)
    return ap.PruneResult(restore_shapes(result.after_x, mask), restore_shapes(result.mask, mask), result.ap_budget)


def prunable_flags(params: PyTree, mask_bn_scale: bool) -> list[bool]:
    """Per leaf (tree-flatten order): prunable, i.e. a kernel (``ndim >= 2``) or, with
    ``mask_bn_scale``, a BatchNorm scale."""
    return [jnp.ndim(leaf) >= 2 or (mask_bn_scale and masks.leaf_key(path) == "scale")
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)]


def pool_sources(params: PyTree, prunable: list[bool], duplicated: bool) -> list[int]:
    """Leaf indices whose alive values make up the official pool, in walk order.

    The walk is PyTorch's ``named_parameters`` order as mapped in the module doc: each prunable
    leaf adds its values; with ``duplicated`` every other leaf adds the last prunable leaf's
    values again (the code's ``hstack`` bug; nothing before the first prunable leaf).
    """
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    first_seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        first_seen.setdefault(masks.module_name(path), i)
    walk = sorted(range(len(paths)),
                  key=lambda i: (first_seen[masks.module_name(paths[i])], masks.leaf_key(paths[i]) not in WEIGHT_NAMES))
    sources, last = [], None
    for i in walk:
        if prunable[i]:
            sources.append(i)
            last = i
        elif duplicated and last is not None:
            sources.append(last)
    return sources


def _pool(values: list[np.ndarray], alive: list[np.ndarray], sources: list[int]) -> np.ndarray:
    """The flat pool: ``values[i][alive[i]]`` for each ``i`` in ``sources``."""
    return np.concatenate([values[i][alive[i]] for i in sources] or [np.zeros(0, np.float32)])


def _percent(rate: float, ap_rate: float) -> float:
    """X's percentile ``100 (rate - ap_rate)``, rounded to undo binary fractions (0.2 - 0.02)."""
    return round(100.0 * (float(rate) - float(ap_rate)), 9)


def threshold_prune(
    mask: PyTree,
    params: PyTree,
    params_ref: PyTree,
    rate: float = 0.2,
    ap_rate: float = 0.02,
    mask_bn_scale: bool = True,
    duplicated_pool: bool = True,
    variant: str = "ap",
    key: jax.Array | None = None,
) -> ap.PruneResult:
    """One X-then-AP step by the official code's threshold rules (see docs/official.md).

    X: ``t = np.percentile(|pool|, 100 (rate - ap_rate))`` over the alive prunable weights, prune
    ``|w| < t``. AP (skipped when ``ap_rate == 0``): ``k = int(len(pool) * ap_rate)`` from X's
    pool, ``tau = sort(scores of the alive candidates, pool-weighted)[k]``, prune the alive
    candidates with ``score <= tau``. Scores are ``ap.variant_scores(variant, ...)``. Returns the
    masks after X and after AP, and AP's budget, the code's k (it takes k + 1).
    """
    ap.check_variant(variant)
    masks.check_match(params, mask)
    masks.check_match(params_ref, mask)
    prunable = prunable_flags(params, mask_bn_scale)
    sources = pool_sources(params, prunable, duplicated_pool)
    if not sources:
        raise ValueError("no prunable leaves (kernels, or scales with mask_bn_scale) to prune")
    leaves, treedef = jax.tree_util.tree_flatten(mask)
    alive = [np.asarray(m) for m in leaves]
    w = [np.asarray(p) for p in jax.tree_util.tree_leaves(params)]
    magnitude = [np.abs(x) for x in w]
    alive = [a & (x != 0) if p else a for a, x, p in zip(alive, w, prunable)]
    pool = _pool(magnitude, alive, sources)
    if pool.size == 0:
        raise ValueError("no alive prunable weights left to prune")
    threshold = np.percentile(pool, _percent(rate, ap_rate))
    after_x = [a & ~(m < threshold) if p else a for a, m, p in zip(alive, magnitude, prunable)]
    if float(ap_rate) <= 0:
        return ap.PruneResult(_unflatten(treedef, after_x), _unflatten(treedef, after_x), 0)
    k = int(pool.size * float(ap_rate))
    score = [np.asarray(s) for s in jax.tree_util.tree_leaves(ap.variant_scores(variant, params, params_ref, key))]
    kept = _ap_threshold(after_x, score, prunable, sources, k)
    return ap.PruneResult(_unflatten(treedef, after_x), _unflatten(treedef, kept), k)


def _ap_threshold(alive: list[np.ndarray], score: list[np.ndarray], prunable: list[bool], sources: list[int],
                  k: int) -> list[np.ndarray]:
    """``alive`` less the official AP's picks: the alive candidates (finite ``score``) with
    ``score <= sort(candidate pool)[k]``, all of them (with a warning) when the pool is too short."""
    candidate = [a & np.isfinite(s) if p else np.zeros_like(a) for a, s, p in zip(alive, score, prunable)]
    ranked = np.sort(_pool(score, candidate, sources))
    if k >= ranked.size:
        warnings.warn(f"AP needs {k + 1} candidate weights (official rule) but the pool holds "
                      f"{ranked.size}; pruned all of them", stacklevel=3)
    tau = ranked[k] if k < ranked.size else np.inf
    return [a & ~(c & (s <= tau)) for a, c, s in zip(alive, candidate, score)]


def _unflatten(treedef: Any, leaves: list[np.ndarray]) -> PyTree:
    """A mask of ``treedef``'s structure from numpy leaves."""
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in leaves])
