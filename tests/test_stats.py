"""ReLU counts and the dead neuron rate against a numpy forward pass of small models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ap_jax as apj


class TinyNet(nn.Module):
    """conv3x3 -> ReLU -> dense -> ReLU -> dense; bias of conv channel 0 forced very negative."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), padding="VALID", name="conv")(x)
        x = apj.stats.ReLU(name="relu_conv")(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(5, name="dense")(x)
        x = apj.stats.ReLU(name="relu_dense")(x)
        return nn.Dense(3, name="head")(x)


def numpy_activations(params, x):
    """Both ReLUs' outputs, computed with numpy from the same params."""
    k = np.asarray(params["conv"]["kernel"], np.float64)
    n, h, w, _ = x.shape
    conv = np.zeros((n, h - 2, w - 2, k.shape[-1]))
    for i in range(h - 2):
        for j in range(w - 2):
            conv[:, i, j, :] = np.einsum("nabc,abco->no", x[:, i:i + 3, j:j + 3, :], k)
    a1 = np.maximum(conv + np.asarray(params["conv"]["bias"]), 0)
    d = a1.reshape(n, -1) @ np.asarray(params["dense"]["kernel"]) + np.asarray(params["dense"]["bias"])
    return a1, np.maximum(d, 0)


def numpy_forward_zeros(params, x):
    """Per-channel zero counts of both ReLUs, and their outputs per channel."""
    a1, a2 = numpy_activations(params, x)
    return (a1 == 0).sum(axis=(0, 1, 2)), (a2 == 0).sum(axis=0), a1[..., 0].size, x.shape[0]


def numpy_dead_maps(params, x):
    """Per channel, the examples whose whole map is zero (a dense unit's map is the unit)."""
    a1, a2 = numpy_activations(params, x)
    return (a1 == 0).all(axis=(1, 2)).sum(axis=0), (a2 == 0).sum(axis=0)


@pytest.mark.parametrize("jit", [False, True])
def test_relu_counts_match_numpy_with_always_dead_units(jit):
    model = TinyNet()
    x = np.random.default_rng(0).normal(size=(6, 6, 6, 2)).astype(np.float32)
    variables = model.init(jax.random.key(1), x)
    params = jax.tree_util.tree_map(np.array, variables["params"])
    params["conv"]["bias"][0] = -1e3  # conv channel 0 dead for every input
    params["dense"]["bias"][2] = -1e3  # dense unit 2 dead for every input
    variables = {**variables, "params": params}
    fn = jax.jit(lambda v, x: apj.stats.relu_counts(model, v, x)) if jit else (
        lambda v, x: apj.stats.relu_counts(model, v, x))
    counts = fn(variables, jnp.asarray(x))
    conv_zeros, dense_zeros, conv_positions, dense_positions = numpy_forward_zeros(params, x)
    np.testing.assert_array_equal(counts["relu_conv"]["zeros"], conv_zeros)
    np.testing.assert_array_equal(counts["relu_dense"]["zeros"], dense_zeros)
    assert int(counts["relu_conv"]["positions"]) == conv_positions == 6 * 4 * 4
    assert int(counts["relu_dense"]["positions"]) == dense_positions
    assert counts["relu_conv"]["zeros"].dtype == jnp.int32
    assert int(counts["relu_conv"]["zeros"][0]) == conv_positions
    assert int(counts["relu_dense"]["zeros"][2]) == 6

    rate = apj.stats.dead_neuron_rate(counts)
    conv_maps, dense_maps = numpy_dead_maps(params, x)
    np.testing.assert_array_equal(counts["relu_conv"]["dead_maps"], conv_maps)
    np.testing.assert_array_equal(counts["relu_dense"]["dead_maps"], dense_maps)  # a unit is its own map
    assert conv_maps[0] == 6 and int(counts["relu_conv"]["examples"]) == 6
    assert rate["overall_channel"] == pytest.approx((conv_maps.sum() + dense_maps.sum()) / (6 * 4 + 6 * 5))
    assert rate["per_layer_channel"] == pytest.approx(
        {"relu_conv": conv_maps.sum() / 24, "relu_dense": dense_maps.sum() / 30})
    total_zeros = conv_zeros.sum() + dense_zeros.sum()
    total_outputs = conv_positions * 4 + dense_positions * 5
    assert rate["overall"] == pytest.approx(total_zeros / total_outputs)
    assert rate["per_layer"] == pytest.approx({
        "relu_conv": conv_zeros.sum() / (conv_positions * 4),
        "relu_dense": dense_zeros.sum() / (dense_positions * 5),
    })


def test_counts_ignore_stats_from_init_and_add_over_batches():
    model = TinyNet()
    x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 6, 6, 2)), jnp.float32)
    variables = model.init(jax.random.key(0), x)  # init also sows a relu_stats collection
    assert "relu_stats" in variables
    whole = apj.stats.relu_counts(model, variables, x)
    halves = apj.stats.add_counts(apj.stats.relu_counts(model, variables, x[:3]),
                                  apj.stats.relu_counts(model, variables, x[3:]))
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(halves)):
        np.testing.assert_array_equal(a, b)
    assert int(whole["relu_dense"]["positions"]) == 8


def test_relu_output_and_no_counting_when_not_mutable():
    y, state = apj.stats.ReLU().apply({}, jnp.array([[-1.0, 0.0, 2.0]]), mutable=["relu_stats"])
    np.testing.assert_array_equal(y, [[0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(state["relu_stats"]["zeros"], [1, 1, 0])
    assert apj.stats.ReLU().apply({}, jnp.array([-1.0, 3.0])).tolist() == [0.0, 3.0]


def test_dnr_of_no_sites_is_an_error():
    with pytest.raises(ValueError, match="no ReLU counts"):
        apj.stats.dead_neuron_rate({})


@pytest.mark.parametrize("rows", [2**24 - 1, 2**24 + 3])
def test_count_zeros_is_exact_on_both_sides_of_the_float32_limit(rows):
    """Just under 2**24 outputs per channel the count runs in float32, from 2**24 on in int32;
    both must equal numpy's integer count exactly (an inexact float sum would be off by one)."""
    y = np.zeros((rows, 2), np.float32)
    y[::3, 1] = 1.0  # channel 0 all zeros, channel 1 zero except every third row
    expected = [rows, rows - len(range(0, rows, 3))]
    np.testing.assert_array_equal(np.asarray(jax.jit(apj.stats.count_zeros)(jnp.asarray(y))), expected)
