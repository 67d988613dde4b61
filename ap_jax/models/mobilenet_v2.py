"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks").

AP's Table 4 prunes MobileNetV2 on CIFAR-100; an ImageNet version is here too. Width multiplier
1.0. Both follow torchvision's ``mobilenet_v2`` layout (3,504,872 parameters for 1000 classes):
a 3x3/32 stem, 17 inverted-residual blocks per the paper's Table 2, a 1x1/1280 conv, global
average pooling and a Dense head. A block expands with a 1x1 conv (skipped when the expansion
ratio is 1), filters with a 3x3 depthwise conv carrying the block's stride, and projects with a
linear 1x1 conv; it adds its input when the stride is 1 and the channel counts match. Every conv
is bias-free and followed by BatchNorm. The classifier's dropout (0.2, no parameters) is omitted.

CIFAR variant (``cifar=True``): the stem has stride 1 and the second stage (24 channels) stride 1
instead of 2, as in kuangliu/pytorch-cifar's ``models/mobilenetv2.py`` (the "change stride 2 -> 1
for CIFAR10" notes), so a 32x32 input ends at 4x4. Unlike that port we keep torchvision's blocks
(no expansion conv when t = 1, no 1x1 conv shortcuts, ReLU6), so both variants share one
parameter tree and differ only in strides.

ReLU6: ``ReLU6`` below is ``min(ap_jax.stats.ReLU(x), 6)``. The clip at 6 never creates a zero,
so the inner ReLU's sown zero count is exactly the zero count of the ReLU6 output and the dead
neuron rate keeps its meaning. Sites: stem, 1 in the t = 1 block, 2 in each of the other 16
blocks, and the last conv: 35 in all.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ap_jax.models.layers import batch_norm, conv
from ap_jax.stats import ReLU

# Sandler et al. 2018, Table 2: (expansion t, output channels c, repeats n, first stride s).
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_FEATURES = 32
LAST_FEATURES = 1280


class ReLU6(nn.Module):
    """``min(max(x, 0), 6)``; the ``max`` is an ``ap_jax.stats.ReLU`` (named ``relu``) that sows counts."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.minimum(ReLU(name="relu")(x), 6.0)


class InvertedResidual(nn.Module):
    """[expand 1x1 - BN - ReLU6] - depthwise 3x3 (stride) - BN - ReLU6 - project 1x1 - BN (+ input)."""

    features: int
    strides: int
    expansion: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        hidden = x.shape[-1] * self.expansion
        y = x
        if self.expansion != 1:
            y = conv(hidden, 1, "expand_conv")(y)
            y = batch_norm(train, "expand_bn")(y)
            y = ReLU6(name="expand_relu6")(y)
        y = conv(hidden, 3, "depthwise_conv", strides=self.strides, groups=hidden)(y)
        y = batch_norm(train, "depthwise_bn")(y)
        y = ReLU6(name="depthwise_relu6")(y)
        y = conv(self.features, 1, "project_conv")(y)
        y = batch_norm(train, "project_bn")(y)
        if self.strides == 1 and x.shape[-1] == self.features:
            y = y + x
        return y


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) on NHWC images; ``cifar`` selects the stride-1 stem and stage 2."""

    num_classes: int = 10
    cifar: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(STEM_FEATURES, 3, "stem_conv", strides=1 if self.cifar else 2)(x)
        x = batch_norm(train, "stem_bn")(x)
        x = ReLU6(name="stem_relu6")(x)
        for stage, (expansion, features, repeats, first_stride) in enumerate(STAGES, start=1):
            if self.cifar and stage == 2:
                first_stride = 1
            for block in range(1, repeats + 1):
                strides = first_stride if block == 1 else 1
                x = InvertedResidual(features, strides, expansion, name=f"stage{stage}_block{block}")(x, train)
        x = conv(LAST_FEATURES, 1, "last_conv")(x)
        x = batch_norm(train, "last_bn")(x)
        x = ReLU6(name="last_relu6")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
