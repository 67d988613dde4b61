"""Tests for the VGG, DenseNet, MobileNetV2, ResNet-50 and ViT models: parameter counts against
published totals (shapes only, via ``jax.eval_shape``), forward passes, one masked train step,
ReLU sites, the ReLU6 and GELU counting rules, and the registry."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ap_jax as apj
from ap_jax import models, train
from ap_jax.models.mobilenet_v2 import ReLU6
from ap_jax.models.vit import GELU

NEW_MODELS = ("vgg11", "vgg13", "vgg16", "vgg19", "densenet40", "mobilenetv2", "mobilenetv2_imagenet",
              "resnet50", "vit_ti16", "vit_s16", "vit_b16", "vit_ti4_cifar")


@functools.cache
def _shapes(name: str, size: int, num_classes: int = 10):
    """Shapes of every collection ``model.init`` returns for a 1 x size x size x 3 input, without computing."""
    model = models.get(name, num_classes)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))


def _filled_variables(name: str, size: int) -> dict:
    """params and batch_stats of ``name`` filled from numpy (He-scaled kernels, unit scales and
    variances, small random biases, zero means): a real forward pass without compiling ``init``
    (slow on CPU). Biases are not zero because a BN -> 1x1 conv -> BN chain with zero offsets
    gives the second BN a batch mean of exactly 0, so its running mean could not move."""
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        if leaf.ndim >= 2:
            return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape), leaf.dtype)
        if path[-1].key == "bias":
            return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)
        return jnp.full(leaf.shape, 1.0 if path[-1].key in ("scale", "var") else 0.0, leaf.dtype)

    shapes = _shapes(name, size)
    return {k: jax.tree_util.tree_map_with_path(fill, shapes[k]) for k in ("params", "batch_stats") if k in shapes}


def _count(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def _sites(counts) -> list:
    if "zeros" in counts and "positions" in counts:
        return [counts]
    return [s for sub in counts.values() for s in _sites(sub)]


# torchvision's published totals (docs "Models and pre-trained weights", num_params, 1000 classes),
# and timm's vit_small_patch16_224 / vit_tiny_patch16_224 (DeiT-S / DeiT-Ti: 22 M and 5 M in Touvron
# et al. 2021, Table 1), which share torchvision's ViT layout.
@pytest.mark.parametrize("name, total", [
    ("resnet50", 25_557_032),
    ("vit_b16", 86_567_656),
    ("mobilenetv2_imagenet", 3_504_872),
    ("vit_s16", 22_050_664),
    ("vit_ti16", 5_717_416),
])
def test_imagenet_parameter_counts_match_published(name, total):
    assert _count(_shapes(name, 224, 1000)["params"]) == total


def test_densenet40_parameter_count_matches_huang_et_al():
    total = _count(_shapes("densenet40", 32)["params"])
    assert round(total / 1e6, 1) == 1.0  # Huang et al. 2017, Table 2: DenseNet (L=40, k=12), 1.0 M
    conv_inputs = [start + 12 * i for start in (16, 160, 304) for i in range(12)]  # block inputs: 16, 160, 304
    convs = 9 * 3 * 16 + sum(9 * c * 12 for c in conv_inputs) + 160 * 160 + 304 * 304
    bns = 2 * (sum(conv_inputs) + 160 + 304 + 448)
    assert total == convs + bns + 448 * 10 + 10 == 1_019_722


# OpenLTH models/cifar_vgg.py plans, conv widths only (the "M" pools have no parameters); each conv
# is 3x3 with bias and BN (scale, offset); the head is Dense(512 -> 10). VGG-19: LTH's "20 M".
@pytest.mark.parametrize("name, widths, total", [
    ("vgg11", [64, 128, 256, 256, 512, 512, 512, 512], 9_231_114),
    ("vgg13", [64, 64, 128, 128, 256, 256, 512, 512, 512, 512], 9_416_010),
    ("vgg16", [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512], 14_728_266),
    ("vgg19", [64, 64, 128, 128] + [256] * 4 + [512] * 8, 20_040_522),
])
def test_vgg_parameter_counts_by_hand(name, widths, total):
    arithmetic = sum(9 * c_in * c_out + 3 * c_out for c_in, c_out in zip([3] + widths, widths)) + 512 * 10 + 10
    assert _count(_shapes(name, 32)["params"]) == arithmetic == total


@pytest.mark.parametrize("name", NEW_MODELS)
def test_only_kernels_are_prunable(name):
    """``masks.prunable`` (ndim >= 2) must select exactly the conv and dense kernels."""
    params = _shapes(name, 32)["params"]
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        assert (leaf.ndim >= 2) == (apj.masks.leaf_name(path).endswith("/kernel")), apj.masks.leaf_name(path)


def test_mobilenetv2_cifar_and_imagenet_differ_only_in_strides():
    assert jax.tree_util.tree_map(jnp.shape, _shapes("mobilenetv2", 32, 1000)["params"]) == \
        jax.tree_util.tree_map(jnp.shape, _shapes("mobilenetv2_imagenet", 224, 1000)["params"])

    def last_map(name, size):
        model = models.get(name, 1000)

        def run(variables, x):
            _, state = model.apply(variables, x, mutable=["intermediates"],
                                   capture_intermediates=lambda mdl, _: mdl.name == "last_conv")
            return state["intermediates"]["last_conv"]["__call__"][0]

        return jax.eval_shape(run, _shapes(name, size, 1000), jnp.zeros((1, size, size, 3))).shape

    assert last_map("mobilenetv2", 32) == (1, 4, 4, 1280)  # stem and stage 2 at stride 1: 32 / 8
    assert last_map("mobilenetv2_imagenet", 224) == (1, 7, 7, 1280)  # 224 / 32


@pytest.mark.parametrize("name", [n for n in NEW_MODELS if n != "vit_b16"])
def test_forward_pass(name):
    """Logits of a batch of two 32x32 images (the ImageNet conv nets end at 1x1, ViT/16 at 2x2
    patches); in train mode for BatchNorm models, whose running statistics must then move."""
    model = models.get(name)
    variables = _filled_variables(name, 32)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    if "batch_stats" in variables:
        logits, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
        moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                                       state["batch_stats"])
        assert all(jax.tree_util.tree_leaves(moved))
    else:
        logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))


def test_vit_b16_forward_shapes_only():
    model = models.get("vit_b16", 1000)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    assert jax.eval_shape(model.apply, _shapes("vit_b16", 224, 1000), x).shape == (2, 1000)


# One site per ReLU (ResNet-50: stem + 3 per bottleneck), per ReLU6 (MobileNetV2: stem, 1 + 2 x 16
# in the blocks, last conv), per GELU (ViT: one per encoder block).
@pytest.mark.parametrize("name, sites", [
    ("vgg19", 16), ("densenet40", 39), ("mobilenetv2", 35), ("resnet50", 49), ("vit_ti4_cifar", 12),
])
def test_relu_sites(name, sites):
    model = models.get(name)
    x = jnp.zeros((2, 32, 32, 3))
    counts = jax.eval_shape(lambda v: apj.stats.relu_counts(model, v, x, train=False), _shapes(name, 32))
    assert len(_sites(counts)) == sites


def test_relu6_counts_zeros_and_clips():
    x = jnp.array([[-2.0, 0.0, 3.0, 7.0], [1.0, -1.0, 6.5, -0.5]])
    y, state = ReLU6().apply({}, x, mutable=["relu_stats"])
    np.testing.assert_array_equal(y, [[0.0, 0.0, 3.0, 6.0], [1.0, 0.0, 6.0, 0.0]])
    np.testing.assert_array_equal(state["relu_stats"]["relu"]["zeros"], [1, 2, 0, 1])
    assert int(state["relu_stats"]["relu"]["positions"]) == 2


def test_gelu_counts_non_positive_preactivations():
    x = jnp.array([[-2.0, 0.0, 3.0], [1.0, -1e-3, -0.5]])
    y, state = GELU().apply({}, x, mutable=["relu_stats"])
    np.testing.assert_allclose(y, jax.nn.gelu(x, approximate=False), rtol=1e-6)
    assert float(y[0, 0]) < 0.0  # counted as dead although GELU(-2) is not zero
    np.testing.assert_array_equal(state["relu_stats"]["relu_equivalent"]["zeros"], [1, 2, 1])
    rate = apj.stats.dead_neuron_rate(state["relu_stats"])
    assert rate["overall"] == pytest.approx(4 / 6)


@pytest.mark.parametrize("name", ["vgg11", "vit_ti4_cifar"])
def test_one_masked_train_step(name):
    model = models.get(name)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = variables["params"]
    rng = np.random.default_rng(1)

    def half_pruned(p):  # a random half of every kernel (prune.prune is slow eagerly on 9 M weights)
        return jnp.asarray(rng.random(p.shape) < 0.5 if p.ndim >= 2 else np.ones(p.shape, bool))

    mask = jax.tree_util.tree_map(half_pruned, params)
    cfg = train.OptimConfig(lr=0.01)
    tx = train.optimizer(cfg, train.lr_schedule(cfg, 10), params)
    state = train.fresh_state(params, variables.get("batch_stats", {}), mask, tx)
    steps = train.make_steps(model, tx, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment=False)
    images = jnp.asarray(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, 4), jnp.int32)
    state, metrics = steps.train(state, images, labels, jnp.arange(4), jax.random.key(2))
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))
    moved = 0
    for (leaf, p), (_, m), (_, p0) in zip(apj.masks.prunable_leaves(state.params), apj.masks.prunable_leaves(mask),
                                          apj.masks.prunable_leaves(params)):
        p, m, p0 = np.asarray(p), np.asarray(m), np.asarray(p0)
        assert np.all(p[~m] == 0.0), f"pruned weights of {leaf} moved"
        moved += int(np.sum(p[m] != p0[m]))
    assert moved > 0


def test_registry_names_kwargs_and_errors():
    assert set(NEW_MODELS) | {"mlp", "resnet20", "resnet32", "resnet56", "resnet110"} == set(models.names())
    with pytest.raises(ValueError, match=r"unknown model 'vgg18'; known models: densenet40, mlp, mobilenetv2"):
        models.get("vgg18")
    assert models.get("vit_s16", patch_size=4).patch_size == 4
    assert models.get("densenet40", 100).num_classes == 100
    with pytest.raises(ValueError, match="18"):
        models.get("vgg11", depth=18)
    with pytest.raises(ValueError, match="41"):
        models.get("densenet40", depth=41)
    with pytest.raises(ValueError, match="patch_size 16"):
        _shapes("vit_ti16", 40)
