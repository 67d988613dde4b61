"""The iterative pruning driver: reset -> train -> score -> prune, with and without AP.

Cycle 0 trains the dense network from theta_0. After cycle c's training (weights W_T, started
from W_0), X prunes ``rate - ap_rate`` of the alive prunable weights by global magnitude and AP
prunes ``ap_rate`` more among the alive negative weights with the smallest ``|W_T - W_0|``
(``ap_rate = 0`` is X alone); the base method (``ap_jax.methods``) then says what cycle c + 1
starts from (LTH: theta_0 masked; LTH rewind: the dense run's step-k weights masked; LRR and
fine-tuning: the trained survivors) and its LR schedule (the whole one again, or fine-tuning's
constant LR). So cycle c trains and reports the network at ``(1 - rate)^c`` remaining weights.
One-shot pruning trains two cycles: the dense one, and one at ``(1 - rate)^cycles`` remaining.

Rows go to ``metrics.jsonl`` as they are produced: one per epoch (``kind="epoch"``), one per
cycle (``kind="cycle"``) and one per prune (``kind="prune"``, numbered by the cycle it gives its
mask); ``ap_jax.measure`` says what each measures (test accuracy, the DNR on a fixed training
subset, what X and AP took). Read top to bottom: ``run`` checks the directory
(``ap_jax.run_dir``), ``_Run.run`` goes over the cycles, each ``train_cycle`` then
``prune_and_reset`` (``next_cycle_start`` says what the next cycle starts from).

The data is CIFAR on the device or ImageNet streamed from the host (``ap_jax.stream``); the run
sees either through an ``ap_jax.feeds.Feed`` (training epochs, test accuracy, DNR inputs), so
everything here holds for both, rewinding included. Streamed DNR inputs are the eval views
(resize + centre crop) of the first ``dnr_size`` training examples.

Runs survive being killed at any moment (see ``ap_jax.checkpoint`` for what is saved when):
rerunning resumes from the newest committed checkpoint and ends bitwise where an uninterrupted
run would, because everything random is a ``fold_in`` of the seed's key (cycle, epoch, step),
so no data-loader state is needed. A row reaches ``metrics.jsonl`` only after the checkpoint
covering it is committed, so rows are never lost or duplicated. A NaN or inf training loss
stops the run (``NonFiniteLoss``, naming cycle, epoch and step) with the last good checkpoint
kept, unless ``RunOptions.skip_nonfinite`` skips such batches (counted in ``skipped_steps``).

The official AP code's quirks (``init``, ``lr_schedule``, ``mask_bn_scale``, ``prune_rule``,
``duplicated_pool``, ``reinit``, ``reapply_mask``) are config switches that this driver never
tests: it asks ``ap_jax.official`` for the prune, the step factory, the LR schedule, the reset
rule, the init and how masks are counted (``docs/official.md``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from ap_jax import ap, checkpoint, feeds, masks, measure, methods, official, parallel, records, train, trainers
from ap_jax.config import RunConfig
from ap_jax.measure import evaluate, tests_after  # noqa: F401  (importable from here too)
from ap_jax.run_dir import (  # noqa: F401  (the run-directory names, importable from here too)
    LOCK_FILE, PRUNE_ONLY, RunDirError, RunRecord, arm_folder, arm_run_dir, can_share_dense, check_dense_from,
    check_run_dir, dense_cycle_ready, dense_position, exclusive, is_complete, write_run_files,
)
from ap_jax.trainers import build_model  # noqa: F401  (importable from here too)

PyTree = Any
Row = dict[str, Any]
# fold_in tags of the seed's key. Tags 0 and 1 are taken: ``split`` of the seed's key gives the
# init and training keys, and with partitionable threefry ``split(k)[i] == fold_in(k, i)``.
REINIT_STREAM = 2  # the fresh inits of ``reinit``
PRUNE_STREAM = 3  # pruning draws (the random AP variant), independent of every training draw


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, not what it computes, so none of it is in the config hash."""

    checkpoint_every: int = 1  # epochs between train-state checkpoints (a cycle's last always)
    keep_checkpoints: int = 2  # newest train-state checkpoints kept (theta_0 and cycles: all)
    skip_nonfinite: bool = False  # skip batches with a NaN/inf loss instead of stopping
    devices: int | None = None  # devices of the ('data',) mesh, the first N (None: every device)
    dense_from: Path | None = None  # a run of this config up to PRUNE_ONLY fields: take its cycle 0


class NonFiniteLoss(RuntimeError):
    """A NaN or inf training loss; the message names cycle, epoch and step."""


