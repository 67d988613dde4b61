"""Tests for ap_jax.models: parameter counts, shapes, ReLU sites, registry errors, MLP reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ap_jax import models
from ap_jax.models import MLP, ResNetCIFAR
from ap_jax.stats import relu_counts

X = jnp.zeros((2, 32, 32, 3), jnp.float32)


def _params(model):
    """Shapes of the "params" collection, without running any computation."""
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), X))["params"]


def _count(params, min_ndim: int = 0) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params) if p.ndim >= min_ndim)


def _sites(counts) -> list:
    if "zeros" in counts and "positions" in counts:
        return [counts]
    return [s for sub in counts.values() for s in _sites(sub)]


def test_resnet20_option_b_parameter_counts():
    params = _params(models.get("resnet20"))
    assert _count(params) == 272_474
    assert _count(params, min_ndim=2) == 270_896


# He et al. 2016, "Deep Residual Learning for Image Recognition", Table 6 (CIFAR-10, option A).
@pytest.mark.parametrize("name, millions",
                         [("resnet20", 0.27), ("resnet32", 0.46), ("resnet56", 0.85), ("resnet110", 1.7)])
def test_option_a_parameter_counts_match_he_et_al_table6(name, millions):
    total = _count(_params(models.get(name, shortcut="A")))
    digits = 1 if millions >= 1 else 2
    assert round(total / 1e6, digits) == millions


def test_mlp_parameter_count():
    assert _count(_params(models.get("mlp"))) == 3072 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_option_a_and_b_parameter_trees_differ():
    tree_a = _params(models.get("resnet20", shortcut="A"))
    tree_b = _params(models.get("resnet20", shortcut="B"))
    assert jax.tree_util.tree_structure(tree_a) != jax.tree_util.tree_structure(tree_b)
    assert "shortcut_conv" in tree_b["stage2_block0"]
    assert "shortcut_conv" not in tree_a["stage2_block0"]
    assert "shortcut_conv" not in tree_b["stage1_block0"]  # identity where the shape is unchanged


def test_resnet20_forward_shapes_train_and_eval():
    model = models.get("resnet20")
    x = jax.random.normal(jax.random.PRNGKey(1), X.shape)
    variables = model.init(jax.random.PRNGKey(0), x)
    logits = model.apply(variables, x, train=False)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 10)
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], state["batch_stats"])
    assert all(jax.tree_util.tree_leaves(changed))


def test_relu_sites():
    resnet = models.get("resnet20")
    variables = resnet.init(jax.random.PRNGKey(0), X)
    assert len(_sites(relu_counts(resnet, variables, X, train=False))) == 19
    mlp = models.get("mlp")
    variables = mlp.init(jax.random.PRNGKey(0), X)
    assert len(_sites(relu_counts(mlp, variables, X, train=False))) == 2


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet21'; known models: ") as err:
        models.get("resnet21")
    known = str(err.value).split("known models: ")[1].split(", ")
    assert known == models.names() == sorted(known)
    assert {"mlp", "resnet20", "resnet32", "resnet56", "resnet110"} <= set(known)


def test_invalid_depth_and_shortcut():
    with pytest.raises(ValueError, match="21"):
        ResNetCIFAR(depth=21)
    with pytest.raises(ValueError, match="'C'"):
        models.get("resnet20", shortcut="C")


def test_mlp_matches_numpy_reference():
    model = MLP()
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(0), x)["params"])
    h = np.asarray(x).reshape(4, -1)
    for layer in ("dense0", "dense1"):
        h = np.maximum(h @ params[layer]["kernel"] + params[layer]["bias"], 0)
    expected = h @ params["head"]["kernel"] + params["head"]["bias"]
    with jax.default_matmul_precision("highest"):  # no TF32 on GPUs, so 1e-5 holds everywhere
        logits = model.apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-5)
