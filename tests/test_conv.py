"""ap_jax.conv: gradients of the CPU convolution path against ``jax.grad`` of ``lax`` convolution.

Tolerance: float32, ``rtol=1e-4, atol=1e-4`` on values and gradients of O(1..10) magnitude (the
fast path sums in a different order: chunks of examples, phase kernels), with matmul precision
"highest" so that accelerators compare true float32 too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ap_jax import conv, models

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(autouse=True)
def full_float32_precision():
    """Both paths in true float32: on GPUs the default precision rounds convolutions to TF32."""
    with jax.default_matmul_precision("highest"):
        yield

# (batch, size, in channels, out channels, kernel, stride, padding)
CASES = [
    (1, 8, 3, 5, 3, 1, "SAME"),
    (1, 9, 5, 3, 3, 2, "SAME"),
    (3, 8, 7, 5, 1, 1, "VALID"),
    (2, 9, 3, 7, 1, 2, "VALID"),
    (11, 8, 5, 3, 3, 1, "VALID"),  # two chunks, the second padded with zero examples
    (3, 10, 3, 5, 3, 2, "VALID"),
    (2, 8, 5, 7, 3, 1, ((1, 1), (1, 1))),  # the ResNet's explicit padding
    (9, 8, 3, 5, 3, 2, ((1, 1), (1, 1))),
    (2, 7, 3, 3, 1, 2, ((0, 0), (0, 0))),
    (2, 11, 3, 5, 5, 3, ((2, 1), (0, 2))),  # asymmetric padding, stride 3
    (3, 32, 3, 4, 3, 1, ((1, 1), (1, 1))),  # the row layout (padded grid 1.13x the output)
    (2, 20, 3, 5, 3, 1, ((2, 0), (1, 1))),  # the row layout, asymmetric padding
]


def _loss(fn, strides, padding):
    def loss(x, w):
        y = fn(x, w, strides, padding, dimension_numbers=conv.NHWC)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size), y
    return loss


@pytest.mark.parametrize("n, size, cin, cout, k, s, padding", CASES)
def test_fast_path_matches_lax_values_and_gradients(n, size, cin, cout, k, s, padding):
    kx, kw = jax.random.split(jax.random.PRNGKey(n * 100 + size))
    x = jax.random.normal(kx, (n, size, size, cin))
    w = jax.random.normal(kw, (k, k, cin, cout))
    with conv.use("fast"):
        fast = jax.jit(jax.grad(_loss(conv.conv_general_dilated, (s, s), padding), (0, 1), has_aux=True))
        (fast_dx, fast_dw), fast_y = fast(x, w)
    (ref_dx, ref_dw), ref_y = jax.grad(_loss(lax.conv_general_dilated, (s, s), padding), (0, 1), has_aux=True)(x, w)
    np.testing.assert_allclose(fast_y, ref_y, **TOL)
    np.testing.assert_allclose(fast_dx, ref_dx, **TOL)
    np.testing.assert_allclose(fast_dw, ref_dw, **TOL)


@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_weight_grad_sums_chunks_including_a_zero_padded_last_chunk(chunk):
    """11 examples in chunks of 4: the last chunk gets one zero example; of 16: one padded chunk."""
    kx, kd = jax.random.split(jax.random.PRNGKey(7))
    x, dy = jax.random.normal(kx, (11, 9, 9, 3)), jax.random.normal(kd, (11, 5, 5, 4))
    pads = ((1, 1), (1, 1))
    _, vjp = jax.vjp(lambda w: lax.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=conv.NHWC),
                     jnp.zeros((3, 3, 3, 4)))
    np.testing.assert_allclose(conv.weight_grad(x, dy, (3, 3, 3, 4), (2, 2), pads, chunk), vjp(dy)[0], **TOL)


@pytest.mark.parametrize("chunk", [1, 2, 8])
def test_row_layout_weight_grad_sums_chunks_including_a_zero_padded_last_chunk(chunk):
    """5 stride-1 examples on a 16x16 grid padded to 18x18 (the row layout): chunks of 2 leave
    one zero example; no tap of one example may reach into the next one's rows."""
    kx, kd = jax.random.split(jax.random.PRNGKey(8))
    x, dy = jax.random.normal(kx, (5, 16, 16, 3)), jax.random.normal(kd, (5, 16, 16, 4))
    pads = ((1, 1), (1, 1))
    assert conv.uses_rows(x.shape, dy.shape, (1, 1), pads)
    _, vjp = jax.vjp(lambda w: lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=conv.NHWC),
                     jnp.zeros((3, 3, 3, 4)))
    np.testing.assert_allclose(conv.weight_grad(x, dy, (3, 3, 3, 4), (1, 1), pads, chunk), vjp(dy)[0], **TOL)


