"""2-D convolution for the models: plain ``lax`` on GPU/TPU, a CPU-friendly backward pass on CPU.

Why: XLA:CPU runs the forward convolution well (it hands it to its YNNPACK/oneDNN-style kernels),
but its weight gradient needs the activations and output gradients transposed to a
channel-major layout, and XLA fuses the BatchNorm/ReLU producers into those transposes, so it
recomputes whole activations in a cache-hostile order. In a profile of the ResNet-20 step (batch
128, 2-core CPU) these transposes took 40-55 % of the op time (more when the machine is busy),
and the stride-2 input gradient (a ``lhs_dilation`` convolution) ran on a slow generic path.
``benchmarks/train_step.py`` measures both paths side by side.

What: :func:`conv_general_dilated` is a drop-in for ``lax.conv_general_dilated`` (pass it as
``nn.Conv(..., conv_general_dilated=conv_general_dilated)``). On the fast path it is a
``jax.custom_vjp`` with the same forward convolution and this backward pass:

* weight gradient: the batch is split into chunks and a ``lax.scan`` sums each chunk's
  gradient. The scan's operands are materialised once in the natural NHWC layout (producers
  cannot fuse across the loop). A stride-1 convolution whose padding adds little to its grid
  (:data:`ROW_OVERHEAD`, e.g. ResNet-20's 32x32 and 16x16 stages) takes one GEMM per kernel
  tap on the padded rows, where each tap is a contiguous row offset, so ``x`` and ``dy`` are
  read without building patches (:func:`_row_chunk_weight_grad`); any other takes an im2col GEMM
  (patches ``(rows, kh*kw*C_in)`` transposed times the output gradient ``(rows, C_out)``).
  :func:`chunk_size` sizes a chunk so that its operands stay in cache;
* input gradient: one stride-1 convolution of the output gradient with the kernel rearranged
  into ``stride**2`` phases, followed by depth-to-space. For stride 1 this is the usual
  transposed convolution; for stride 2 it replaces the slow ``lhs_dilation`` convolution.

The fast path covers 2-D NHWC/HWIO convolutions without dilation or groups, with non-negative
padding (SAME, VALID or explicit pairs); anything else goes to ``lax.conv_general_dilated``.

The switch: environment variable ``AP_JAX_CONV`` = ``auto`` (default: fast on the CPU backend,
``lax`` elsewhere), ``fast`` or ``lax``; :func:`use` overrides it in a ``with`` block. The choice
is made when a function is traced, so it applies to steps compiled (``jax.jit``) while it holds.
Parameters, shapes and results do not depend on the choice (up to float rounding).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

ENV_VAR = "AP_JAX_CONV"
IMPLS = ("auto", "fast", "lax")
PATCH_BYTES = 5 * 2**20  # im2col patches per weight-gradient chunk (the fastest of 1-64 examples at ResNet-20's shapes)
ROW_BYTES = 3 * 2**19  # padded x and dy per row-layout chunk
ROW_OVERHEAD = 1.3  # the row layout's most padded grid cells per output cell (32x32: 1.13, 16x16: 1.27, 8x8: 1.56)

NHWC = ("NHWC", "HWIO", "NHWC")

Padding = tuple[tuple[int, int], ...]

_override: list[str] = []


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"convolution implementation must be one of {IMPLS}, got {impl!r}")
    return impl


@contextlib.contextmanager
def use(impl: str) -> Iterator[None]:
    """Within the block, trace convolutions with ``impl`` ("auto", "fast" or "lax")."""
    _override.append(_check_impl(impl))
    try:
        yield
    finally:
        _override.pop()


def _env_impl() -> str:
    impl = os.environ.get(ENV_VAR, "auto")
    if impl not in IMPLS:
        raise ValueError(f"environment variable {ENV_VAR}={impl!r}: must be one of {', '.join(IMPLS)}")
    return impl


def active_impl() -> str:
    """The implementation a convolution traced now would use: "fast" or "lax"."""
    impl = _override[-1] if _override else _env_impl()
    if impl == "auto":
        return "fast" if jax.default_backend() == "cpu" else "lax"
    return impl


def _plain(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _taps(x: jax.Array, kernel: tuple[int, int], strides: tuple[int, int], out_hw: tuple[int, int]) -> list[jax.Array]:
    """The ``kh * kw`` strided windows of a padded NHWC ``x`` that meet each kernel tap."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, strides, out_hw
    return [x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
            for i in range(kh) for j in range(kw)]


