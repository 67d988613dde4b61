"""Exact resume: kill a compare_ap run at several points, rerun it, and get the uninterrupted run.

The killed runs are subprocesses (``crash.py`` stops them at a chosen point); each rerun picks up
where the previous one died and is itself stopped at the next point, so one chain visits every
kill point. The end result must equal an uninterrupted run: metrics rows equal apart from wall
times (so none lost or duplicated) and every cycle's mask, start and end params bitwise equal.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jax
from ap_jax import checkpoint, config, cycle, data, records
from experiments import compare_ap

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "mlp", "--cycles", "1", "--epochs", "2", "--batch-size", "40",
        "--dnr-size", "60", "--eval-batch-size", "64", "--seed", "3"]
ARMS = ("lth", "lth_AP")

# (point, N-th hit in that process, where that is). Each line resumes from the one before.
# 3 steps per epoch, 2 epochs per cycle, cycles 0 and 1, arm lth first, then lth_AP.
CHAIN = [
    ("step", 5, "lth cycle 0 epoch 1, mid-epoch"),
    ("commit", 1, "lth checkpoint after cycle 0 epoch 1 written, not yet renamed into place"),
    ("prune", 2, "lth_AP cycle 0 trained and recorded, its AP prune not yet run"),
]


def run_main(data_dir, out, *extra):
    return compare_ap.main([*TINY, "--data-dir", str(data_dir), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def reference(fake_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert run_main(fake_data, out) == 0
    (root,) = out.iterdir()
    return root


def rows_of(root, arm):
    rows = records.read_rows(root / arm / "seed_3" / "metrics.jsonl")
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def assert_same_run(root, ref):
    for arm in ARMS:
        assert rows_of(root, arm) == rows_of(ref, arm), arm
        for c in (0, 1):
            got = checkpoint.read_cycle(root / arm / "seed_3", c)
            want = checkpoint.read_cycle(ref / arm / "seed_3", c)
            for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
                assert a.dtype == b.dtype and np.array_equal(a, b), f"{arm} cycle {c} {path}"


def covered_rows(run_dir):
    """Rows of metrics.jsonl that the newest committed train-state checkpoint covers (0 if none)."""
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit())
    if not steps:
        return 0
    covered = json.loads((run_dir / "checkpoints" / str(steps[-1]) / "rows" / "metadata").read_text())
    return covered["rows_before"] + len(covered["rows"])


def test_killed_at_each_point_then_rerun_equals_uninterrupted(fake_data, reference, tmp_path):
    flags = [*TINY, "--data-dir", str(fake_data), "--out", str(tmp_path)]
    root = tmp_path / reference.name
    for point, nth, where in CHAIN:
        result = subprocess.run([sys.executable, str(REPO / "tests" / "crash.py"), point, str(nth), "KILL", *flags],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == -signal.SIGKILL, (where, result.stderr[-2000:])
        for arm in ARMS:  # what is on disk is a prefix of the uninterrupted run's rows
            rows = rows_of(root, arm) if (root / arm).exists() else []
            assert rows == rows_of(reference, arm)[: len(rows)], where
            if rows:  # and no row is on disk before the checkpoint that covers it is committed
                assert len(rows) <= covered_rows(root / arm / "seed_3"), where
        if point == "commit":
            assert list((root / "lth" / "seed_3" / "checkpoints").glob("*tmp*")), where
    assert run_main(fake_data, tmp_path) == 0
    assert_same_run(root, reference)
    assert not list(root.rglob("*tmp*"))


def test_sigint_then_cut_row_and_corrupt_checkpoint_resume_exactly(fake_data, reference, tmp_path, monkeypatch,
                                                                     capsys):
    """Ctrl-C before lth's first prune; then a half-written row and a damaged latest checkpoint."""
    def ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as patch:
        patch.setattr(cycle, "prune_step", ctrl_c)
        assert run_main(fake_data, tmp_path) == 130
    assert capsys.readouterr().err.strip().endswith("rerun the same command to resume from the last checkpoint")
    run_dir = tmp_path / reference.name / "lth" / "seed_3"
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == [1, 2]
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"kind": "epoch", "cycle": 1, "ep')
    for blob in (run_dir / "checkpoints" / "2" / "state").rglob("d/*"):
        blob.write_bytes(b"\0" * 10)
    with pytest.warns(checkpoint.CheckpointWarning, match="checkpoints/2 is unreadable"):
        assert run_main(fake_data, tmp_path) == 0
    assert_same_run(tmp_path / reference.name, reference)


