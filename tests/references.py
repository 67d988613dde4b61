"""Hand-written references for the pruning driver: plain SGD with momentum, and the DNR of saved
weights on the documented examples (used by test_driver_reference.py and test_tables.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from ap_jax import checkpoint, models, records
from ap_jax.stats import ReLU


def normalized(images, dataset) -> np.ndarray:
    """``(x / 255 - mean) / std`` per channel, in numpy float32."""
    scaled = np.asarray(images, np.float32) / 255
    return ((scaled - np.float32(dataset.mean)) / np.float32(dataset.std)).astype(np.float32)


def hand_sgd(model, start, mask, x, y, steps, lr, momentum, weight_decay):
    """Full-batch SGD with momentum from a zero trace: ``v = momentum v + g + wd w`` (kernels
    decayed), ``w = (w - lr v) * mask`` after every step."""
    def loss(params):
        logits = model.apply({"params": params}, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    w = jax.tree_util.tree_map(jnp.asarray, start)
    v = jax.tree_util.tree_map(jnp.zeros_like, w)
    decay = jax.tree_util.tree_map_with_path(lambda path, _: weight_decay * (path[-1].key == "kernel"), w)
    for _ in range(steps):
        g = jax.grad(loss)(w)
        v = jax.tree_util.tree_map(lambda v, g, w, d: momentum * v + g + d * w, v, g, w, decay)
        w = jax.tree_util.tree_map(lambda w, v, m: (w - lr * v) * m, w, v, mask)
    return w


def zero_share(model, variables, images) -> tuple[float, int]:
    """Share of zero outputs over every ReLU site, BatchNorm in eval mode, and the output count."""
    _, state = model.apply(variables, images, train=False,
                           capture_intermediates=lambda module, _: isinstance(module, ReLU))
    outputs = [np.asarray(o) for o in jax.tree_util.tree_leaves(state["intermediates"])]
    total = sum(o.size for o in outputs)
    return sum(int((o == 0).sum()) for o in outputs) / total, total


def assert_cycle_dnr_from_end_weights(run_dir, model_name, dataset, dnr_size) -> None:
    """Every cycle row's ``dnr`` equals the zero share of that cycle's saved end weights on the
    first ``dnr_size`` training examples of ``dataset`` as stored (unaugmented), up to a few
    borderline zeros where float sums may round differently."""
    model = models.get(model_name, num_classes=10)
    images = normalized(dataset.x_train[:dnr_size], dataset)
    rows = records.cycle_rows(records.read_rows(run_dir / "metrics.jsonl"))
    assert rows
    for row in rows:
        end = checkpoint.read_cycle(run_dir, row["cycle"])["end"]
        variables = {"params": end["params"], **({"batch_stats": end["batch_stats"]} if end["batch_stats"] else {})}
        share, total = zero_share(model, variables, images)
        assert abs(row["dnr"] - share) <= 3 / total, (run_dir, row["cycle"], row["dnr"], share)
