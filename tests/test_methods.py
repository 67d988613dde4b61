"""Base methods on a tiny MLP: which weights and which LR every cycle starts from.

Each run's saved cycle artifacts (``checkpoint.read_cycle``: mask, start and end) are checked
against hand-written expectations: the start is theta_0, the step-k weights or the previous
cycle's end, masked; and with one full-batch plain-SGD step per cycle (momentum and weight decay
0) the end is ``start - lr * masked gradient``, the gradient computed here with ``jax.grad``, so
the LR each cycle ran at is read off the weights themselves.
"""

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from ap_jax import ap, checkpoint, config, cycle, data, masks, methods, models, records, train
from experiments import compare_ap

REPO = Path(__file__).resolve().parents[1]
LR, FINETUNE_LR = 0.05, 0.003
ONE_STEP = config.RunConfig(model="mlp", cycles=2, epochs=1, batch_size=120, lr=LR, momentum=0.0,
                            weight_decay=0.0, augment=False, dnr_size=60, eval_batch_size=64, seed=1)
TINY = ["--model", "mlp", "--cycles", "1", "--epochs", "2", "--batch-size", "40", "--dnr-size", "60",
        "--eval-batch-size", "64", "--seed", "2"]  # 3 steps per epoch, 6 per cycle
REWIND = [*TINY, "--method", "lth_rewind", "--rewind-step", "4"]


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_tree_equal(got, want, what):
    for a, b in zip(leaves(got), leaves(want), strict=True):
        assert a.shape == b.shape and np.array_equal(a, b), what


def masked(params, mask):
    return jax.tree_util.tree_map(lambda p, m: np.where(m, p, 0), params, mask)


def sgd_step(params, mask, dataset, lr):
    """One full-batch plain-SGD step of the masked MLP, written out here as the reference."""
    model = models.get("mlp", num_classes=dataset.num_classes)
    x, y = data.normalize(dataset.x_train, dataset.mean, dataset.std), dataset.y_train

    def loss(p):
        logits = model.apply({"params": masks.apply(p, mask)}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss)(params)
    return jax.tree_util.tree_map(lambda p, g, m: np.where(m, p - lr * g, 0), params, grads, mask)


@pytest.fixture(scope="module")
def dataset(fake_data):
    return data.load("cifar10", fake_data)


@pytest.fixture(scope="module")
def one_step_runs(dataset, tmp_path_factory):
    """lth, lrr, finetune, oneshot (+AP, 3 cycles' sparsity) and lrr+AP with one SGD step per cycle."""
    configs = {"lth": ONE_STEP, "lrr": dataclasses.replace(ONE_STEP, method="lrr"),
               "finetune": dataclasses.replace(ONE_STEP, method="finetune", finetune_lr=FINETUNE_LR),
               "oneshot": dataclasses.replace(ONE_STEP, method="oneshot", cycles=3, ap_rate=0.02),
               "lrr_ap": dataclasses.replace(ONE_STEP, method="lrr", ap_rate=0.02)}
    root = tmp_path_factory.mktemp("one_step")
    return {name: (cycle.run(cfg, dataset, root / name), root / name) for name, cfg in configs.items()}


@pytest.mark.parametrize("name,starts,lrs", [
    ("lth", ("init", "init"), (LR, LR, LR)),
    ("lrr", ("end", "end"), (LR, LR, LR)),
    ("finetune", ("end", "end"), (LR, FINETUNE_LR, FINETUNE_LR)),
    ("oneshot", ("end",), (LR, LR)),
])
def test_each_cycle_starts_from_the_expected_weights_at_the_expected_lr(name, starts, lrs, one_step_runs, dataset):
    rows, run_dir = one_step_runs[name]
    assert [r["cycle"] for r in records.cycle_rows(rows)] == list(range(len(lrs)))
    artifacts = [checkpoint.read_cycle(run_dir, c) for c in range(len(lrs))]
    theta0 = artifacts[0]["start"]
    assert not (run_dir / "rewind").exists()
    for c, lr in enumerate(lrs):
        mask, start = artifacts[c]["mask"], artifacts[c]["start"]
        if c > 0:
            source = theta0 if starts[c - 1] == "init" else artifacts[c - 1]["end"]
            assert_tree_equal(start["params"], masked(source["params"], mask), f"{name} cycle {c} start")
            assert_tree_equal(start["batch_stats"], source["batch_stats"], f"{name} cycle {c} BN statistics")
        want = sgd_step(start["params"], mask, dataset, lr)
        for a, b in zip(leaves(artifacts[c]["end"]["params"]), leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-6, err_msg=f"{name} cycle {c} lr {lr}")


