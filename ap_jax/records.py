"""Run records: ``config.json``, ``provenance.json`` and an append-only ``metrics.jsonl``.

Each row is one JSON object on one line, flushed and fsynced when written, so a crash loses at
most the row being written: a last line cut short by a crash (no newline, not JSON) is dropped
on reading and rewritten by the resumed run. Any other line that is not a JSON row (a hand edit
gone wrong) is a ``RecordsError`` naming the file and line, and nothing is rewritten. Provenance
says what produced the numbers: command, git commit, seed, library versions, device and time.
On several hosts only process 0 writes records (every writer here is a no-op elsewhere), while
checkpoints are saved from every process as orbax expects.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import jax

from ap_jax.parallel import is_main_process

REPO_ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = ("ap_jax", "experiments", "pyproject.toml")  # "+dirty" means these differ from HEAD
ROW_KINDS = ("epoch", "cycle", "prune")


class RecordsError(ValueError):
    """A ``metrics.jsonl`` that is not a sequence of rows; the message is one line."""


def git_commit() -> str:
    """``HEAD``'s hash, ``+dirty`` if the code differs from it, or ``"unknown"`` outside git.

    Only ``CODE_PATHS`` count, so regenerating committed results does not mark a run dirty.
    """
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
        return commit + ("+dirty" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_info() -> dict[str, Any]:
    """Backend, device kind and count, and the host CPU."""
    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "device_count": len(devices), "cpu": cpu_name(), "cpu_cores": os.cpu_count()}


START_KEYS = ("command", "git_commit", "started", "device", "python", "jax", "flax", "optax")
"""What each start of a run records, the first and every resume: a resume on another machine or
library version goes on from the same state but need not match an uninterrupted run bit for bit."""


def provenance(seed: int, **extra: Any) -> dict[str, Any]:
    """What produced a run: command, commit, seed, versions, device and start time."""
    import flax
    import optax

    return {
        "command": " ".join(["python", *sys.orig_argv[1:]]),
        "git_commit": git_commit(),
        "seed": seed,
        "python": platform.python_version(),
        "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
        "device": device_info(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def provenance_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """Markdown lines summing up ``provenance.json`` records: the distinct commands and commits
    that started or resumed the runs (commits as 12 hex digits, ``+dirty`` kept) and the machines
    they ran on. Every report of a set of runs cites them this one way."""
    provs = list(records)
    starts = [*provs, *(r for p in provs for r in p.get("resumed", []))]
    commits = sorted({_short_commit(s["git_commit"]) for s in starts})
    devices = sorted({machine_line(s["device"]) for s in starts if "device" in s})
    commands = sorted({s["command"] for s in starts})
    return [f"- commands: {'; '.join(f'`{c}`' for c in commands) or 'n/a'}",
            f"- git commits: {', '.join(f'`{c}`' for c in commits) or 'n/a'}",
            f"- machines: {'; '.join(devices) or 'n/a'}"]


def machine_line(device: dict[str, Any]) -> str:
    """One line naming a start's device and host CPU."""
    return f"{device['backend']} ({device['device_kind']}), host CPU {device['cpu']}, {device['cpu_cores']} cores"


def _short_commit(commit: str) -> str:
    """A commit as its first 12 hex digits, keeping a ``+dirty`` mark."""
    base = commit.removesuffix("+dirty")
    return base[:12] + commit[len(base):]


def read_provenance(run_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """The ``provenance.json`` records of the run directories that have one."""
    return [json.loads((d / "provenance.json").read_text()) for d in run_dirs if (d / "provenance.json").exists()]


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (temp file, then rename); process 0 only."""
    if not is_main_process():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def to_text(rows: Iterable[dict[str, Any]]) -> str:
    """The exact ``metrics.jsonl`` text of ``rows``: one sorted-key JSON object per line."""
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per row and fsync them; process 0 only."""
    if not is_main_process():
        return
    with open(path, "a") as f:
        f.write(to_text(rows))
        f.flush()
        os.fsync(f.fileno())


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` by exactly ``rows``, atomically (fsynced temp file, then rename); process 0 only."""
    if not is_main_process():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(to_text(rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _parse(path: Path, number: int, line: str) -> dict[str, Any]:
    fix = "restore it from a copy or delete its run directory to start that run again"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise RecordsError(f"{path} line {number} is not valid JSON ({err.msg}); {fix}") from None
    if not (isinstance(row, dict) and row.get("kind") in ROW_KINDS and isinstance(row.get("cycle"), int)):
        raise RecordsError(f"{path} line {number} is not a metrics row (needs kind in {ROW_KINDS} "
                           f"and an integer cycle); {fix}")
    return row


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a ``metrics.jsonl`` (empty if it does not exist), minus a cut-short last line.

    A last line without its newline that is not JSON is what a crash mid-write leaves; it is
    skipped here (the caller rewrites the file). Any other bad line raises ``RecordsError``.
    """
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise RecordsError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); restore it "
                           "from a copy or delete its run directory to start that run again") from None
    lines = text.split("\n")
    if lines[-1]:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines = lines[:-1]
    return [_parse(path, i + 1, line) for i, line in enumerate(lines) if line.strip()]


def cycle_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-cycle rows, in cycle order."""
    return sorted((r for r in rows if r.get("kind") == "cycle"), key=lambda r: r["cycle"])