def test_row_layout_is_taken_where_padding_adds_little_to_the_grid():
    """ResNet-20's 3x3 stride-1 convolutions: 34*34/32*32 = 1.13 and 18*18/16*16 = 1.27 take
    the row layout, 10*10/8*8 = 1.56 and every stride-2 convolution take im2col."""
    pads = ((1, 1), (1, 1))
    assert conv.uses_rows((128, 32, 32, 16), (128, 32, 32, 16), (1, 1), pads)
    assert conv.uses_rows((128, 16, 16, 32), (128, 16, 16, 32), (1, 1), pads)
    assert not conv.uses_rows((128, 8, 8, 64), (128, 8, 8, 64), (1, 1), pads)
    assert not conv.uses_rows((128, 32, 32, 16), (128, 16, 16, 32), (2, 2), pads)


def test_chunk_size_keeps_a_chunks_patches_within_the_budget():
    """ResNet-20 at batch 128: a 32x32x16 stage-1 example has 4*1024*144 = 576 KiB of patches,
    so 8 fit in 5 MiB; stage 2 (16x16, 32 channels) 16; stage 3 (8x8, 64) 32; never above n."""
    assert conv.chunk_size(128, (32, 32), (3, 3), 16) == 8
    assert conv.chunk_size(128, (16, 16), (3, 3), 32) == 16
    assert conv.chunk_size(128, (8, 8), (3, 3), 64) == 32
    assert conv.chunk_size(3, (2, 2), (1, 1), 1) == 2
    assert conv.chunk_size(1, (224, 224), (7, 7), 3) == 1


def _primitives(fn, *args) -> str:
    """The jaxpr as text: the fast path shows up as the weight gradient's chunk scan."""
    return str(jax.make_jaxpr(fn)(*args))


def test_switch_picks_the_path_and_falls_back_for_unsupported_convolutions():
    x, w = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 4))
    grad = jax.grad(lambda x, w, **kw: jnp.sum(conv.conv_general_dilated(x, w, (1, 1), "SAME", **kw)), 1)
    nhwc = dict(dimension_numbers=conv.NHWC)
    with conv.use("fast"):
        assert conv.active_impl() == "fast"
        assert "scan" in _primitives(lambda x, w: grad(x, w, **nhwc), x, w)
        grouped = lambda x, w: grad(x, w[:, :, :2], feature_group_count=2, **nhwc)
        assert "scan" not in _primitives(grouped, x, w)
        dilated = lambda x, w: grad(x, w, rhs_dilation=(2, 2), **nhwc)
        assert "scan" not in _primitives(dilated, x, w)
    with conv.use("lax"):
        assert "scan" not in _primitives(lambda x, w: grad(x, w, **nhwc), x, w)
    with conv.use("auto"):
        assert conv.active_impl() == ("fast" if jax.default_backend() == "cpu" else "lax")
    with pytest.raises(ValueError, match="'gpu'"):
        with conv.use("gpu"):
            pass


def test_resnet20_gradients_and_parameter_count_do_not_depend_on_the_path():
    model = models.get("resnet20")
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    assert sum(p.size for p in jax.tree_util.tree_leaves(variables["params"])) == 272_474

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(logits**2)

    grads = {}
    for impl in ("fast", "lax"):
        with conv.use(impl):
            grads[impl] = jax.jit(jax.grad(loss))(variables["params"])
    for a, b in zip(jax.tree_util.tree_leaves(grads["fast"]), jax.tree_util.tree_leaves(grads["lax"])):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
