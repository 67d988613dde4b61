"""Orbax checkpoints of one run: theta_0 once, per-cycle artifacts, and the mid-cycle train state.

Layout inside a run directory::

    theta0/0/init/           params + batch_stats at init, saved once (LTH rewinds to them)
    rewind/<k>/rewind/       params + batch_stats after step k of cycle 0 (lth_rewind only)
    cycles/<c>/mask/         the mask cycle c trained with
    cycles/<c>/start/        params + batch_stats cycle c's training started from (AP's W_0)
    cycles/<c>/end/          params + batch_stats at the end of cycle c's training
    checkpoints/<n>/state/   after n epochs in all: the TrainState (params, batch_stats,
                             opt_state, mask, step), the cycle-start variables and the RNG key
    checkpoints/<n>/rows/    the metrics rows this checkpoint covers that may not be written yet

Every save is synchronous and atomic (orbax writes a temporary directory, then renames it), so a
kill at any moment leaves whole steps plus at most one temporary directory, which the next start
deletes. Synchronous, not async, because a metrics row is appended only after the checkpoint that
covers it is committed; the rows also travel inside the checkpoint, so a kill between the commit
and the append loses nothing: on resume ``metrics.jsonl`` is cut to the rows that came before the
checkpoint and its rows are appended again (identical, wall times included). Only the latest
``keep`` train states are kept; a latest one that cannot be read (partial or corrupt) is deleted
with a warning and the one before it is used.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from ap_jax.train import TrainState

PyTree = Any
Row = dict[str, Any]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message is one line and says the fix."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older one, or rows had none to resume from."""


@dataclasses.dataclass(frozen=True)
class Position:
    """A restored mid-run point: after ``epochs_done`` epochs in all (over every cycle)."""

    epochs_done: int
    state: TrainState
    cycle_start: PyTree  # {"params", "batch_stats"} the current cycle's training started from
    key: jax.Array
    rows_before: int  # rows of metrics.jsonl that precede ``rows``
    rows: list[Row]  # the rows this checkpoint covers that were written after the previous one


def has_states(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds any train-state checkpoint step (readable or not)."""
    states = run_dir / "checkpoints"
    return states.is_dir() and any(p.name.isdigit() for p in states.iterdir())


def one_line(err: BaseException, limit: int = 300) -> str:
    """``Type: message`` of ``err`` squeezed onto one line and cut to ``limit`` characters."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _manager(directory: Path, keep: int | None, items: tuple[str, ...]) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
    )
    return ocp.CheckpointManager(directory.absolute(), options=options, item_names=items)


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


