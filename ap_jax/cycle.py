"""The iterative pruning driver: reset -> train -> score -> prune, with and without AP.

Cycle 0 trains the dense network from theta_0. After cycle c's training (weights W_T, started
from W_0), X prunes ``rate - ap_rate`` of the alive prunable weights by global magnitude and AP
prunes ``ap_rate`` more among the alive negative weights with the smallest ``|W_T - W_0|``
(``ap_rate = 0`` is X alone); the base method then says what cycle c + 1 starts from (LTH:
theta_0 masked). So cycle c trains and reports the network at ``(1 - rate)^c`` remaining weights.

Rows go to ``metrics.jsonl`` as they are produced: one per epoch (``kind="epoch"``) and one per
cycle (``kind="cycle"``), each with the remaining share, test accuracy, DNR overall and per ReLU
site, and wall seconds. The DNR is measured after every epoch with BatchNorm in eval mode on the
first ``dnr_size`` training examples as stored (a fixed, class-mixed, unaugmented subset), so the
curve over epochs and cycles is measured on the same inputs throughout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from ap_jax import ap, masks, methods, models, records, train
from ap_jax.config import RunConfig
from ap_jax.data import Dataset

PyTree = Any


def build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The configured network (the shortcut option applies to ResNets only)."""
    options = {"shortcut": cfg.shortcut} if cfg.model.startswith("resnet") else {}
    return models.get(cfg.model, num_classes=num_classes, **options)


def prune_step(cfg: RunConfig, mask: PyTree, trained: PyTree, cycle_start: PyTree) -> PyTree:
    """One cycle's prune: X (global magnitude) for ``rate - ap_rate``, then AP for ``ap_rate``."""
    return ap.ap_prune(mask, trained, cycle_start, rate=cfg.rate, ap_rate=cfg.ap_rate, scope=cfg.scope)


def evaluate(steps: train.Steps, state: train.TrainState, dataset: Dataset, cfg: RunConfig) -> dict[str, Any]:
    """Test accuracy (every test example) and DNR on the fixed training subset."""
    dnr = train.dead_neuron_rate(steps, state, dataset.x_train[: cfg.dnr_size], cfg.eval_batch_size)
    return {
        "test_accuracy": train.accuracy(steps, state, dataset.x_test, dataset.y_test, cfg.eval_batch_size),
        "dnr": dnr["overall"],
        "dnr_per_layer": dnr["per_layer"],
    }


def is_complete(rows: list[dict[str, Any]], cfg: RunConfig) -> bool:
    """True when ``rows`` hold a cycle row for every cycle of ``cfg``."""
    return [r["cycle"] for r in records.cycle_rows(rows)] == list(range(cfg.cycles + 1))


def run(cfg: RunConfig, dataset: Dataset, run_dir: Path, label: str = "") -> list[dict[str, Any]]:
    """Run every cycle of ``cfg`` into ``run_dir`` and return its rows.

    A run directory whose ``metrics.jsonl`` is already complete for this config is reused as it
    is; an incomplete one is started again from the beginning.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    rows = records.read_rows(metrics_path)
    if is_complete(rows, cfg):
        return rows
    metrics_path.unlink(missing_ok=True)
    records.write_json(run_dir / "config.json", cfg.to_dict())
    records.write_json(run_dir / "provenance.json", records.provenance(cfg.seed, label=label))

    model = build_model(cfg, dataset.num_classes)
    init_key, train_key = jax.random.split(jax.random.key(cfg.seed))
    sample = jnp.zeros((1, *dataset.x_train.shape[1:]), jnp.float32)
    variables = model.init(init_key, sample, train=False)
    theta0, stats0 = variables["params"], variables.get("batch_stats", {})
    steps_per_cycle = cfg.epochs * (int(dataset.x_train.shape[0]) // cfg.batch_size)
    optim = cfg.optim()
    tx = train.optimizer(optim, train.lr_schedule(optim, steps_per_cycle), theta0)
    steps = train.make_steps(model, tx, dataset.mean, dataset.std, augment=cfg.augment)
    method = methods.get(cfg.method)

    rows, mask, start, started = [], masks.init(theta0), (theta0, stats0), time.perf_counter()
    for cycle in tqdm(range(cfg.cycles + 1), desc=label or "cycles", disable=None):
        state = train.fresh_state(*start, mask, tx)
        cycle_start = jax.tree_util.tree_map(jnp.copy, state.params)
        remaining = float(masks.remaining(mask))
        for epoch in range(cfg.epochs):
            state, fit = train.train_epoch(steps, state, dataset, cfg.batch_size,
                                           jax.random.fold_in(train_key, cycle), epoch,
                                           desc=f"cycle {cycle} epoch {epoch}")
            row = {"kind": "epoch", "cycle": cycle, "epoch": epoch, "step": int(state.step),
                   "remaining": remaining, **fit, **evaluate(steps, state, dataset, cfg),
                   "wall_s": time.perf_counter() - started}
            records.append_row(metrics_path, row)
            rows.append(row)
        cycle_row = {**row, "kind": "cycle", "layer_remaining": {
            k: 1.0 - float(v) for k, v in masks.layer_sparsity(mask).items()}}
        records.append_row(metrics_path, cycle_row)
        rows.append(cycle_row)
        if cycle < cfg.cycles:
            mask = prune_step(cfg, mask, state.params, cycle_start)
            start = methods.next_start(method, (theta0, stats0), (state.params, state.batch_stats))
    return rows
