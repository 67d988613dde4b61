"""Study directories that prove their identity: each is named for the hash of the config it stores.

An experiment writes a study into ``<out>/<prefix>-<hash8>/`` (``compare_ap-6afedc3e``,
``table1-cpu-ca7af97f``) with the study's config in ``config.json``; its run directories
(``<arm>/seed_<s>/``) each store their own config, which ``ap_jax.cycle.check_run_dir`` compares
with the one the study gives them. Reading a study back (``--resume DIR``) requires that its
stored config hashes to the directory's name: a hand-edited ``config.json`` or a renamed
directory is refused, never run under a name that says otherwise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ap_jax import config
from ap_jax.checkpoint import one_line
from ap_jax.config import RunConfig
from ap_jax.run_dir import RunDirError

RUN_FILES = ("metrics.jsonl", "provenance.json")


def study_name(prefix: str, cfg: RunConfig) -> str:
    """``<prefix>-<hash8>``: the directory name of a study of ``cfg``."""
    return f"{prefix}-{cfg.hash8()}"


def _is_study_name(name: str, prefix: str) -> bool:
    return re.fullmatch(rf"{re.escape(prefix)}-[0-9a-f]{{8}}", name) is not None


def _enclosing_study(path: Path, prefix: str) -> Path | None:
    """The nearest directory above ``path`` that is named like a study, or None."""
    return next((p for p in path.absolute().parents if _is_study_name(p.name, prefix)), None)


def read_study(path: Path, prefix: str, extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], RunConfig]:
    """The stored config of the study directory ``path`` (its ``extra`` keys left out of the
    ``RunConfig``), or a one-line ``RunDirError`` saying what ``path`` is instead: a run directory
    inside a study, a directory without a readable config, or one whose config does not hash to
    its name."""
    study = _enclosing_study(path, prefix)
    if any((path / name).exists() for name in RUN_FILES) or re.fullmatch(r"seed_\d+", path.name):
        where = f"; pass its study directory, {study}" if study else ""
        raise RunDirError(f"{path} is a run directory (one seed of one arm), not a {prefix} study{where}")
    config_path = path / "config.json"
    try:
        stored = json.loads(config_path.read_text())
        cfg = config.from_dict({k: v for k, v in stored.items() if k not in extra}
                               if isinstance(stored, dict) else stored)
    except (OSError, ValueError) as err:
        hint = f"pass the study directory, {study}" if study else f"pass the {prefix}-<hash8> directory"
        raise RunDirError(f"cannot read a {prefix} config from {config_path} ({one_line(err, 160)}); "
                          f"{hint}") from None
    check_name(path, prefix, cfg)
    return stored, cfg


def check_name(path: Path, prefix: str, cfg: RunConfig) -> None:
    """Raise ``RunDirError`` unless ``path`` is named ``<prefix>-<hash8 of cfg>``."""
    expected = study_name(prefix, cfg)
    if path.absolute().name == expected:
        return
    if _is_study_name(path.absolute().name, prefix):
        raise RunDirError(f"{path / 'config.json'} hashes to {cfg.hash8()}, not to the directory's name "
                          f"{path.absolute().name} (edited by hand, or the directory renamed?); restore it, "
                          "or start a new study without --resume")
    raise RunDirError(f"{path} is not a {prefix} study directory: a study's name is {prefix}-<hash8> of the "
                      f"config it holds (here {expected})")
