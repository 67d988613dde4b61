"""MLP 3072-300-100-10 (LeNet-300-100 style) on flattened 32x32x3 images.

The fully connected baseline among AP's pruned networks; its ReLUs are ``ap_jax.stats.ReLU`` so
the dead neuron rate can be measured at each hidden layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from ap_jax.stats import ReLU


class MLP(nn.Module):
    """flatten, then Dense-ReLU for each of ``features``, then a Dense head; returns logits."""

    features: tuple[int, ...] = (300, 100)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or BatchNorm; kept for a uniform model signature
        x = x.reshape((x.shape[0], -1))
        for i, width in enumerate(self.features):
            x = nn.Dense(width, name=f"dense{i}")(x)
            x = ReLU(name=f"relu{i}")(x)
        return nn.Dense(self.num_classes, name="head")(x)
