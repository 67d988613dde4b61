"""Dead-neuron statistics: a ReLU that sows integer counts, and the dead neuron rate (DNR).

The DNR is the share of ReLU outputs that are exactly zero, summed over every example, every
unit (channel x position) and every ReLU site. Counts are sufficient statistics: each ReLU sows
``zeros`` (int32, one per channel: zero outputs of that channel over the batch and positions)
and ``positions`` (int32 scalar: outputs per channel, i.e. batch x spatial positions). Counts from
several batches or several devices add up exactly; totals are formed once on the host in int64.

Sowing only happens when the ``relu_stats`` collection is mutable, so a training step that does
not ask for it pays nothing.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

COLLECTION = "relu_stats"


def _add(a: jax.Array, b: jax.Array) -> jax.Array:
    return a + b


def _zero() -> int:
    return 0


class ReLU(nn.Module):
    """``max(x, 0)`` that sows per-channel zero counts into the ``relu_stats`` collection."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.relu(x)
        if self.is_mutable_collection(COLLECTION):
            batch_axes = tuple(range(x.ndim - 1))
            zeros = jnp.sum(y == 0, axis=batch_axes, dtype=jnp.int32)
            positions = jnp.asarray(int(np.prod(x.shape[:-1])), jnp.int32)
            self.sow(COLLECTION, "zeros", zeros, init_fn=_zero, reduce_fn=_add)
            self.sow(COLLECTION, "positions", positions, init_fn=_zero, reduce_fn=_add)
        return y


def relu_counts(model: nn.Module, variables: Mapping[str, Any], x: jax.Array, **apply_kwargs):
    """Run ``model`` on ``x`` and return the sown ReLU counts as a nested dict.

    Any ``relu_stats`` already in ``variables`` (as ``model.init`` returns them) is ignored, so the
    counts cover exactly this batch. Extra keywords (``train=False``, ...) go to ``model.apply``.
    """
    clean = {k: v for k, v in variables.items() if k != COLLECTION}
    _, state = model.apply(clean, x, mutable=[COLLECTION], **apply_kwargs)
    return jax.tree_util.tree_map(lambda v: v, dict(state.get(COLLECTION, {})))


def add_counts(a, b):
    """Sum two count pytrees of the same structure (batches or devices)."""
    return jax.tree_util.tree_map(jnp.add, a, b)


def _sites(counts: Mapping[str, Any], prefix: str = ""):
    """Yield ``(path, zeros, positions)`` for every ReLU site in a nested count dict."""
    if "zeros" in counts and "positions" in counts:
        yield prefix, counts["zeros"], counts["positions"]
        return
    for name, sub in counts.items():
        yield from _sites(sub, f"{prefix}/{name}" if prefix else str(name))


def dead_neuron_rate(counts: Mapping[str, Any]) -> dict[str, Any]:
    """DNR from counts: ``{"overall": float, "per_layer": {relu path: float}}`` (host, int64 sums)."""
    per_layer, total_zeros, total_outputs = {}, 0, 0
    for path, zeros, positions in _sites(counts):
        zeros = np.asarray(jax.device_get(zeros), dtype=np.int64)
        outputs = int(np.asarray(jax.device_get(positions), dtype=np.int64)) * zeros.size
        per_layer[path] = float(zeros.sum()) / outputs if outputs else 0.0
        total_zeros += int(zeros.sum())
        total_outputs += outputs
    if not per_layer:
        raise ValueError("no ReLU counts found: the model has no ap_jax.stats.ReLU sites")
    return {"overall": total_zeros / total_outputs, "per_layer": per_layer}
