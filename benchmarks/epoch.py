"""A whole training epoch with its evaluation, ap_jax against a PyTorch loop doing the same work.

One epoch as ``ap_jax.cycle`` runs it: ``train.train_epoch`` over every training image (batch
128, on-device augmentation), then ``cycle.evaluate``'s passes: test accuracy over the test
split and the DNR counts over ``dnr_size`` training images, both at ``eval_batch_size``. The
PyTorch loop does the same: per batch a random crop (pad 4) and flip of every example, the
uint8-to-float normalisation and an SGD step of the same ResNet-20, then a ``no_grad`` eval pass
for the test accuracy and one that counts zeros and all-zero maps at every ReLU.

The data are synthetic uint8 images of CIFAR shape with random labels (the cost does not depend
on the pixels). The two epochs run alternately, repeat by repeat; ``benchmarks.train_step``
prints the result as one row of its report.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ap_jax import data, masks, models, parallel, train

MEAN, STD = data.DATASETS["cifar10"].mean, data.DATASETS["cifar10"].std


def synthetic(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random uint8 32x32 RGB images and int32 labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, count).astype(np.int32)


def jax_epoch(train_images: int, test_images: int, dnr_images: int, batch: int,
              eval_batch: int) -> Callable[[], object]:
    """One ap_jax epoch (train, test accuracy, DNR), compiled; each call trains on."""
    model = models.get("resnet20")
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    cfg = train.OptimConfig()
    tx = train.optimizer(cfg, train.lr_schedule(cfg, 100_000), variables["params"])
    steps = train.make_steps(model, tx, MEAN, STD)
    mesh = parallel.resolve(steps.mesh)
    (x_train, y_train), (x_test, y_test) = synthetic(train_images, 0), synthetic(test_images, 1)
    dataset = data.Dataset(jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(x_test), jnp.asarray(y_test),
                           10, MEAN, STD, "synthetic")
    dnr_inputs = dataset.x_train[:dnr_images]
    state = train.fresh_state(variables["params"], variables["batch_stats"], masks.init(variables["params"]), tx)
    holder = {"state": parallel.replicate(state, mesh), "epoch": 0}

    def evaluate(state):
        return (train.accuracy(steps, state, dataset.x_test, dataset.y_test, eval_batch),
                train.dead_neuron_rate(steps, state, dnr_inputs, eval_batch)["overall"])

    def run():
        epoch = holder["epoch"] = holder["epoch"] + 1
        holder["state"], _ = train.train_epoch(steps, holder["state"], dataset, batch, jax.random.PRNGKey(epoch), epoch)
        return evaluate(holder["state"])

    index = parallel.shard_batch(np.arange(batch, dtype=np.int32), mesh)  # compile everything once
    images, labels = parallel.replicate((dataset.x_train, dataset.y_train), mesh)
    holder["state"], metrics = steps.train(holder["state"], images, labels, index, jax.random.PRNGKey(0))
    jax.block_until_ready(metrics)
    evaluate(holder["state"])
    return run


def torch_epoch(train_images: int, test_images: int, dnr_images: int, batch: int,
                eval_batch: int) -> Callable[[], object] | None:
    """The same epoch as a PyTorch loop, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    from benchmarks.train_step import torch_resnet20

    net = torch_resnet20()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    (x_train, y_train), (x_test, y_test) = synthetic(train_images, 0), synthetic(test_images, 1)
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    x_test, y_test = torch.from_numpy(x_test), torch.from_numpy(y_test).long()
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(0)
    span = torch.arange(32)

    def normalize(images):  # uint8 NHWC -> float NCHW
        return (images.permute(0, 3, 1, 2).float() / 255 - mean) / std

    def augment(images):  # pad 4, a random 32x32 crop and a flip per example, as ap_jax.data.augment
        n = images.shape[0]
        padded = torch.nn.functional.pad(images, (0, 0, 4, 4, 4, 4))
        offsets = torch.randint(0, 9, (n, 2), generator=generator)
        rows, cols = offsets[:, :1] + span, offsets[:, 1:] + span
        crops = padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
        flip = torch.rand(n, generator=generator) < 0.5
        return torch.where(flip[:, None, None, None], crops.flip(2), crops)

    def train_pass():
        net.train()
        order = torch.randperm(x_train.shape[0], generator=generator)
        for start in range(0, x_train.shape[0] - batch + 1, batch):
            index = order[start : start + batch]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(normalize(augment(x_train[index]))), y_train[index])
            loss.backward()
            opt.step()

    @torch.no_grad()
    def eval_pass():
        net.eval()
        correct = sum(int((net(normalize(x_test[i : i + eval_batch])).argmax(1) == y_test[i : i + eval_batch]).sum())
                      for i in range(0, x_test.shape[0], eval_batch))
        net.counts = []
        for i in range(0, dnr_images, eval_batch):
            net(normalize(x_train[i : min(i + eval_batch, dnr_images)]))
        zeros = sum(float(z.sum()) for z, _ in net.counts)
        net.counts = None
        return correct / x_test.shape[0], zeros

    def run():
        train_pass()
        return eval_pass()

    return run


def epoch_times(args) -> dict[str, np.ndarray]:
    """Seconds per epoch of each side, the sides alternating repeat by repeat."""
    sizes = (args.epoch_images, args.test_images, args.dnr_images, args.batch, args.eval_batch)
    candidates = {"ap_jax": jax_epoch(*sizes)}
    if not args.no_torch and (torch_run := torch_epoch(*sizes)) is not None:
        candidates["PyTorch"] = torch_run
    times = {name: [] for name in candidates}
    for _ in range(args.epoch_repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: np.asarray(t) for name, t in times.items()}


def epoch_lines(args) -> list[str]:
    """The report lines: one row per side, seconds and images/s of training, and the ratio."""
    times = epoch_times(args)
    lines = [f"- whole epoch with evaluation: {args.epoch_images} synthetic CIFAR-shaped training images "
             f"(batch {args.batch}, augmented), then test accuracy on {args.test_images} and the DNR on "
             f"{args.dnr_images} (eval batch {args.eval_batch}); median (min-max) of {args.epoch_repeats} "
             "alternating repeats"]
    for name, t in times.items():
        lines.append(f"  - {name}: {np.median(t):.1f} s ({t.min():.1f}-{t.max():.1f}), "
                     f"{args.epoch_images / np.median(t):.0f} training images/s including evaluation")
    if "PyTorch" in times:
        lines.append(f"  - ap_jax vs PyTorch: {np.median(times['PyTorch']) / np.median(times['ap_jax']):.2f}x "
                     "(target >= 1.0x)")
    return lines
