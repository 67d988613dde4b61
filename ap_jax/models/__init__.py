"""Model registry: build any of AP's networks by name, so configs and scripts can name a model.

``get("resnet20")`` is ResNet-20 with shortcut option "B" (as in the official AP code);
``get("resnet20", shortcut="A")`` selects He et al.'s parameter-free shortcut. Other keywords
also go to the model's constructor (``get("vit_s16", patch_size=4)``, ``get("densenet40",
growth_rate=24)``). Every model takes NHWC float images and ``train: bool``; "mobilenetv2" is the
CIFAR variant, "mobilenetv2_imagenet" the ImageNet one; "vit_ti4_cifar" is ViT-Ti with 4x4
patches for 32x32 images.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn

from ap_jax.models.densenet import DenseNet
from ap_jax.models.mlp import MLP
from ap_jax.models.mobilenet_v2 import MobileNetV2
from ap_jax.models.resnet import ResNet
from ap_jax.models.resnet_cifar import BasicBlock, ResNetCIFAR
from ap_jax.models.vgg import VGG
from ap_jax.models.vit import SIZES as VIT_SIZES
from ap_jax.models.vit import ViT

__all__ = ["MLP", "BasicBlock", "DenseNet", "MobileNetV2", "ResNet", "ResNetCIFAR", "VGG", "ViT", "get", "names"]


def _vit(size: str, patch_size: int) -> Callable[..., nn.Module]:
    width, depth, heads, mlp_dim = VIT_SIZES[size]
    return functools.partial(ViT, patch_size=patch_size, width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    **{f"resnet{d}": functools.partial(ResNetCIFAR, depth=d) for d in (20, 32, 56, 110)},
    **{f"vgg{d}": functools.partial(VGG, depth=d) for d in (11, 13, 16, 19)},
    "densenet40": functools.partial(DenseNet, depth=40, growth_rate=12),
    "mobilenetv2": functools.partial(MobileNetV2, cifar=True),
    "mobilenetv2_imagenet": functools.partial(MobileNetV2, cifar=False),
    "resnet50": ResNet,
    **{f"vit_{size}16": _vit(size, 16) for size in VIT_SIZES},
    "vit_ti4_cifar": _vit("ti", 4),
}


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs; ``kwargs`` go to the model's constructor."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)
