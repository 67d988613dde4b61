"""Dead-neuron counting for Flax NNX models: a ReLU that sows the counts of ``stats.ReLU``.

Put ``nnx_stats.ReLU()`` where the model applies ``nnx.relu``. It sows nothing unless its
``counting`` attribute is on, so a training step pays nothing; :func:`relu_counts` turns counting
on for one call, collects the sown :class:`ReluCounts` with ``nnx.capture`` and gives the nested
dict (ReLU path -> site counts) that ``stats.dead_neuron_rate`` reads, exactly as the Linen
``stats.relu_counts`` does. To count inside your own jitted step instead, build the ReLUs with
``counting=True`` and call the model through ``nnx.capture(model, nnx_stats.ReluCounts)``.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from ap_jax import stats


class ReluCounts(nnx.Intermediate):
    """The variable type of the sown ReLU counts (int32 sums, see ``stats``)."""


def _add(a: jax.Array, b: jax.Array) -> jax.Array:
    return a + b


def _zero() -> int:
    return 0


class ReLU(nnx.Module):
    """``max(x, 0)`` that, with ``counting`` on, sows ``stats.activation_counts`` of its output."""

    def __init__(self, counting: bool = False):
        self.counting = counting

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(x)
        if self.counting:
            for name, count in stats.activation_counts(y).items():
                self.sow(ReluCounts, name, count, reduce_fn=_add, init_fn=_zero)
        return y


def relu_counts(model: nnx.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``model(*args, **kwargs)``'s ReLU counts, as a nested dict keyed by each ReLU's attribute path.

    Counting is on for this call only (each ReLU's ``counting`` is restored afterwards); put the
    model in eval mode first (``model.eval()``) to count with BatchNorm's running statistics.
    """
    sites = [module for _, module in nnx.iter_modules(model) if isinstance(module, ReLU)]
    before = [site.counting for site in sites]
    for site in sites:
        site.counting = True
    try:
        _, counts = nnx.capture(model, ReluCounts)(*args, **kwargs)
    finally:
        for site, flag in zip(sites, before):
            site.counting = flag
    return nnx.to_pure_dict(counts)
