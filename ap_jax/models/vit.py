"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") in torchvision's layout.

AP's Table 6 prunes ViT-B/16 (86,567,656 parameters at 224x224 with 1000 classes, torchvision's
``vit_b_16``). Layout: a ``patch x patch`` stride-``patch`` conv embedding (with bias), a learned
class token prepended, learned position embeddings added (their length follows the input size,
so a 32x32 image with patch 16 has 2x2 + 1 tokens), pre-norm encoder blocks (LayerNorm ->
multi-head self-attention -> residual; LayerNorm -> Dense -> GELU -> Dense -> residual), a final
LayerNorm, and a Dense head on the class token. LayerNorm epsilon 1e-6, exact (erf) GELU, no
dropout. Attention projects q, k, v with one fused Dense (torchvision's ``in_proj``). Initialisation
as torchvision: truncated-normal fan-in patch embedding, zero class token, N(0, 0.02) position
embeddings, Xavier-uniform attention and MLP kernels, zero head.

Prunable leaves: ``ap_jax.masks.prunable`` takes every leaf with ``ndim >= 2`` as a kernel, so
every bias here is 1-D (hence the fused Dense rather than ``nn.MultiHeadDotProductAttention``,
whose per-head biases are 2-D), and the class token and position embeddings are stored flat
(``(width,)`` and ``(tokens * width,)``) and reshaped in the forward pass: only the patch
embedding, attention, MLP and head kernels are pruned, like the conv and dense kernels elsewhere.
``SIZES`` holds ViT-Ti, -S and -B (Touvron et al. 2021 for Ti and S); the registry also offers
ViT-Ti with patch 4 for 32x32 CIFAR images (64 patches), a CPU-sized stand-in.

Dead neuron rate for GELUs: a GELU is never exactly zero, so "outputs that are exactly zero" would
always be 0 %. We count instead the outputs whose pre-activation is ``<= 0``, i.e. the units a
ReLU in the same place would zero (the "ReLU-equivalent" dead share; GELU there is in (-0.17, 0]).
``GELU`` below does it by feeding its input to an ``ap_jax.stats.ReLU`` named
``relu_equivalent`` only for its sown counts (``relu(x) == 0`` exactly when ``x <= 0``), so the
counts land in the same ``relu_stats`` collection with the same keys as a ReLU's and
``ap_jax.stats.dead_neuron_rate`` works unchanged; one site per encoder block. A "unit" is a
hidden MLP feature at one token position (channel x position, as for conv nets).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ap_jax import conv
from ap_jax.stats import ReLU

# name -> (width, depth, heads, MLP width): ViT-B from Dosovitskiy et al. 2021 Table 1, Ti and S
# from Touvron et al. 2021 (DeiT) Table 1.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
}

_bias_init = nn.initializers.normal(stddev=1e-6)


class GELU(nn.Module):
    """Exact GELU that sows the count of non-positive pre-activations as ReLU-equivalent zeros."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ReLU(name="relu_equivalent")(x)  # output unused: only its sown counts matter
        return nn.gelu(x, approximate=False)


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused q/k/v Dense, scaled dot-product per head, output Dense."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"width {width} is not a multiple of num_heads {self.num_heads}")
        qkv = nn.Dense(3 * width, kernel_init=nn.initializers.xavier_uniform(), name="qkv")(x)
        q, k, v = jnp.split(qkv.reshape((batch, tokens, 3 * self.num_heads, -1)), 3, axis=2)
        y = nn.dot_product_attention(q, k, v).reshape((batch, tokens, width))
        return nn.Dense(width, kernel_init=nn.initializers.xavier_uniform(), name="out")(y)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(epsilon=1e-6, name="ln1")(x)
        x = x + SelfAttention(self.num_heads, name="attention")(y)
        y = nn.LayerNorm(epsilon=1e-6, name="ln2")(x)
        y = nn.Dense(self.mlp_dim, kernel_init=nn.initializers.xavier_uniform(), bias_init=_bias_init,
                     name="mlp_fc1")(y)
        y = GELU(name="mlp_gelu")(y)
        y = nn.Dense(x.shape[-1], kernel_init=nn.initializers.xavier_uniform(), bias_init=_bias_init,
                     name="mlp_fc2")(y)
        return x + y


class ViT(nn.Module):
    """ViT on NHWC images whose sides are multiples of ``patch_size``; returns logits.

    ``train`` is accepted for the uniform model signature; there is no dropout or BatchNorm.
    """

    num_classes: int = 1000
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        height, width = x.shape[1:3]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of patch_size {self.patch_size}")
        x = nn.Conv(
            self.width, (self.patch_size, self.patch_size), strides=(self.patch_size, self.patch_size),
            padding="VALID", kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            conv_general_dilated=conv.conv_general_dilated, name="patch_embed",
        )(x)
        x = x.reshape((x.shape[0], -1, self.width))
        class_token = self.param("class_token", nn.initializers.zeros, (self.width,))
        x = jnp.concatenate([jnp.broadcast_to(class_token, (x.shape[0], 1, self.width)), x], axis=1)
        positions = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (x.shape[1] * self.width,))
        x = x + positions.reshape((x.shape[1], self.width))
        for block in range(1, self.depth + 1):
            x = EncoderBlock(self.num_heads, self.mlp_dim, name=f"encoder_block{block}")(x)
        x = nn.LayerNorm(epsilon=1e-6, name="encoder_norm")(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x[:, 0])
