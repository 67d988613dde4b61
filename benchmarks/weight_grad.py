"""The convolution weight gradient on CPU: the row layout against im2col patches, per layer and in the step.

    python -m benchmarks.weight_grad [--repeats 11] [--step-repeats 15] [--write]

Prints, each side by side (candidates interleaved repeat by repeat, medians):

* ``ap_jax.conv.weight_grad`` at ResNet-20's 3x3 stride-1 shapes (batch 128) with the row layout
  forced on and off, with the largest relative difference between the two (they sum in different
  orders), and whether ``conv.uses_rows`` takes the row layout there;
* the whole ResNet-20 driver step (``benchmarks.train_step.driver_step``) traced once with the
  row layout where ``conv.uses_rows`` picks it and once with im2col everywhere.

``--write`` puts the output into docs/performance.md between this script's markers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Iterator

import jax
import numpy as np

from ap_jax import conv
from ap_jax.config import positive_int
from benchmarks import train_step
from benchmarks.reporting import command_line, write_block

BLOCK = "benchmarks/weight_grad.py {backend}"
PADS = ((1, 1), (1, 1))
LAYERS = [(32, 16), (16, 32), (8, 64)]  # (size, channels) of ResNet-20's three stages


@contextlib.contextmanager
def row_layout(overhead: float) -> Iterator[None]:
    """Trace with ``conv.ROW_OVERHEAD`` at ``overhead`` (0: im2col everywhere; inf: rows for every stride-1 conv)."""
    saved, conv.ROW_OVERHEAD = conv.ROW_OVERHEAD, overhead
    try:
        yield
    finally:
        conv.ROW_OVERHEAD = saved


def compiled_weight_grad(x: jax.Array, dy: jax.Array, w_shape: tuple[int, ...], overhead: float):
    """``weight_grad`` compiled under ``row_layout(overhead)``, a zero-argument call."""
    fn = jax.jit(functools.partial(conv.weight_grad, w_shape=w_shape, strides=(1, 1), padding=PADS))
    with row_layout(overhead):
        fn(x, dy).block_until_ready()
    return lambda: fn(x, dy).block_until_ready()


def layer_lines(repeats: int) -> list[str]:
    """Per-layer medians, im2col against rows, with the largest relative difference."""
    lines = ["| layer (batch 128) | im2col ms | rows ms | im2col / rows | rows taken | max rel. diff |",
             "|---|---|---|---|---|---|"]
    for size, channels in LAYERS:
        kx, kd = jax.random.split(jax.random.PRNGKey(size))
        x = jax.random.normal(kx, (128, size, size, channels))
        dy = jax.random.normal(kd, (128, size, size, channels))
        shape = (3, 3, channels, channels)
        candidates = {"im2col": compiled_weight_grad(x, dy, shape, 0.0),
                      "rows": compiled_weight_grad(x, dy, shape, float("inf"))}
        times = {k: np.median(v) for k, v in train_step.interleaved(candidates, repeats, warmup=1).items()}
        a, b = (np.asarray(fn(), np.float64) for fn in candidates.values())
        diff = np.max(np.abs(a - b)) / np.max(np.abs(a))
        taken = conv.uses_rows(x.shape, dy.shape, (1, 1), PADS)
        lines.append(f"| {size}x{size}x{channels} | {1e3 * times['im2col']:.1f} | {1e3 * times['rows']:.1f} | "
                     f"{times['im2col'] / times['rows']:.2f}x | {'yes' if taken else 'no'} | {diff:.1e} |")
    return lines


def step_lines(repeats: int) -> list[str]:
    """The driver step with the row layout where it is taken against im2col everywhere."""
    model, variables, tx, images, labels = train_step._setup(128, 1024)
    candidates = {}
    for name, overhead in (("im2col everywhere", 0.0), ("rows where taken", conv.ROW_OVERHEAD)):
        with row_layout(overhead):
            candidates[name] = train_step.driver_step(model, variables, tx, images, labels, 128, "fast", False)
    times = {k: np.median(v) for k, v in train_step.interleaved(candidates, repeats, warmup=1).items()}
    slow, fast = times["im2col everywhere"], times["rows where taken"]
    return [f"- ResNet-20 driver step, batch 128, {repeats} interleaved repeats: im2col everywhere "
            f"{1e3 * slow:.1f} ms, rows where taken {1e3 * fast:.1f} ms: {slow / fast:.2f}x"]


def main(argv: list[str] | None = None) -> int:
    """Parse flags, time both layouts, print (and optionally write) the block."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.weight_grad", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=11, help="interleaved repeats per layer")
    parser.add_argument("--step-repeats", type=positive_int, default=15, help="interleaved repeats of the step")
    parser.add_argument("--write", action="store_true", help="also write the block into docs/performance.md")
    args = parser.parse_args(argv)
    command = command_line("benchmarks.weight_grad", argv)
    text = "\n".join([f"Machine: {train_step.machine()}", "", f"Command: `{command}`", "",
                      *layer_lines(args.repeats), "", *step_lines(args.step_repeats)])
    print(text)
    if args.write:
        write_block(text, jax.default_backend(), BLOCK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