def prune_step(cfg: RunConfig, mask: PyTree, trained: PyTree, cycle_start: PyTree, cycle: int) -> ap.PruneResult:
    """The prune after training cycle ``cycle``: X (magnitude) for ``rate - ap_rate``, then AP
    (``cfg.ap_variant``) for ``ap_rate``; before ``cfg.ap_start_cycle`` X takes the whole rate.
    One-shot methods prune ``methods.prune_rates`` of these at once.

    The random variant's key is a ``fold_in`` of the seed's key and ``cycle``, so resumes are exact.
    """
    ap_rate = cfg.ap_rate if cycle >= cfg.ap_start_cycle else 0.0
    rate, ap_rate = methods.prune_rates(methods.get(cfg.method), cfg.rate, ap_rate, cfg.cycles)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.seed), PRUNE_STREAM), cycle)
    return official.prune_function(cfg)(mask, trained, cycle_start, rate, ap_rate, key)


def check_rewind_step(cfg: RunConfig, num_train: int) -> str | None:
    """Why ``cfg.rewind_step`` is not a step of a cycle on ``num_train`` examples, or None."""
    steps_per_cycle = cfg.cycle_epochs(0) * (num_train // cfg.batch_size)
    return methods.rewind_problem(methods.get(cfg.method), cfg.rewind_step, steps_per_cycle)


def next_cycle_start(method: methods.Method, reset: official.Reset, cycle: int, theta0: PyTree,
                     trained: train.TrainState, rewind: PyTree | None) -> tuple[PyTree, Any]:
    """``(variables, opt_state)`` pruned cycle ``cycle`` starts from, before its mask: the base
    method's choice of theta_0, the ``rewind`` point or the trained survivors, through the
    ``reset`` rule (official code: a fresh init, carried momentum); ``opt_state`` None is a fresh one."""
    end = {"params": trained.params, "batch_stats": trained.batch_stats}
    return reset(methods.next_start(method, theta0, end, rewind), trained, cycle)


def epochs_before(cfg: RunConfig, cycle: int) -> int:
    """Training epochs of every cycle before ``cycle`` (checkpoints count epochs over the run)."""
    return sum(cfg.cycle_epochs(c) for c in range(cycle))


def last_epoch_done(cfg: RunConfig, epochs_done: int) -> tuple[int, int]:
    """``(cycle, epoch)`` of the run's ``epochs_done``-th epoch (counted from 1)."""
    cycle = 0
    while epochs_before(cfg, cycle + 1) < epochs_done:
        cycle += 1
    return cycle, epochs_done - 1 - epochs_before(cfg, cycle)


class Resume(NamedTuple):
    """Where a run goes on: epoch ``epoch`` of cycle ``cycle`` from ``state``, the cycle having
    started from the variables ``start`` (AP's W_0)."""

    cycle: int
    epoch: int
    state: train.TrainState
    start: PyTree


def _variables(state: train.TrainState) -> PyTree:
    """Copies of a state's params and BatchNorm statistics (the train step donates the state)."""
    return jax.tree_util.tree_map(jnp.copy, {"params": state.params, "batch_stats": state.batch_stats})


class _Run:
    """One run: its fixed parts (config, network, compiled steps, checkpoints), its record of
    committed rows, and the loop over its cycles (``run``)."""

    def __init__(self, cfg: RunConfig, dataset: feeds.AnyDataset, run_dir: Path, label: str,
                 options: RunOptions):
        self.cfg, self.options, self.label = cfg, options, label
        mesh = parallel.make_mesh(options.devices)
        self.feed = feeds.make_feed(dataset, cfg, mesh)
        self.method = methods.get(cfg.method)
        self.store = checkpoint.RunCheckpoints(run_dir, options.keep_checkpoints,
                                               rewind=self.method.start_from == "rewind")
        self.record = RunRecord(run_dir, self.store)
        self.network = trainers.Network.of(cfg, self.feed)
        init_key, self.key = jax.random.split(jax.random.key(cfg.seed))
        self.theta0 = self.store.init_variables(self.network.initial_variables(init_key))
        self.steps_per_epoch = self.feed.num_train // cfg.batch_size
        self.last_cycle = methods.last_cycle(self.method, cfg.cycles)
        self.trainers = trainers.build_trainers(cfg, self.method, self.network, self.feed, mesh,
                                                self.theta0["params"], options.skip_nonfinite)
        self.steps = self.trainer(0)[1]  # cycle 0's steps evaluate every cycle
        self.reset = official.reset_rule(cfg, self.fresh_init)
        self.rewind: PyTree | None = None  # the dense run's variables at step rewind_step, once reached
        self.started = time.perf_counter()

    def fresh_init(self, cycle: int) -> PyTree:
        """A new random init for cycle ``cycle`` (``reinit``), from the seed's ``REINIT_STREAM``."""
        seed_key = jax.random.fold_in(jax.random.key(self.cfg.seed), REINIT_STREAM)
        return self.network.initial_variables(jax.random.fold_in(seed_key, cycle))

    def trainer(self, cycle: int):
        """``(tx, steps)`` that cycle ``cycle`` trains with (its method's LR schedule)."""
        return self.trainers[trainers.schedule_key(self.cfg, self.method, cycle)]

    def fresh(self, start: PyTree, mask: PyTree, cycle: int,
              opt_state: Any = None) -> tuple[train.TrainState, PyTree]:
        """Cycle ``cycle``'s first state and a copy of its start variables (AP's W_0); ``opt_state``
        None is a fresh optimizer state."""
        state = train.fresh_state(start["params"], start["batch_stats"], mask, self.trainer(cycle)[0],
                                  opt_state)
        return state, _variables(state)

    def resume(self, rows: list[Row]) -> Resume:
        """Where to go on from the newest committed checkpoint; metrics.jsonl made to match."""
        state, start = self.fresh(self.theta0, masks.init(self.theta0["params"]), 0)
        if self.store.rewind is not None:
            self.rewind = self.store.rewind_variables(self.theta0)
        source, spe = self.options.dense_from, self.steps_per_epoch
        dense = None if source is None else lambda: dense_position(source, self.cfg, state, start, self.key, spe)
        position = self.record.restore(rows, state, start, self.key, dense)
        if position is None:
            return Resume(0, 0, state, start)
        self.key, self.started = position.key, self.started - self.record.rows[-1]["wall_s"]
        cycle, done = last_epoch_done(self.cfg, position.epochs_done)
        return Resume(cycle, done + 1, position.state, position.cycle_start)

    def train_epoch(self, state: train.TrainState, cycle: int, epoch: int, remaining: float):
        """Train one epoch and measure it: the new state and its ``kind="epoch"`` row."""
        state, fit = self.feed.train_epoch(self.trainer(cycle)[1], state, self.cfg.batch_size,
                                           jax.random.fold_in(self.key, cycle), epoch,
                                           desc=f"cycle {cycle} epoch {epoch}",
                                           after_step=self.rewind_hook(cycle, epoch))
        bad = fit.pop("nonfinite_steps")
        if bad and not self.options.skip_nonfinite:
            raise NonFiniteLoss(
                f"non-finite training loss at cycle {cycle}, epoch {epoch}, step "
                f"{epoch * self.steps_per_epoch + bad[0]} of the cycle (batch {bad[0]} of the epoch); "
                "the last good checkpoint is kept: lower --lr, or pass --skip-nonfinite to skip such batches")
        return state, {"kind": "epoch", "cycle": cycle, "epoch": epoch, "step": int(state.step),
                       "remaining": remaining, **fit, "skipped_steps": len(bad),
                       **measure.evaluate(self.steps, state, self.feed, self.cfg,
                                          measure.tests_after(self.cfg, cycle, epoch)),
                       "wall_s": time.perf_counter() - self.started}

    def rewind_hook(self, cycle: int, epoch: int):
        """For the epoch holding step ``rewind_step`` of cycle 0 (lth_rewind only), the
        ``after_step`` that saves the variables after that step as the rewind point; else None."""
        k = self.cfg.rewind_step
        if self.method.start_from != "rewind" or cycle != 0 or (k - 1) // self.steps_per_epoch != epoch:
            return None
        at = k - epoch * self.steps_per_epoch

        def keep(done: int, state: train.TrainState) -> None:
            if done == at:
                self.rewind = _variables(state)
                self.store.save_rewind(k, self.rewind)
        return keep

    def commit(self, cycle: int, epoch: int, state: train.TrainState, start: PyTree, pending: list[Row]) -> None:
        """Checkpoint after ``epoch`` of ``cycle``, then (and only then) append its rows."""
        self.record.commit(epochs_before(self.cfg, cycle) + epoch + 1, state, start, self.key, pending)

    def counted(self, mask: PyTree) -> PyTree:
        """``mask`` as the remaining shares count it: with BatchNorm scales when they are prunable."""
        return official.counted_view(self.cfg)(mask)

    def train_cycle(self, cycle: int, epoch: int, state: train.TrainState, start: PyTree,
                    pending: list[Row]) -> train.TrainState:
        """Epochs ``epoch..`` of ``cycle``, checkpointed every ``checkpoint_every`` and at the end;
        ``pending`` rows (the prune's) are committed with the first checkpoint."""
        remaining, pending = float(masks.remaining(self.counted(state.mask))), list(pending)
        for epoch in range(epoch, self.cfg.cycle_epochs(cycle)):
            state, row = self.train_epoch(state, cycle, epoch, remaining)
            pending.append(row)
            last = epoch == self.cfg.cycle_epochs(cycle) - 1
            if last:
                pending.append({**row, "kind": "cycle",
                                "layer_remaining": measure.layer_remaining(self.counted(state.mask))})
            if last or (epoch + 1) % self.options.checkpoint_every == 0:
                self.commit(cycle, epoch, state, start, pending)
                pending = []
        return state

    def run(self, rows: list[Row]) -> list[Row]:
        """Every cycle of the run; returns all rows. A cycle before the newest committed checkpoint
        is skipped: its rows, its saved variables and the prune after it are on disk."""
        at = self.resume(rows)
        state, start, pending = at.state, at.start, []
        for cycle in tqdm(range(self.last_cycle + 1), desc=self.label or "cycles", disable=None):
            if cycle < at.cycle:
                continue
            state = self.train_cycle(cycle, at.epoch if cycle == at.cycle else 0, state, start, pending)
            self.store.save_cycle(cycle, state.mask, start, _variables(state))
            if cycle < self.last_cycle:
                state, start, pending = self.prune_and_reset(cycle, state, start)
        return self.record.rows

    def prune_and_reset(self, cycle: int, trained: train.TrainState,
                        start: PyTree) -> tuple[train.TrainState, PyTree, list[Row]]:
        """Prune after ``cycle`` and set up cycle ``cycle + 1``: its first state, its start variables
        and the prune's row (committed with that cycle's first checkpoint)."""
        pruned = prune_step(self.cfg, trained.mask, trained.params, start["params"], cycle)
        row = self.prune_row(cycle + 1, trained, pruned)
        variables, opt_state = next_cycle_start(self.method, self.reset, cycle + 1, self.theta0, trained,
                                                self.rewind)
        state, start = self.fresh(variables, pruned.mask, cycle + 1, opt_state)
        return state, start, [row]

    def prune_row(self, cycle: int, trained: train.TrainState, pruned: ap.PruneResult) -> Row:
        """The ``kind="prune"`` row of the prune that gives cycle ``cycle`` its mask (``measure.pruned``)."""
        measures = measure.pruned(self.counted, trained, pruned, self.steps, self.feed, self.cfg)
        return {"kind": "prune", "cycle": cycle, **measures, "wall_s": time.perf_counter() - self.started}

def run(cfg: RunConfig, dataset: feeds.AnyDataset, run_dir: Path, label: str = "",
        options: RunOptions = RunOptions()) -> list[Row]:
    """Run every cycle of ``cfg`` into ``run_dir`` and return its rows.

    ``dataset`` is what ``feeds.load`` returns: a ``data.Dataset`` (CIFAR, on the device) or a
    ``stream.StreamedDataset`` (ImageNet, streamed).

    A run directory whose ``metrics.jsonl`` is already complete for this config is reused as it
    is; an incomplete one resumes from its newest readable checkpoint. A directory of another
    config, or one another process is running (``exclusive``), is a ``RunDirError``; a hand-broken
    ``metrics.jsonl`` a ``records.RecordsError``; a ``rewind_step`` past the steps of a cycle or a
    ``dnr_size`` past the training examples a ``ValueError``, before anything is written. With
    ``options.dense_from`` a run with no checkpoint yet takes cycle 0 from that run
    (``check_dense_from`` says when it may).
    """
    jax.config.update("jax_threefry_partitionable", True)  # the default today; pinned against changes
    if problem := check_rewind_step(cfg, dataset.num_train):
        raise ValueError(problem)
    if cfg.dnr_size > dataset.num_train:  # never measured on fewer examples than the config says
        raise ValueError(f"dnr_size={cfg.dnr_size} exceeds the {dataset.num_train} training examples")
    check_run_dir(run_dir, cfg)
    rows = records.read_rows(run_dir / "metrics.jsonl")
    if is_complete(rows, cfg):
        return rows
    if options.dense_from is not None and not checkpoint.has_states(run_dir):
        check_dense_from(options.dense_from, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(run_dir):
        rows = records.read_rows(run_dir / "metrics.jsonl")  # as the last holder left them
        if is_complete(rows, cfg):
            return rows
        restarted = bool(rows) and not checkpoint.has_states(run_dir)
        write_run_files(run_dir, cfg, label, options.devices, restarted, options.dense_from)
        driver = _Run(cfg, dataset, run_dir, label, options)
        try:
            return driver.run(rows)
        finally:
            driver.store.close()
