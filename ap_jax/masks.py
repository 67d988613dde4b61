"""Pruning masks: bool pytrees that mirror params, kept beside them (never inside optimizer state).

Every leaf of a mask is a full-shape bool array. Prunable leaves are the conv and dense kernels
(``ndim >= 2``); every other leaf (biases, BatchNorm scales and offsets) is all True and stays so.
All functions are pure and jittable.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def prunable(params: PyTree) -> PyTree:
    """One Python bool per leaf: True for conv and dense kernels (``ndim >= 2``)."""
    return jax.tree_util.tree_map(lambda leaf: jnp.ndim(leaf) >= 2, params)


def init(params: PyTree) -> PyTree:
    """An all-True mask with the structure and shapes of ``params``."""
    return jax.tree_util.tree_map(lambda leaf: jnp.ones(jnp.shape(leaf), dtype=bool), params)


def check_match(params: PyTree, mask: PyTree) -> None:
    """Raise ``ValueError`` unless ``mask`` has the tree structure and leaf shapes of ``params``."""
    p_def, m_def = jax.tree_util.tree_structure(params), jax.tree_util.tree_structure(mask)
    if p_def != m_def:
        raise ValueError(f"params and mask trees do not match: params {p_def} vs mask {m_def}")
    for (path, p), m in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(mask)):
        if jnp.shape(p) != jnp.shape(m):
            raise ValueError(
                f"mask leaf {leaf_name(path)!r} has shape {jnp.shape(m)}, params {jnp.shape(p)}"
            )


def apply(params: PyTree, mask: PyTree) -> PyTree:
    """``params`` with pruned entries set to exactly 0 (other entries untouched)."""
    check_match(params, mask)
    return jax.tree_util.tree_map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def path_keys(path: tuple) -> tuple[str, ...]:
    """The keys of a tree path as strings, without the ``value`` attribute that wraps each leaf of
    a Flax NNX ``State`` (an ``nnx.Param``), so NNX and Linen params name a leaf alike.

    Every name-based rule (``leaf_name``, and the official code's prunable set, pool and init)
    reads paths through this one function.
    """
    keys = [str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))) for entry in path]
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        keys.pop()
    return tuple(keys)


def leaf_name(path: tuple) -> str:
    """The ``/``-joined dict keys of a tree path, e.g. ``"Block_0/Conv_1/kernel"`` (also for the
    ``Block_0/Conv_1/kernel/value`` path of an NNX ``State``)."""
    return "/".join(path_keys(path))


def leaf_key(path: tuple) -> str:
    """The last key of a tree path (``kernel``, ``scale``, ``bias``, ...), as ``path_keys`` reads it."""
    keys = path_keys(path)
    return keys[-1] if keys else ""


def module_name(path: tuple) -> str:
    """The ``/``-joined path of the module that owns a leaf (its ``leaf_name`` less the last key)."""
    return "/".join(path_keys(path)[:-1])


def prunable_leaves(tree: PyTree) -> list[tuple[str, jax.Array]]:
    """``(name, leaf)`` for every prunable leaf, in tree-flatten order; ``ValueError`` if none."""
    leaves = [
        (leaf_name(path), leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if jnp.ndim(leaf) >= 2
    ]
    if not leaves:
        shapes = [jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
        raise ValueError(f"no prunable leaves (ndim >= 2) in a tree with leaf shapes {shapes}")
    return leaves


def alive_count(mask: PyTree) -> jax.Array:
    """Number of alive (True) prunable weights, as an int32 scalar."""
    return sum(jnp.sum(m, dtype=jnp.int32) for _, m in prunable_leaves(mask))


def sparsity(mask: PyTree) -> jax.Array:
    """Pruned share of the prunable weights, in [0, 1]."""
    leaves = prunable_leaves(mask)
    total = sum(m.size for _, m in leaves)
    return 1.0 - alive_count(mask) / total


def remaining(mask: PyTree) -> jax.Array:
    """Alive share of the prunable weights, ``1 - sparsity(mask)``."""
    return 1.0 - sparsity(mask)


def layer_sparsity(mask: PyTree) -> dict[str, jax.Array]:
    """``{"path/to/kernel": pruned share}`` for every prunable leaf."""
    return {name: 1.0 - jnp.mean(m.astype(jnp.float32)) for name, m in prunable_leaves(mask)}
