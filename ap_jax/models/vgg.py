"""VGG-11/13/16/19 with BatchNorm for CIFAR, the variant of Frankle & Carbin 2019 (the LTH paper).

AP's Table 2 prunes VGG-19 on CIFAR-10 with the LTH recipe, so the network follows OpenLTH's
``models/cifar_vgg.py`` (facebookresearch/open_lth): a plan of 3x3 convolutions (padding 1, with
bias, as PyTorch's ``nn.Conv2d`` default) each followed by BatchNorm and ReLU, 2x2 max pooling
where the plan says ``"M"`` (no pooling after the last stage), average pooling of the final 2x2
map to 1x1 (here a global mean, identical at 32x32 input), and a single Dense classifier from 512
features. Every ReLU is an ``ap_jax.stats.ReLU``: one site per convolution.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ap_jax.models.layers import batch_norm, conv
from ap_jax.stats import ReLU

# OpenLTH models/cifar_vgg.py, Model.get_model_from_name: conv widths, "M" = 2x2 max pool.
PLANS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}


class VGG(nn.Module):
    """VGG-``depth`` (11, 13, 16 or 19) on NHWC images (32x32 for CIFAR); returns logits."""

    depth: int = 19
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.depth not in PLANS:
            raise ValueError(f"invalid VGG depth {self.depth}; expected one of {', '.join(map(str, PLANS))}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        stage, layer = 1, 1
        for spec in PLANS[self.depth]:
            if spec == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                stage, layer = stage + 1, 1
                continue
            prefix = f"stage{stage}_layer{layer}"
            x = conv(spec, 3, f"{prefix}_conv", use_bias=True)(x)
            x = batch_norm(train, f"{prefix}_bn", relu=True)(x)
            x = ReLU(applied=True, name=f"{prefix}_relu")(x)
            layer += 1
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)
