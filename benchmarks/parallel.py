"""Data-parallel benchmark: the train step with and without DNR counting, and steps/s on 1 vs N devices.

    python -m benchmarks.parallel [--model resnet20] [--batch-size 128] [--rounds 7] [--epoch] [--write]

Prints numbers; it is not a test. Three parts:

1. **DNR-counting overhead** on one device: the jitted train step of ``ap_jax.train.make_steps``
   with ``count_relu=False`` and ``True`` (every ReLU also sums its zeros per channel), timed in
   alternating chunks of steps; medians of the per-step times and their ratio, side by side.
2. **Steps/s on 1 vs N devices**, same global batch. On CPU, N = 8 fake devices
   (``--xla_force_host_platform_device_count=8``) measured in a child process: they share the
   host's cores, so this shows the overhead of the SPMD program, not a speed-up.
3. With ``--epoch`` (default on GPU): wall time of one epoch of 50,000 CIFAR-shaped images
   (synthetic uint8, ``train.train_epoch``, compiled beforehand) on one device.

``--write`` writes the output into docs/performance.md, between markers named after the backend
(cpu, gpu), so a CPU and a GPU run each keep their own block.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ap_jax import data, masks, models, parallel, records, train
from ap_jax.config import positive_int
from benchmarks.reporting import REPO, command_line, write_block

FAKE_DEVICES = 8
BLOCK = "benchmarks/parallel.py {backend}"
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def setup(model_name: str, batch_size: int, mesh, count_relu: bool, num_images: int):
    """Compiled steps, a fresh state and a synthetic replicated CIFAR-shaped dataset on ``mesh``."""
    model = models.get(model_name)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    cfg = train.OptimConfig()
    tx = train.optimizer(cfg, train.lr_schedule(cfg, 10_000), variables["params"])
    steps = train.make_steps(model, tx, MEAN, STD, mesh=mesh, count_relu=count_relu)
    state = train.fresh_state(variables["params"], variables.get("batch_stats", {}),
                              masks.init(variables["params"]), tx)
    rng = np.random.default_rng(0)
    images = parallel.replicate(rng.integers(0, 256, (num_images, 32, 32, 3), dtype=np.uint8), mesh)
    labels = parallel.replicate(rng.integers(0, 10, num_images).astype(np.int32), mesh)
    return steps, state, images, labels


class Runner:
    """Runs chunks of train steps of one configuration and records seconds per step."""

    def __init__(self, model_name: str, batch_size: int, mesh, count_relu: bool, chunk: int):
        self.steps, self.state, self.images, self.labels = setup(model_name, batch_size, mesh, count_relu,
                                                                 4 * batch_size)
        order = data.epoch_order(jax.random.key(1), 0, 4 * batch_size, batch_size)
        self.index = [parallel.shard_batch(np.asarray(row), mesh) for row in order]
        self.chunk, self.done, self.times = chunk, 0, []
        self.run_chunk()  # compile and warm up; not recorded
        self.times.clear()

    def run_chunk(self) -> None:
        start = time.perf_counter()
        for _ in range(self.chunk):
            self.state, metrics = self.steps.train(self.state, self.images, self.labels,
                                                   self.index[self.done % 4], jax.random.key(self.done))
            self.done += 1
        jax.block_until_ready((self.state, metrics))
        self.times.append((time.perf_counter() - start) / self.chunk)


def overhead(args: argparse.Namespace) -> list[str]:
    """Part 1: median step time without and with DNR counting on one device, interleaved."""
    mesh = parallel.make_mesh(1)
    plain, counted = (Runner(args.model, args.batch_size, mesh, c, args.chunk) for c in (False, True))
    for _ in range(args.rounds):
        plain.run_chunk()
        counted.run_chunk()
    a, b = statistics.median(plain.times), statistics.median(counted.times)
    return [f"| {args.model}, batch {args.batch_size}, 1 device | {a * 1e3:.2f} ms | {b * 1e3:.2f} ms | "
            f"{b / a:.3f} ({(b / a - 1) * 100:+.1f} %) |"]


def steps_per_second(args: argparse.Namespace, devices: int) -> float:
    """Median steps/s of the plain train step on a mesh of ``devices``."""
    runner = Runner(args.model, args.batch_size, parallel.make_mesh(devices), False, args.chunk)
    for _ in range(args.rounds):
        runner.run_chunk()
    return 1.0 / statistics.median(runner.times)


def scaling(args: argparse.Namespace) -> list[str]:
    """Part 2: steps/s on 1 and N devices (N fake CPU devices in a child process on CPU)."""
    if jax.default_backend() == "cpu" and jax.device_count() < FAKE_DEVICES:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={FAKE_DEVICES}"}
        child = [sys.executable, "-m", "benchmarks.parallel", "--scaling-only", *sys.argv[1:]]
        done = subprocess.run(child, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise SystemExit(f"python -m benchmarks.parallel: error: the {FAKE_DEVICES}-device child failed: {last}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    counts = sorted({1, jax.device_count()})
    rates = {n: steps_per_second(args, n) for n in counts}
    fake = " fake CPU devices sharing the host's cores" if jax.default_backend() == "cpu" else " devices"
    return [f"| {args.model}, global batch {args.batch_size}, {n}{fake if n > 1 else ' device'} | {r:.2f} | "
            f"{r / rates[1]:.2f}x |" for n, r in rates.items()]


def epoch_time(args: argparse.Namespace) -> str:
    """Part 3: seconds for one epoch of 50,000 synthetic CIFAR images on one device."""
    mesh = parallel.make_mesh(1)
    steps, state, images, labels = setup(args.model, args.batch_size, mesh, False, 50_000)
    ds = data.Dataset(images, labels, images[:1], labels[:1], 10, MEAN, STD, "synthetic")
    state, _ = train.train_epoch(steps, state, ds, args.batch_size, jax.random.key(0), 0)  # compile
    jax.block_until_ready(state)
    start = time.perf_counter()
    state, _ = train.train_epoch(steps, state, ds, args.batch_size, jax.random.key(0), 1)
    jax.block_until_ready(state)
    return (f"One epoch of {args.model} on 50,000 synthetic CIFAR images, batch {args.batch_size}, "
            f"1 device: {time.perf_counter() - start:.1f} s ({50_000 // args.batch_size} steps).")


def report(args: argparse.Namespace, command: str) -> str:
    """Every part's Markdown, with the device and ``command``, the one that produced it."""
    lines = [f"Device: {records.machine_line(records.device_info())}, jax {jax.__version__}. Command: "
             f"`{command}`; medians of {args.rounds} chunks "
             f"of {args.chunk} steps after a warm-up chunk.", "",
             "| train step | without DNR counting | with DNR counting | ratio |", "|---|---|---|---|",
             *overhead(args), "", "| data parallel | steps/s | vs 1 device |", "|---|---|---|", *scaling(args)]
    if args.epoch or (args.epoch is None and jax.default_backend() == "gpu"):
        lines += ["", epoch_time(args)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the parts, print (and optionally write into docs/performance.md) the results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parallel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20", choices=models.names())
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--rounds", type=positive_int, default=7, help="timed chunks per configuration")
    parser.add_argument("--chunk", type=positive_int, default=5, help="train steps per timed chunk")
    parser.add_argument("--epoch", action=argparse.BooleanOptionalAction, default=None,
                        help="also time one epoch on one device (default: on GPU only)")
    parser.add_argument("--write", action="store_true", help="write the results into docs/performance.md")
    parser.add_argument("--scaling-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        parallel.check_split(args.batch_size, FAKE_DEVICES if jax.default_backend() == "cpu" else jax.device_count(),
                             name="--batch-size")
    except ValueError as err:
        parser.error(str(err))
    if args.scaling_only:
        print(json.dumps(scaling(args)))
        return 0
    text = report(args, command_line("benchmarks.parallel", argv))
    print(text)
    if args.write:
        write_block(text, jax.default_backend(), BLOCK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
