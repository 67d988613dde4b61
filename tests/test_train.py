"""Masked training: the sparsity invariant on ResNet-20, the LR schedule and the optimizer step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ap_jax as apj
from ap_jax import data, models, train


def test_mask_invariant_after_sgd_momentum_weight_decay_on_resnet20():
    model = models.get("resnet20")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    params = variables["params"]
    mask = apj.prune.prune(apj.masks.init(params), apj.scores.random(jax.random.key(1), params), 0.5)
    cfg = train.OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-3, decay_all=True)
    tx = train.optimizer(cfg, train.lr_schedule(cfg, 100), params)
    state = train.fresh_state(params, variables["batch_stats"], mask, tx)
    steps = train.make_steps(model, tx, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
    order = data.epoch_order(jax.random.key(2), 0, 64, 8)
    start = jax.tree_util.tree_map(np.array, state.params)
    for step in range(24):
        state, metrics = steps.train(state, images, labels, order[step % 8], jax.random.key(step))
    assert int(state.step) == 24 and np.isfinite(float(metrics["loss"]))
    start_leaves = dict(apj.masks.prunable_leaves(start))
    pruned, zeros = 0, 0
    for (name, p), (_, m) in zip(apj.masks.prunable_leaves(state.params), apj.masks.prunable_leaves(state.mask)):
        p, m = np.asarray(p), np.asarray(m)
        assert np.all(p[~m] == 0.0), f"pruned weights of {name} moved"
        assert np.all(p[m] != start_leaves[name][m]), f"alive weights of {name} did not train"
        pruned += int((~m).sum())
        zeros += int((p == 0.0).sum())
    assert zeros == pruned
    assert float(apj.masks.sparsity(state.mask)) == pytest.approx(pruned / sum(
        np.asarray(m).size for _, m in apj.masks.prunable_leaves(state.mask)))
    for a, b in zip(jax.tree_util.tree_leaves(state.mask), jax.tree_util.tree_leaves(mask)):
        np.testing.assert_array_equal(a, b)


def test_lr_schedule_hand_values():
    cfg = train.OptimConfig(lr=0.1, lr_drops=(2 / 3, 5 / 6))
    schedule = train.lr_schedule(cfg, 30)  # LTH's 20k and 25k of 30k, scaled to 30 steps
    assert [float(schedule(s)) for s in (0, 19, 20, 24, 25, 29)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    warm = train.lr_schedule(train.OptimConfig(lr=0.1, warmup_steps=10), 30)
    assert [float(warm(s)) for s in (0, 5, 10, 19, 20, 25)] == pytest.approx(
        [0.0, 0.05, 0.1, 0.1, 0.01, 0.001])


def test_drops_on_one_step_multiply():
    # 2/3 and 5/6 of 3 steps both round to step 2: the LR falls by both drops there.
    schedule = train.lr_schedule(train.OptimConfig(lr=0.1, lr_drops=(2 / 3, 5 / 6)), 3)
    assert [float(schedule(s)) for s in (0, 1, 2)] == pytest.approx([0.1, 0.1, 0.001])


def _counts(opt_state) -> list[int]:
    """Every ``count`` field of an optax state, read by name."""
    found = []
    jax.tree_util.tree_map_with_path(
        lambda path, x: found.append(int(x)) if "count" in jax.tree_util.keystr(path) else None, opt_state)
    return found


def test_skipped_nonfinite_step_keeps_state_but_counts_for_the_schedule():
    model = models.get("mlp")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    params = jax.tree_util.tree_map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan), variables["params"])
    cfg = train.OptimConfig(lr=0.1, momentum=0.9, lr_drops=(0.5,))
    tx = train.optimizer(cfg, train.lr_schedule(cfg, 4), params)
    state = train.fresh_state(params, {}, apj.masks.init(params), tx)
    steps = train.make_steps(model, tx, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), skip_nonfinite=True)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    labels = jnp.arange(8, dtype=jnp.int32)
    old = jax.device_get((state.params, state.opt_state))  # the step donates its input state
    new, metrics = steps.train(state, images, labels, jnp.arange(8), jax.random.key(1))
    assert not np.isfinite(float(metrics["loss"])) and int(new.step) == 1
    assert _counts(old[1]) and set(_counts(old[1])) == {0}
    assert set(_counts(new.opt_state)) == {1}  # the schedule moves on: step 2 gets the dropped LR
    for before, after in zip(jax.tree_util.tree_leaves(old),
                             jax.tree_util.tree_leaves((new.params, new.opt_state))):
        if after.dtype != jnp.int32:
            np.testing.assert_array_equal(before, after)  # weights and momenta untouched (NaNs equal)


@pytest.mark.parametrize("decay_all", [False, True])
def test_optimizer_step_matches_hand_sgd(decay_all):
    params = {"dense": {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([0.5, 0.5])}}
    grads = {"dense": {"kernel": jnp.array([[0.1, 0.2]]), "bias": jnp.array([1.0, -1.0])}}
    cfg = train.OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.01, decay_all=decay_all)
    tx = train.optimizer(cfg, train.lr_schedule(cfg, 10), params)
    opt_state = tx.init(params)
    for step in range(2):
        updates, opt_state = tx.update(grads, opt_state, params)
        new = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        if step == 0:
            first = new
    # Step 1 (buffer = g + wd * w): w - lr * (g + wd * w); the bias decays only with decay_all.
    k, b = np.array([[1.0, -2.0]]), np.array([0.5, 0.5])
    gk, gb = np.array([[0.1, 0.2]]), np.array([1.0, -1.0])
    bias_decay = 0.01 if decay_all else 0.0
    np.testing.assert_allclose(first["dense"]["kernel"], k - 0.1 * (gk + 0.01 * k), rtol=1e-6)
    np.testing.assert_allclose(first["dense"]["bias"], b - 0.1 * (gb + bias_decay * b), rtol=1e-6)
    # Step 2 from the same params: buffer = 0.9 * buf1 + (g + wd * w).
    buf1 = gk + 0.01 * k
    np.testing.assert_allclose(new["dense"]["kernel"], k - 0.1 * (0.9 * buf1 + buf1), rtol=1e-6)
