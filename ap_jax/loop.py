"""AP in your own training loop: an optax wrapper that keeps pruned weights at exactly 0, and the
X+AP prune at a cycle's end.

The mask is an argument of every update, never part of the optimizer state (jaxpruner's
``wrap_optax`` freezes it there), so one optimizer serves every cycle while the mask shrinks::

    tx = loop.keep_pruned_zero(optax.sgd(0.1, momentum=0.9))
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params, mask=mask)
    params = optax.apply_updates(params, updates)      # pruned entries exactly 0
    ...                                                 # at the cycle's end:
    mask = loop.prune_cycle(mask, params, cycle_start, rate=0.2, ap_rate=0.02)

Flax NNX: ``nnx.Optimizer(model, tx, wrt=nnx.Param).update(model, grads, mask=mask)`` passes the
mask through (a mask built from ``nnx.state(model, nnx.Param)``). Linen and NNX params work alike
everywhere in ``ap_jax``: ``masks.path_keys`` reads both paths the same way.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ap_jax import ap, masks

PyTree = Any


def _landing_on_zero(updates: PyTree, params: PyTree, mask: PyTree) -> PyTree:
    """``updates`` where ``mask`` is True, ``-params`` where it is False (``p + -p`` is exactly 0)."""
    return jax.tree_util.tree_map(lambda u, p, m: jnp.where(m, u, -p), updates, params, mask)


def keep_pruned_zero(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner`` made mask-aware: ``update(grads, state, params, mask=mask)``.

    ``inner`` sees the gradients and params with pruned entries at 0 (so weight decay, momenta and
    second moments of pruned weights stay 0), and the update of every pruned entry is ``-params``, so
    after ``optax.apply_updates`` each pruned weight is exactly 0, whatever weight decay,
    momentum or the weight's value before the step. ``mask`` (bool, params' structure) may change
    from one call to the next; other keywords go to ``inner`` when it takes extra args.
    """
    inner = optax.with_extra_args_support(inner)

    def update(grads: PyTree, state: optax.OptState, params: PyTree | None = None, *,
               mask: PyTree | None = None, **extra: Any) -> tuple[PyTree, optax.OptState]:
        if params is None or mask is None:
            raise ValueError("keep_pruned_zero needs params and mask: tx.update(grads, state, params, mask=mask)")
        updates, state = inner.update(masks.apply(grads, mask), state, masks.apply(params, mask), **extra)
        return _landing_on_zero(updates, params, mask), state

    return optax.GradientTransformationExtraArgs(inner.init, update)


def prune_cycle(mask: PyTree, params: PyTree, cycle_start: PyTree, rate: float = 0.2,
                ap_rate: float = 0.02, **ap_prune_kwargs: Any) -> PyTree:
    """The mask after one X+AP prune at a cycle's end (``ap.ap_prune``; ``ap_rate=0`` is X alone).

    ``params`` are the trained weights, ``cycle_start`` the weights this cycle's training started
    from (after any rewind); X is magnitude pruning unless ``base_scores`` is given. Keywords
    (``scope``, ``variant``, ``key``, ``base_scores``) go to ``ap.ap_prune``.
    """
    return ap.ap_prune(mask, params, cycle_start, rate, ap_rate, **ap_prune_kwargs)