def test_oneshot_prunes_once_to_the_final_sparsity_with_ap_taking_q_over_p(one_step_runs):
    rows, run_dir = one_step_runs["oneshot"]
    first, second = (checkpoint.read_cycle(run_dir, c) for c in (0, 1))
    # 3 cycles of p = 0.2 leave 0.8^3 = 0.512: one prune of 0.488, AP's 0.02 / 0.2 of it 0.0488.
    want = ap.ap_prune(first["mask"], first["end"]["params"], first["start"]["params"],
                       rate=0.488, ap_rate=0.0488)
    assert_tree_equal(second["mask"], want, "oneshot mask")
    total = sum(m.size for _, m in masks.prunable_leaves(second["mask"]))
    assert abs(records.cycle_rows(rows)[1]["remaining"] - 0.512) <= 1 / total
    assert [r["remaining"] for r in records.cycle_rows(rows)][0] == 1.0


def test_ap_measures_each_cycle_against_that_cycles_own_start(one_step_runs):
    # LRR starts cycle 1 from cycle 0's end, not theta_0: AP's W_0 must be that start.
    _, run_dir = one_step_runs["lrr_ap"]
    artifacts = [checkpoint.read_cycle(run_dir, c) for c in range(3)]
    for c in (0, 1):
        mask, start, end = artifacts[c]["mask"], artifacts[c]["start"], artifacts[c]["end"]
        want = ap.ap_prune(mask, end["params"], start["params"], rate=0.2, ap_rate=0.02)
        assert_tree_equal(artifacts[c + 1]["mask"], want, f"mask after cycle {c}")
    with_theta0 = ap.ap_prune(artifacts[1]["mask"], artifacts[1]["end"]["params"], artifacts[0]["start"]["params"],
                              rate=0.2, ap_rate=0.02)
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(with_theta0), leaves(artifacts[2]["mask"])))


def test_a_rerun_of_a_finished_oneshot_run_is_reused(one_step_runs, dataset):
    rows, run_dir = one_step_runs["oneshot"]
    cfg = dataclasses.replace(ONE_STEP, method="oneshot", cycles=3, ap_rate=0.02)
    before = (run_dir / "metrics.jsonl").read_text()
    assert cycle.run(cfg, dataset, run_dir) == rows
    assert (run_dir / "metrics.jsonl").read_text() == before


def record_train_steps(patch, seen):
    """Make every train step also append a copy of the params it returns to ``seen``."""
    make_steps = train.make_steps

    def recording(*args, **kwargs):
        steps = make_steps(*args, **kwargs)

        def step(*a):
            state, metrics = steps.train(*a)
            seen.append(jax.tree_util.tree_map(np.array, state.params))
            return state, metrics
        return dataclasses.replace(steps, train=step)

    patch.setattr(train, "make_steps", recording)


@pytest.fixture(scope="module")
def rewind_run(fake_data, tmp_path_factory):
    """lth_rewind to step 4 (of 6: mid epoch 1), the params after every train step recorded."""
    seen, out = [], tmp_path_factory.mktemp("rewind")
    with pytest.MonkeyPatch.context() as patch:
        record_train_steps(patch, seen)
        assert compare_ap.main([*REWIND, "--data-dir", str(fake_data), "--out", str(out)]) == 0
    (root,) = out.iterdir()
    return root, seen


def test_lth_rewind_starts_pruned_cycles_from_the_step_k_weights(rewind_run):
    root, seen = rewind_run
    for arm in ("lth_rewind", "lth_rewind_AP"):
        run_dir = root / arm / "seed_2"
        first, second = (checkpoint.read_cycle(run_dir, c) for c in (0, 1))
        step4 = seen[3] if arm == "lth_rewind" else seen[12 + 3]  # arm 1: 12 steps over 2 cycles
        assert_tree_equal(second["start"]["params"], masked(step4, second["mask"]), f"{arm} cycle 1 start")
        for other in (first["start"]["params"], first["end"]["params"], seen[2], seen[4]):
            assert not all(np.array_equal(a, b) for a, b in zip(leaves(step4), leaves(other)))
        assert sorted(int(p.name) for p in (run_dir / "rewind").iterdir()) == [4]


def test_lth_rewind_killed_after_step_k_then_rerun_equals_uninterrupted(fake_data, rewind_run, tmp_path):
    """Killed mid-epoch after the rewind point was saved (no checkpoint covers it yet), then
    before the first prune; the last rerun starts after cycle 0, so it rewinds from disk."""
    reference, _ = rewind_run
    flags = [*REWIND, "--data-dir", str(fake_data), "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's ap_jax, not an installed one
    for point, nth in (("step", 5), ("prune", 1)):
        result = subprocess.run([sys.executable, str(REPO / "tests" / "crash.py"), point, str(nth), "KILL", *flags],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-2000:])
    run_dir = tmp_path / reference.name / "lth_rewind" / "seed_2"
    assert (run_dir / "rewind" / "4").is_dir() and not (run_dir / "cycles" / "1").exists()
    assert compare_ap.main(flags) == 0
    for arm in ("lth_rewind", "lth_rewind_AP"):
        got, want = tmp_path / reference.name / arm / "seed_2", reference / arm / "seed_2"
        strip = [[{k: v for k, v in r.items() if k != "wall_s"} for r in records.read_rows(d / "metrics.jsonl")]
                 for d in (got, want)]
        assert strip[0] == strip[1], arm
        for c in (0, 1):
            assert_tree_equal(checkpoint.read_cycle(got, c), checkpoint.read_cycle(want, c), f"{arm} cycle {c}")


