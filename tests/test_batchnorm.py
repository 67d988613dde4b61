"""ap_jax.batchnorm: the fused BatchNorm(+ReLU) against a float64 reference and against Flax, and a
masked ResNet-20 trained on the fused path against the reference path (Flax numerics, lax convolutions).

Tolerances: float32 results against float64 references at ``rtol=1e-4`` of the largest entry
(sums of a few hundred terms; with a mean of 1000 the input itself carries 6e-5 relative rounding).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ap_jax import batchnorm, conv, data, masks, models, prune, scores, stats, train

EPS = 1e-5


@pytest.fixture(autouse=True)
def full_float32_precision():
    """True float32 on every backend: on GPUs the default precision rounds convolutions to TF32."""
    with jax.default_matmul_precision("highest"):
        yield


def _close(got, ref, rtol=1e-4):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(np.abs(ref).max(), 1e-30))


def _reference(x, scale, bias, residual, relu):
    """BatchNorm as the textbook two-pass formula (mean, then mean squared deviation)."""
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean((x - mean) ** 2, axis=(0, 1, 2))
    y = (x - mean) / jnp.sqrt(var + EPS) * scale + bias
    y = y + residual if residual is not None else y
    return (jnp.maximum(y, 0.0) if relu else y), mean, var


def _inputs(offset, with_residual):
    keys = jax.random.split(jax.random.PRNGKey(int(offset) + with_residual), 5)
    x = 2.0 * jax.random.normal(keys[0], (6, 5, 4, 7)) + offset + jnp.arange(7.0)
    residual = jax.random.normal(keys[1], x.shape) if with_residual else None
    scale, bias = jax.random.normal(keys[2], (7,)), jax.random.normal(keys[3], (7,))
    weights = jax.random.normal(keys[4], x.shape)
    return x, scale, bias, residual, weights


def _loss(fn, weights, relu):
    """A loss of all three outputs, so every cotangent (output, mean, variance) is exercised."""
    def loss(x, scale, bias, residual):
        y, mean, var = fn(x, scale, bias, residual, relu)
        return jnp.sum(y * weights) + jnp.sum(mean * jnp.arange(7.0)) + jnp.sum(jnp.sqrt(var))
    return loss


@pytest.mark.parametrize("offset", [0.0, 1000.0])  # 1000: mean 500 spreads, where E[x^2] - E[x]^2 loses digits
@pytest.mark.parametrize("relu, with_residual", [(False, False), (True, False), (True, True)])
def test_fused_values_and_gradients_match_a_float64_reference(offset, relu, with_residual):
    x, scale, bias, residual, weights = _inputs(offset, with_residual)
    fused = lambda x, s, b, r, relu: batchnorm.batch_norm_train(x, s, b, r, EPS, relu)
    argnums = (0, 1, 2, 3) if with_residual else (0, 1, 2)
    got_out = jax.jit(lambda *a: fused(*a, relu))(x, scale, bias, residual)
    got_grads = jax.jit(jax.grad(_loss(fused, weights, relu), argnums))(x, scale, bias, residual)
    with jax.enable_x64(True):
        wide = [None if a is None else jnp.asarray(a, jnp.float64) for a in (x, scale, bias, residual, weights)]
        ref_out = _reference(*wide[:4], relu)
        ref_grads = jax.grad(_loss(lambda *a: _reference(*a[:4], a[4]), wide[4], relu), argnums)(*wide[:4])
        ref_out, ref_grads = jax.device_get((ref_out, ref_grads))
    for got, ref in zip(got_out, ref_out):
        _close(got, ref)
    for got, ref in zip(got_grads, ref_grads):
        _close(got, ref)


def test_module_keeps_flax_names_statistics_and_running_average_update():
    x = 3.0 + jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 5))
    ours, flax_bn = batchnorm.BatchNorm(use_running_average=False), nn.BatchNorm(use_running_average=False,
                                                                                momentum=0.9, epsilon=EPS)
    variables = ours.init(jax.random.PRNGKey(1), x)
    reference = flax_bn.init(jax.random.PRNGKey(1), x)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(reference)
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(a, b)  # init does not move the running averages, as in Flax
    variables = {"params": {"scale": jnp.linspace(0.5, 2, 5), "bias": jnp.linspace(-1, 1, 5)},
                 "batch_stats": {"mean": jnp.full(5, 0.5), "var": jnp.full(5, 2.0)}}
    y, new = ours.apply(variables, x, mutable=["batch_stats"])
    y_ref, new_ref = flax_bn.apply(variables, x, mutable=["batch_stats"])
    _close(y, y_ref, 1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(new_ref)):
        _close(a, b, 1e-5)
    updated = {**variables, **new}
    evaluated = batchnorm.BatchNorm(use_running_average=True, relu=True).apply(updated, x)
    _close(evaluated, jax.nn.relu(nn.BatchNorm(use_running_average=True, epsilon=EPS).apply(updated, x)), 1e-5)


def test_relu_sites_count_the_fused_output_and_the_switch_rejects_unknown_paths():
    model = models.get("resnet20")
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    variables = {k: v for k, v in variables.items() if k != stats.COLLECTION}
    counts = {}
    for impl in batchnorm.IMPLS:
        with batchnorm.use(impl):
            _, updates = model.apply(variables, x, train=True, mutable=["batch_stats", stats.COLLECTION])
        counts[impl] = updates[stats.COLLECTION]
    fused, reference = (jax.tree_util.tree_leaves(c) for c in counts.values())
    assert sum(int(jnp.sum(leaf)) for leaf in fused) > 0
    for a, b in zip(fused, reference):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="'xla'"):
        with batchnorm.use("xla"):
            pass


def _train_masked_resnet20(conv_impl: str, bn_impl: str, nudge: float = 0.0, steps: int = 50):
    """Losses and final state of ``steps`` full-batch SGD steps on 32 16x16 images with half the
    weights pruned; ``nudge``: the initial params multiplied by ``1 + nudge``."""
    model = models.get("resnet20")
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 32, dtype=np.int32))
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
    params = jax.tree_util.tree_map(lambda p: p * (1 + nudge), variables["params"])
    mask = prune.prune(masks.init(params), scores.random(jax.random.PRNGKey(1), params), 0.5)
    cfg = train.OptimConfig(lr=0.02)
    tx = train.optimizer(cfg, train.lr_schedule(cfg, steps), params)
    mean, std = data.DATASETS["cifar10"].mean, data.DATASETS["cifar10"].std
    step_fns = train.make_steps(model, tx, mean, std, augment=False)
    state = train.fresh_state(params, variables["batch_stats"], mask, tx)
    losses = []
    for i in range(steps):
        with conv.use(conv_impl), batchnorm.use(bn_impl):  # read when the step is traced
            state, metrics = step_fns.train(state, images, labels, jnp.arange(32), jax.random.PRNGKey(i))
        losses.append(float(metrics["loss"]))
    return np.asarray(losses), jax.device_get(state)


def _gaps(a, b) -> tuple[float, float]:
    """Largest loss difference and largest parameter difference of two runs."""
    params = max(float(np.abs(x - y).max()) for x, y in zip(*(jax.tree_util.tree_leaves(r[1].params) for r in (a, b))))
    return float(np.abs(a[0] - b[0]).max()), params


def test_masked_resnet20_trains_the_same_on_the_fused_and_the_reference_path():
    """Fused BatchNorm + CPU convolutions against Flax-numerics BatchNorm + lax convolutions.

    Float tolerance here is measured, not guessed: 50 steps amplify rounding (ReLU masks flip),
    so the yardstick is the gap between two reference runs whose initial weights differ by one
    part in 1e7 (about one float32 ulp); the two paths must stay within 5x that gap.
    """
    fused = _train_masked_resnet20("fast", "fused")
    ref = _train_masked_resnet20("lax", "flax")
    nudged = _train_masked_resnet20("lax", "flax", nudge=1e-7)
    assert ref[0][-1] < ref[0][0] - 1.0  # it learns: the comparison is not of a stalled run
    np.testing.assert_allclose(fused[0][:3], ref[0][:3], rtol=1e-4)  # before rounding has grown
    (loss_gap, param_gap), (loss_floor, param_floor) = _gaps(fused, ref), _gaps(nudged, ref)
    assert loss_gap <= 5 * max(loss_floor, 1e-4), (loss_gap, loss_floor)
    assert param_gap <= 5 * max(param_floor, 1e-4), (param_gap, param_floor)
    for state in (fused, ref):
        for p, m in zip(jax.tree_util.tree_leaves(state[1].params), jax.tree_util.tree_leaves(state[1].mask)):
            assert np.all(p[~m] == 0.0)
        assert int(masks.alive_count(state[1].mask)) < int(masks.alive_count(masks.init(state[1].params)))
