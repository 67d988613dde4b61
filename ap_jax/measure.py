"""What a run's rows measure: test accuracy and the DNR after an epoch, the remaining shares of a
trained cycle, and what a prune did.

The DNR is measured with BatchNorm in eval mode on the feed's fixed, unaugmented training subset
(``dnr_inputs``), so the curve over epochs and cycles is measured on the same inputs throughout.
Masks are counted through the run's ``counted_view`` (``ap_jax.official``), so prunable BatchNorm
scales count where the config makes them prunable.
"""

from __future__ import annotations

from typing import Any, Callable

from ap_jax import ap, feeds, masks, train
from ap_jax.config import RunConfig

PyTree = Any


def evaluate(steps: train.Steps, state: train.TrainState, feed: feeds.Feed, cfg: RunConfig,
             test: bool = True) -> dict[str, Any]:
    """Test accuracy (every test example; None when not ``test``) and DNR on the fixed training subset."""
    dnr = train.dead_neuron_rate(steps, state, feed.dnr_inputs, cfg.eval_batch_size)
    return {
        "test_accuracy": feed.accuracy(steps, state, cfg.eval_batch_size) if test else None,
        "dnr": dnr["overall"],
        "dnr_per_layer": dnr["per_layer"],
        "dnr_channel": dnr["overall_channel"],
        "dnr_channel_per_layer": dnr["per_layer_channel"],
    }


def tests_after(cfg: RunConfig, cycle: int, epoch: int) -> bool:
    """Whether test accuracy is measured after ``epoch`` (0-based) of ``cycle``: every
    ``eval_every``-th epoch and the cycle's last."""
    return (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.cycle_epochs(cycle) - 1


def layer_remaining(mask: PyTree) -> dict[str, float]:
    """``{"path/to/kernel": alive share}`` for every prunable leaf of a (counted) mask."""
    return {k: 1.0 - float(v) for k, v in masks.layer_sparsity(mask).items()}


def pruned(view: Callable[[PyTree], PyTree], trained: train.TrainState, result: ap.PruneResult,
           steps: train.Steps, feed: feeds.Feed, cfg: RunConfig) -> dict[str, Any]:
    """A prune's measures: the remaining share, what X and AP took (``ap.prune_record``) and the
    DNR of the trained network right after the prune, before any retraining (BatchNorm in eval
    mode with the trained running statistics)."""
    record = ap.prune_record(view(trained.mask), ap.PruneResult(view(result.after_x), view(result.mask),
                                                                result.ap_budget))
    just_pruned = trained.replace(params=masks.apply(trained.params, result.mask), mask=result.mask)
    dnr = train.dead_neuron_rate(steps, just_pruned, feed.dnr_inputs, cfg.eval_batch_size)
    return {"remaining": float(masks.remaining(view(result.mask))), **record, "dnr": dnr["overall"],
            "dnr_per_layer": dnr["per_layer"]}
