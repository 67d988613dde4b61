"""The small data-parallel run that ``test_parallel.py`` compares on 1, 8 and 2 x 4 devices.

    python tests/parallel_scenario.py PROCESS_ID PORT OUT.npz

runs one of the two processes of the multi-host check: 4 fake CPU devices, ``jax.distributed``
with the coordinator on 127.0.0.1:PORT and CPU collectives through gloo; process 0 saves the
results to OUT.npz.
"""

from __future__ import annotations

import functools
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ap_jax import data, masks, parallel, prune, scores, stats, train
from ap_jax.batchnorm import BatchNorm

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
BATCH = 16
STEPS = 3


class TinyCNN(nn.Module):
    """conv-BN-ReLU, strided conv-BN-ReLU, global mean, dense: BatchNorm mixes the batch (the
    first with its ReLU fused in, the second followed by a separate ReLU)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, stride in enumerate((1, 2)):
            x = nn.Conv(8, (3, 3), strides=stride, name=f"conv{i}")(x)
            x = BatchNorm(use_running_average=not train, momentum=0.9, relu=i == 0, name=f"bn{i}")(x)
            x = stats.ReLU(applied=i == 0, name=f"relu{i}")(x)
        return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


def fake_dataset() -> data.Dataset:
    """48 training images (3 steps of 16) and 21 test images (not a multiple of 8), 8x8 RGB."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (69, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 69).astype(np.int32)
    return data.Dataset(x_train=images[:48], y_train=labels[:48], x_test=images[48:], y_test=labels[48:],
                        num_classes=10, mean=MEAN, std=STD, name="fake")


def shifted_batch() -> np.ndarray:
    """16 float inputs; the k-th pair is shifted by (k - 3.5), so 8 shards see different dead units."""
    x = np.random.default_rng(1).normal(size=(BATCH, 8, 8, 3)).astype(np.float32)
    return x + (np.arange(BATCH) // 2 - 3.5).astype(np.float32)[:, None, None, None]


def setup(mesh):
    """Model, initial variables, a 50 % random mask, and the compiled steps on ``mesh``."""
    model = TinyCNN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    mask = prune.prune(masks.init(variables["params"]), scores.random(jax.random.key(1), variables["params"]), 0.5)
    cfg = train.OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-3, decay_all=True)
    tx = train.optimizer(cfg, train.lr_schedule(cfg, 100), variables["params"])
    steps = train.make_steps(model, tx, MEAN, STD, mesh=mesh, count_relu=True)
    return model, variables, mask, tx, steps


def flat(prefix: str, tree) -> dict[str, np.ndarray]:
    """``{prefix/path: host array}`` for every leaf of ``tree``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {f"{prefix}{jax.tree_util.keystr(path)}": np.asarray(leaf) for path, leaf in leaves}


def run(mesh) -> dict[str, np.ndarray]:
    """Counts (shard_map), one epoch of 3 training steps, then eval DNR and accuracy on ``mesh``."""
    model, variables, mask, tx, steps = setup(mesh)
    ds = fake_dataset()
    count = jax.jit(functools.partial(stats.sharded_relu_counts, model, mesh=mesh, train=False))
    out = flat("counts", count(variables, parallel.shard_batch(shifted_batch(), mesh)))
    state = train.fresh_state(variables["params"], variables["batch_stats"], mask, tx)
    _, metrics = steps.train(state, ds.x_train, ds.y_train, parallel.shard_batch(np.arange(BATCH), mesh),
                             jax.random.key(3))
    out |= flat("train_counts", metrics["relu_counts"])
    state = train.fresh_state(variables["params"], variables["batch_stats"], mask, tx)
    state, fit = train.train_epoch(steps, state, ds, BATCH, jax.random.key(2), epoch=0)
    dnr = train.dead_neuron_rate(steps, state, ds.x_test, 10)
    out |= flat("state", state) | {"train_loss": np.asarray(fit["train_loss"]), "dnr": np.asarray(dnr["overall"]),
                                   "accuracy": np.asarray(train.accuracy(steps, state, ds.x_test, ds.y_test, 10))}
    return out


def main() -> int:
    process_id, port, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    parallel.initialize(f"127.0.0.1:{port}", 2, process_id)
    result = run(parallel.make_mesh())
    if parallel.is_main_process():
        np.savez(path, **result, devices=jax.device_count(), processes=jax.process_count())
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
