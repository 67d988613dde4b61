"""The study report: means and t intervals against hand-computed values, verdicts, and the written
REPRODUCTION.md of a tiny synthetic study (two seeds, two cycles) built from run files."""

import json
import math

import numpy as np
import pytest

from ap_jax import records
from ap_jax.config import RunConfig
from experiments import report
from experiments.reproduce import Job

T_975_DF1 = 12.7062047  # Student t quantiles from a printed table (two-sided 95 %)
T_975_DF2 = 4.3026527

# seed -> arm -> (DNR per cycle, accuracy per cycle); cycles 0, 1, 2
STUDY = {
    0: {"lth": ([0.60, 0.55, 0.50], [0.50, 0.52, 0.53]), "lth+AP": ([0.60, 0.53, 0.46], [0.50, 0.53, 0.56])},
    1: {"lth": ([0.62, 0.58, 0.52], [0.51, 0.52, 0.52]), "lth+AP": ([0.62, 0.56, 0.50], [0.51, 0.52, 0.54])},
}


def test_estimate_matches_t_table():
    two = report.estimate([1.0, 3.0])
    assert two.mean == 2.0 and two.n == 2
    assert two.half_width == pytest.approx(T_975_DF1 * math.sqrt(2) / math.sqrt(2), rel=1e-6)
    three = report.estimate([0.1, 0.2, 0.3])
    assert three.mean == pytest.approx(0.2)
    assert three.half_width == pytest.approx(T_975_DF2 * 0.1 / math.sqrt(3), rel=1e-6)
    assert math.isnan(report.estimate([5.0]).half_width) and report.estimate([]).n == 0


@pytest.mark.parametrize("values, expect, want", [
    ([-3.0, -2.9, -3.1], "<0", report.HOLDS),
    ([3.0, 2.9, 3.1], "<0", report.FAILS),
    ([-1.0, 1.5, -0.2], "<0", report.UNSURE),
    ([3.0, 2.9, 3.1], ">0", report.HOLDS),
    ([3.0, 2.9, 3.1], "!=0", report.HOLDS),
    ([-3.0, -2.9, -3.1], "!=0", report.HOLDS),
    ([-1.0, 1.5, -0.2], "!=0", report.UNSURE),
    ([-3.0], "<0", report.UNSURE),
])
def test_verdict(values, expect, want):
    assert report.verdict(report.estimate(values), expect) == want


T_95_DF2 = 2.9199856  # one-sided 95 % Student t quantile, 2 degrees of freedom, from a printed table


