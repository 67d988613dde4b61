"""ResNet-50 for ImageNet in torchvision's layout (He et al. 2016; "v1.5": stride on the 3x3 conv).

AP's Table 5 prunes ResNet-50 on ImageNet. The layout is torchvision's ``resnet50`` (25,557,032
parameters for 1000 classes): a 7x7/64 stride-2 stem with BN and ReLU, 3x3 stride-2 max pooling,
four stages of 3, 4, 6 and 3 bottleneck blocks (widths 64, 128, 256, 512, expansion 4; stages 2-4
start with stride 2), global average pooling and a Dense head. A bottleneck is conv1x1-BN-ReLU,
conv3x3(stride)-BN-ReLU, conv1x1-BN, plus a shortcut (identity, or 1x1 conv with stride + BN when
the shape changes), then ReLU. Convolutions are bias-free; BN scales start at 1 (torchvision's
``zero_init_residual=False``). Every ReLU is an ``ap_jax.stats.ReLU``: 1 + 3 x 16 = 49 sites.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ap_jax.models.layers import batch_norm, conv
from ap_jax.stats import ReLU

EXPANSION = 4
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_SIZES_50 = (3, 4, 6, 3)


class Bottleneck(nn.Module):
    """conv1x1 - BN - ReLU - conv3x3(stride) - BN - ReLU - conv1x1(4 x width) - BN, add shortcut, ReLU."""

    width: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        features = self.width * EXPANSION
        y = conv(self.width, 1, "conv1")(x)
        y = batch_norm(train, "bn1", relu=True)(y)
        y = ReLU(applied=True, name="relu1")(y)
        y = conv(self.width, 3, "conv2", strides=self.strides)(y)
        y = batch_norm(train, "bn2", relu=True)(y)
        y = ReLU(applied=True, name="relu2")(y)
        y = conv(features, 1, "conv3")(y)
        if self.strides != 1 or x.shape[-1] != features:
            x = conv(features, 1, "shortcut_conv", strides=self.strides)(x)
            x = batch_norm(train, "shortcut_bn")(x)
        return ReLU(applied=True, name="relu3")(batch_norm(train, "bn3", relu=True)(y, residual=x))


class ResNet(nn.Module):
    """Bottleneck ResNet (ResNet-50 by default) on NHWC images (224x224 for ImageNet); returns logits."""

    num_classes: int = 1000
    stage_sizes: tuple[int, ...] = STAGE_SIZES_50

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(STAGE_WIDTHS[0], 7, "stem_conv", strides=2)(x)
        x = batch_norm(train, "stem_bn")(x)
        x = ReLU(name="stem_relu")(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, (width, blocks) in enumerate(zip(STAGE_WIDTHS, self.stage_sizes), start=1):
            for block in range(1, blocks + 1):
                strides = 2 if stage > 1 and block == 1 else 1
                x = Bottleneck(width, strides, name=f"stage{stage}_block{block}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
