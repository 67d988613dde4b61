"""Flax NNX and Linen alike: every name-based rule reads an NNX ``State`` as it reads Linen params,
and one CNN built in both with the same weights gets identical masks, AP picks and DNR counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ap_jax import ap, masks, nnx_stats, official, stats

EXPECTED_NAMES = ["bn1/bias", "bn1/scale", "conv1/bias", "conv1/kernel", "conv2/bias", "conv2/kernel",
                  "fc/bias", "fc/kernel"]  # hand-listed: the CNN's leaves in tree-flatten order


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(6, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
        x = stats.ReLU(name="relu1")(x)
        x = stats.ReLU(name="relu2")(nn.Conv(8, (3, 3), strides=2, name="conv2")(x))
        return nn.Dense(10, name="fc")(x.mean(axis=(1, 2)))


class NnxCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 6, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(6, rngs=rngs)
        self.relu1 = nnx_stats.ReLU()
        self.conv2 = nnx.Conv(6, 8, (3, 3), strides=2, rngs=rngs)
        self.relu2 = nnx_stats.ReLU()
        self.fc = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.fc(self.relu2(self.conv2(x)).mean(axis=(1, 2)))


def perturbed(tree, seed, scale=1.0):
    """``tree`` with every float leaf moved by normal noise (nonzero biases, BN stats, trained weights)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def twins():
    """(Linen variables, NNX model) holding the same weights and BatchNorm statistics."""
    x = jnp.zeros((1, 8, 8, 3))
    variables = LinenCNN().init(jax.random.key(0), x)
    params = perturbed(variables["params"], 1, 0.3)
    params["bn1"]["scale"] = 0.1 * params["bn1"]["scale"]  # small enough for magnitude pruning to take some
    variables = {"params": params,
                 "batch_stats": jax.tree_util.tree_map(jnp.abs, perturbed(variables["batch_stats"], 2, 0.5))}
    model = NnxCNN(nnx.Rngs(0))
    for kind, collection in ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats")):
        state = nnx.state(model, kind)
        nnx.replace_by_pure_dict(state, variables[collection])
        nnx.update(model, state)
    return variables, model


def nnx_params(model):
    return nnx.state(model, nnx.Param)


def pure(tree):
    """A Linen-shaped nested dict of host arrays, from Linen params or an NNX State."""
    tree = nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree
    return jax.tree_util.tree_map(np.asarray, tree)