def test_rows_without_checkpoints_start_again_and_end_the_same(fake_data, reference, tmp_path):
    """A clone of a repository that commits metrics.jsonl but not checkpoints: the run warns,
    starts from its first epoch, and ends where the uninterrupted run did."""
    assert run_main(fake_data, tmp_path) == 0
    root = tmp_path / reference.name
    for arm in ARMS:
        run_dir = root / arm / "seed_3"
        for sub in ("checkpoints", "cycles", "theta0"):
            shutil.rmtree(run_dir / sub)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
        (run_dir / "metrics.jsonl").write_text("".join(lines[:2]))
    first = json.loads((root / "lth" / "seed_3" / "provenance.json").read_text())
    with pytest.warns(checkpoint.CheckpointWarning, match="2 rows but no checkpoint to resume them from"):
        assert run_main(fake_data, tmp_path) == 0
    assert_same_run(root, reference)
    prov = json.loads((root / "lth" / "seed_3" / "provenance.json").read_text())
    assert prov["started"] > first["started"] and "resumed" not in prov  # the rows are the new start's
    assert prov["abandoned"] == [{k: first[k] for k in records.START_KEYS}]


def test_same_seed_twice_gives_identical_rows(fake_data, tmp_path):
    cfg = config.RunConfig(model="mlp", ap_rate=0.02, cycles=1, epochs=1, batch_size=40, dnr_size=60,
                           eval_batch_size=64, seed=5)
    dataset = data.load("cifar10", fake_data)
    first, second = (cycle.run(cfg, dataset, tmp_path / name) for name in ("a", "b"))
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in first] == \
           [{k: v for k, v in r.items() if k != "wall_s"} for r in second]
    assert len(first) == 5 and first[0]["wall_s"] != second[0]["wall_s"]  # 2 epochs, 2 cycles, 1 prune


def test_checkpoints_are_bounded_and_cycles_kept(reference):
    run_dir = reference / "lth_AP" / "seed_3"
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir()) == [3, 4]
    assert sorted(int(p.name) for p in (run_dir / "cycles").iterdir()) == [0, 1]
    assert (run_dir / "theta0" / "0").is_dir()
    first, second = checkpoint.read_cycle(run_dir, 0), checkpoint.read_cycle(run_dir, 1)
    for a, b, m in zip(*(jax.tree_util.tree_leaves(t) for t in (first["start"]["params"],
                                                                 second["start"]["params"], second["mask"]))):
        assert np.array_equal(np.where(m, a, 0), b)  # LTH: cycle 1 starts from theta_0, masked


def test_a_resume_on_another_machine_is_recorded_and_reported(tmp_path, monkeypatch):
    """Bit-exact resumes hold on one machine and library set, so every start names its own."""
    from ap_jax import run_dir

    cfg = config.RunConfig(model="mlp", cycles=1, epochs=1)
    run_dir.write_run_files(tmp_path, cfg, "first")
    monkeypatch.setattr(records, "cpu_name", lambda: "Other CPU 9000")
    run_dir.write_run_files(tmp_path, cfg, "resumed")
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["label"] == "first" and prov["device"]["cpu"] != "Other CPU 9000"
    (resume,) = prov["resumed"]
    assert set(resume) == set(records.START_KEYS) and resume["device"]["cpu"] == "Other CPU 9000"
    machines = next(line for line in records.provenance_lines([prov]) if line.startswith("- machines: "))
    assert "host CPU Other CPU 9000" in machines and f"host CPU {prov['device']['cpu']}" in machines
