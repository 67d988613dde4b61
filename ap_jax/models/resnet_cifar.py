"""ResNet for CIFAR (He et al. 2016, "Deep Residual Learning for Image Recognition", Sec. 4.2).

A 3x3/16 stem, three stages of ``n`` BasicBlocks with 16, 32 and 64 channels (stages 2 and 3
start with stride 2), global average pooling and a Dense head: depth ``6n + 2`` (ResNet-20, -32,
-56, -110). These are the dense networks that AP prunes; every ReLU is an ``ap_jax.stats.ReLU``
so the dead neuron rate can be measured at all 6n + 1 sites.

Conventions, chosen to match the official AP PyTorch code:

* convolutions have no bias and He-normal init ``variance_scaling(2.0, "fan_out", "normal")``
  (PyTorch's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``); the Dense head keeps
  Flax's default init;
* BatchNorm uses ``momentum=0.9, epsilon=1e-5`` (Flax's momentum is the weight of the running
  average, so 0.9 here is PyTorch's ``momentum=0.1``); it is ``ap_jax.batchnorm.BatchNorm``
  (Flax's parameters and statistics, fewer passes over the activations), with the ReLU and the
  residual add fused into it, so the ``ReLU`` sites only count;
* shortcut option "B" (1x1 conv with stride + BN when the shape changes, identity otherwise) is
  the default; option "A" is He et al.'s parameter-free shortcut (subsample spatially, append
  zero channels).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ap_jax import conv
from ap_jax.batchnorm import BatchNorm
from ap_jax.stats import ReLU

SHORTCUTS = ("A", "B")
STAGE_FEATURES = (16, 32, 64)

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _check_shortcut(shortcut: str) -> None:
    if shortcut not in SHORTCUTS:
        raise ValueError(f"invalid shortcut option {shortcut!r}; expected one of {', '.join(SHORTCUTS)}")


def blocks_per_stage(depth: int) -> int:
    """``n`` such that ``depth == 6n + 2``; ValueError for any other depth."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"invalid ResNet-CIFAR depth {depth}: must be 6n+2 with n >= 1 (20, 32, 56, 110, ...)")
    return (depth - 2) // 6


def _conv(features: int, kernel: int, strides: int, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=(kernel - 1) // 2,  # symmetric, as PyTorch's padding=1 (not "SAME")
        use_bias=False,
        kernel_init=conv_init,
        conv_general_dilated=conv.conv_general_dilated,  # fast backward pass on CPU (ap_jax.conv)
        name=name,
    )


def _bn(train: bool, name: str, relu: bool = False) -> BatchNorm:
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, relu=relu, name=name)


class BasicBlock(nn.Module):
    """conv3x3(stride) - BN - ReLU - conv3x3 - BN, add shortcut, ReLU."""

    features: int
    strides: int = 1
    shortcut: str = "B"

    def __post_init__(self) -> None:
        _check_shortcut(self.shortcut)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = _conv(self.features, 3, self.strides, "conv1")(x)
        y = _bn(train, "bn1", relu=True)(y)
        y = ReLU(applied=True, name="relu1")(y)
        y = _conv(self.features, 3, 1, "conv2")(y)

        if self.strides != 1 or x.shape[-1] != self.features:
            if self.shortcut == "B":
                x = _conv(self.features, 1, self.strides, "shortcut_conv")(x)
                x = _bn(train, "shortcut_bn")(x)
            else:
                x = x[:, :: self.strides, :: self.strides, :]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
        return ReLU(applied=True, name="relu2")(_bn(train, "bn2", relu=True)(y, residual=x))


class ResNetCIFAR(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (float32 NHWC, already normalised); returns logits."""

    depth: int = 20
    num_classes: int = 10
    shortcut: str = "B"

    def __post_init__(self) -> None:
        blocks_per_stage(self.depth)
        _check_shortcut(self.shortcut)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _conv(STAGE_FEATURES[0], 3, 1, "stem_conv")(x)
        x = _bn(train, "stem_bn", relu=True)(x)
        x = ReLU(applied=True, name="stem_relu")(x)
        for stage, features in enumerate(STAGE_FEATURES):
            for block in range(blocks_per_stage(self.depth)):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(features, strides, self.shortcut, name=f"stage{stage + 1}_block{block}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
