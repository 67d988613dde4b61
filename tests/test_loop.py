"""The own-loop API: the mask-aware optax wrapper against a numpy SGD, and the cycle-end prune."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ap_jax import ap, loop, masks

LR, MOMENTUM, WD = 0.1, 0.9, 0.01


def numpy_sgd(w, grads, masks_per_step):
    """Masked SGD with momentum and coupled weight decay: grad and decay of pruned entries are
    dropped and pruned weights are set to 0 after each step (what ``train.make_steps`` does)."""
    w, v = w.astype(np.float64), np.zeros_like(w, np.float64)
    for g, m in zip(grads, masks_per_step):
        v = MOMENTUM * v + np.where(m, g + WD * w, 0.0)
        w = np.where(m, w - LR * v, 0.0)
    return w


def test_pruned_weights_land_on_exact_zero_and_alive_ones_follow_numpy_sgd():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 5)).astype(np.float32)
    grads = rng.normal(size=(6, 4, 5)).astype(np.float32)
    first = rng.random((4, 5)) > 0.3
    second = first & (rng.random((4, 5)) > 0.3)  # the mask shrinks between calls: a new cycle
    steps = [first] * 3 + [second] * 3
    tx = loop.keep_pruned_zero(optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MOMENTUM)))
    params = {"w": jnp.asarray(w0)}  # pruned entries start nonzero: the first update zeroes them
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g, m in zip(grads, steps):
        mask = {"w": jnp.asarray(m)}
        updates, state = update({"w": jnp.asarray(g)}, state, params, mask=mask)
        params = optax.apply_updates(params, updates)
        assert np.all(np.asarray(params["w"])[~m] == 0.0)
    np.testing.assert_allclose(params["w"], numpy_sgd(w0, grads, steps), rtol=1e-5, atol=1e-6)
    trace = np.asarray(optax.tree_utils.tree_get(state, "trace")["w"])
    assert np.all(trace[~first] == 0)  # no momentum, not even weight decay, on weights pruned all along


def test_decoupled_decay_and_adam_also_leave_exact_zeros():
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
    mask = masks.apply(masks.init(params), {"w": params["w"] > 0, "b": jnp.ones(4, bool)})
    tx = loop.keep_pruned_zero(optax.adamw(1e-2, weight_decay=0.1))
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params, mask=mask)
        params = optax.apply_updates(params, updates)
    w = np.asarray(params["w"])
    assert np.all(w[~np.asarray(mask["w"])] == 0) and np.all(w[np.asarray(mask["w"])] != 0)


def test_update_without_a_mask_is_an_error():
    tx = loop.keep_pruned_zero(optax.sgd(0.1))
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="needs params and mask"):
        tx.update(params, tx.init(params), params)


def test_prune_cycle_is_one_ap_prune_step_and_x_alone_without_ap():
    rng = np.random.default_rng(1)
    start = {"k": jnp.asarray(rng.normal(size=(10, 10)), jnp.float32)}
    trained = {"k": start["k"] + jnp.asarray(rng.normal(size=(10, 10)) * 0.1, jnp.float32)}
    mask = loop.prune_cycle(masks.init(start), trained, start, rate=0.2, ap_rate=0.05)
    assert_equal = np.testing.assert_array_equal
    assert_equal(mask["k"], ap.ap_prune(masks.init(start), trained, start, 0.2, 0.05)["k"])
    x_only = loop.prune_cycle(masks.init(start), trained, start, rate=0.2, ap_rate=0.0)
    magnitude = np.abs(np.asarray(trained["k"])).ravel()
    assert_equal(~np.asarray(x_only["k"]).ravel(), magnitude <= np.sort(magnitude)[19])  # the 20 smallest


def test_models_are_reachable_from_a_plain_import_ap_jax():
    code = "import ap_jax as apj; print(type(apj.models.get('resnet20')).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ResNetCIFAR"