def chunk_size(n: int, out_hw: tuple[int, int], kernel: tuple[int, int], cin: int) -> int:
    """Examples per im2col weight-gradient chunk: the largest power of two (at most ``n``) whose
    float32 patches fit in :data:`PATCH_BYTES` (ResNet-20 at batch 128: 8, 16 and 32 by stage)."""
    return _largest_chunk(n, 4 * out_hw[0] * out_hw[1] * kernel[0] * kernel[1] * cin, PATCH_BYTES)


def _largest_chunk(n: int, per_example: int, budget: int) -> int:
    chunk = 1
    while chunk * 2 <= n and chunk * 2 * per_example <= budget:
        chunk *= 2
    return chunk


def uses_rows(x_shape: tuple[int, ...], dy_shape: tuple[int, ...], strides: tuple[int, int], padding: Padding) -> bool:
    """Whether the weight gradient takes the row layout: stride 1 and a padded grid at most
    :data:`ROW_OVERHEAD` times the output grid."""
    (lo_h, hi_h), (lo_w, hi_w) = padding
    grid = (x_shape[1] + lo_h + hi_h) * (x_shape[2] + lo_w + hi_w)
    return strides == (1, 1) and grid <= ROW_OVERHEAD * dy_shape[1] * dy_shape[2]


def _row_chunk_weight_grad(x: jax.Array, dy: jax.Array, w_shape: tuple[int, ...], padding: Padding) -> jax.Array:
    """Stride-1 weight gradient of one chunk, one GEMM per tap over the flattened padded grid.

    With ``x`` padded to ``(n, H, W, C_in)`` and ``dy`` zero-padded to the same grid, output cell
    ``r`` (a flat row) meets input row ``r + i*W + j`` at tap ``(i, j)``; rows of ``dy`` outside
    the output grid are zero, so they add nothing and no tap crosses into another example.
    """
    kh, kw, cin, cout = w_shape
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    grid_h, grid_w = x.shape[1:3]
    dy = jnp.pad(dy, ((0, 0), (0, grid_h - dy.shape[1]), (0, grid_w - dy.shape[2]), (0, 0))).reshape(-1, cout)
    rows = jnp.pad(x.reshape(-1, cin), ((0, (kh - 1) * grid_w + kw - 1), (0, 0)))
    n = dy.shape[0]
    taps = [lax.dot_general(rows[i * grid_w + j : i * grid_w + j + n], dy, (((0,), (0,)), ((), ())))
            for i in range(kh) for j in range(kw)]
    return jnp.stack(taps).reshape(w_shape)


def _chunk_weight_grad(x: jax.Array, dy: jax.Array, w_shape: tuple[int, ...], strides, padding) -> jax.Array:
    """Weight gradient of one chunk of examples: im2col patches (rows, kh*kw*C_in)^T @ dy (rows, C_out)."""
    kh, kw, cin, cout = w_shape
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    patches = jnp.concatenate(_taps(x, (kh, kw), strides, dy.shape[1:3]), axis=-1).reshape(-1, kh * kw * cin)
    grad = lax.dot_general(patches, dy.reshape(-1, cout), (((0,), (0,)), ((), ())))
    return grad.reshape(w_shape)


def weight_grad(
    x: jax.Array, dy: jax.Array, w_shape: tuple[int, ...], strides: tuple[int, int], padding: Padding,
    chunk: int | None = None,
) -> jax.Array:
    """Gradient of the kernel, summed over chunks of ``chunk`` examples in a ``lax.scan``
    (default: sized to the cache for the layout :func:`uses_rows` picks).

    A batch that is not a multiple of ``chunk`` is padded with zero examples (they add nothing).
    """
    n = x.shape[0]
    if uses_rows(x.shape, dy.shape, strides, padding):
        grid = (x.shape[1] + sum(padding[0])) * (x.shape[2] + sum(padding[1]))
        chunk = min(chunk or _largest_chunk(n, 4 * grid * (w_shape[2] + w_shape[3]), ROW_BYTES), n)

        def of_chunk(xc, dyc):
            return _row_chunk_weight_grad(xc, dyc, w_shape, padding)
    else:
        chunk = min(chunk or chunk_size(n, dy.shape[1:3], w_shape[:2], w_shape[2]), n)

        def of_chunk(xc, dyc):
            return _chunk_weight_grad(xc, dyc, w_shape, strides, padding)
    extra = -n % chunk
    if extra:
        x = jnp.pad(x, ((0, extra),) + ((0, 0),) * 3)
        dy = jnp.pad(dy, ((0, extra),) + ((0, 0),) * 3)
    xs = x.reshape(-1, chunk, *x.shape[1:])
    dys = dy.reshape(-1, chunk, *dy.shape[1:])

    def add_chunk(total, pair):
        return total + of_chunk(*pair), None

    total, _ = lax.scan(add_chunk, jnp.zeros(w_shape, jnp.result_type(x, dy)), (xs, dys))
    return total


