"""The pruning driver against references written here by hand, not against another run of itself.

A cycle's end weights equal plain SGD with momentum whose trace starts at zero in every cycle
(the optimizer is reset per cycle, with momentum and weight decay on); a cycle row's DNR equals
the share of zero ReLU outputs of that cycle's saved end weights on the first ``dnr_size``
training examples as stored, unaugmented, measured on one device (``test_tables.py`` checks the
same for ResNet-20, whose BatchNorm must be in eval mode).
"""

import jax
import numpy as np
import pytest

from ap_jax import checkpoint, cycle, data, models
from ap_jax.config import RunConfig
from references import assert_cycle_dnr_from_end_weights, hand_sgd, normalized


@pytest.fixture(scope="module")
def dataset(fake_data):
    return data.load("cifar10", fake_data)


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    """An MLP run whose batch is the whole training set (so the data order cannot matter), with
    momentum and weight decay on and no LR drop within a cycle's 3 steps, on one device."""
    cfg = RunConfig(model="mlp", ap_rate=0.02, cycles=1, epochs=3, batch_size=dataset.num_train, lr=0.05,
                    momentum=0.9, weight_decay=1e-2, lr_drops=(0.99,), augment=False, dnr_size=50,
                    eval_batch_size=64, seed=1)
    run_dir = tmp_path_factory.mktemp("run")
    cycle.run(cfg, dataset, run_dir, options=cycle.RunOptions(devices=1))
    return cfg, run_dir


def test_each_cycle_is_sgd_with_momentum_from_a_zeroed_trace(run, dataset):
    cfg, run_dir = run
    model = models.get("mlp", num_classes=10)
    x, y = normalized(dataset.x_train, dataset), np.asarray(dataset.y_train)
    saved = checkpoint.read_cycle(run_dir, 1)  # after a prune: a trace carried from cycle 0 would show
    want = hand_sgd(model, saved["start"]["params"], saved["mask"], x, y, cfg.epochs, cfg.lr, cfg.momentum,
                    cfg.weight_decay)
    for (path, got), ref in zip(jax.tree_util.tree_leaves_with_path(saved["end"]["params"]),
                                jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-6, err_msg=str(path))


def test_a_cycle_rows_dnr_is_measured_on_the_documented_examples(run, dataset):
    cfg, run_dir = run
    assert_cycle_dnr_from_end_weights(run_dir, "mlp", dataset, cfg.dnr_size)
