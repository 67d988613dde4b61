"""Exact-count pruning: remove the alive prunable weights with the lowest scores.

``prune`` removes exactly ``round(fraction * alive)`` weights (``round`` half to even, computed in
float32 from an int32 alive count so a traced fraction works under ``jit``). The order is a
three-key sort, so it is exact and deterministic with no threshold ties:

1. alive weights with a score other than +inf, lowest score first;
2. alive weights with a +inf score (taken only when no finite score is left);
3. pruned weights, never taken (a pruned weight is never revived).

Equal scores go to the lower flat index (leaves in tree-flatten order, row-major inside a leaf).
Unlike a ``score <= threshold`` rule (the official AP code, OpenLTH) this never prunes k+1.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ap_jax import masks

PyTree = Any
SCOPES = ("global", "layerwise")


def is_concrete(x: Any) -> bool:
    """True unless ``x`` is a tracer (inside ``jit``), i.e. its value can be checked eagerly."""
    return not isinstance(x, jax.core.Tracer)


def check_fraction(fraction: Any, name: str = "fraction") -> None:
    """Raise ``ValueError`` naming the value unless a concrete ``fraction`` lies in [0, 1)."""
    if is_concrete(fraction):
        value = float(np.asarray(fraction))
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def check_scope(scope: str) -> None:
    """Raise ``ValueError`` unless ``scope`` is "global" or "layerwise"."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def _check_fixed_leaves(mask: PyTree) -> None:
    """Non-prunable mask leaves must be all True (checked when the mask is concrete)."""
    for path, m in jax.tree_util.tree_leaves_with_path(mask):
        if jnp.ndim(m) < 2 and is_concrete(m) and not bool(np.all(np.asarray(m))):
            raise ValueError(
                f"mask leaf {masks.leaf_name(path)!r} is not prunable (ndim < 2) but has False entries"
            )


def alive_counts(mask: PyTree, scope: str = "global") -> jax.Array | list[jax.Array]:
    """Alive prunable weights: an int32 scalar (global) or one per prunable leaf (layerwise)."""
    check_scope(scope)
    if scope == "global":
        return masks.alive_count(mask)
    return [jnp.sum(m, dtype=jnp.int32) for _, m in masks.prunable_leaves(mask)]


def budget(alive: jax.Array, fraction: Any) -> jax.Array:
    """``round(fraction * alive)`` as int32: float32 product, rounded once, half to even."""
    product = jnp.asarray(fraction, jnp.float32) * jnp.asarray(alive).astype(jnp.float32)
    return jnp.round(product).astype(jnp.int32)


def _keep_after_pruning_lowest(
    alive: jax.Array, score: jax.Array, count: jax.Array, spare_inf: bool
) -> jax.Array:
    """Flat bool: ``alive`` minus the ``count`` lowest-ranked alive entries (see module doc)."""
    is_inf = score == jnp.inf
    finite_alive = alive & ~is_inf
    rank_class = jnp.where(alive, jnp.where(is_inf, 1, 0), 2).astype(jnp.int32)
    sort_score = jnp.where(finite_alive, score, jnp.zeros_like(score))
    index = jnp.arange(alive.size, dtype=jnp.int32)
    _, _, order = jax.lax.sort((rank_class, sort_score, index), num_keys=3)
    limit = jnp.sum(finite_alive if spare_inf else alive, dtype=jnp.int32)
    count = jnp.clip(jnp.asarray(count, jnp.int32), 0, limit)
    taken = jnp.zeros(alive.size, bool).at[order].set(index < count)
    return alive & ~taken


def prune_count(
    mask: PyTree,
    scores: PyTree,
    count: Any,
    scope: str = "global",
    spare_inf: bool = False,
) -> PyTree:
    """Remove exactly ``count`` alive prunable weights with the lowest ``scores``.

    ``count`` is a scalar for ``scope="global"`` and a sequence with one count per prunable leaf
    (tree-flatten order) for ``"layerwise"``. Counts above the alive total are clipped. With
    ``spare_inf=True`` a +inf score is never taken, so fewer than ``count`` may go.
    """
    check_scope(scope)
    masks.check_match(mask, scores)
    masks.prunable_leaves(mask)
    _check_fixed_leaves(mask)
    leaves, treedef = jax.tree_util.tree_flatten(mask)
    score_leaves = jax.tree_util.tree_leaves(scores)
    slots = [i for i, m in enumerate(leaves) if jnp.ndim(m) >= 2]
    new_leaves = list(leaves)
    if scope == "global":
        alive = jnp.concatenate([leaves[i].ravel() for i in slots])
        score = jnp.concatenate([score_leaves[i].ravel() for i in slots])
        keep = _keep_after_pruning_lowest(alive, score, count, spare_inf)
        offsets = np.cumsum([0] + [leaves[i].size for i in slots])
        for j, i in enumerate(slots):
            new_leaves[i] = keep[offsets[j] : offsets[j + 1]].reshape(leaves[i].shape)
    else:
        counts = _per_leaf_counts(count, len(slots))
        for i, c in zip(slots, counts):
            keep = _keep_after_pruning_lowest(leaves[i].ravel(), score_leaves[i].ravel(), c, spare_inf)
            new_leaves[i] = keep.reshape(leaves[i].shape)
    return jax.tree_util.tree_unflatten(treedef, new_leaves)


def _per_leaf_counts(count: Any, num_leaves: int) -> Sequence[Any]:
    if not isinstance(count, (list, tuple)) or len(count) != num_leaves:
        raise ValueError(
            f"layerwise pruning needs one count per prunable leaf ({num_leaves}), got {count!r}"
        )
    return count


def prune(mask: PyTree, scores: PyTree, fraction: Any, scope: str = "global") -> PyTree:
    """Remove ``round(fraction * alive)`` alive prunable weights with the lowest scores.

    Alive is counted over all prunable weights (``"global"``) or per leaf (``"layerwise"``).
    Never revives a weight; non-prunable leaves stay all True; +inf scores are taken only after
    every alive finite score. ``fraction`` may be a traced scalar.
    """
    check_fraction(fraction)
    check_scope(scope)
    alive = alive_counts(mask, scope)
    if scope == "global":
        count = budget(alive, fraction)
    else:
        count = [budget(a, fraction) for a in alive]
    return prune_count(mask, scores, count, scope)
