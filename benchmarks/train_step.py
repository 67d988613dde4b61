"""ResNet-20 training-step throughput on this machine, and the costs around the step.

One run prints, each measured side by side (candidates interleaved repeat by repeat, so a busy
machine slows them alike):

* images/s of the ResNet-20 (option B) train step at batch 128 as ``ap_jax.cycle`` trains
  with it (``ap_jax.train.make_steps``: masks and on-device augmentation; the driver measures
  the DNR in separate passes, not in the train step) with the ``ap_jax.conv`` CPU path and the
  fused ``ap_jax.batchnorm`` (after), with Flax's BatchNorm numerics instead, and with plain
  ``lax`` convolutions and Flax's BatchNorm (before); the same step counting ReLU zeros
  (``count_relu=True``, the statistics gathered during training); a plain Flax step without
  masks or counting (same data path); and, when ``torch`` is importable (the ``[bench]``
  extra), a PyTorch reference of the same network, batch and optimizer (SGD, momentum 0.9,
  weight decay 1e-4; its batch is made once, no augmentation). Each as median, min and max over
  the repeats, with ratios, achieved GFLOP/s (3x the forward conv/dense FLOPs per image) and
  its share of a float32 GEMM ceiling timed in the same loop;
* the overhead of masks, and of masks with in-step ReLU counting, over the plain step;
* an epoch (``ap_jax.train.train_epoch``) against the sum of its blocked step times;
* a whole 50k-image epoch with its evaluation (test accuracy and DNR passes) against a PyTorch
  loop doing the same work (``benchmarks/epoch.py``; ``--no-epoch`` skips it);
* a global prune (``ap_jax.prune.prune``, 20 %) of the 25.5M weights of ResNet-50, against the
  three-key sort it replaced (kept here as ``sorted_prune``), with a check that both masks agree
  (``--prune-only`` runs just this).

``--write`` also writes the report, with the machine and command, into ``benchmarks/RESULTS.md`` and
README.md's performance section, between this script's markers for the backend (cpu, gpu).
Run from the repository root: ``python -m benchmarks.train_step [--write]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Callable

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax

from ap_jax import batchnorm, conv, data, masks, models, parallel, prune, records, train
from ap_jax.config import positive_int
from benchmarks import epoch as whole_epoch
from benchmarks.reporting import REPO, command_line, write_block

MEAN, STD = data.DATASETS["cifar10"].mean, data.DATASETS["cifar10"].std
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
README_BLOCK = "benchmarks/train_step.py {backend}"
DRIVER = "driver (after)"  # the step ap_jax.cycle trains with: masks, no counting, ap_jax.conv + fused BN
FLAX_BN = "driver, Flax BatchNorm"
BEFORE = "driver, lax conv, Flax BN"
COUNTING = "driver + ReLU counting"


def forward_flops(model, x: jax.Array) -> int:
    """Multiply-add FLOPs (2 per MAC) of the convolutions and dots in one forward pass."""
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    with conv.use("lax"):
        jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
    return _jaxpr_flops(jaxpr.jaxpr)


def _jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0].aval
        if eqn.primitive.name == "conv_general_dilated":
            rhs = eqn.invars[1].aval
            total += 2 * int(np.prod(out.shape)) * int(np.prod(rhs.shape)) // out.shape[-1]
        elif eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            total += 2 * int(np.prod(out.shape)) * int(np.prod([lhs.shape[d] for d in contract]))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _jaxpr_flops(sub)
    return total


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, np.ndarray]:
    """Seconds per call of each candidate, alternating between them on every repeat."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def _setup(batch: int, pool: int):
    model = models.get("resnet20")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    cfg = train.OptimConfig()
    tx = train.optimizer(cfg, train.lr_schedule(cfg, 10_000), variables["params"])
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (pool, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, pool, dtype=np.int32))
    return model, variables, tx, images, labels


def _state(variables, tx, mesh) -> train.TrainState:
    """A fresh state placed on ``mesh`` as the step returns it, so the step compiles once."""
    state = train.fresh_state(variables["params"], variables["batch_stats"], masks.init(variables["params"]), tx)
    return parallel.replicate(state, mesh)


def driver_step(model, variables, tx, images, labels, batch: int, impl: str, count_relu: bool,
                bn: str = "fused") -> Callable[[], object]:
    """The driver's train step, compiled with convolution implementation ``impl`` and BatchNorm ``bn``.

    Every call runs under ``conv.use(impl)`` and ``batchnorm.use(bn)``: the choice is read when the
    step is traced, so a retrace (new input placement) outside the block would silently switch.
    """
    steps = train.make_steps(model, tx, MEAN, STD, count_relu=count_relu)
    mesh = parallel.resolve(steps.mesh)
    holder = {"state": _state(variables, tx, mesh), "i": 0}
    order = np.arange(images.shape[0], dtype=np.int32).reshape(-1, batch)

    def run():
        i = holder["i"] = (holder["i"] + 1) % order.shape[0]
        index = parallel.shard_batch(order[i], mesh)
        with conv.use(impl), batchnorm.use(bn):
            holder["state"], metrics = steps.train(holder["state"], images, labels, index, jax.random.PRNGKey(i))
        return jax.block_until_ready(metrics)

    run()
    return run


