"""End to end: the compare_ap experiment on a tiny dataset written in the real tfds format."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ap_jax import checkpoint, config, cycle, data, masks, methods, models, official, records, stats, train
from experiments import compare_ap

TINY = ["--model", "mlp", "--cycles", "2", "--epochs", "1", "--batch-size", "40",
        "--dnr-size", "60", "--eval-batch-size", "64", "--seed", "3"]


@pytest.fixture(scope="module")
def finished_run(fake_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert compare_ap.main([*TINY, "--data-dir", str(fake_data), "--out", str(out)]) == 0
    (root,) = out.iterdir()
    return root


def test_two_cycle_run_writes_rows_report_and_plot(finished_run):
    assert (finished_run / "report.md").read_text().count("\n| ") == 4  # header + 3 cycles
    assert (finished_run / "report.png").stat().st_size > 10_000
    total = sum(np.asarray(m).size for _, m in masks.prunable_leaves(
        models.get("mlp").init(jax.random.key(0), np.zeros((1, 32, 32, 3)))["params"]))
    arms = {}
    for arm in ("lth", "lth_AP"):
        run_dir = finished_run / arm / "seed_3"
        rows = records.read_rows(run_dir / "metrics.jsonl")
        assert [r["kind"] for r in rows] == ["epoch", "cycle"] + ["prune", "epoch", "cycle"] * 2
        cycles = records.cycle_rows(rows)
        for c, row in enumerate(cycles):
            assert row["cycle"] == c
            assert abs(row["remaining"] * total - total * 0.8 ** c) <= c + 1
            assert 0.0 <= row["dnr"] <= 1.0 and set(row["dnr_per_layer"]) == {"relu0", "relu1"}
            assert 0.0 <= row["test_accuracy"] <= 1.0
        arms[arm] = cycles
        provenance = json.loads((run_dir / "provenance.json").read_text())
        assert provenance["seed"] == 3 and provenance["device"]["device_count"] >= 1
        assert json.loads((run_dir / "config.json").read_text())["ap_rate"] == (0.02 if arm == "lth_AP" else 0.0)
    # Same seed: the dense cycle is the same network in both arms; the pruned cycles differ.
    assert arms["lth"][0]["test_accuracy"] == arms["lth_AP"][0]["test_accuracy"]
    assert arms["lth"][0]["dnr"] == arms["lth_AP"][0]["dnr"]
    assert arms["lth"][2]["layer_remaining"] != arms["lth_AP"][2]["layer_remaining"]


def test_prune_rows_count_what_x_and_ap_took(fake_data, finished_run):
    """Each prune row against numpy: counts from the saved masks, AP's budget round(q N), and the
    DNR of the trained network with the new mask, recomputed on the first --dnr-size examples."""
    x_train, _ = data.load_split("cifar10", "train", fake_data)
    spec = data.spec("cifar10")
    images = data.normalize(x_train[:60], spec.mean, spec.std)
    model = models.get("mlp")
    for arm, q in (("lth", 0.0), ("lth_AP", 0.02)):
        run_dir = finished_run / arm / "seed_3"
        prunes = [r for r in records.read_rows(run_dir / "metrics.jsonl") if r["kind"] == "prune"]
        assert [r["cycle"] for r in prunes] == [1, 2]
        for row in prunes:
            before, after = (checkpoint.read_cycle(run_dir, row["cycle"] + d) for d in (-1, 0))
            alive = {name: int(np.sum(m)) for name, m in masks.prunable_leaves(before["mask"])}
            left = {name: int(np.sum(m)) for name, m in masks.prunable_leaves(after["mask"])}
            n = sum(alive.values())
            assert row["ap_budget"] == round(q * n) and row["ap_shortfall"] == 0
            assert row["x_pruned"] == round((0.2 - q) * n) and row["ap_pruned"] == row["ap_budget"]
            assert row["x_pruned"] + row["ap_pruned"] == n - sum(left.values())
            assert sum(row["ap_pruned_per_layer"].values()) == row["ap_pruned"]
            assert set(row["ap_pruned_per_layer"]) == set(alive)
            trained = before["end"]
            variables = {"params": masks.apply(trained["params"], after["mask"])}
            counts = stats.relu_counts(model, variables, images, train=False)
            assert row["dnr"] == pytest.approx(stats.dead_neuron_rate(counts)["overall"], abs=1e-12)


def test_rerun_reuses_finished_arms(fake_data, finished_run):
    before = (finished_run / "lth" / "seed_3" / "metrics.jsonl").read_text()
    assert compare_ap.main([*TINY, "--data-dir", str(fake_data), "--out", str(finished_run.parent)]) == 0
    assert (finished_run / "lth" / "seed_3" / "metrics.jsonl").read_text() == before


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.compare_ap", *args],
                          capture_output=True, text=True, timeout=300)


def test_missing_data_is_a_one_line_error(tmp_path):
    result = run_cli(*TINY, "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()
    assert "nowhere" in last[-1] and "dataset_info.json" in last[-1] and "--data-dir" in last[-1]
    assert "Traceback" not in result.stderr


def test_prune_draws_are_not_a_training_stream():
    # The driver splits the seed's key into the init and training keys; with partitionable
    # threefry a split is a fold_in of 0 and 1, so a stream tag of 0 or 1 would repeat them.
    with jax.threefry_partitionable(True):
        seed_key = jax.random.key(0)
        used = {tuple(np.asarray(jax.random.key_data(k))) for k in jax.random.split(seed_key)}
        for stream in (cycle.PRUNE_STREAM, cycle.REINIT_STREAM):
            assert tuple(np.asarray(jax.random.key_data(jax.random.fold_in(seed_key, stream)))) not in used
        assert tuple(np.asarray(jax.random.key_data(jax.random.fold_in(seed_key, 1)))) in used  # the hazard is real


def test_config_hash_is_canonical_and_changes_with_fields():
    a, b = config.RunConfig(), config.RunConfig()
    assert a.hash8() == b.hash8()
    assert config.RunConfig(ap_rate=0.02).hash8() != a.hash8()


def test_base_method_reset_rules():
    init, trained = ("theta0", "bn0"), ("theta_T", "bn_T")
    assert methods.next_start(methods.get("lth"), init, trained) == init
    assert methods.next_start(methods.get("lrr"), init, trained) == trained
    with pytest.raises(ValueError, match="known methods: finetune, lrr, lth, lth_rewind, oneshot"):
        methods.get("snip")


def test_next_cycle_start_by_method_and_reset_rule():
    """What cycle 2 starts from, worked by hand: theta_0 w=1, the rewind point w=2, the trained end
    w=3 (momentum 0.5 after 7 steps); a reinit draw for cycle c is w=100+c."""
    def variables(w, m):
        return {"params": {"w": jnp.float32(w)}, "batch_stats": {"m": jnp.float32(m)}}

    theta0, rewind = variables(1, 10), variables(2, 20)
    tx = optax.sgd(optax.constant_schedule(0.1), momentum=0.9)
    trace = optax.tree_utils.tree_set(tx.init({"w": jnp.float32(3)}), trace={"w": jnp.float32(0.5)},
                                      count=jnp.int32(7))
    trained = train.TrainState(step=jnp.int32(7), params={"w": jnp.float32(3)}, batch_stats={"m": jnp.float32(30)},
                               opt_state=trace, mask={"w": jnp.bool_(True)})
    fresh_init = lambda c: variables(100 + c, -1)  # noqa: E731

    def start(method, **switches):
        reset = official.reset_rule(config.RunConfig(method=method, **switches), fresh_init)
        chosen, opt_state = cycle.next_cycle_start(methods.get(method), reset, 2, theta0, trained, rewind)
        return float(chosen["params"]["w"]), float(chosen["batch_stats"]["m"]), opt_state

    assert start("lth") == (1.0, 10.0, None)  # theta_0 and its statistics, a fresh optimizer
    assert start("lth_rewind", rewind_step=1) == (2.0, 20.0, None)  # the rewind point
    assert start("lrr") == start("finetune") == (3.0, 30.0, None)  # the trained survivors
    assert start("lth", reinit=True) == (102.0, 10.0, None)  # cycle 2's fresh draw, theta_0's statistics
    w, m, carried = start("lrr", reapply_mask=False)
    assert (w, m) == (3.0, 30.0)
    assert optax.tree_utils.tree_get(carried, "trace") == {"w": 0.5}  # momentum kept, the count restarts
    assert int(optax.tree_utils.tree_get(carried, "count")) == 0


def test_eval_every_skips_test_accuracy_but_never_a_cycles_last_epoch_or_the_dnr(fake_data, tmp_path):
    base = config.RunConfig(model="mlp", cycles=1, epochs=3, batch_size=120, augment=False, dnr_size=60,
                            eval_batch_size=64, seed=1)
    every = cycle.run(base, data.load("cifar10", fake_data), tmp_path / "every")
    sparse_cfg = dataclasses.replace(base, eval_every=2)
    sparse = cycle.run(sparse_cfg, data.load("cifar10", fake_data), tmp_path / "sparse")
    assert base.hash8() == dataclasses.replace(base, eval_every=1).hash8() != sparse_cfg.hash8()
    assert [r["kind"] for r in sparse] == ["epoch"] * 3 + ["cycle", "prune"] + ["epoch"] * 3 + ["cycle"]
    every, sparse = ([r for r in rows if r["kind"] != "prune"] for rows in (every, sparse))
    assert [r["test_accuracy"] is None for r in sparse] == [True, False, False, False] * 2  # epochs 0, 1, 2 (last)
    for a, b in zip(every, sparse):  # the same training: every other number agrees
        assert a["dnr"] == b["dnr"] and a["train_loss"] == b["train_loss"]
        if b["test_accuracy"] is not None:
            assert a["test_accuracy"] == b["test_accuracy"]
