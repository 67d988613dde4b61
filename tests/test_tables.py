"""The per-table experiment modules: --help, the full-scale recipes against their sources' numbers,
bad input, and two-cycle tiny runs of Table 1 and Table 3 whose table.md matches the run files."""

import importlib
import json

import numpy as np
import pytest

from ap_jax import data, records, train
from references import assert_cycle_dnr_from_end_weights

MODULES = ["table1", "table2", "table3", "table4", "table5", "table6"]


@pytest.mark.parametrize("name", MODULES)
def test_help(name, capsys):
    module = importlib.import_module(f"experiments.{name}")
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and f"Table {module.SPEC.number}:" in out and "--scale" in out


def lr_drop_steps(cfg, train_examples):
    """Steps at which the cycle's LR schedule changes, from the schedule itself."""
    steps = cfg.epochs * (train_examples // cfg.batch_size)
    schedule = train.lr_schedule(cfg.optim(), steps)
    lrs = np.asarray(schedule(np.arange(cfg.warmup_steps, steps)))
    return steps, [int(s) + cfg.warmup_steps + 1 for s in np.flatnonzero(np.diff(lrs) != 0)]


def test_table1_full_scale_is_the_lth_recipe():
    # Frankle & Carbin 2019: 30k iterations at batch 128, LR 0.1 divided by 10 at 20k and 25k.
    cfg = importlib.import_module("experiments.table1").SPEC.full
    steps, drops = lr_drop_steps(cfg, 50_000)
    assert abs(steps - 30_000) <= 50_000 // 128 and cfg.lr == 0.1 and cfg.batch_size == 128
    assert [abs(d - t) <= 50_000 // 128 for d, t in zip(drops, (20_000, 25_000))] == [True, True]


def test_table2_full_scale_is_the_lth_vgg_recipe():
    # Frankle & Carbin 2019: 160 epochs at batch 64, drops at epochs 80 and 120, 10k warm-up steps.
    cfg = importlib.import_module("experiments.table2").SPEC.full
    per_epoch = 50_000 // 64
    steps, drops = lr_drop_steps(cfg, 50_000)
    assert steps == 160 * per_epoch and cfg.warmup_steps == 10_000
    assert drops == [80 * per_epoch, 120 * per_epoch]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope"], "invalid choice"),
    (["--scale", "cpu", "--methods", "lth_rewind", "--rewind-step", "0"], "--rewind-step >= 1"),
    (["--scale", "cpu", "--ap-rate", "0"], "--ap-rate must be positive"),
])
def test_bad_input_is_one_line(argv, message, capsys, tmp_path):
    module = importlib.import_module("experiments.table1")
    with pytest.raises(SystemExit) as stop:
        module.main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_rewind_step_past_a_cycle_is_refused_before_any_run(fake_data, capsys, tmp_path):
    table1 = importlib.import_module("experiments.table1")
    argv = ["--scale", "cpu", "--methods", "finetune", "lth_rewind", "--rewind-step", "1000", "--train-size", "120",
            "--batch-size", "40", "--epochs", "2", "--data-dir", str(fake_data), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        table1.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--rewind-step 1000 must be in [1, 6)" in err  # 2 epochs x 120 // 40
    assert not (tmp_path / "out").exists()  # finetune, listed first, did not run either


def test_output_under_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SystemExit) as stop:
        importlib.import_module("experiments.table1").main(["--scale", "cpu", "--out", str(tmp_path / "file")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert "is a file, not a directory; pass a writable --out" in err


def check_table_matches_runs(root, method, shares):
    """Every cell of table.md's rows for ``method`` equals 100 x the run files' accuracy."""
    text = (root / "table.md").read_text()
    for arm in ("X", "X+AP"):
        rows = records.cycle_rows(records.read_rows(root / method / arm.replace("+", "_") / "seed_0" / "metrics.jsonl"))
        line = next(l for l in text.splitlines() if l.startswith(f"| {method} | {arm} |"))
        cells = [c.strip() for c in line.strip("|").split("|")[2:]]
        expected = []
        for share in shares:
            row = next((r for r in rows if abs(r["remaining"] - share) <= 1e-3 * share), None)
            expected.append("—" if row is None else f"{100 * row['test_accuracy']:.2f}")
        assert cells == expected


def test_tiny_table1(fake_data, tmp_path):
    module = importlib.import_module("experiments.table1")
    argv = ["--scale", "cpu", "--train-size", "40", "--epochs", "1", "--cycles", "2", "--batch-size", "8",
            "--dnr-size", "16", "--methods", "lth", "--seeds", "0", "--data-dir", str(fake_data),
            "--out", str(tmp_path)]
    assert module.main(argv) == 0
    (root,) = tmp_path.glob("table1-cpu-*")
    check_table_matches_runs(root, "lth", [1.0, 0.8, 0.64][2:])  # levels <= cycles: the sparsest only
    subset = data.load("cifar10", fake_data, train_size=40, seed=0)  # DNR: the subset's first 16, BN in eval mode
    for arm in ("X", "X_AP"):
        assert_cycle_dnr_from_end_weights(root / "lth" / arm / "seed_0", "resnet20", subset, 16)
    assert json.loads((root / "config.json").read_text())["scale"] == "cpu"
    assert "measured wall time per cycle" in (root / "table.md").read_text()
    # A run made by an earlier invocation keeps its command, and table.md lists both.
    prov_path = root / "lth" / "X" / "seed_0" / "provenance.json"
    prov = json.loads(prov_path.read_text())
    resumed = {"command": "python -m experiments.table1 --resumed", "git_commit": "abc+dirty", "started": "x"}
    earlier = {**prov, "command": "python -m experiments.table1 --earlier", "resumed": [resumed]}
    prov_path.write_text(json.dumps(earlier))
    assert module.main(argv) == 0
    lines = (root / "table.md").read_text().splitlines()
    commands = next(line for line in lines if line.startswith("- commands: "))
    for command in ("python -m experiments.table1 --earlier", "python -m experiments.table1 --resumed",
                    prov["command"]):
        assert f"`{command}`" in commands
    assert "`abc+dirty`" in next(line for line in lines if line.startswith("- git commits: "))


def test_tiny_table3_on_cifar100(tmp_path):
    """Table 3's module on CIFAR-100-format data with the one-shot method; the MLP stands in for
    DenseNet-40, whose forward pass and masked train step test_models_zoo covers, because
    compiling it twice here would cost minutes."""
    from fake_tfds import write_fake_cifar

    data_dir = tmp_path / "tfds"
    write_fake_cifar(data_dir, name="cifar100", num_classes=100, train_per_class=1, test_per_class=1)
    module = importlib.import_module("experiments.table3")
    argv = ["--scale", "cpu", "--model", "mlp", "--train-size", "100", "--epochs", "1", "--cycles", "2",
            "--batch-size", "50", "--dnr-size", "16", "--methods", "oneshot", "--seeds", "0",
            "--data-dir", str(data_dir),
            "--out", str(tmp_path / "out")]
    assert module.main(argv) == 0
    (root,) = (tmp_path / "out").glob("table3-cpu-*")
    check_table_matches_runs(root, "oneshot", [0.64])
    rows = records.read_rows(root / "oneshot" / "X" / "seed_0" / "metrics.jsonl")
    assert [r["cycle"] for r in records.cycle_rows(rows)] == [0, 1]  # one prune, straight to 0.8^2