def _phase_kernel(w: jax.Array, stride: tuple[int, int]) -> jax.Array:
    """HWIO kernel (M_h, M_w, C_out, s_h*s_w*C_in) of the transposed convolution, one block per phase.

    Entry ``[m_h, m_w, o, (r, q, i)]`` is ``w[s_h*(M_h-1-m_h) + r, s_w*(M_w-1-m_w) + q, i, o]``
    (zero outside the kernel), with ``M = ceil(k / s)``.
    """
    kh, kw, cin, cout = w.shape
    (sh, sw), mh, mw = stride, -(-kh // stride[0]), -(-kw // stride[1])
    w = jnp.pad(w, ((0, sh * mh - kh), (0, sw * mw - kw), (0, 0), (0, 0)))
    w = w.reshape(mh, sh, mw, sw, cin, cout)[::-1, :, ::-1]
    return w.transpose(0, 2, 5, 1, 3, 4).reshape(mh, mw, cout, sh * sw * cin)


def input_grad(
    w: jax.Array, dy: jax.Array, x_shape: tuple[int, ...], strides: tuple[int, int], padding: Padding
) -> jax.Array:
    """Gradient of the input: a stride-1 convolution into ``s_h*s_w`` phases, then depth-to-space."""
    kh, kw, cin, _ = w.shape
    (sh, sw), mh, mw = strides, -(-kh // strides[0]), -(-kw // strides[1])
    n, ho, wo, _ = dy.shape
    phases = _plain(dy, _phase_kernel(w, strides), (1, 1), ((mh - 1, mh - 1), (mw - 1, mw - 1)))
    hh, ww = ho + mh - 1, wo + mw - 1
    full = phases.reshape(n, hh, ww, sh, sw, cin).transpose(0, 1, 3, 2, 4, 5).reshape(n, hh * sh, ww * sw, cin)
    (lo_h, _), (lo_w, _) = padding
    height, width = x_shape[1], x_shape[2]
    full = jnp.pad(full, ((0, 0), (0, max(0, lo_h + height - hh * sh)), (0, max(0, lo_w + width - ww * sw)), (0, 0)))
    return full[:, lo_h : lo_h + height, lo_w : lo_w + width, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """NHWC x HWIO convolution with the CPU-friendly backward pass described in the module doc."""
    return _plain(x, w, strides, padding)


def _conv2d_fwd(x, w, strides, padding):
    return _plain(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, residuals, dy):
    x, w = residuals
    dx = input_grad(w, dy, x.shape, strides, padding).astype(x.dtype)
    dw = weight_grad(x, dy, w.shape, strides, padding).astype(w.dtype)
    return dx, dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _is_nhwc(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> bool:
    if lhs.ndim != 4 or rhs.ndim != 4:
        return False
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return given == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)


def _ones(values: Sequence[int] | None) -> bool:
    return values is None or all(v == 1 for v in values)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` with the same signature; the fast path where it applies."""
    fast = (
        active_impl() == "fast"
        and _is_nhwc(lhs, rhs, dimension_numbers)
        and _ones(lhs_dilation)
        and _ones(rhs_dilation)
        and feature_group_count == 1
        and batch_group_count == 1
        and precision is None
        and preferred_element_type is None
        and lhs.dtype == rhs.dtype
    )
    if fast:
        strides = tuple(int(s) for s in window_strides)
        if isinstance(padding, str):
            pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
        else:
            pads = padding
        pads = tuple((int(lo), int(hi)) for lo, hi in pads)
        if all(lo >= 0 and hi >= 0 for lo, hi in pads):
            return conv2d(lhs, rhs, strides, pads)
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type,
    )
