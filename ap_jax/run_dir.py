"""A run's directory: where the experiments put it, who may write it, whether it holds this run.

A run directory holds ``config.json`` (the config it was run with), ``provenance.json`` (the
command, git commit, seed and device of every start), ``metrics.jsonl`` (the rows) and the
checkpoints (``ap_jax.checkpoint``). Before a run writes anything, ``check_run_dir`` refuses a
directory of another config, ``exclusive`` a directory another process is running, and
``check_dense_from`` a dense cycle that cannot be shared. Each refusal is a one-line
``RunDirError``. While it runs, ``RunRecord`` commits each checkpoint before the rows it covers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from ap_jax import checkpoint, config, methods, official, parallel, records, train
from ap_jax.config import RunConfig

Row = dict[str, Any]
# Fields that act only when a cycle's training ends (at the prune), so runs that differ in them
# alone train the same dense cycle 0, bit for bit, and one may take it from the other.
PRUNE_ONLY = ("ap_rate", "ap_variant", "ap_start_cycle")


def arm_folder(arm: str) -> str:
    """An arm's label as a folder name, ``+`` spelled ``_`` (``lth+AP`` -> ``lth_AP``)."""
    return arm.replace("+", "_")


def arm_run_dir(root: Path, arm: str, seed: int) -> Path:
    """``root/<arm folder>/seed_<seed>``: where the experiments keep one seed of one arm."""
    return root / arm_folder(arm) / f"seed_{seed}"


class RunDirError(ValueError):
    """A run directory that belongs to another config or lost rows; the message is one line."""


def is_complete(rows: list[dict[str, Any]], cfg: RunConfig) -> bool:
    """True when ``rows`` hold a cycle row for every cycle of ``cfg``."""
    last = methods.last_cycle(methods.get(cfg.method), cfg.cycles)
    return [r["cycle"] for r in records.cycle_rows(rows)] == list(range(last + 1))


def _read_json_object(path: Path, what: str, fix: str) -> dict:
    """The JSON object stored in ``path``, or ``RunDirError`` saying it is not ``what`` and the ``fix``."""
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        reason = f"not valid JSON: {err}"
    except OSError as err:  # e.g. a directory where the file should be
        reason = f"cannot be read: {err.strerror or err}"
    else:
        if isinstance(stored, dict):
            return stored
        reason = f"a JSON {type(stored).__name__}"
    raise RunDirError(f"{path} is not {what}: {reason}; {fix}")


LOCK_FILE = ".lock"


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process alone, or raise ``RunDirError`` if another holds it.

    Two processes on one run directory (the same command launched twice) would interleave rows and
    checkpoints. The lock is an ``flock`` on ``run_dir/.lock``, taken by the main process only (the
    one that writes rows) and released by the kernel however the process ends. A file system
    without locks runs the directory unguarded, with a warning.
    """
    if not parallel.is_main_process():
        yield
        return
    with open(run_dir / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{run_dir} is in use by another process (the same run started twice?); "
                              "let that one finish or stop it, then rerun") from None
        except OSError as err:
            warnings.warn(f"cannot lock {run_dir} ({err.strerror or err}): nothing stops a second process "
                          "from writing the same run", RuntimeWarning, stacklevel=3)
        yield


def check_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Raise ``RunDirError`` if ``run_dir`` holds a run of a config other than ``cfg``."""
    path = run_dir / "config.json"
    if not path.exists():
        return
    stored = _read_json_object(path, "a config (a JSON object of fields)",
                               f"delete {run_dir} to start that run again")
    if diffs := config.differences(stored, cfg):
        raise RunDirError(f"{run_dir} holds a run of another config ({'; '.join(diffs)}, stored vs "
                          "given); pass the flags it was run with, or another --out")


def can_share_dense(cfg: RunConfig) -> bool:
    """Whether a run of ``cfg`` needs nothing of its dense cycle but the end weights (no rewind
    point, no carried momentum), so it may take that cycle from a paired run."""
    return methods.get(cfg.method).start_from != "rewind" and not official.carries_optimizer_state(cfg)


def check_dense_from(source: Path, cfg: RunConfig) -> None:
    """Raise ``RunDirError`` unless ``source`` finished cycle 0 of ``cfg`` up to ``PRUNE_ONLY``
    fields, and ``cfg`` needs nothing of cycle 0 but its end (no rewind point, no momentum)."""
    if not can_share_dense(cfg):
        raise RunDirError("a dense cycle can be shared only when the next cycle needs nothing but its "
                          "end weights: not with --method lth_rewind or --reapply-mask false")
    stored = _read_json_object(source / "config.json", "a config (a JSON object of fields)",
                               "pass a finished run directory as the dense run")
    diffs = config.differences({**stored, **{k: getattr(cfg, k) for k in PRUNE_ONLY}}, cfg)
    if diffs:
        raise RunDirError(f"{source} trained another dense cycle ({'; '.join(diffs)}, stored vs given); "
                          f"only {', '.join(PRUNE_ONLY)} may differ")
    if not dense_cycle_ready(source):
        raise RunDirError(f"{source} has not finished its dense cycle 0; run it first")


