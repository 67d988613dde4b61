"""Official-code parity: the official AP code's behaviour as switches and one preset.

Every behaviour of the authors' released code that changes results and that the paper does not
describe is one ``RunConfig`` field, each ``added`` so that configs leaving it at its default keep
their hash. ``preset(cfg)`` turns them all on, so a run with and one without them attribute any
gap between the paper's numbers and ours::

    from ap_jax import official
    cfg = official.preset(RunConfig(model="mlp", cycles=10, epochs=5), warmup_steps=900)

The switches (``weight_decay``/``decay_all``, ``lr_schedule``, ``reinit``, ``init``,
``mask_bn_scale``, ``prune_rule``, ``duplicated_pool``, ``reapply_mask``), the lines of the
official code each mirrors, the pool's order, how its two training phases map onto our one, and
what is not reproduced and why: ``docs/official.md``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ap_jax import ap, masks

PyTree = Any
INITS = ("model", "xavier")
PRUNE_RULES = ("paper", "official")
WEIGHT_NAMES = ("kernel", "scale")  # the Flax leaves PyTorch names ``weight``

OFFICIAL: dict[str, Any] = {
    "init": "xavier",
    "lr_schedule": "official",
    "lr": 0.1,
    "warmup_steps": 20000,
    "lr_drops": (0.5, 0.64),
    "lr_gamma": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "decay_all": True,
    "mask_bn_scale": True,
    "prune_rule": "official",
    "duplicated_pool": True,
    "reinit": True,
    "reapply_mask": False,
    "method": "lth",
    "scope": "global",
    "rate": 0.2,
    "ap_rate": 0.02,
    "ap_start_cycle": 0,
    "ap_variant": "ap",
    "shortcut": "B",
    "augment": True,
}


def preset(cfg: Any, **overrides: Any) -> Any:
    """``cfg`` (a ``RunConfig``) with every official quirk of ``OFFICIAL`` on, then ``overrides``.

    Scale (model, data, cycles, epochs, batch size, seed) stays as ``cfg`` has it.
    """
    return dataclasses.replace(cfg, **{**OFFICIAL, **overrides})


PruneFunction = Callable[[PyTree, PyTree, PyTree, float, float, jax.Array], "ap.PruneResult"]


def prune_function(cfg: Any) -> PruneFunction:
    """The prune a run's config asks for, ``(mask, trained, cycle_start, rate, ap_rate, key) ->
    ap.PruneResult``: the paper's exact counts, or the official code's threshold rule."""
    if cfg.prune_rule == "official":
        return lambda mask, trained, start, rate, ap_rate, key: threshold_prune(
            mask, trained, start, rate, ap_rate, cfg.mask_bn_scale, cfg.duplicated_pool, cfg.ap_variant, key)
    return lambda mask, trained, start, rate, ap_rate, key: ap.ap_prune_result(
        mask, trained, start, rate=rate, ap_rate=ap_rate, scope=cfg.scope, variant=cfg.ap_variant, key=key,
        mask_bn_scale=cfg.mask_bn_scale)


def xavier_init(params: PyTree, key: jax.Array) -> PyTree:
    """``params`` re-drawn as the official ``weight_init``: Xavier-normal kernels (std
    ``sqrt(2 / (fan_in + fan_out))``), scale ~ N(1, 0.02) and its module's bias = 0 (BatchNorm),
    any other kernel's bias ~ N(0, 1); every other leaf is kept."""
    xavier = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
    with_path = jax.tree_util.tree_leaves_with_path(params)
    keys = jax.random.split(key, len(with_path))
    siblings: dict[str, set[str]] = {}
    for path, _ in with_path:
        siblings.setdefault(masks.module_name(path), set()).add(masks.leaf_key(path))

    def draw(path: tuple, leaf: jax.Array, k: jax.Array) -> jax.Array:
        name, shape, dtype = masks.leaf_key(path), jnp.shape(leaf), jnp.asarray(leaf).dtype
        if name == "kernel" and len(shape) >= 2:
            return xavier(k, shape, dtype)
        if name == "scale":
            return 1.0 + 0.02 * jax.random.normal(k, shape, dtype)
        if name == "bias" and "scale" in siblings[masks.module_name(path)]:
            return jnp.zeros(shape, dtype)
        if name == "bias" and "kernel" in siblings[masks.module_name(path)]:
            return jax.random.normal(k, shape, dtype)
        return leaf

    leaves = [draw(path, leaf, k) for (path, leaf), k in zip(with_path, keys)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)


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
    kept = [a & ~(m < threshold) if p else a for a, m, p in zip(alive, magnitude, prunable)]
    after_x, k = kept, 0
    if float(ap_rate) > 0:
        k = int(pool.size * float(ap_rate))
        scores = ap.variant_scores(variant, params, params_ref, key)
        score = [np.asarray(s) for s in jax.tree_util.tree_leaves(scores)]
        candidate = [a & np.isfinite(s) if p else np.zeros_like(a) for a, s, p in zip(kept, score, prunable)]
        ranked = np.sort(_pool(score, candidate, sources))
        if k >= ranked.size:
            warnings.warn(f"AP needs {k + 1} candidate weights (official rule) but the pool holds "
                          f"{ranked.size}; pruned all of them", stacklevel=2)
        tau = ranked[k] if k < ranked.size else np.inf
        kept = [a & ~(c & (s <= tau)) for a, c, s in zip(kept, candidate, score)]
    return ap.PruneResult(_unflatten(treedef, after_x), _unflatten(treedef, kept), k)


def _unflatten(treedef: Any, leaves: list[np.ndarray]) -> PyTree:
    """A mask of ``treedef``'s structure from numpy leaves."""
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a) for a in leaves])