@pytest.mark.parametrize("values, margin, want", [
    ([0.001, 0.002, 0.003], 0.01, True),     # 90 % interval 0.002 ± 0.00169: inside ±0.01
    ([-0.010, 0.0, 0.010], 0.01, False),     # mean 0 but 0.0 ± 0.0169 reaches past the margin
    ([0.012, 0.013, 0.014], 0.01, False),    # tightly outside: a difference, not parity
    ([0.005], 0.01, False),                  # one value shows nothing
])
def test_equivalence_is_two_one_sided_t_tests(values, margin, want):
    """TOST by hand: both one-sided t statistics beyond the one-sided 95 % quantile."""
    mean, se = np.mean(values), (np.std(values, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.inf)
    by_hand = len(values) == 3 and (mean + margin) / se > T_95_DF2 and (margin - mean) / se > T_95_DF2
    assert by_hand == want and report.equivalent(values, margin) == want


def test_band_is_the_estimate_of_every_column():
    """Two seeds x three points: column means, t_{0.975,1} * s / sqrt(2) = 12.706 * |a - b| / 2,
    and NaN (no band) for a single seed."""
    mean, hw = report.band(np.array([[1.0, 2.0, 0.5], [3.0, 2.0, 1.5]]))
    np.testing.assert_allclose(mean, [2.0, 2.0, 1.0])
    np.testing.assert_allclose(hw, [T_975_DF1, 0.0, T_975_DF1 / 2], rtol=1e-6)
    one_mean, one_hw = report.band(np.array([[4.0, 5.0]]))
    np.testing.assert_array_equal(one_mean, [4.0, 5.0])
    assert np.isnan(one_hw).all()


@pytest.mark.parametrize("n, want", [(0, "0 seeds"), (1, "1 seed"), (2, "2 seeds"), (5, "5 seeds")])
def test_counted_takes_the_plural_unless_one(n, want):
    assert report.counted(n, "seed") == want


def test_combine():
    assert report.combine([report.HOLDS, report.HOLDS]) == report.HOLDS
    assert report.combine([report.HOLDS, report.UNSURE]) == report.UNSURE
    assert report.combine([report.UNSURE, report.FAILS]) == report.FAILS
    assert report.combine([]) == report.UNSURE


def write_run(run_dir, dnr, acc, epochs=2):
    """A finished run's files: epoch and cycle rows with the given per-cycle values."""
    run_dir.mkdir(parents=True)
    rows, wall = [], 0.0
    for c, (d, a) in enumerate(zip(dnr, acc)):
        for e in range(epochs):
            wall += 1.0
            rows.append({"kind": "epoch", "cycle": c, "epoch": e, "remaining": 0.8 ** c, "dnr": d,
                         "test_accuracy": a, "dnr_per_layer": {"relu0": d - 0.1, "relu1": d + 0.1},
                         "wall_s": wall})
        rows.append({**rows[-1], "kind": "cycle"})
    records.write_rows(run_dir / "metrics.jsonl", rows)
    (run_dir / "provenance.json").write_text(json.dumps({
        "command": "python -m experiments.reproduce", "git_commit": "abc123",
        "device": {"backend": "cpu", "device_kind": "cpu", "cpu": "test cpu", "cpu_cores": 2}}))


@pytest.fixture
def study(tmp_path):
    jobs = []
    for seed, arms in STUDY.items():
        for arm, (dnr, acc) in arms.items():
            job = Job("mlp", arm, seed, RunConfig(cycles=2, seed=seed, ap_rate=0.02 if "AP" in arm else 0.0))
            write_run(job.run_dir(tmp_path), dnr, acc)
            jobs.append(job)
    return tmp_path, jobs


def test_claims_of_a_synthetic_study(study):
    out, jobs = study
    parts = report.load_parts(out, jobs)
    assert sorted(parts["mlp"]["lth"].cycle_rows) == [0, 1]
    # Claim 1: DNR(last) - DNR(dense) is -0.10 for both seeds: zero spread, wholly below 0.
    falls = report.claim_dnr_falls(parts)
    assert "-10.00 ± 0.00 (n=2; seeds -10.00, -10.00)" in falls.measurement and falls.verdict == report.HOLDS
    # Claim 2: mean over cycles 1-2 of the paired DNR gap: seed 0 -0.03, seed 1 -0.02.
    lowers = report.claim_ap_lowers_dnr(parts)
    hw = T_975_DF1 * np.std([-0.03, -0.02], ddof=1) / math.sqrt(2)
    assert f"-2.50 ± {100 * hw:.2f} (n=2; seeds -3.00, -2.00)" in lowers.measurement and lowers.verdict == report.UNSURE
    # Claim 3: gap at cycle 2 (+0.03, +0.02); slopes of [0, .01, .03] and [0, 0, .02]: .015 and .01.
    acc = report.claim_ap_accuracy(parts)
    slope_hw = T_975_DF1 * np.std([0.015, 0.01], ddof=1) / math.sqrt(2)
    assert "+2.50 ± " in acc.measurement
    assert f"+1.250 ± {100 * slope_hw:.3f} (n=2; seeds +1.500, +1.000)" in acc.measurement
    assert report.claim_parity(parts).verdict == report.UNSURE


def test_written_report(study, tmp_path):
    out, jobs = study
    path = report.write(out, out / "REPRODUCTION.md", jobs, note="NOTE", command="python -m experiments.reproduce")
    text = path.read_text()
    assert text.startswith("# Reproduction of AP's headline claims (small scale, CPU)")
    assert "**Status: 4 of 4 runs complete**." in text and "Small-scale study: the networks" in text
    assert "NOTE" in text and "`python -m experiments.reproduce`" in text and "`abc123`" in text
    # per-cycle table: cycle 2, X accuracy 52.50 mean of .53 and .52
    assert "| 2 | 64.0 | 52.50 ± " in text
    assert f"total training wall time, every run: {4 * 6 / 3600:.2f} h" in text  # 4 runs of 6 epochs of 1 s
    for name in ("mlp_accuracy_dnr", "mlp_dnr_epochs", "mlp_layer_dnr"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert f"](figures/{name}.png)" in text
    # these runs have no prune rows: the report says why the effect figure is missing
    assert "- mlp: no figure of AP's DNR effect right after the prune" in text
    assert not (out / "figures" / "mlp_dnr_effect.png").exists()


def test_runs_with_prune_rows_get_the_effect_figure_and_no_note(study):
    out, jobs = study
    for job in jobs:
        path = job.run_dir(out) / "metrics.jsonl"
        rows = records.read_rows(path)
        prunes = [{"kind": "prune", "cycle": c, "remaining": 0.8 ** c, "dnr": 0.4 - 0.01 * c,
                   "wall_s": rows[-1]["wall_s"]} for c in (1, 2)]
        records.write_rows(path, [*rows, *prunes])
    text = report.write(out, out / "REPRODUCTION.md", jobs).read_text()
    assert (out / "figures" / "mlp_dnr_effect.png").stat().st_size > 1000 and "](figures/mlp_dnr_effect.png)" in text
    assert "no figure of AP's DNR effect" not in text


def test_report_goes_into_a_new_folder_with_links_that_resolve(study):
    out, jobs = study
    path = report.write(out, out / "docs" / "REPRODUCTION.md", jobs)
    assert "](../figures/mlp_accuracy_dnr.png)" in path.read_text()
    assert (path.parent / "../figures/mlp_accuracy_dnr.png").is_file()


def test_commits_keep_their_dirty_mark(study):
    out, jobs = study
    path = jobs[0].run_dir(out) / "provenance.json"
    prov = json.loads(path.read_text())
    prov["resumed"] = [{"command": prov["command"], "git_commit": "0123456789abcdef0123+dirty", "started": "x"}]
    path.write_text(json.dumps(prov))
    text = report.write(out, out / "REPRODUCTION.md", jobs).read_text()
    assert "- git commits: `0123456789ab+dirty`, `abc123`" in text


def test_incomplete_runs_are_listed_not_counted(study):
    out, jobs = study
    lines = (jobs[0].run_dir(out) / "metrics.jsonl").read_text().splitlines()
    (jobs[0].run_dir(out) / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")
    parts = report.load_parts(out, jobs)
    assert sorted(parts["mlp"]["lth"].cycle_rows) == [1]
    assert parts["mlp"]["lth"].incomplete == ["seed 0: 1 of 3 cycles"]


def test_an_incomplete_run_s_machine_and_commit_are_cited(study):
    """The report lists runs in progress and counts their wall time, so it cites their starts too."""
    out, jobs = study
    run_dir = jobs[0].run_dir(out)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")
    prov = json.loads((run_dir / "provenance.json").read_text())
    other = {**prov["device"], "cpu": "Other CPU 9000"}
    prov["resumed"] = [{"command": prov["command"], "git_commit": "fedcba9876543210", "started": "x", "device": other}]
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    text = report.write(out, out / "REPRODUCTION.md", jobs).read_text()
    assert "`fedcba987654`" in next(line for line in text.splitlines() if line.startswith("- git commits: "))
    assert "host CPU Other CPU 9000" in next(line for line in text.splitlines() if line.startswith("- machines: "))


def test_partial_study_says_so(study):
    out, jobs = study
    (jobs[-1].run_dir(out) / "metrics.jsonl").write_text("")
    text = report.write(out, out / "REPRODUCTION.md", jobs).read_text()
    assert "**Status: 3 of 4 runs complete**; the verdicts below use the complete runs only" in text
    assert "seed 1: 0 of 3 cycles" in text


def test_dnr_effect_right_after_the_prune_and_after_retraining():
    """Two seeds, two pruned cycles: the prune rows' DNR gaps and the cycle rows' gaps, by hand."""
    def arm(cycle_dnr, prune_dnr):
        cycles = {s: [{"cycle": c, "dnr": d} for c, d in enumerate(v)] for s, v in cycle_dnr.items()}
        prunes = {s: [{"cycle": c + 1, "dnr": d} for c, d in enumerate(v)] for s, v in prune_dnr.items()}
        return report.Arm(cycles, {}, 0.0, [], [], prunes)

    x = arm({0: [0.5, 0.4, 0.3], 1: [0.5, 0.45, 0.35]}, {0: [0.42, 0.33], 1: [0.47, 0.38]})
    ap = arm({0: [0.5, 0.39, 0.28], 1: [0.5, 0.44, 0.34]}, {0: [0.40, 0.29], 1: [0.44, 0.35]})
    immediate, retrained = report.dnr_effect(x, ap)
    np.testing.assert_allclose(immediate, [[-0.02, -0.04], [-0.03, -0.03]], atol=1e-12)
    np.testing.assert_allclose(retrained, [[-0.01, -0.02], [-0.01, -0.01]], atol=1e-12)
    assert report.dnr_effect(x, report.Arm(ap.cycle_rows, {}, 0.0, [], [])) is None  # no prune rows


def test_a_block_another_command_owns_is_carried_over(study):
    out, jobs = study
    path = out / "REPRODUCTION.md"
    text = report.write(out, path, jobs, carry={"other": "PLACEHOLDER"}).read_text()
    claims_end = text.index("| 6 |")
    assert claims_end < text.index("<!-- other start -->\nPLACEHOLDER\n<!-- other end -->") < text.index("## Accuracy")
    path.write_text(text.replace("PLACEHOLDER", "the other command's verdicts"))
    again = report.write(out, path, jobs, carry={"other": "PLACEHOLDER"}).read_text()
    assert "<!-- other start -->\nthe other command's verdicts\n<!-- other end -->" in again
    assert "PLACEHOLDER" not in again