def plain_step(model, variables, tx, images, labels, batch: int) -> Callable[[], object]:
    """A textbook Flax step, no masks or counting, same gather/augment/normalise as the driver."""

    def step(params, batch_stats, opt_state, index, key):
        x = data.normalize(data.augment(key, images[index]), MEAN, STD)
        y = labels[index]

        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                          mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    jitted = jax.jit(step, donate_argnums=(0, 1, 2))
    params = jax.tree_util.tree_map(jnp.copy, variables["params"])
    holder = {"s": (params, jax.tree_util.tree_map(jnp.copy, variables["batch_stats"]), tx.init(params)), "i": 0}
    order = jnp.arange(images.shape[0], dtype=jnp.int32).reshape(-1, batch)

    def run():
        i = holder["i"] = (holder["i"] + 1) % order.shape[0]
        with conv.use("auto"):  # on every call, as in driver_step: a retrace must not switch path
            *s, loss = jitted(*holder["s"], order[i], jax.random.PRNGKey(i))
        holder["s"] = tuple(s)
        return jax.block_until_ready(loss)

    run()
    return run


def torch_resnet20():
    """PyTorch ResNet-20 (option B); with ``net.counts`` a list, every ReLU appends its per-channel
    (zero outputs, all-zero maps), the DNR counts. Needs torch."""
    from torch import nn
    from torch.nn import functional as F

    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.counts = None

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, owner: Counting):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.short = nn.Sequential()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            self.owner = [owner]  # a list: not a registered submodule

        def forward(self, x):
            y = relu(F.relu(self.b1(self.c1(x))), self.owner[0])
            return relu(F.relu(self.b2(self.c2(y)) + self.short(x)), self.owner[0])

    def relu(y, owner: Counting):
        if owner.counts is not None:
            zero = y == 0
            owner.counts.append((zero.sum((0, 2, 3)), zero.all(3).all(2).sum(0)))
        return y

    class Net(Counting):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
            blocks, cin = [], 16
            for stage, cout in enumerate((16, 32, 64)):
                for block in range(3):
                    blocks.append(Block(cin, cout, 2 if stage and not block else 1, self))
                    cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            x = self.blocks(relu(F.relu(self.stem(x)), self))
            return self.head(x.mean((2, 3)))

    return Net()


def torch_step(batch: int) -> Callable[[], object] | None:
    """PyTorch ResNet-20 (option B) train step on a fixed batch, or None without torch."""
    try:
        import torch
        from torch.nn import functional as F
    except ImportError:
        return None
    net = torch_resnet20()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch,), generator=generator)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    return run


