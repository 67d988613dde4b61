"""Weight-importance scores: pytrees of floats where LOW means "prune first".

Scores are separate from masks (as in jaxpruner): a pruning method is a score function plus
``ap_jax.prune.prune``. All functions are pure and jittable.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def magnitude(params: PyTree) -> PyTree:
    """``|w|``: classic magnitude pruning (Han et al. 2015; LTH's global IMP)."""
    return jax.tree_util.tree_map(jnp.abs, params)


def random(key: jax.Array, params: PyTree) -> PyTree:
    """Uniform [0, 1) scores, independent per leaf (``fold_in`` of the leaf index): random pruning."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    draws = [
        jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(leaf))
        for i, leaf in enumerate(leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, draws)


def weight_change(params: PyTree, params_ref: PyTree) -> PyTree:
    """``|w - w_ref|``: how far each weight moved from a reference (AP's ranking quantity)."""
    return jax.tree_util.tree_map(lambda w, r: jnp.abs(w - r), params, params_ref)
