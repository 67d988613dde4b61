"""Model registry: build any of AP's networks by name, so configs and scripts can name a model.

``get("resnet20")`` is ResNet-20 with shortcut option "B" (as in the official AP code);
``get("resnet20", shortcut="A")`` selects He et al.'s parameter-free shortcut.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn

from ap_jax.models.mlp import MLP
from ap_jax.models.resnet_cifar import BasicBlock, ResNetCIFAR

__all__ = ["MLP", "BasicBlock", "ResNetCIFAR", "get", "names"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    **{f"resnet{d}": functools.partial(ResNetCIFAR, depth=d) for d in (20, 32, 56, 110)},
}


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs; ``kwargs`` go to the model's constructor."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)
