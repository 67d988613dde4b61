"""A dense cycle of its own length (``dense_epochs``), and one dense cycle shared by paired arms
(``RunOptions.dense_from``): both checked against runs that do the same work the plain way."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from ap_jax import checkpoint, config, cycle, data, records

BASE = config.RunConfig(model="mlp", cycles=2, epochs=1, batch_size=40, dnr_size=60, eval_batch_size=64,
                        seed=4, augment=False)


def rows_of(run_dir):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records.read_rows(run_dir / "metrics.jsonl")]


def assert_same_cycles(a, b, cycles):
    for c in cycles:
        got, want = checkpoint.read_cycle(a, c), checkpoint.read_cycle(b, c)
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
            assert np.array_equal(x, y), f"cycle {c} {path}"


@pytest.fixture(scope="module")
def dataset(fake_data):
    return data.load("cifar10", fake_data)


def test_dense_cycle_of_its_own_length_is_a_longer_run_s_cycle_0(dataset, tmp_path):
    """Cycle 0 with dense_epochs=2 is, row for row and bit for bit, cycle 0 of a run with epochs=2
    (same steps, same LR schedule); the pruned cycles then train 1 epoch each from step 0."""
    short = dataclasses.replace(BASE, dense_epochs=2)
    long = dataclasses.replace(BASE, epochs=2)
    rows = cycle.run(short, dataset, tmp_path / "short")
    reference = cycle.run(long, dataset, tmp_path / "long")
    dense = [r for r in rows_of(tmp_path / "short") if r["cycle"] == 0]
    assert dense == [r for r in rows_of(tmp_path / "long") if r["cycle"] == 0]
    assert_same_cycles(tmp_path / "short", tmp_path / "long", [0])
    steps = dataset.num_train // BASE.batch_size
    assert [(r["kind"], r["cycle"], r["step"]) for r in rows if r["kind"] == "epoch"] == \
           [("epoch", 0, steps), ("epoch", 0, 2 * steps), ("epoch", 1, steps), ("epoch", 2, steps)]
    assert len(reference) > len(rows)
    assert short.hash8() != BASE.hash8() and dataclasses.replace(short, dense_epochs=0).hash8() == BASE.hash8()


def test_dense_epochs_resume_from_every_checkpoint(dataset, tmp_path):
    """A run stopped after each checkpoint (cycle 0's two epochs, then the pruned ones) and run
    again ends where the uninterrupted run does."""
    cfg = dataclasses.replace(BASE, dense_epochs=2)
    cycle.run(cfg, dataset, tmp_path / "ref")
    run_dir = tmp_path / "stopped"
    commits = []
    original = checkpoint.RunCheckpoints.save_state

    def save_then_stop(self, position):
        original(self, position)
        if position.epochs_done not in commits:
            commits.append(position.epochs_done)
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint.RunCheckpoints, "save_state", save_then_stop)
        for _ in range(4):
            with pytest.raises(KeyboardInterrupt):
                cycle.run(cfg, dataset, run_dir)
    assert commits == [1, 2, 3, 4]
    cycle.run(cfg, dataset, run_dir)
    assert rows_of(run_dir) == rows_of(tmp_path / "ref")
    assert_same_cycles(run_dir, tmp_path / "ref", [0, 1, 2])


def test_paired_arm_takes_the_dense_cycle_and_ends_where_training_it_would(dataset, tmp_path):
    x_arm, ap_arm = BASE, dataclasses.replace(BASE, ap_rate=0.02)
    cycle.run(x_arm, dataset, tmp_path / "x")
    cycle.run(ap_arm, dataset, tmp_path / "alone")
    cycle.run(ap_arm, dataset, tmp_path / "shared", options=cycle.RunOptions(dense_from=tmp_path / "x"))
    assert rows_of(tmp_path / "shared") == rows_of(tmp_path / "alone")
    assert_same_cycles(tmp_path / "shared", tmp_path / "alone", [0, 1, 2])
    provenance = json.loads((tmp_path / "shared" / "provenance.json").read_text())
    assert provenance["dense_cycle_from"] == str(tmp_path / "x") and "dense_cycle_from" not in \
        json.loads((tmp_path / "alone" / "provenance.json").read_text())


def test_dense_from_another_dense_cycle_or_an_unfinished_one_is_refused(dataset, tmp_path):
    cycle.run(dataclasses.replace(BASE, cycles=1), dataset, tmp_path / "x")
    with pytest.raises(cycle.RunDirError, match=r"trained another dense cycle \(--lr 0.1 vs 0.05"):
        cycle.run(dataclasses.replace(BASE, cycles=1, lr=0.05), dataset, tmp_path / "a",
                  options=cycle.RunOptions(dense_from=tmp_path / "x"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "x" / "config.json").read_text())
    with pytest.raises(cycle.RunDirError, match="has not finished its dense cycle 0"):
        cycle.run(dataclasses.replace(BASE, cycles=1), dataset, tmp_path / "b",
                  options=cycle.RunOptions(dense_from=tmp_path / "empty"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
