"""One test per row of the bad-input table in README.md: one line on stderr, exit 2.

Each runs ``compare_ap.main`` in-process (the CLI's exit status is what ``main`` returns or the
``SystemExit`` argparse raises) and checks that nothing was written or that what was there is
unchanged. Ctrl-C (exit 130) is covered by test_resume.py.
"""

import errno
import json
import shutil
import subprocess
import sys

import jax
import orbax.checkpoint as ocp
import pytest

from ap_jax import cycle, records
from experiments import compare_ap

TINY = ["--model", "mlp", "--cycles", "1", "--epochs", "1", "--batch-size", "40",
        "--dnr-size", "60", "--eval-batch-size", "64", "--seed", "3"]


@pytest.fixture(scope="module")
def finished(fake_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert compare_ap.main([*TINY, "--data-dir", str(fake_data), "--out", str(out)]) == 0
    (root,) = out.iterdir()
    return root


def error_line(capsys, *argv) -> str:
    """Run the CLI, require exit 2 and no traceback; return the last stderr line."""
    capsys.readouterr()
    try:
        code = compare_ap.main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags,message", [
    (["--model", "resnet21"], "argument --model: invalid choice: 'resnet21'"),
    (["--method", "snip"], "argument --method: invalid choice: 'snip'"),
    (["--rate", "-0.1"], "--rate must be in [0, 1), got -0.1"),
    (["--rate", "1"], "--rate must be in [0, 1), got 1.0"),
    (["--rate", "0.1", "--ap-rate", "0.2"], "--ap-rate (0.2) must not exceed --rate (0.1)"),
    (["--cycles", "0"], "--cycles must be at least 1, got 0"),
    (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: must be at least 1, got 0"),
    (["--batch-size", "500"], "--batch-size 500 exceeds the 100 training examples; pass at most 100"),
    (["--train-size", "5"], "train_size=5 is out of range: need 10 <= train_size <= 120"),
    (["--image-size", "64"], "--image-size is for the streamed datasets (imagenet2012, imagenet200) only, "
                             "got 64 with --dataset cifar10"),
])
def test_bad_flag(flags, message, fake_data, tmp_path, capsys):
    line = error_line(capsys, *TINY, "--train-size", "100", "--data-dir", fake_data, "--out", tmp_path / "o", *flags)
    assert message in line
    assert not (tmp_path / "o").exists()


