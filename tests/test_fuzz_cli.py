"""Every flag of every command line tried with bad values: exit 0 or 2, one line, no traceback.

Each flag that takes a value gets NaN, +-inf, 0, a negative, a huge number, an empty string and
a word, one at a time on top of a valid tiny command. The bulk runs each command's real ``main``
in-process with the data loader replaced by a stop: an attempt either stops there (every check
that needs no data passed: what the command would then run is a valid config) or exits 2 with at
most one line besides argparse's usage, no traceback, and nothing written. A few attempts run as
real processes, for what only a process shows: the exit status, a backend that cannot start.
"""

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ap_jax import config, feeds
from experiments import compare_ap, high_sparsity, paper_table, reproduce

BAD_VALUES = ("nan", "inf", "-inf", "0", "-1", "1e300", "99999999999999999999999", "", "abc")
NO_VALUE = (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction)
TABLES = [f"experiments.table{n}" for n in range(1, 7)]
REPO = Path(__file__).resolve().parents[1]


class ReachedData(BaseException):
    """Raised where the command would load its data: every check before it passed."""


def flags_of(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag of ``parser`` that takes a value."""
    return [a.option_strings[-1] for a in parser._actions if a.option_strings and not isinstance(a, NO_VALUE)]


def commands(tmp: Path):
    """``(name, main, parser, valid argv)`` of every entry point, each argv a valid tiny command."""
    tiny = ["--epochs", "1", "--cycles", "1", "--train-size", "100", "--batch-size", "50", "--out", str(tmp / "o")]
    yield "compare_ap", compare_ap.main, compare_ap.build_parser(), ["--model", "mlp", *tiny]
    for name in TABLES:
        spec = importlib.import_module(name).SPEC
        yield name, importlib.import_module(name).main, paper_table.build_parser(spec, "cpu"), ["--scale", "cpu", *tiny]
    argv = ["--parts", "mlp", "--arms", "lth", "--seeds", "0", "--set", "epochs=1", "cycles=1",
            "--out", str(tmp / "o"), "--report-path", str(tmp / "R.md")]
    yield "reproduce", reproduce.main, reproduce.build_parser(), argv
    argv = ["--seeds", "0", "--set", "model=mlp", "epochs=1", "cycles=1", "dense_epochs=1",
            "--out", str(tmp / "o"), "--report-path", str(tmp / "R.md")]
    yield "high_sparsity", high_sparsity.main, high_sparsity.build_parser(), argv


def attempt(main, argv, capsys) -> tuple[str, str]:
    """Run ``main(argv)``: ``("data", err)`` if it got as far as loading data, else its exit status."""
    capsys.readouterr()
    try:
        code = main(argv)
    except ReachedData:
        code = "data"
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def message_lines(err: str) -> list[str]:
    """stderr without argparse's usage block (``usage:`` and its indented continuation lines)."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]


def test_every_flag_of_every_command_with_bad_values(tmp_path, capsys, monkeypatch):
    def stop(*args, **kwargs):
        raise ReachedData

    monkeypatch.setattr(feeds, "load", stop)
    monkeypatch.chdir(tmp_path)  # a relative path given as a value lands here
    tried, accepted = 0, set()
    for name, main, parser, valid in commands(tmp_path):
        code, err = attempt(main, valid, capsys)
        assert code == "data", f"{name}: the valid command fails: {err}"
        for flag in flags_of(parser):
            for value in BAD_VALUES:
                argv = [*valid, flag, value]
                code, err = attempt(main, argv, capsys)
                tried += 1
                where = f"{name} {flag} {value!r}: {err}"
                assert "Traceback" not in err, where
                assert code in ("data", 2), where
                if code == 2:
                    assert len(message_lines(err)) == 1, where
                    assert sorted(p.name for p in tmp_path.iterdir()) == [], where
                else:
                    accepted.add((flag, value))
                for leftover in tmp_path.iterdir():  # an accepted relative --out may have made a folder
                    subprocess.run(["rm", "-rf", str(leftover)], check=True)
    assert tried > 1000
    # Only a path may be a word (a folder named nan is a folder); no flag takes an empty string.
    words = {(flag, value) for flag, value in accepted if value in ("nan", "inf", "-inf", "abc", "")}
    assert {flag for flag, _ in words} <= {"--out", "--data-dir", "--report-path"}
    assert all(value for _, value in words)


@pytest.mark.parametrize("name", ["lr_gamma", "momentum", "lr", "rate", "epochs", "dnr_size", "lr_drops", "augment"])
def test_set_refuses_what_the_flag_refuses(name, tmp_path, capsys):
    """``reproduce --set`` and the flags share one validator: the same values, the same words."""
    refused = 0
    for value in BAD_VALUES:
        try:
            problem = config.field_problem(name, config.parse_value(name, value))
        except ValueError as err:  # not a value of the field's type at all
            problem = str(err)
        if problem is None:
            continue  # a valid value: the study would run
        code, err = attempt(reproduce.main, ["--set", f"{name}={value}", "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and f"--set '{name}={value}': " in err and problem in err, err
        refused += 1
    assert refused >= 4 and not (tmp_path / "o").exists()


def run_cli(module: str, argv: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp, env=environ, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("module, argv, env, message", [
    ("experiments.compare_ap", ["--lr-gamma", "nan"], {}, "--lr-gamma must be finite, got nan"),
    ("experiments.compare_ap", [], {"JAX_PLATFORMS": "gpu"}, "JAX cannot start with JAX_PLATFORMS='gpu'"),
    ("experiments.table1", ["--scale", "cpu"], {"XLA_FLAGS": "--bogus"},
     "JAX cannot start with XLA_FLAGS='--bogus': Unknown flag in XLA_FLAGS: --bogus; fix or unset XLA_FLAGS"),
    ("experiments.reproduce", ["--seeds", "-1"], {}, "--seeds must be at least 0, got -1"),
])
def test_a_real_process_exits_2_with_one_line(module, argv, env, message, tmp_path):
    done = run_cli(module, [*argv, "--out", "o"], tmp_path, **env)
    lines = message_lines(done.stderr)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []
