"""Both own-loop examples run end to end at a tiny size: on CIFAR-format data and on synthetic data."""

import importlib
import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--train-size", "100", "--test-size", "50", "--epochs", "1", "--batch-size", "50"]
LINE = re.compile(r"^(X|X\+AP)\s+cycle (\d): +([\d.]+) % weights left, accuracy ([\d.]+) %, DNR ([\d.]+) %$")


@pytest.mark.parametrize("name,real_data", [("linen_own_loop", True), ("nnx_own_loop", False)])
def test_example_runs_two_cycles_of_x_and_x_plus_ap(name, real_data, fake_data, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    example = importlib.import_module(name)
    example.main([*TINY, "--data-dir", str(fake_data if real_data else tmp_path / "no_data")])
    out = capsys.readouterr().out.splitlines()
    assert ("-> synthetic data" in "\n".join(out)) != real_data
    rows = [LINE.match(line).groups() for line in out if LINE.match(line)]
    assert [(arm, cycle, left) for arm, cycle, left, _, _ in rows] == [
        ("X", "0", "100.0"), ("X", "1", "80.0"), ("X+AP", "0", "100.0"), ("X+AP", "1", "80.0")]
    assert rows[0][3:] == rows[2][3:]  # cycle 0 is the same dense training in both arms
    assert all(0 <= float(value) <= 100 for row in rows for value in row[3:])