def assert_same(a, b):
    a, b = pure(a), pure(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


def both(twins):
    variables, model = twins
    return [variables["params"], nnx_params(model)]


def test_nnx_leaf_names_have_no_value_suffix(twins):
    for params in both(twins):
        names = [masks.leaf_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        assert names == EXPECTED_NAMES
        assert sorted(masks.layer_sparsity(masks.init(params))) == ["conv1/kernel", "conv2/kernel", "fc/kernel"]


@pytest.mark.parametrize("rule", ["pytorch_weights", "scales_as_kernels", "prunable_flags", "pool_sources"])
def test_name_rules_read_nnx_state_as_linen_params(twins, rule):
    linen, nnx_state = both(twins)
    if rule == "pytorch_weights":  # kernel and scale, by name
        flags = [jax.tree_util.tree_leaves(official.pytorch_weights(p)) for p in (linen, nnx_state)]
        assert flags[0] == flags[1] == [n.endswith(("kernel", "scale")) for n in EXPECTED_NAMES]
    elif rule == "scales_as_kernels":  # BatchNorm scale viewed as (C, 1)
        shapes = [[jnp.shape(x) for x in jax.tree_util.tree_leaves(official.scales_as_kernels(p))]
                  for p in (linen, nnx_state)]
        assert shapes[0] == shapes[1] and shapes[0][1] == (6, 1)
    elif rule == "prunable_flags":
        flags = [official.prunable_flags(p, mask_bn_scale=True) for p in (linen, nnx_state)]
        assert flags[0] == flags[1] == [n.endswith(("kernel", "scale")) for n in EXPECTED_NAMES]
    else:  # the official pool walks each module's weight before its bias
        sources = [official.pool_sources(p, official.prunable_flags(p, True), duplicated=True)
                   for p in (linen, nnx_state)]
        assert sources[0] == sources[1] == [1, 1, 3, 3, 5, 5, 7, 7]


def test_xavier_init_draws_the_same_per_name_on_nnx_and_linen(twins):
    linen, nnx_state = both(twins)
    out_linen, out_nnx = (official.xavier_init(p, jax.random.key(3)) for p in (linen, nnx_state))
    assert isinstance(out_nnx, nnx.State)
    assert_same(out_linen, out_nnx)
    assert np.all(pure(out_nnx)["bn1"]["bias"] == 0)  # a BatchNorm bias by the sibling-name rule
    assert not np.any(pure(out_nnx)["fc"]["bias"] == 0)  # a dense bias ~ N(0, 1)


@pytest.mark.parametrize("mask_bn_scale", [False, True])
def test_masks_and_ap_picks_are_identical(twins, mask_bn_scale):
    (linen, nnx_state), outs = both(twins), []
    for params in (linen, nnx_state):
        trained = perturbed(params, 4, 0.2)
        exact = official.ap_prune_with_scales if mask_bn_scale else ap.ap_prune_result
        mask = exact(masks.init(params), trained, params, rate=0.3, ap_rate=0.1).mask
        mask = exact(mask, perturbed(trained, 5, 0.1), trained, rate=0.3, ap_rate=0.1).mask
        official_mask = official.threshold_prune(mask, trained, params, mask_bn_scale=mask_bn_scale).mask
        outs.append((mask, official_mask, masks.apply(trained, mask), masks.layer_sparsity(mask)))
    for a, b in zip(*outs):
        assert_same(a, b)
    for mask in outs[1][:2]:  # BN scales are pruned exactly when asked to be
        assert pure(mask)["bn1"]["scale"].all() != mask_bn_scale


def test_dnr_counts_are_identical(twins):
    variables, model = twins
    x = jax.random.normal(jax.random.key(6), (5, 8, 8, 3))
    model.eval()
    linen_counts = stats.relu_counts(LinenCNN(), variables, x, train=False)
    nnx_counts = nnx_stats.relu_counts(model, x)
    assert_same(linen_counts, nnx_counts)
    assert stats.dead_neuron_rate(nnx_counts) == stats.dead_neuron_rate(linen_counts)
    assert 0 < stats.dead_neuron_rate(nnx_counts)["overall"] < 1


def test_nnx_relu_counts_under_jit_and_no_counting_outside():
    model = NnxCNN(nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(7), (4, 8, 8, 3))
    model.eval()
    eager = nnx_stats.relu_counts(model, x)
    jitted = nnx.jit(nnx_stats.relu_counts)(model, x)
    assert_same(eager, jitted)
    y = np.asarray(jax.nn.relu(model.conv2(model.relu1(model.bn1(model.conv1(x))))))
    np.testing.assert_array_equal(eager["relu2"]["zeros"], (y == 0).sum(axis=(0, 1, 2)))
    assert int(eager["relu2"]["positions"]) == 4 * 4 * 4 and int(eager["relu2"]["examples"]) == 4
    model(x)
    assert not model.relu1.counting and not nnx.state(model, nnx_stats.ReluCounts)  # nothing sown


def test_activation_counts_match_numpy():
    y = np.maximum(np.random.default_rng(0).normal(size=(3, 4, 5, 2)), 0).astype(np.float32)
    y[1, :, :, 0] = 0  # one dead map
    counts = stats.activation_counts(jnp.asarray(y))
    np.testing.assert_array_equal(counts["zeros"], (y == 0).sum(axis=(0, 1, 2)))
    np.testing.assert_array_equal(counts["dead_maps"], (y == 0).all(axis=(1, 2)).sum(axis=0))
    assert int(counts["positions"]) == 60 and int(counts["examples"]) == 3
    assert stats.dead_neuron_rate({"site": counts})["overall"] == (y == 0).mean()
