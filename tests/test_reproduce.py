"""The study module: its grid, its CLI's errors, and a tiny study that continues where it stopped."""

import re

import pytest

from experiments import reproduce

TINY = ["--parts", "mlp", "--arms", "lth", "lth+AP",
        "--set", "epochs=1", "cycles=2", "batch_size=40", "dnr_size=60", "eval_batch_size=64"]


def test_grid_order_and_pairing():
    jobs = reproduce.grid(["mlp", "resnet20"], [0, 1], {})
    mlp = [j for j in jobs if j.part == "mlp"]
    assert len(mlp) == 2 * len(reproduce.PART_ARMS["mlp"])
    assert [j.part for j in jobs] == sorted((j.part for j in jobs), key=["mlp", "resnet20"].index)
    first_seed = [j.arm for j in mlp[: len(reproduce.PART_ARMS["mlp"])]]
    assert first_seed == list(reproduce.PART_ARMS["mlp"]) and {j.seed for j in mlp[:len(first_seed)]} == {0}
    by_arm = {(j.part, j.arm, j.seed): j.cfg for j in jobs}
    # arms of one part and seed differ only in the AP fields
    x, ap = by_arm[("resnet20", "lth", 1)], by_arm[("resnet20", "lth+AP", 1)]
    assert (x.ap_rate, ap.ap_rate) == (0.0, 0.02) and x.seed == ap.seed == 1
    assert {k for k, v in x.to_dict().items() if ap.to_dict()[k] != v} == {"ap_rate"}
    assert by_arm[("mlp", "negative_random", 0)].ap_variant == "negative_random"
    # the official semantics at the MLP's scale: warm-up the official 20k of 39.1k steps' share
    off, off_ap = by_arm[("mlp", "official", 0)], by_arm[("mlp", "official+AP", 0)]
    steps = off.epochs * (50_000 // off.batch_size)
    assert off.warmup_steps == round(steps * 20_000 / 39_100) and (off.ap_rate, off_ap.ap_rate) == (0.0, 0.02)
    assert off.prune_rule == "official" and off.reinit and not off.reapply_mask and off.lr == reproduce.PARTS["mlp"].lr


def test_overrides_are_typed():
    assert reproduce.parse_overrides(["epochs=3", "augment=false", "lr_drops=0.5,0.75", "lr=0.5"]) == {
        "epochs": 3, "augment": False, "lr_drops": (0.5, 0.75), "lr": 0.5}


@pytest.mark.parametrize("argv, message", [
    (["--set", "epoch=1"], "expected FIELD=VALUE with FIELD a RunConfig field"),
    (["--set", "epochs=two"], "--set 'epochs=two'"),
    (["--set", "rate=1.5"], "--rate must be in [0, 1)"),
    (["--arms", "nope"], "invalid choice"),
    (["--set", "seed=1"], "the seeds are --seeds"),
    (["--parts", "resnet20", "--set", "method=lth_rewind", "rewind_step=1000"],
     "--set rewind_step=1000 must be in [1, 936)"),  # 12 epochs x 10k // 128
])
def test_bad_input_is_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        reproduce.main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_output_under_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--out", str(tmp_path / "file" / "study")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert f"cannot write to {tmp_path / 'file' / 'study'}: {tmp_path / 'file'} is a file" in err


def test_report_path_under_a_file_is_refused_before_any_run(capsys, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--out", str(tmp_path / "study"), "--report-path", str(tmp_path / "file" / "R.md")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "is a file, not a directory; pass a writable --report-path" in err
    assert not (tmp_path / "study").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--help"])
    assert stop.value.code == 0 and "--report" in capsys.readouterr().out


def test_study_continues_where_it_stopped(fake_data, tmp_path):
    out, md = tmp_path / "study", tmp_path / "REPRODUCTION.md"
    common = [*TINY, "--data-dir", str(fake_data), "--out", str(out), "--report-path", str(md)]
    assert reproduce.main([*common, "--seeds", "0"]) == 0
    seed0 = {p: p.read_bytes() for p in out.glob("runs/mlp/*/seed_0/metrics.jsonl")}
    assert len(seed0) == 2 and re.search(r"\b1 complete seed\b", md.read_text())
    assert reproduce.main([*common, "--seeds", "0", "1"]) == 0  # seed 0 reused, seed 1 added
    assert {p: p.read_bytes() for p in out.glob("runs/mlp/*/seed_0/metrics.jsonl")} == seed0
    assert len(list(out.glob("runs/mlp/*/seed_1/metrics.jsonl"))) == 2
    text = md.read_text()
    assert text.startswith("# Reproduction of AP's headline claims (--set epochs=1 cycles=2 batch_size=40")
    assert "with `--set epochs=1 cycles=2" in text and "Small-scale study" not in text
    assert "2 complete seeds" in text and "| 2 | 64.0 |" in text and (out / "figures" / "mlp_layer_dnr.png").exists()
    assert reproduce.main([*common, "--seeds", "0", "1", "--report"]) == 0


def test_a_run_of_part_of_the_grid_reports_the_whole_study(fake_data, tmp_path):
    out, md = tmp_path / "study", tmp_path / "REPRODUCTION.md"
    common = [*TINY[:2], "--set", *TINY[TINY.index("--set") + 1:],
              "--data-dir", str(fake_data), "--out", str(out), "--report-path", str(md)]
    assert reproduce.main([*common, "--arms", "lth", "lth+AP", "--seeds", "0"]) == 0
    whole = len(reproduce.PART_ARMS["mlp"]) * 3 + len(reproduce.PART_ARMS["resnet20"]) * 3
    assert f"**Status: 2 of {whole} runs complete**" in md.read_text()
    assert reproduce.main([*common, "--arms", "lth", "--seeds", "0", "--report"]) == 0  # one arm asked for
    text = md.read_text()
    assert f"**Status: 2 of {whole} runs complete**" in text and re.search(r"- mlp lth\+AP: 1 complete seed\b", text)
    assert "- resnet20 lth: 0 complete seeds; in progress or missing: seed 0" in text
    assert "--parts" not in text and "--arms" not in text  # the regenerate command is the whole study's
    regenerate = (f"`python -m experiments.reproduce --out {out} --data-dir {fake_data} --report-path {md} "
                  "--set epochs=1")
    assert regenerate in text


def test_a_study_beyond_the_default_grid_reports_its_runs_and_no_others(fake_data, tmp_path):
    out, md = tmp_path / "study", tmp_path / "REPRODUCTION.md"
    common = ["--parts", "mlp", "--arms", "lth", "lth+AP", "--set", "epochs=1", "cycles=2", "batch_size=40",
              "dnr_size=60", "eval_batch_size=64", "--data-dir", str(fake_data), "--out", str(out),
              "--report-path", str(md)]
    assert reproduce.main([*common, "--seeds", "5"]) == 0  # seed 5: not one of the default seeds
    text = md.read_text()
    assert "**Status: 2 of 2 runs complete**." in text and "earlier commands" not in text
    assert "`python -m experiments.reproduce --parts mlp --arms lth lth+AP --set epochs=1" in text
    assert reproduce.main([*common, "--seeds", "6", "--arms", "lth", "--report"]) == 0
    text = md.read_text()
    assert "**Status: 2 of 3 runs complete**" in text and "- mlp lth+AP: 1 complete seed\n" in text
    assert "- mlp lth: 1 complete seed; in progress or missing: seed 6: 0 of 3 cycles" in text
    assert f"Some runs come from earlier commands on {out}." in text


def test_report_path_that_is_a_directory_is_refused_before_any_run(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--out", str(tmp_path / "study"), "--report-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"--report-path {tmp_path} is a directory; pass a file path" in err
    assert not (tmp_path / "study").exists()