class RunCheckpoints:
    """The orbax checkpoints of one run directory (see the module docstring for the layout)."""

    def __init__(self, run_dir: Path, keep: int, rewind: bool = False) -> None:
        self.run_dir = run_dir
        self.theta0 = _manager(run_dir / "theta0", None, ("init",))
        self.rewind = _manager(run_dir / "rewind", None, ("rewind",)) if rewind else None
        self.cycles = _manager(run_dir / "cycles", None, ("mask", "start", "end"))
        self.states = _manager(run_dir / "checkpoints", keep, ("state", "rows"))

    def _save(self, manager: ocp.CheckpointManager, step: int, **items: ocp.args.CheckpointArgs) -> None:
        try:
            manager.save(step, args=ocp.args.Composite(**items))
        except Exception as err:  # tensorstore and the file system raise many unrelated types
            raise CheckpointError(
                f"cannot write checkpoint {manager.directory / str(step)}: {one_line(err)}; free disk "
                "space (or pass another --out), then rerun the same command to resume"
            ) from err

    def init_variables(self, variables: PyTree) -> PyTree:
        """theta_0 as saved by the first start of this run; saved now if this is the first."""
        if self.theta0.latest_step() is None:
            self._save(self.theta0, 0, init=ocp.args.StandardSave(variables))
            return variables
        return self._restore(self.theta0, 0, "init", variables, "theta_0")

    def save_rewind(self, step: int, variables: PyTree) -> None:
        """The variables after ``step`` training steps of cycle 0 (kept as they are if already saved)."""
        if step not in self.rewind.all_steps():
            self._save(self.rewind, step, rewind=ocp.args.StandardSave(variables))

    def rewind_variables(self, template: PyTree) -> PyTree | None:
        """The saved rewind point (shaped like ``template``), or None if the run has not reached it."""
        step = self.rewind.latest_step()
        if step is None:
            return None
        return self._restore(self.rewind, step, "rewind", template, "the rewind point")

    def _restore(self, manager: ocp.CheckpointManager, step: int, item: str, template: PyTree,
                 what: str) -> PyTree:
        """Item ``item`` of checkpoint ``step``, shaped like ``template``; a ``CheckpointError``
        naming ``what`` if it cannot be read (nothing else can replace it)."""
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                **{item: ocp.args.StandardRestore(_abstract(template))}))
        except Exception as err:
            raise CheckpointError(
                f"{what} in {manager.directory} is unreadable ({one_line(err)}); delete "
                f"{self.run_dir} to start this run again"
            ) from err
        return restored[item]

    def save_cycle(self, cycle: int, mask: PyTree, start: PyTree, end: PyTree) -> None:
        """Cycle ``cycle``'s mask and start and end variables (kept as they are if already saved)."""
        if cycle not in self.cycles.all_steps():
            self._save(self.cycles, cycle, mask=ocp.args.StandardSave(mask),
                       start=ocp.args.StandardSave(start), end=ocp.args.StandardSave(end))

    def save_state(self, position: Position) -> None:
        """Commit a mid-run checkpoint; only then may its rows be appended to metrics.jsonl."""
        state = {"train": position.state, "cycle_start": position.cycle_start,
                 "rng": jax.random.key_data(position.key)}
        rows = {"rows_before": position.rows_before, "rows": position.rows}
        self._save(self.states, position.epochs_done, state=ocp.args.StandardSave(state),
                   rows=ocp.args.JsonSave(rows))

    def restore_latest(self, state: TrainState, cycle_start: PyTree, key: jax.Array) -> Position | None:
        """The newest readable checkpoint (shaped like the given templates), or None if none is.

        Unreadable newer ones are deleted with a ``CheckpointWarning``, so their step numbers can
        be written again by the resumed run.
        """
        template = _abstract({"train": state, "cycle_start": cycle_start, "rng": jax.random.key_data(key)})
        for step in reversed(self.states.all_steps()):
            try:
                restored = self.states.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(template), rows=ocp.args.JsonRestore()))
            except Exception as err:  # a partial or corrupt step: tensorstore, json, os errors
                warnings.warn(f"checkpoint {self.states.directory / str(step)} is unreadable "
                              f"({one_line(err, 160)}); deleted it and fell back to the one before",
                              CheckpointWarning, stacklevel=2)
                self.states.delete(step)
                continue
            tree = restored.state
            return Position(step, tree["train"], tree["cycle_start"],
                            jax.random.wrap_key_data(tree["rng"]),
                            restored.rows["rows_before"], restored.rows["rows"])
        return None

    def close(self) -> None:
        """Wait for and release every manager."""
        for manager in (self.theta0, self.rewind, self.cycles, self.states):
            if manager is not None:
                manager.close()


def read_cycle(run_dir: Path, cycle: int) -> dict[str, PyTree]:
    """``{"mask", "start", "end"}`` of a finished cycle as numpy trees (for analysis and tests)."""
    names = ("mask", "start", "end")
    manager = _manager(run_dir / "cycles", None, names)
    try:
        restored = manager.restore(cycle, args=ocp.args.Composite(
            **{name: ocp.args.StandardRestore() for name in names}))
    finally:
        manager.close()
    return {name: restored[name] for name in names}