def test_reset_rules_by_policy():
    init, trained, rewind = ("theta0", "bn0"), ("theta_T", "bn_T"), ("theta_k", "bn_k")
    want = {"lth": init, "lth_rewind": rewind, "lrr": trained, "finetune": trained, "oneshot": trained}
    for name, start in want.items():
        assert methods.next_start(methods.get(name), init, trained, rewind) == start, name
    with pytest.raises(ValueError, match="'lth_rewind' rewinds to step k, but no rewind point was given"):
        methods.next_start(methods.get("lth_rewind"), init, trained)


def test_oneshot_prune_rates_by_hand():
    oneshot, lth = methods.get("oneshot"), methods.get("lth")
    rate, ap_rate = methods.prune_rates(oneshot, 0.2, 0.02, 5)
    assert rate == pytest.approx(1 - 0.32768) and ap_rate == pytest.approx(0.067232)
    assert methods.prune_rates(oneshot, 0.0, 0.0, 5) == (0.0, 0.0)
    assert methods.prune_rates(lth, 0.2, 0.02, 5) == (0.2, 0.02)
    assert (methods.last_cycle(oneshot, 5), methods.last_cycle(lth, 5)) == (1, 5)


def test_existing_config_hashes_are_unchanged():
    # Computed on main before these methods existed; they name published result directories.
    assert config.RunConfig().hash8() == "a4910681"
    assert compare_ap.DEFAULTS.hash8() == "6afedc3e"
    assert (REPO / "results" / f"compare_ap-{compare_ap.DEFAULTS.hash8()}").is_dir()
    assert config.RunConfig(method="lth_rewind", rewind_step=3).hash8() != config.RunConfig().hash8()


@pytest.mark.parametrize("fields,message", [
    ({"method": "lth_rewind"},
     "--method lth_rewind needs --rewind-step >= 1 (the step of cycle 0 to rewind to), got 0"),
    ({"rewind_step": 3}, "--rewind-step is used by --method lth_rewind only, got 3 with --method lth"),
    ({"method": "finetune", "finetune_lr": 0.0}, "--finetune-lr must be positive, got 0.0"),
    ({"method": "lrr", "finetune_lr": 0.01},
     "--finetune-lr is used by --method finetune only, got 0.01 with --method lrr"),
    ({"method": "oneshot", "ap_rate": 0.02, "ap_start_cycle": 2},
     "--method oneshot prunes once, after cycle 0: --ap-start-cycle must be 0, got 2"),
    ({"method": "snip"}, "--method must be one of lth, lth_rewind, lrr, finetune, oneshot, got 'snip'"),
])
def test_invalid_method_options_are_one_line_errors(fields, message):
    with pytest.raises(ValueError) as err:
        config.RunConfig(**fields)
    assert str(err.value) == message


@pytest.mark.parametrize("flags,message", [
    (["--method", "lth_rewind"], "--method lth_rewind needs --rewind-step >= 1"),
    (["--method", "lth_rewind", "--rewind-step", "6"],
     "--rewind-step 6 must be in [1, 6): a cycle has 6 training steps (epochs x examples // batch size)"),
    (["--method", "lrr", "--rewind-step", "2"], "--rewind-step is used by --method lth_rewind only"),
])
def test_compare_ap_rejects_bad_method_flags_with_exit_2(flags, message, fake_data, tmp_path, capsys):
    argv = [*TINY, "--data-dir", str(fake_data), "--out", str(tmp_path / "o"), *flags]
    with pytest.raises(SystemExit) as stop:
        compare_ap.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


def test_run_rejects_a_rewind_step_past_the_cycle_before_writing(dataset, tmp_path):
    cfg = dataclasses.replace(ONE_STEP, method="lth_rewind", rewind_step=1)
    with pytest.raises(ValueError, match=r"--rewind-step 1 must be in \[1, 1\)"):
        cycle.run(cfg, dataset, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_report_describes_oneshot_as_one_prune():
    from experiments import compare_ap

    assert compare_ap.pruning(config.RunConfig(method="oneshot", cycles=3)) == \
        "one prune after the dense run to 51.2 % remaining"  # 0.8 ** 3
    assert compare_ap.pruning(config.RunConfig(cycles=3)) == "3 cycles of p = 0.2"
