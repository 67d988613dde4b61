"""The high-sparsity study end to end at a tiny scale: paired arms sharing their dense cycle, and
the report's pre-registered contrasts recomputed here from the rows with numpy."""

import json

import numpy as np
import pytest

from ap_jax import records
from experiments import high_sparsity, high_sparsity_report, report

TINY = ["--seeds", "0", "1", "--set", "model=mlp", "cycles=2", "epochs=1", "dense_epochs=2", "rate=0.7",
        "batch_size=40", "dnr_size=60", "eval_batch_size=64", "augment=false"]


@pytest.fixture(scope="module")
def study(fake_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    argv = [*TINY, "--data-dir", str(fake_data), "--out", str(out / "runs"), "--report-path", str(out / "HS.md")]
    assert high_sparsity.main(argv) == 0
    return out


def cycle_values(run_dir, key):
    return np.array([r[key] for r in records.cycle_rows(records.read_rows(run_dir / "metrics.jsonl"))])


def test_paired_arm_takes_the_dense_cycle_of_its_seed(study):
    for seed in (0, 1):
        x = study / "runs" / "runs" / "resnet20_full" / "lrr" / f"seed_{seed}"
        ap = x.parent.parent / "lrr_AP" / f"seed_{seed}"
        assert json.loads((ap / "provenance.json").read_text())["dense_cycle_from"] == str(x)
        assert cycle_values(x, "test_accuracy")[0] == cycle_values(ap, "test_accuracy")[0]
        assert [r["epoch"] for r in records.read_rows(x / "metrics.jsonl") if r["kind"] == "epoch"] == [0, 1, 0, 0]


def test_report_states_the_plan_and_the_primary_contrast_from_the_rows(study):
    text = (study / "HS.md").read_text()
    assert text.index("## Analysis plan (fixed before the results)") < text.index("## Results")
    root = study / "runs" / "runs" / "resnet20_full"
    # remaining 0.3 then 0.09: only cycle 2 is at or below 10 %
    gaps = [100 * (cycle_values(root / "lrr_AP" / f"seed_{s}", "test_accuracy")[2]
                   - cycle_values(root / "lrr" / f"seed_{s}", "test_accuracy")[2]) for s in (0, 1)]
    assert f"{np.mean(gaps):+.2f} ± " in text and f"seeds {gaps[0]:+.2f}, {gaps[1]:+.2f})" in text
    assert "| 2 | 9.00 |" in text  # the mechanism table's row for the prune that made cycle 2
    assert (study / "runs" / "figures" / "resnet20_full_dnr_effect.png").stat().st_size > 10_000
    assert "Status: 4 of 10 runs complete" in text


@pytest.mark.parametrize("values, want", [
    ([0.02, 0.03, 0.025, 0.02, 0.03], "AP helps"),             # wholly above 0
    ([-0.02, -0.03, -0.025, -0.02, -0.03], "AP hurts"),        # wholly below
    ([0.001, -0.001, 0.002, 0.0, -0.002], "no difference"),    # 90 % interval well inside ±1 point
    ([0.03, -0.04, 0.05, -0.02, 0.0], "inconclusive"),         # straddles 0, reaches past the margin
])
def test_the_plan_s_four_verdicts(values, want):
    assert high_sparsity_report.decide(values, ">0", "AP helps", "AP hurts").startswith(want)


def test_the_plan_decides_only_on_three_or_more_paired_seeds():
    helps = [0.02, 0.03, 0.025]  # wholly above 0 from three seeds on
    assert high_sparsity_report.plan_verdict(helps, ">0", "AP helps", "AP hurts") == "AP helps"
    two = high_sparsity_report.plan_verdict([0.001, -0.001], ">0", "AP helps", "AP hurts")
    assert two.startswith("pending") and two.endswith(high_sparsity_report.decide([0.001, -0.001], ">0", "h", "x"))
    assert high_sparsity_report.plan_verdict([0.02], ">0", "AP helps", "AP hurts") == (
        "pending: the plan decides on 3 or more paired seeds")


# 450 of 750 epochs at a median 211 s leave 300 x 211 s = 17.6 h: past 30 h after 29.3 h, within it after 12 h
SPENT = high_sparsity_report.Budget(450, 750, 150, 211.0, 20, 29.3)
WITHIN = high_sparsity_report.Budget(450, 750, 150, 211.0, 20, 12.0)


def test_the_budget_is_exceeded_when_the_projection_passes_thirty_hours():
    assert SPENT.left_h == pytest.approx(300 * 211 / 3600) and SPENT.exceeded and not WITHIN.exceeded
    assert not high_sparsity_report.Budget(750, 750, 150, 211.0, 20, 44.0).exceeded  # nothing left to run
    assert "about 17.6 h left; 29.3 h measured so far, of a ~30 h budget" in SPENT.line()


@pytest.mark.parametrize("paired, planned, noted", [(2, 5, False), (3, 5, True), (4, 5, True), (5, 5, False)])
def test_the_fallback_is_named_only_between_three_seeds_and_the_plan(paired, planned, noted):
    lines = high_sparsity_report.fallback_line(paired, planned, SPENT)
    assert bool(lines) == noted and all(f"{paired} of the {planned} planned" in line for line in lines)
    assert all("the plan's fallback, as the remaining runs would take about 17.6 h more" in line for line in lines)


def test_within_budget_fewer_seeds_are_an_interim_reading_not_the_fallback():
    (line,) = high_sparsity_report.fallback_line(3, 5, WITHIN)
    assert "interim reading" in line and "fallback" not in line
    assert "budget leaves time" in high_sparsity_report.claim6_line(WITHIN)
    assert "would go past the ~30 h budget" in high_sparsity_report.claim6_line(SPENT)
    assert high_sparsity_report.status_line(6, 10, WITHIN).endswith("; rerun the command below to continue the study.")
    assert "so the plan decides on the seeds done" in high_sparsity_report.status_line(6, 10, SPENT)
    assert high_sparsity_report.status_line(10, 10, SPENT) == "**Status: 10 of 10 runs complete**."


def test_two_paired_seeds_give_pending_verdicts_in_the_results(study):
    text = (study / "HS.md").read_text()
    results = text[text.index("## Results"):text.index("## Mechanism")]
    assert results.count("| pending: the plan decides on 3 or more paired seeds; on these 2") == 2
    assert "AP helps |" not in results and "planned paired seeds" not in results


def test_budget_counts_a_shared_dense_cycle_once(study):
    root = study / "runs" / "runs" / "resnet20_full"
    walls = [r["wall_s"] for r in records.read_rows(root / "lrr" / "seed_0" / "metrics.jsonl") if r["kind"] == "epoch"]
    x_epochs = high_sparsity_report.trained_epochs(root / "lrr" / "seed_0")
    assert x_epochs[0] is None and np.allclose(x_epochs[1:], np.diff(walls))
    assert len(high_sparsity_report.trained_epochs(root / "lrr_AP" / "seed_0")) == 2  # its 2 pruned cycles only
    # 5 seeds x (2 dense + 2 arms x 2 cycles x 1 epoch) = 30 epochs; seeds 0 and 1 trained 2 x (4 + 2)
    assert "- budget: 12 of 30 epochs trained (6 a seed" in (study / "HS.md").read_text()


def test_total_wall_time_counts_a_shared_dense_cycle_once(tmp_path):
    rows = [{"kind": "epoch", "cycle": 0, "wall_s": 100.0}, {"kind": "cycle", "cycle": 0, "wall_s": 200.0},
            {"kind": "cycle", "cycle": 1, "wall_s": 260.0}]
    for name, provenance in (("x", {}), ("ap", {"dense_cycle_from": "x"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / name / "provenance.json").write_text(json.dumps(provenance))
    x = report.load_arm({0: tmp_path / "x"}, cycles=1)
    ap = report.load_arm({0: tmp_path / "ap"}, cycles=1)
    assert (x.wall_s, ap.wall_s) == (260.0, 60.0)  # the paired arm spent only its pruned cycle's 60 s


def test_the_study_rewrites_its_blocks_in_the_pages_beside_its_report(study):
    root = study / "runs" / "runs" / "resnet20_full"
    pages = {name: study / name for name in ("REPRODUCTION.md", "README.md")}
    for name, block in (("REPRODUCTION.md", "claims"), ("README.md", "readme")):
        pages[name].write_text(f"# R\n\nkept\n<!-- experiments.high_sparsity {block} start -->\nold\n"
                               f"<!-- experiments.high_sparsity {block} end -->\nalso kept\n")
    argv = [*TINY, "--report", "--data-dir", "unused", "--out", str(study / "runs"),
            "--report-path", str(study / "HS.md")]
    assert high_sparsity.main(argv) == 0
    for name, block in (("REPRODUCTION.md", "claims"), ("README.md", "readme")):
        text = pages[name].read_text()
        assert text.startswith(f"# R\n\nkept\n<!-- experiments.high_sparsity {block} start -->\n")
        assert text.endswith(f"<!-- experiments.high_sparsity {block} end -->\nalso kept\n") and "\nold\n" not in text
        assert "([report](HS.md))" in text
    gap = {key: [100 * (cycle_values(root / "lrr_AP" / f"seed_{s}", key)[2]
                        - cycle_values(root / "lrr" / f"seed_{s}", key)[2])
                 for s in (0, 1)] for key in ("test_accuracy", "dnr")}
    claims, readme = pages["REPRODUCTION.md"].read_text(), pages["README.md"].read_text()
    assert f"secondary: DNR, X+AP − X: {np.mean(gap['dnr']):+.2f} ± " in claims
    assert "4 of 10 runs complete; seeds with both arms: 0, 1 of 5." in claims
    assert f"AP changed test accuracy by {np.mean(gap['test_accuracy']):+.2f} ± " in readme
    # the DNR right after the prune that made cycle 2, from the prune rows, against the cycle's end
    prune_gap = [100 * (prune_dnr(root / "lrr_AP" / f"seed_{s}") - prune_dnr(root / "lrr" / f"seed_{s}"))
                 for s in (0, 1)]
    assert (f"AP's DNR gap was {np.mean(prune_gap):+.2f} points right after each prune and "
            f"{np.mean(gap['dnr']):+.2f} after retraining") in readme


def prune_dnr(run_dir):
    """The DNR right after the prune that made cycle 2 (its prune row)."""
    rows = records.read_rows(run_dir / "metrics.jsonl")
    return next(r["dnr"] for r in rows if r["kind"] == "prune" and r["cycle"] == 2)