def dense_cycle_ready(source: Path) -> bool:
    """Whether ``source`` holds a finished dense cycle 0: its row and its saved variables."""
    rows = records.read_rows(source / "metrics.jsonl")
    return any(r["cycle"] == 0 and r["kind"] == "cycle" for r in rows) and (source / "cycles" / "0").is_dir()


def write_run_files(run_dir: Path, cfg: RunConfig, label: str, devices: int | None = None,
                     restarted: bool = False, dense_from: Path | None = None) -> None:
    """config.json, and provenance.json: on a resume the new start (command, commit, time, device and
    versions: a resume is bit-exact on the same machine and libraries only) is added under
    ``resumed``; on a restart from the first epoch (rows but no checkpoint) it becomes the record,
    and the earlier starts, which produced none of the rows now written, go under ``abandoned``."""
    records.write_json(run_dir / "config.json", cfg.to_dict())
    mesh = parallel.describe(parallel.make_mesh(devices))
    extra = {} if dense_from is None else {"dense_cycle_from": str(dense_from)}
    path, now = run_dir / "provenance.json", records.provenance(cfg.seed, label=label, mesh=mesh, **extra)
    if path.exists():
        first = _read_json_object(path, "a provenance record (a JSON object)", "restore it, or delete it "
                                  "to go on with a new one (the run's rows and checkpoints are kept)")
        start = {k: now[k] for k in records.START_KEYS}
        if restarted:
            earlier = [{k: first.get(k) for k in start}, *first.get("resumed", [])]
            now["abandoned"] = [*first.get("abandoned", []), *earlier]
        else:
            first.setdefault("resumed", []).append(start)
            now = first
    records.write_json(path, now)


def dense_position(source: Path, cfg: RunConfig, state: train.TrainState, start: Any, key: jax.Array,
                   steps_per_epoch: int) -> checkpoint.Position:
    """The end of cycle 0 as the run in ``source`` trained it, as if this run had (``state``,
    ``start`` and ``key`` are this run's first): its cycle-0 rows and end variables (the optimizer
    state is not carried: the next cycle starts afresh)."""
    dense = checkpoint.read_cycle(source, 0)
    rows = [r for r in records.read_rows(source / "metrics.jsonl") if r["cycle"] == 0]
    end = jax.tree_util.tree_map(jnp.asarray, dense["end"])
    trained = state.replace(params=end["params"], batch_stats=end["batch_stats"],
                            step=jnp.asarray(cfg.cycle_epochs(0) * steps_per_epoch, state.step.dtype))
    return checkpoint.Position(cfg.cycle_epochs(0), trained, start, key, 0, rows)


class RunRecord:
    """What a run has committed to its directory: its checkpoints and the rows they cover.

    A row reaches ``metrics.jsonl`` only after the checkpoint covering it is committed, so a run
    killed at any moment and resumed neither loses nor repeats a row.
    """

    def __init__(self, run_dir: Path, store: checkpoint.RunCheckpoints):
        self.store, self.metrics_path = store, run_dir / "metrics.jsonl"
        self.rows: list[Row] = []

    def commit(self, epochs_done: int, state: train.TrainState, start: Any, key: jax.Array,
               pending: list[Row]) -> None:
        """Checkpoint the run after ``epochs_done`` epochs, then (and only then) append ``pending``."""
        self.store.save_state(checkpoint.Position(epochs_done, state, start, key, len(self.rows), pending))
        records.append_rows(self.metrics_path, pending)
        self.rows.extend(pending)

    def restore(self, rows: list[Row], state: train.TrainState, start: Any, key: jax.Array,
                dense: Callable[[], checkpoint.Position] | None = None) -> checkpoint.Position | None:
        """The newest committed position (``state``, ``start`` and ``key`` are the templates), or
        ``dense()`` committed as this run's own, or None (start at the first epoch); ``rows``, as
        read from ``metrics.jsonl``, cut to match it there and in ``self.rows``."""
        position = self.store.restore_latest(state, start, key)
        if position is None and dense is not None:
            position = dense()
            self.store.save_state(position)  # the taken cycle is this run's own: rows only after a commit
        if position is None:
            if rows:  # e.g. a fresh clone: metrics.jsonl is committed, checkpoints are not
                warnings.warn(f"{self.metrics_path} has {len(rows)} rows but no checkpoint to resume them "
                              "from: the run starts again from its first epoch", checkpoint.CheckpointWarning,
                              stacklevel=3)
            rows = []
        elif len(rows) < position.rows_before:
            raise RunDirError(f"{self.metrics_path} has {len(rows)} rows but checkpoint {position.epochs_done} "
                              f"follows {position.rows_before}: rows were removed; delete "
                              f"{self.metrics_path.parent} to start that run again")
        else:
            rows = rows[: position.rows_before] + position.rows
        on_disk = self.metrics_path.read_text() if self.metrics_path.exists() else ""
        if on_disk != records.to_text(rows):  # a cut-short last line, or rows past the checkpoint
            records.write_rows(self.metrics_path, rows)
        self.rows = rows
        return position