def test_batch_not_a_multiple_of_devices(fake_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    line = error_line(capsys, *TINY, "--batch-size", "36", "--data-dir", fake_data, "--out", tmp_path / "o")
    assert "--batch-size 36 does not split over 8 devices: pass a multiple of 8 (e.g. 32 or 40)" in line
    assert not (tmp_path / "o").exists()


def test_missing_data_dir(tmp_path, capsys):
    line = error_line(capsys, *TINY, "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert "nowhere/cifar10/3.0.2/dataset_info.json" in line and "--data-dir" in line and "--download" in line
    assert not (tmp_path / "o").exists()


def test_truncated_data_file(fake_data, tmp_path, capsys):
    broken = tmp_path / "tfds"
    shutil.copytree(fake_data, broken)
    (shard,) = (broken / "cifar10" / "3.0.2").glob("*train.array_record*")
    shard.write_bytes(shard.read_bytes()[:1000])
    line = error_line(capsys, *TINY, "--data-dir", broken, "--out", tmp_path / "o")
    assert "train split in" in line and "unreadable (truncated or corrupt?)" in line
    assert not (tmp_path / "o").exists()


def test_unwritable_output_dir(fake_data, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    line = error_line(capsys, *TINY, "--data-dir", fake_data, "--out", tmp_path / "file" / "runs")
    assert "is a file, not a directory; pass a writable --out" in line


def test_resume_with_another_config(finished, fake_data, capsys):
    before = snapshot(finished)
    line = error_line(capsys, "--resume", finished, "--epochs", "3", "--seed", "4", "--data-dir", fake_data)
    assert "holds another config (--epochs 1 vs 3; --seed 3 vs 4, stored vs given)" in line
    assert snapshot(finished) == before


def test_resume_without_a_config(tmp_path, capsys):
    line = error_line(capsys, "--resume", tmp_path)
    assert f"cannot read a compare_ap config from {tmp_path}/config.json" in line


def test_run_dir_of_another_config(finished, fake_data, capsys):
    arm = finished / "lth_AP" / "seed_3"
    stored = json.loads((arm / "config.json").read_text())
    (arm / "config.json").write_text(json.dumps({**stored, "rate": 0.3}))
    before = snapshot(finished)
    line = error_line(capsys, *TINY, "--data-dir", fake_data, "--out", finished.parent)
    assert f"{arm} holds a run of another config (--rate 0.3 vs 0.2, stored vs given)" in line
    assert snapshot(finished) == before
    (arm / "config.json").write_text(json.dumps(stored))


def test_metrics_edited_into_invalid_json(finished, fake_data, capsys):
    metrics = finished / "lth" / "seed_3" / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0][:-5] + "\n" + "".join(lines[1:]))
    before = snapshot(finished)
    line = error_line(capsys, *TINY, "--data-dir", fake_data, "--out", finished.parent)
    assert f"{metrics} line 1 is not valid JSON" in line and "delete its run directory" in line
    assert snapshot(finished) == before
    metrics.write_text("".join(lines))


@pytest.mark.parametrize("name,text,message", [
    ("config.json", "[1, 2]", "config.json is not a config (a JSON object of fields)"),
    ("provenance.json", "{broken", "provenance.json is not a provenance record (a JSON object)"),
    ("provenance.json", "[]", "provenance.json is not a provenance record (a JSON object)"),
    ("config.json", None, "cannot be read: Is a directory"),
])
def test_damaged_run_files(name, text, message, fake_data, tmp_path, capsys):
    assert compare_ap.main([*TINY, "--data-dir", str(fake_data), "--out", str(tmp_path)]) == 0
    (root,) = tmp_path.iterdir()
    arm = root / "lth" / "seed_3"
    rows = (arm / "metrics.jsonl").read_text().splitlines(keepends=True)
    (arm / "metrics.jsonl").write_text("".join(rows[:-1]))  # unfinished, so the run files are read
    if text is None:
        (arm / name).unlink()
        (arm / name).mkdir()
    else:
        (arm / name).write_text(text)
    line = error_line(capsys, *TINY, "--data-dir", fake_data, "--out", tmp_path)
    assert f"{arm / name}" in line and message in line


HOLD_LOCK = """
import fcntl, sys, time
with open(sys.argv[1], "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_run_directory_another_process_is_running(fake_data, tmp_path, capsys):
    assert compare_ap.main([*TINY, "--data-dir", str(fake_data), "--out", str(tmp_path)]) == 0
    (root,) = tmp_path.iterdir()
    arm = root / "lth" / "seed_3"
    rows = (arm / "metrics.jsonl").read_text().splitlines(keepends=True)
    (arm / "metrics.jsonl").write_text("".join(rows[:-1]))  # unfinished, so a rerun would write to it
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(arm / cycle.LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = snapshot(root)
        line = error_line(capsys, *TINY, "--data-dir", fake_data, "--out", tmp_path)
        assert f"{arm} is in use by another process" in line
        assert snapshot(root) == before
    finally:
        holder.kill()
        holder.wait()
    assert compare_ap.main([*TINY, "--data-dir", str(fake_data), "--out", str(tmp_path)]) == 0
    assert (arm / "metrics.jsonl").read_text() == "".join(rows)


def test_resume_with_a_config_of_wrong_types(finished, tmp_path, capsys):
    stored = json.loads((finished / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**stored, "cycles": "1"}))
    line = error_line(capsys, "--resume", tmp_path)
    assert "a config field has the wrong type" in line


def test_bad_conv_environment_variable(fake_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AP_JAX_CONV", "fastest")
    line = error_line(capsys, *TINY, "--data-dir", fake_data, "--out", tmp_path)
    assert "environment variable AP_JAX_CONV='fastest': must be one of auto, fast, lax" in line
    assert not any(tmp_path.iterdir())


def test_disk_full_at_a_checkpoint_then_at_a_row(fake_data, tmp_path, capsys, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "x")

    for target in ((ocp.CheckpointManager, "save"), (records, "append_rows")):
        with monkeypatch.context() as patch:
            patch.setattr(*target, no_space)
            line = error_line(capsys, *TINY, "--data-dir", fake_data, "--out", tmp_path)
        assert "cannot write" in line and "No space left on device" in line
        assert "rerun the same command to resume" in line
    assert compare_ap.main([*TINY, "--data-dir", str(fake_data), "--out", str(tmp_path)]) == 0
    (root,) = tmp_path.iterdir()
    rows = records.read_rows(root / "lth" / "seed_3" / "metrics.jsonl")
    assert [(r["kind"], r["cycle"]) for r in rows] == [("epoch", 0), ("cycle", 0), ("prune", 1), ("epoch", 1),
                                                          ("cycle", 1)]


def test_a_file_failure_other_than_a_full_disk_is_not_called_a_write(fake_data, tmp_path, capsys,
                                                                    monkeypatch):
    def io_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "rows.jsonl")

    monkeypatch.setattr(records, "append_rows", io_error)
    line = error_line(capsys, *TINY, "--data-dir", fake_data, "--out", tmp_path)
    assert "error: rows.jsonl: Input/output error; fix or remove that file" in line
    assert "cannot write" not in line


def test_nonfinite_loss_stops_or_is_skipped(fake_data, tmp_path, capsys):
    argv = [*TINY, "--lr", "1e30", "--data-dir", fake_data, "--out", tmp_path]
    line = error_line(capsys, *argv)
    assert "non-finite training loss at cycle 0, epoch 0, step 1 of the cycle" in line
    assert "--skip-nonfinite" in line
    assert compare_ap.main([str(a) for a in argv] + ["--skip-nonfinite"]) == 0
    (root,) = tmp_path.iterdir()
    rows = records.read_rows(root / "lth" / "seed_3" / "metrics.jsonl")
    assert rows[0]["skipped_steps"] == 2


def test_resume_takes_a_study_that_proves_its_identity(finished, capsys):
    """A run directory, or a study whose config.json no longer hashes to its name, is refused."""
    run_dir = finished / "lth_AP" / "seed_3"
    before = snapshot(finished)
    line = error_line(capsys, "--resume", run_dir)
    assert f"{run_dir} is a run directory (one seed of one arm), not a compare_ap study; pass its study " \
           f"directory, {finished}" in line
    stored = json.loads((finished / "config.json").read_text())
    (finished / "config.json").write_text(json.dumps({**stored, "ap_rate": 0.05}))
    try:
        line = error_line(capsys, "--resume", finished)
        assert f"{finished / 'config.json'} hashes to " in line
        assert f"not to the directory's name {finished.name}" in line
    finally:
        (finished / "config.json").write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    assert snapshot(finished) == before


@pytest.mark.parametrize("flags,message", [
    (["--out", "x" * 300], "a name in it is 300 bytes, longer than the 255 allowed"),
    (["--out", ""], "--out must not be empty"),
    (["--dnr-size", "500"], "--dnr-size 500 exceeds the 120 training examples"),
    (["--num-processes", "0"], "--num-processes must be at least 1, got 0"),
    (["--lr-gamma", "nan"], "--lr-gamma must be finite, got nan"),
])
def test_bad_paths_sizes_and_numbers(flags, message, fake_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, *TINY, "--data-dir", fake_data, *flags)
    assert message in line
    assert not any(tmp_path.iterdir())


def test_an_unexpected_failure_is_one_line_with_its_traceback_saved(fake_data, tmp_path, capsys, monkeypatch):
    def bug(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(cycle, "run", bug)
    assert compare_ap.main([*TINY, "--data-dir", str(fake_data), "--out", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m experiments.compare_ap: internal error: TypeError: a bug (the traceback is in ")
    (saved,) = tmp_path.glob("compare_ap-*/traceback-*.txt")
    assert str(saved) in line and "raise TypeError" in saved.read_text()


def test_exceptions_in_background_threads_go_to_a_file(tmp_path, capsys):
    import threading

    from experiments import guard

    def body():
        thread = threading.Thread(target=lambda: 1 / 0)
        thread.start()
        thread.join()

    assert guard.guarded(compare_ap.build_parser(), body, tmp_path) == 0
    assert capsys.readouterr().err == ""
    (saved,) = tmp_path.glob("traceback-background-*.txt")
    assert "ZeroDivisionError" in saved.read_text()
