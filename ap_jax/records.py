"""Run records: ``config.json``, ``provenance.json`` and an append-only ``metrics.jsonl``.

Each row is one JSON object on one line, flushed and fsynced when written, so a crash loses at
most the row being written. Provenance says what produced the numbers: command, git commit,
seed, library versions, device and wall time.
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

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """``HEAD``'s hash (with ``+dirty`` for uncommitted changes), or ``"unknown"`` outside git."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
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


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (temp file, then rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync it."""
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a ``metrics.jsonl`` (empty if the file does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cycle_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-cycle rows, in cycle order."""
    return sorted((r for r in rows if r.get("kind") == "cycle"), key=lambda r: r["cycle"])
