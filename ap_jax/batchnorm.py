"""BatchNorm (+ residual add + ReLU) with a hand-written backward pass: fewer passes over activations.

Why: on CPU a train step is bound by memory traffic around the convolutions, and autodiff of
``flax.linen.BatchNorm`` followed by a ReLU reads and writes every activation several times
(centring, normalising, the ReLU mask, the backward reductions each with its own producers). Here
each direction is two per-channel sums whose elementwise producers fuse into them (no centred or
masked copy is written) and one elementwise pass:

* forward: ``sum(x - k)`` and ``sum((x - k)**2)``
  (the shifted-data algorithm: ``k`` is the first example's value at the first position, a
  sample of the channel, so the subtraction ``E[d**2] - E[d]**2`` does not cancel catastrophically
  even when the mean is large against the spread, unlike the plain ``E[x**2] - E[x]**2``); one
  elementwise pass writes ``relu((x - mean) * scale / sqrt(var + eps) + bias [+ residual])``;
* backward: ``sum(g)`` and ``sum(g * xhat)`` (``g`` is the output gradient masked by the ReLU,
  read off the saved output), recomputing ``xhat`` from ``x``; one elementwise pass writes the input
  gradient (and ``g`` itself for the residual).

Statistics are reduced over every axis but the last (channels-last), inside ``jax.jit`` on the
global batch, so under the ``('data',)`` mesh (``ap_jax.parallel``) the SPMD partitioner
all-reduces the per-channel sums and the moments are global-batch moments, as with Flax.

:class:`BatchNorm` is a drop-in for ``nn.BatchNorm(momentum=..., epsilon=...)``: the same
``params`` (``scale``, ``bias``) and ``batch_stats`` (``mean``, biased ``var``) with the same
running-average update, not applied while initialising. ``AP_JAX_BN=flax`` (or :func:`use`)
computes the same layer as ``flax.linen.BatchNorm`` + ``jax.nn.relu`` do, left to autodiff
(:func:`reference_train`): the former numerics, which the tests compare against.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

ENV_VAR = "AP_JAX_BN"
IMPLS = ("fused", "flax")

_override: list[str] = []


@contextlib.contextmanager
def use(impl: str) -> Iterator[None]:
    """Within the block, trace BatchNorm layers with ``impl`` ("fused" or "flax")."""
    if impl not in IMPLS:
        raise ValueError(f"BatchNorm implementation must be one of {IMPLS}, got {impl!r}")
    _override.append(impl)
    try:
        yield
    finally:
        _override.pop()


def active_impl() -> str:
    """The BatchNorm implementation a layer traced now would use: "fused" or "flax"."""
    impl = _override[-1] if _override else os.environ.get(ENV_VAR, "fused")
    if impl not in IMPLS:
        raise ValueError(f"environment variable {ENV_VAR}={impl!r}: must be one of {', '.join(IMPLS)}")
    return impl


def _channel_sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel (last axis) sums of ``a`` and ``b``, two plain reductions of fused producers.

    Not one variadic ``lax.reduce``: XLA:CPU emits that as a generic loop, which took twice as
    long as these two sums for BatchNorm's forward and backward at ResNet-20's first stage.
    """
    axes = tuple(range(a.ndim - 1))
    return jnp.sum(a, axes), jnp.sum(b, axes)


def moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance of ``x`` over every axis but the last (shifted data: no centred copy)."""
    shift = lax.stop_gradient(x[(0,) * (x.ndim - 1)])
    d = x - shift
    s1, s2 = _channel_sums(d, d * d)
    count = x.size // x.shape[-1]
    m1 = s1 / count
    return shift + m1, jnp.maximum(s2 / count - m1 * m1, 0.0)


def _output(x, mean, inv, scale, bias, residual, relu):
    y = (x - mean) * (inv * scale) + bias
    if residual is not None:
        y = y + residual
    return jax.nn.relu(y) if relu else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def batch_norm_train(x, scale, bias, residual, epsilon: float, relu: bool):
    """``(act(BN(x) + residual), mean, var)`` with batch statistics; ``residual`` may be None."""
    return _forward(x, scale, bias, residual, epsilon, relu)[0]


def _forward(x, scale, bias, residual, epsilon, relu):
    mean, var = moments(x)
    inv = lax.rsqrt(var + epsilon)
    y = _output(x, mean, inv, scale, bias, residual, relu)
    return (y, mean, var), (x, y, mean, inv, scale, None if residual is None else ())


def _backward_rule(epsilon, relu, saved, cotangents):
    x, y, mean, inv, scale, residual_marker = saved
    dy, dmean, dvar = cotangents
    g = jnp.where(y > 0, dy, 0.0) if relu else dy
    xhat = (x - mean) * inv
    sum_g, sum_gx = _channel_sums(g, g * xhat)
    count = x.size // x.shape[-1]
    dx = (scale * inv) * (g - sum_g / count - xhat * (sum_gx / count))
    dx = dx + dmean / count + dvar * (2.0 / count) * (x - mean)  # through the returned moments
    return dx, sum_gx, sum_g, (None if residual_marker is None else g)


batch_norm_train.defvjp(_forward, _backward_rule)


def reference_train(x, scale, bias, residual, epsilon: float, relu: bool):
    """:func:`batch_norm_train` as ``flax.linen.BatchNorm`` + ``jax.nn.relu`` compute it, left to
    autodiff: ``E[x**2] - E[x]**2`` moments, then the same normalisation (the reference path)."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.maximum(0.0, jnp.mean(x * x, axes) - mean * mean)
    y = (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias
    if residual is not None:
        y = y + residual
    return (jax.nn.relu(y) if relu else y), mean, var


def batch_norm_eval(x, mean, var, scale, bias, residual, epsilon: float, relu: bool) -> jax.Array:
    """``act(BN(x) + residual)`` with the running statistics, one elementwise pass."""
    return _output(x, mean, lax.rsqrt(var + epsilon), scale, bias, residual, relu)


class BatchNorm(nn.Module):
    """BatchNorm over the channel axis, optionally adding ``residual`` and applying a ReLU.

    Batch statistics when ``use_running_average`` is False (then the running averages move by
    ``momentum``: ``new = momentum * old + (1 - momentum) * batch``), running averages otherwise.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    relu: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array | None = None) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        if self.use_running_average:
            return batch_norm_eval(x, ra_mean.value, ra_var.value, scale, bias, residual, self.epsilon, self.relu)
        train_fn = batch_norm_train if active_impl() == "fused" else reference_train
        y, mean, var = train_fn(x, scale, bias, residual, self.epsilon, self.relu)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
