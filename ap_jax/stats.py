"""Dead-neuron statistics: a ReLU that sows integer counts, and the dead neuron rate (DNR).

The DNR is the share of ReLU outputs that are exactly zero, summed over every example, every
unit (channel x position) and every ReLU site. Its per-channel variant counts a channel as dead
for an example when the channel's whole feature map is zero (for a dense layer, a unit is its
own map, so the two agree). Counts are sufficient statistics: each ReLU sows

* ``zeros`` (int32, one per channel): zero outputs of that channel over the batch and positions;
* ``positions`` (int32 scalar): outputs *per channel*, batch x spatial positions (a site's
  outputs are ``positions`` times its channels);
* ``dead_maps`` (int32, one per channel): examples whose map of that channel is all zero;
* ``examples`` (int32 scalar): the batch size.

Counts from several batches or several devices add up exactly; totals are formed on the host in
int64.

Sowing only happens when the ``relu_stats`` collection is mutable, so a training step that does
not ask for it pays nothing.

Across devices the counts are a data-parallel reduction: each device counts zeros and outputs
on its shard of the batch and the partial counts are summed with ``jax.lax.psum``
(:func:`psum_counts`). :func:`sharded_relu_counts` does this in ``jax.shard_map`` over a
``('data',)`` mesh (what current JAX builds ``pmap`` on); :func:`pmap_relu_counts` is the same
reduction written with ``jax.pmap`` for code that still uses it. Both equal :func:`relu_counts`
on the whole batch exactly, for models whose outputs do not mix examples (BatchNorm in eval
mode): in train mode a device would normalise with its shard's moments.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from ap_jax.parallel import check_split

COLLECTION = "relu_stats"


def _add(a: jax.Array, b: jax.Array) -> jax.Array:
    return a + b


def _zero() -> int:
    return 0


class ReLU(nn.Module):
    """``max(x, 0)`` that sows per-channel zero counts into the ``relu_stats`` collection.

    ``applied=True``: the layer before already applied the ReLU (``ap_jax.batchnorm`` fuses it
    into BatchNorm), so ``x`` passes through unchanged and is only counted.
    """

    applied: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = x if self.applied else nn.relu(x)
        if self.is_mutable_collection(COLLECTION):
            for name, count in activation_counts(y).items():
                self.sow(COLLECTION, name, count, init_fn=_zero, reduce_fn=_add)
        return y


EXACT_FLOAT_COUNT = 2**24  # every integer up to 2**24 is a float32


def positions_per_channel(shape: tuple[int, ...]) -> int:
    """Outputs per channel of a channels-last activation: batch times spatial positions."""
    return int(np.prod(shape[:-1]))


def count_zeros(y: jax.Array) -> jax.Array:
    """Zeros of ``y`` per channel (last axis), summed over every other axis, as exact int32.

    Below 2**24 outputs per channel the sum runs in float32: every partial sum is an integer
    under 2**24, so it is exact in any order, and XLA:CPU hands it to YNNPACK's reduction. An
    int32 sum there becomes a two-stage reduce-window about 2.6x slower (counting took about 9 %
    of a ResNet-20 step on CPU that way; ``benchmarks/profile_step.py`` shows the ops). Larger
    counts sum in int32.
    """
    axes = tuple(range(y.ndim - 1))
    if positions_per_channel(y.shape) < EXACT_FLOAT_COUNT:
        return jnp.sum((y == 0).astype(jnp.float32), axis=axes).astype(jnp.int32)
    return jnp.sum(y == 0, axis=axes, dtype=jnp.int32)


def count_dead_maps(y: jax.Array) -> jax.Array:
    """Examples whose feature map of a channel (last axis) is all zero, per channel, as int32."""
    return jnp.sum(jnp.all(y == 0, axis=tuple(range(1, y.ndim - 1))), axis=0, dtype=jnp.int32)


def activation_counts(y: jax.Array) -> dict[str, jax.Array]:
    """The counts one ReLU site sows, from its channels-last output ``y``: ``zeros``,
    ``positions``, ``dead_maps`` and ``examples`` (see the module doc), as int32.

    For any model: ``dead_neuron_rate({"relu1": activation_counts(y1), ...})``.
    """
    return {
        "zeros": count_zeros(y),
        "positions": jnp.asarray(positions_per_channel(y.shape), jnp.int32),
        "dead_maps": count_dead_maps(y),
        "examples": jnp.asarray(y.shape[0], jnp.int32),
    }


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


def pack_counts(counts: Any) -> jax.Array:
    """Every count of a count pytree in one int32 vector (leaves in tree order, each flattened).

    A jitted step that returns one array instead of two per ReLU site saves an output buffer per
    leaf, which on a GPU costs more than counting itself. :func:`unpack_counts` inverts it.
    """
    return jnp.concatenate([jnp.ravel(leaf).astype(jnp.int32) for leaf in jax.tree_util.tree_leaves(counts)])


def unpack_counts(packed: Any, like: Any) -> Any:
    """The count pytree of a :func:`pack_counts` vector, as host int32 arrays.

    ``like`` has the counts' structure and shapes: any count pytree of the same model, or
    ``jax.eval_shape`` of :func:`relu_counts`.
    """
    leaves, treedef = jax.tree_util.tree_flatten(like)
    sizes = [int(np.prod(leaf.shape)) for leaf in leaves]
    packed = np.asarray(jax.device_get(packed))
    if packed.shape != (sum(sizes),):
        raise ValueError(f"packed counts of shape {packed.shape} do not match a layout of {sum(sizes)} counts")
    parts = np.split(packed, np.cumsum(sizes)[:-1])
    return treedef.unflatten([part.reshape(leaf.shape) for part, leaf in zip(parts, leaves)])


def psum_counts(counts: Any, axis_name: str = "data") -> Any:
    """Sum per-device partial counts over ``axis_name``; call inside ``shard_map`` or ``pmap``."""
    return jax.lax.psum(counts, axis_name)


def sharded_relu_counts(model: nn.Module, variables: Mapping[str, Any], x: jax.Array, mesh: Mesh,
                        axis_name: str = "data", **apply_kwargs) -> dict[str, Any]:
    """:func:`relu_counts` of ``x`` split over ``mesh``'s ``axis_name``, psum'd in ``jax.shard_map``.

    ``variables`` are replicated; each device counts its ``x.shape[0] / n`` examples in int32 and
    the partial counts are summed across devices, so every device ends with the whole batch's
    counts. Jittable; ``x.shape[0]`` must divide by the axis size.
    """
    check_split(x.shape[0], mesh.shape[axis_name])

    def local(v, shard):
        return psum_counts(relu_counts(model, v, shard, **apply_kwargs), axis_name)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis_name)), out_specs=P())(variables, x)


@functools.lru_cache(maxsize=16)
def _pmapped(model: nn.Module, axis_name: str, devices: tuple | None, kwargs: tuple):
    def local(v, shard):
        return psum_counts(relu_counts(model, v, shard, **dict(kwargs)), axis_name)

    return jax.pmap(local, axis_name=axis_name, in_axes=(None, 0), devices=devices)


def pmap_relu_counts(model: nn.Module, variables: Mapping[str, Any], x: jax.Array, axis_name: str = "data",
                     devices: Sequence[jax.Device] | None = None, **apply_kwargs) -> dict[str, Any]:
    """The same reduction as :func:`sharded_relu_counts`, written with ``jax.pmap``.

    ``x`` is split into equal leading chunks, one per local device (or per entry of
    ``devices``); the psum'd counts come back once, not once per device. Apply keywords must be
    hashable (the pmapped function is cached per model and keywords).
    """
    n = len(devices) if devices is not None else jax.local_device_count()
    check_split(x.shape[0], n)
    counted = _pmapped(model, axis_name, None if devices is None else tuple(devices),
                       tuple(sorted(apply_kwargs.items())))
    out = counted(variables, jnp.reshape(x, (n, x.shape[0] // n, *x.shape[1:])))
    return jax.tree_util.tree_map(lambda a: a[0], out)


def _sites(counts: Mapping[str, Any], prefix: str = ""):
    """Yield ``(path, site counts)`` for every ReLU site in a nested count dict."""
    if "zeros" in counts and "positions" in counts:
        yield prefix, counts
        return
    for name, sub in counts.items():
        yield from _sites(sub, f"{prefix}/{name}" if prefix else str(name))


def _rates(counts: Mapping[str, Any], dead: str, per_channel: str) -> tuple[float, dict[str, float]]:
    """Overall and per-site share of ``dead`` counts among ``per_channel`` x channels (int64)."""
    per_layer, total_dead, total = {}, 0, 0
    for path, site in _sites(counts):
        hits = np.asarray(jax.device_get(site[dead]), dtype=np.int64)
        outputs = int(np.asarray(jax.device_get(site[per_channel]), dtype=np.int64)) * hits.size
        per_layer[path] = float(hits.sum()) / outputs if outputs else 0.0
        total_dead += int(hits.sum())
        total += outputs
    if not per_layer:
        raise ValueError("no ReLU counts found: the model has no ap_jax.stats.ReLU sites")
    return total_dead / total, per_layer


def dead_neuron_rate(counts: Mapping[str, Any]) -> dict[str, Any]:
    """DNR from counts (host, int64 sums): ``overall`` and ``per_layer`` (relu path -> share) over
    units, and ``overall_channel`` and ``per_layer_channel`` over whole feature maps."""
    overall, per_layer = _rates(counts, "zeros", "positions")
    overall_channel, per_layer_channel = _rates(counts, "dead_maps", "examples")
    return {"overall": overall, "per_layer": per_layer,
            "overall_channel": overall_channel, "per_layer_channel": per_layer_channel}