def gemm_step(size: int = 2048) -> tuple[Callable[[], object], int]:
    """A float32 ``size x size`` matrix product: the machine's GEMM ceiling for XLA:CPU."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size))
    matmul = jax.jit(lambda m: m @ m)
    return (lambda: jax.block_until_ready(matmul(a))), 2 * size**3


def epoch_vs_steps(model, variables, tx, images, labels, batch: int, rounds: int) -> tuple[float, float, float]:
    """(epoch seconds, sum of blocked step seconds, ratio) medians over ``rounds``."""
    steps = train.make_steps(model, tx, MEAN, STD)
    dataset = data.Dataset(images, labels, images[:batch], labels[:batch], 10, MEAN, STD, "synthetic")
    mesh = parallel.resolve(steps.mesh)
    images, labels = parallel.replicate((images, labels), mesh)  # as train_epoch places them
    order = np.arange(images.shape[0], dtype=np.int32).reshape(-1, batch)
    state = _state(variables, tx, mesh)
    state, _ = train.train_epoch(steps, state, dataset, batch, jax.random.PRNGKey(0), 0)  # compile
    state, metrics = steps.train(state, images, labels, parallel.shard_batch(order[0], mesh), jax.random.PRNGKey(0))
    jax.block_until_ready(metrics)
    rows = []
    for r in range(rounds):
        start = time.perf_counter()
        state, _ = train.train_epoch(steps, state, dataset, batch, jax.random.PRNGKey(0), r + 1)
        epoch = time.perf_counter() - start
        total = 0.0
        for i in range(order.shape[0]):
            start = time.perf_counter()
            index = parallel.shard_batch(order[i], mesh)
            state, metrics = steps.train(state, images, labels, index, jax.random.PRNGKey(i))
            jax.block_until_ready(metrics)
            total += time.perf_counter() - start
        rows.append((epoch, total, epoch / total))
    return tuple(float(np.median([row[k] for row in rows])) for k in range(3))


def sorted_prune(mask, scores, fraction: float):
    """The previous ``prune.prune`` (global): one three-key ``lax.sort`` of all scores (before)."""
    leaves, treedef = jax.tree_util.tree_flatten(mask)
    slots = [i for i, m in enumerate(leaves) if m.ndim >= 2]
    alive = jnp.concatenate([leaves[i].ravel() for i in slots])
    score = jnp.concatenate([jax.tree_util.tree_leaves(scores)[i].ravel() for i in slots])
    count = prune.budget(jnp.sum(alive, dtype=jnp.int32), fraction)
    is_inf = score == jnp.inf
    rank_class = jnp.where(alive, jnp.where(is_inf, 1, 0), 2).astype(jnp.int32)
    index = jnp.arange(alive.size, dtype=jnp.int32)
    _, _, order = jax.lax.sort((rank_class, jnp.where(alive & ~is_inf, score, 0.0), index), num_keys=3)
    keep = alive & ~jnp.zeros(alive.size, bool).at[order].set(index < count)
    offsets = np.cumsum([0] + [leaves[i].size for i in slots])
    for j, i in enumerate(slots):
        leaves[i] = keep[offsets[j] : offsets[j + 1]].reshape(leaves[i].shape)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def prune_times(repeats: int) -> tuple[int, dict[str, np.ndarray], bool]:
    """(prunable weights, seconds per repeat, same masks) of a jitted 20 % global prune of
    ResNet-50's kernels: ``prune.prune`` (radix select) and the sort it replaced, interleaved."""
    model = models.get("resnet50", num_classes=1000)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), train=False))
    shapes = variables["params"]
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    draws = [jnp.abs(jax.random.normal(k, s.shape)) for k, s in zip(keys, leaves)]
    scores = jax.tree_util.tree_unflatten(treedef, draws)
    mask = masks.init(scores)
    weights = int(masks.alive_count(mask))
    candidates = {"radix select (after)": jax.jit(lambda m, s: prune.prune(m, s, 0.2)),
                  "three-key sort (before)": jax.jit(lambda m, s: sorted_prune(m, s, 0.2))}
    results = {name: jax.block_until_ready(fn(mask, scores)) for name, fn in candidates.items()}
    same = all(bool(jnp.array_equal(a, b)) for a, b in zip(*(jax.tree_util.tree_leaves(r) for r in results.values())))
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(mask, scores))
            times[name].append(time.perf_counter() - start)
    return weights, {name: np.asarray(t) for name, t in times.items()}, same


def prune_lines(repeats: int) -> list[str]:
    """The report lines of ``prune_times``."""
    weights, times, same = prune_times(repeats)
    lines = [f"- global prune (20 %) of {weights / 1e6:.1f}M ResNet-50 weights, jitted, median (min-max) of "
             f"{repeats} interleaved repeats (target <= 0.2 s); identical masks: {same}"]
    lines += [f"  - {name}: {np.median(t):.3f} s ({t.min():.3f}-{t.max():.3f})" for name, t in times.items()]
    return lines


def _row(name: str, seconds: np.ndarray, batch: int, flops: int, ceiling: float, ref: float | None) -> str:
    rate = batch / seconds
    gflops = flops / np.median(seconds) / 1e9
    ratio = f"{np.median(rate) / ref:5.2f}x" if ref else "   - "
    return (f"| {name:<28} | {np.median(rate):7.1f} | {rate.min():7.1f} | {rate.max():7.1f} | {ratio} "
            f"| {gflops:6.1f} | {gflops / ceiling:5.1%} |")


