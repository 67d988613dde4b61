"""DenseNet for CIFAR (Huang et al. 2017, "Densely Connected Convolutional Networks"), DenseNet-40.

AP's Table 3 prunes DenseNet-40 with growth rate k = 12 on CIFAR-100. This is the paper's basic
DenseNet (no bottleneck, compression 1, i.e. not DenseNet-BC): a 3x3 stem with 16 channels, three
dense blocks of ``(depth - 4) / 3`` layers (12 for depth 40), each layer BN-ReLU-conv3x3(k) whose
output is concatenated to its input, a transition between blocks (BN-ReLU-conv1x1 keeping the
channel count, then 2x2 average pooling), and a final BN-ReLU, global average pool and Dense head.
About 1.0 M parameters for CIFAR-10 (Huang et al. 2017, Table 2). The transition's ReLU follows
the authors' Torch code (``addTransition``: BN, ReLU, conv, avg pool). Dropout (used only without
data augmentation) is omitted. Convolutions are bias-free; every ReLU is an ``ap_jax.stats.ReLU``
(3 x 12 + 2 + 1 = 39 sites for DenseNet-40).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ap_jax.models.layers import batch_norm, conv
from ap_jax.stats import ReLU

NUM_BLOCKS = 3


def layers_per_block(depth: int) -> int:
    """Dense layers per block such that ``depth == 3 * layers + 4``; ValueError otherwise."""
    if depth < 7 or (depth - 4) % NUM_BLOCKS:
        raise ValueError(f"invalid DenseNet depth {depth}: must be 3n+4 with n >= 1 (40, 100, ...)")
    return (depth - 4) // NUM_BLOCKS


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing ``growth_rate`` channels, concatenated to the input."""

    growth_rate: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = batch_norm(train, "bn", relu=True)(x)
        y = ReLU(applied=True, name="relu")(y)
        y = conv(self.growth_rate, 3, "conv")(y)
        return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (same channel count: compression 1), then 2x2 average pooling."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = batch_norm(train, "bn", relu=True)(x)
        x = ReLU(applied=True, name="relu")(x)
        x = conv(x.shape[-1], 1, "conv")(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
    """DenseNet-``depth`` with growth rate ``growth_rate`` on NHWC images; returns logits."""

    depth: int = 40
    growth_rate: int = 12
    num_classes: int = 10
    stem_features: int = 16

    def __post_init__(self) -> None:
        layers_per_block(self.depth)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(self.stem_features, 3, "stem_conv")(x)
        for block in range(1, NUM_BLOCKS + 1):
            for layer in range(1, layers_per_block(self.depth) + 1):
                x = DenseLayer(self.growth_rate, name=f"block{block}_layer{layer}")(x, train)
            if block < NUM_BLOCKS:
                x = Transition(name=f"transition{block}")(x, train)
        x = batch_norm(train, "final_bn", relu=True)(x)
        x = ReLU(applied=True, name="final_relu")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