def report(args: argparse.Namespace) -> str:
    """Run every measurement and return the report as markdown."""
    batch = args.batch
    model, variables, tx, images, labels = _setup(batch, batch * args.steps_per_epoch)
    step_flops = 3 * forward_flops(model, jnp.zeros((batch, 32, 32, 3)))
    gemm, gemm_flops = gemm_step()
    candidates = {
        DRIVER: driver_step(model, variables, tx, images, labels, batch, "auto", False),
        FLAX_BN: driver_step(model, variables, tx, images, labels, batch, "auto", False, bn="flax"),
        BEFORE: driver_step(model, variables, tx, images, labels, batch, "lax", False, bn="flax"),
        COUNTING: driver_step(model, variables, tx, images, labels, batch, "auto", True),
        "plain Flax, no masks": plain_step(model, variables, tx, images, labels, batch),
    }
    torch_run = None if args.no_torch else torch_step(batch)
    if torch_run is not None:
        candidates["PyTorch (same net, batch, SGD)"] = torch_run
    candidates["GEMM 2048^3 f32"] = gemm
    times = interleaved(candidates, args.repeats, warmup=2)
    ceiling = gemm_flops / np.median(times.pop("GEMM 2048^3 f32")) / 1e9
    ref = batch / np.median(times["PyTorch (same net, batch, SGD)"]) if torch_run is not None else None
    lines = [
        f"ResNet-20 (option B), batch {batch}, {args.repeats} interleaved repeats; "
        f"{step_flops / 1e9:.1f} GFLOP per step (3x forward); GEMM ceiling {ceiling:.0f} GFLOP/s.",
        "",
        "| step | img/s median | min | max | vs PyTorch | GFLOP/s | of GEMM |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [_row(name, t, batch, step_flops, ceiling, ref) for name, t in times.items()]
    med = {name: float(np.median(t)) for name, t in times.items()}
    plain = med["plain Flax, no masks"]
    driver, counting = med[DRIVER], med[COUNTING]
    lines += [
        "",
        f"- driver step speed-up: fused BatchNorm over Flax's {med[FLAX_BN] / driver:.2f}x; "
        f"with ap_jax.conv over lax convolutions and Flax's BatchNorm {med[BEFORE] / driver:.2f}x",
        f"- masks over the plain step: {driver / plain - 1:+.1%}; masks + in-step ReLU counting: "
        f"{counting / plain - 1:+.1%}; target <= +3 %",
    ]
    epoch, total, ratio = epoch_vs_steps(model, variables, tx, images, labels, batch, args.epoch_rounds)
    lines.append(f"- epoch of {args.steps_per_epoch} steps: {epoch:.2f} s vs sum of blocked steps {total:.2f} s: "
                 f"{ratio:.3f}x (target <= 1.02x)")
    if not args.no_epoch:
        lines += whole_epoch.epoch_lines(args)
    if not args.no_prune:
        lines += prune_lines(args.prune_repeats)
    return "\n".join(lines)


def machine() -> str:
    """The host CPU and core count, and the library versions and conv path the timings ran with."""
    versions = f"jax {jax.__version__}, backend {jax.default_backend()}, conv path {conv.active_impl()}"
    try:
        import torch

        versions += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    return f"{records.cpu_name()}, {os.cpu_count()} logical cores; {versions}"


def write_results(text: str, backend: str) -> None:
    """Put ``text`` into RESULTS.md between ``backend``'s markers: one block per backend (cpu, gpu)."""
    if "<!-- benchmarks/train_step.py" not in (RESULTS.read_text() if RESULTS.exists() else ""):
        RESULTS.write_text("# Train-step benchmarks\n\n## Performance\n\nWritten by "
                           "`python -m benchmarks.train_step --write`, one block per backend.\n")
    write_block(text, backend, README_BLOCK, path=RESULTS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=128)
    parser.add_argument("--repeats", type=positive_int, default=15, help="interleaved timed repeats per candidate")
    parser.add_argument("--steps-per-epoch", type=positive_int, default=20)
    parser.add_argument("--epoch-rounds", type=positive_int, default=3)
    parser.add_argument("--prune-repeats", type=positive_int, default=5)
    parser.add_argument("--epoch-images", type=positive_int, default=50_000, help="training images of the whole epoch")
    parser.add_argument("--test-images", type=positive_int, default=10_000, help="its test-accuracy pass")
    parser.add_argument("--dnr-images", type=positive_int, default=2_000, help="its DNR pass")
    parser.add_argument("--eval-batch", type=positive_int, default=1_000, help="batch of both eval passes")
    parser.add_argument("--epoch-repeats", type=positive_int, default=3, help="alternating whole-epoch repeats")
    parser.add_argument("--no-epoch", action="store_true", help="skip the whole epoch with evaluation")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--no-prune", action="store_true", help="skip the 25M-weight prune")
    parser.add_argument("--prune-only", action="store_true", help="only the 25M-weight prune")
    parser.add_argument("--write", action="store_true", help=f"also write {RESULTS.name}")
    args = parser.parse_args(argv)
    body = "\n".join(prune_lines(args.prune_repeats)) if args.prune_only else report(args)
    text = f"Machine: {machine()}\n\nCommand: `{command_line('benchmarks.train_step', argv)}`\n\n{body}\n"
    print(text)
    if args.write:
        write_results(text.strip(), jax.default_backend())
        write_block(text.strip(), jax.default_backend(), README_BLOCK, path=REPO / "README.md")


if __name__ == "__main__":
    main()
