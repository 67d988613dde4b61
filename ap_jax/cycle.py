"""The iterative pruning driver: reset -> train -> score -> prune, with and without AP.

Cycle 0 trains the dense network from theta_0. After cycle c's training (weights W_T, started
from W_0), X prunes ``rate - ap_rate`` of the alive prunable weights by global magnitude and AP
prunes ``ap_rate`` more among the alive negative weights with the smallest ``|W_T - W_0|``
(``ap_rate = 0`` is X alone); the base method (``ap_jax.methods``) then says what cycle c + 1
starts from (LTH: theta_0 masked; LTH rewind: the dense run's step-k weights masked; LRR and
fine-tuning: the trained survivors) and its LR schedule (the whole one again, or fine-tuning's
constant LR). So cycle c trains and reports the network at ``(1 - rate)^c`` remaining weights.
One-shot pruning trains two cycles: the dense one, and one at ``(1 - rate)^cycles`` remaining.

Rows go to ``metrics.jsonl`` as they are produced: one per epoch (``kind="epoch"``) and one per
cycle (``kind="cycle"``), each with the remaining share, test accuracy (null on the epochs
``--eval-every`` skips; a cycle's last epoch always has it), DNR overall and per ReLU site (over
units, and its per-channel variant over whole feature maps), and wall seconds; and one per prune
(``kind="prune"``, numbered by the cycle it gives its mask): how many weights X took, AP's
budget, how many AP took (a shortfall when too few candidates were alive) and per layer, and the
DNR of the trained network right after the prune, before retraining. The
DNR is measured after every epoch with BatchNorm in eval mode on the first ``dnr_size`` training
examples as stored (a fixed, class-mixed, unaugmented subset), so the
curve over epochs and cycles is measured on the same inputs throughout.

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
``duplicated_pool``, ``reinit``, ``reapply_mask``) are config switches; ``ap_jax.official`` says
what each does, how its two training phases per cycle map onto our one, and gives the preset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm

from ap_jax import ap, checkpoint, config, feeds, masks, methods, models, official, parallel, records, train
from ap_jax.config import RunConfig

PyTree = Any
Row = dict[str, Any]
# fold_in tags of the seed's key. Tags 0 and 1 are taken: ``split`` of the seed's key gives the
# init and training keys, and with partitionable threefry ``split(k)[i] == fold_in(k, i)``.
REINIT_STREAM = 2  # the fresh inits of ``reinit``
PRUNE_STREAM = 3  # pruning draws (the random AP variant), independent of every training draw
# Fields that act only when a cycle's training ends (at the prune), so runs that differ in them
# alone train the same dense cycle 0, bit for bit, and one may take it from the other.
PRUNE_ONLY = ("ap_rate", "ap_variant", "ap_start_cycle")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, not what it computes, so none of it is in the config hash."""

    checkpoint_every: int = 1  # epochs between train-state checkpoints (a cycle's last always)
    keep_checkpoints: int = 2  # newest train-state checkpoints kept (theta_0 and cycles: all)
    skip_nonfinite: bool = False  # skip batches with a NaN/inf loss instead of stopping
    devices: int | None = None  # devices of the ('data',) mesh, the first N (None: every device)
    dense_from: Path | None = None  # a run of this config up to PRUNE_ONLY fields: take its cycle 0


def arm_folder(arm: str) -> str:
    """An arm's label as a folder name, ``+`` spelled ``_`` (``lth+AP`` -> ``lth_AP``)."""
    return arm.replace("+", "_")


def arm_run_dir(root: Path, arm: str, seed: int) -> Path:
    """``root/<arm folder>/seed_<seed>``: where the experiments keep one seed of one arm."""
    return root / arm_folder(arm) / f"seed_{seed}"


class RunDirError(ValueError):
    """A run directory that belongs to another config or lost rows; the message is one line."""


class NonFiniteLoss(RuntimeError):
    """A NaN or inf training loss; the message names cycle, epoch and step."""


def build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The configured network (the shortcut option applies to the CIFAR ResNets only)."""
    cifar_resnet = cfg.model.startswith("resnet") and cfg.model != "resnet50"
    options = {"shortcut": cfg.shortcut} if cifar_resnet else {}
    return models.get(cfg.model, num_classes=num_classes, **options)


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


def evaluate(steps: train.Steps, state: train.TrainState, feed: feeds.Feed, cfg: RunConfig,
             test: bool = True) -> dict[str, Any]:
    """Test accuracy (every test example; None when not ``test``) and DNR on the fixed training subset."""
    dnr = train.dead_neuron_rate(steps, state, feed.dnr_inputs, cfg.eval_batch_size)
    return {
        "test_accuracy": feed.accuracy(steps, state, cfg.eval_batch_size) if test else None,
        "dnr": dnr["overall"],
        "dnr_per_layer": dnr["per_layer"],
        "dnr_channel": dnr["overall_channel"],
        "dnr_channel_per_layer": dnr["per_layer_channel"],
    }


def tests_after(cfg: RunConfig, cycle: int, epoch: int) -> bool:
    """Whether test accuracy is measured after ``epoch`` (0-based) of ``cycle``: every
    ``eval_every``-th epoch and the cycle's last."""
    return (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.cycle_epochs(cycle) - 1


def is_complete(rows: list[dict[str, Any]], cfg: RunConfig) -> bool:
    """True when ``rows`` hold a cycle row for every cycle of ``cfg``."""
    last = methods.last_cycle(methods.get(cfg.method), cfg.cycles)
    return [r["cycle"] for r in records.cycle_rows(rows)] == list(range(last + 1))


def check_rewind_step(cfg: RunConfig, num_train: int) -> str | None:
    """Why ``cfg.rewind_step`` is not a step of a cycle on ``num_train`` examples, or None."""
    steps_per_cycle = cfg.cycle_epochs(0) * (num_train // cfg.batch_size)
    return methods.rewind_problem(methods.get(cfg.method), cfg.rewind_step, steps_per_cycle)


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
    return methods.get(cfg.method).start_from != "rewind" and cfg.reapply_mask


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


def _write_run_files(run_dir: Path, cfg: RunConfig, label: str, devices: int | None = None,
                     restarted: bool = False, dense_from: Path | None = None) -> None:
    """config.json, and provenance.json: on a resume the new start is added under ``resumed``; on a
    restart from the first epoch (rows but no checkpoint) it becomes the record, and the earlier
    starts, which produced none of the rows now written, go under ``abandoned``."""
    records.write_json(run_dir / "config.json", cfg.to_dict())
    mesh = parallel.describe(parallel.make_mesh(devices))
    extra = {} if dense_from is None else {"dense_cycle_from": str(dense_from)}
    path, now = run_dir / "provenance.json", records.provenance(cfg.seed, label=label, mesh=mesh, **extra)
    if path.exists():
        first = _read_json_object(path, "a provenance record (a JSON object)", "restore it, or delete it "
                                  "to go on with a new one (the run's rows and checkpoints are kept)")
        start = {k: now[k] for k in ("command", "git_commit", "started")}
        if restarted:
            earlier = [{k: first.get(k) for k in start}, *first.get("resumed", [])]
            now["abandoned"] = [*first.get("abandoned", []), *earlier]
        else:
            first.setdefault("resumed", []).append(start)
            now = first
    records.write_json(path, now)


def _variables(state: train.TrainState) -> PyTree:
    """Copies of a state's params and BatchNorm statistics (the train step donates the state)."""
    return jax.tree_util.tree_map(jnp.copy, {"params": state.params, "batch_stats": state.batch_stats})


class _Run:
    """One run's fixed parts (config, compiled steps, checkpoints) and its written rows."""

    def __init__(self, cfg: RunConfig, dataset: feeds.AnyDataset, run_dir: Path, label: str,
                 options: RunOptions):
        self.cfg, self.options, self.label = cfg, options, label
        self.mesh = parallel.make_mesh(options.devices)
        feed = self.feed = feeds.make_feed(dataset, cfg, self.mesh)
        self.metrics_path = run_dir / "metrics.jsonl"
        self.method = methods.get(cfg.method)
        self.store = checkpoint.RunCheckpoints(run_dir, options.keep_checkpoints,
                                               rewind=self.method.start_from == "rewind")
        model = self.model = build_model(cfg, feed.num_classes)
        init_key, self.key = jax.random.split(jax.random.key(cfg.seed))
        self.sample = jnp.zeros((1, *feed.image_shape), jnp.float32)
        self.theta0 = self.store.init_variables(self.initial_variables(init_key))
        self.steps_per_epoch = feed.num_train // cfg.batch_size
        self.last_cycle = methods.last_cycle(self.method, cfg.cycles)
        used = {self.schedule_key(c) for c in range(self.last_cycle + 1)}
        # (tx, steps) per LR schedule some cycle uses, so a second compile happens only if needed
        self.trainers = {key: self._trainer(model, feed, self.schedule(*key)) for key in sorted(used)}
        self.steps = self.trainer(0)[1]  # cycle 0's steps evaluate every cycle
        self.rewind: PyTree | None = None  # the dense run's variables at step rewind_step, once reached
        self.rows: list[Row] = []
        self.started = time.perf_counter()

    def initial_variables(self, key: jax.Array) -> PyTree:
        """``{"params", "batch_stats"}`` drawn from ``key`` by the configured ``init``."""
        variables = self.model.init(key, self.sample, train=False)
        params = variables["params"]
        if self.cfg.init == "xavier":
            params = official.xavier_init(params, key)
        return {"params": params, "batch_stats": variables.get("batch_stats", {})}

    def _trainer(self, model: nn.Module, feed: feeds.Feed, schedule: optax.Schedule):
        """The optimizer with LR ``schedule`` and its compiled steps (augmenting only for on-device data)."""
        tx = train.optimizer(self.cfg.optim(), schedule, self.theta0["params"])
        return tx, train.make_steps(model, tx, feed.mean, feed.std, augment=feed.augment_on_device,
                                    skip_nonfinite=self.options.skip_nonfinite, mesh=self.mesh,
                                    reapply_mask=self.cfg.reapply_mask)

    def schedule_key(self, cycle: int) -> tuple[str, int]:
        """Cycle ``cycle``'s LR schedule: its method's kind and the cycle's length in epochs."""
        return methods.schedule_of(self.method, cycle), self.cfg.cycle_epochs(cycle)

    def schedule(self, kind: str, epochs: int) -> optax.Schedule:
        """The whole LR schedule over ``epochs`` epochs (``"replay"``), or fine-tuning's constant LR."""
        if kind == "constant":
            return optax.constant_schedule(self.cfg.finetune_lr)
        return train.lr_schedule(self.cfg.optim(), epochs * self.steps_per_epoch, self.steps_per_epoch)

    def trainer(self, cycle: int):
        """``(tx, steps)`` that cycle ``cycle`` trains with (its method's LR schedule)."""
        return self.trainers[self.schedule_key(cycle)]

    def epochs_before(self, cycle: int) -> int:
        """Training epochs of every cycle before ``cycle`` (checkpoints count epochs over the run)."""
        return sum(self.cfg.cycle_epochs(c) for c in range(cycle))

    def last_epoch_done(self, epochs_done: int) -> tuple[int, int]:
        """``(cycle, epoch)`` of the run's ``epochs_done``-th epoch (counted from 1)."""
        cycle = 0
        while self.epochs_before(cycle + 1) < epochs_done:
            cycle += 1
        return cycle, epochs_done - 1 - self.epochs_before(cycle)

    def fresh(self, start: PyTree, mask: PyTree, cycle: int,
              momentum_from: Any = None) -> tuple[train.TrainState, PyTree]:
        """Cycle ``cycle``'s first state and a copy of its start variables (AP's W_0); with
        ``momentum_from`` (official semantics) the optimizer state carries that momentum."""
        state = train.fresh_state(start["params"], start["batch_stats"], mask, self.trainer(cycle)[0],
                                  momentum_from)
        return state, _variables(state)

    def resume(self, rows: list[Row]) -> tuple[int, int, train.TrainState, PyTree]:
        """``(cycle, epoch, state, cycle_start)`` to go on from; metrics.jsonl made to match."""
        state, start = self.fresh(self.theta0, masks.init(self.theta0["params"]), 0)
        if self.store.rewind is not None:
            self.rewind = self.store.rewind_variables(self.theta0)
        position = self.store.restore_latest(state, start, self.key)
        if position is None and self.options.dense_from is not None:
            position = self.dense_position(state, start)
            self.store.save_state(position)  # the taken cycle is this run's own: rows only after a commit
        if position is None:
            if rows:  # e.g. a fresh clone: metrics.jsonl is committed, checkpoints are not
                warnings.warn(f"{self.metrics_path} has {len(rows)} rows but no checkpoint to resume them "
                              "from: the run starts again from its first epoch", checkpoint.CheckpointWarning,
                              stacklevel=2)
            cycle, epoch, rows = 0, 0, []
        else:
            if len(rows) < position.rows_before:
                raise RunDirError(
                    f"{self.metrics_path} has {len(rows)} rows but checkpoint {position.epochs_done} "
                    f"follows {position.rows_before}: rows were removed; delete "
                    f"{self.metrics_path.parent} to start that run again")
            rows = rows[: position.rows_before] + position.rows
            cycle, done = self.last_epoch_done(position.epochs_done)
            epoch, state, start, self.key = done + 1, position.state, position.cycle_start, position.key
            self.started -= rows[-1]["wall_s"]
        on_disk = self.metrics_path.read_text() if self.metrics_path.exists() else ""
        if on_disk != records.to_text(rows):  # a cut-short last line, or rows past the checkpoint
            records.write_rows(self.metrics_path, rows)
        self.rows = rows
        return cycle, epoch, state, start

    def dense_position(self, state: train.TrainState, start: PyTree) -> checkpoint.Position:
        """The end of cycle 0 as ``options.dense_from`` trained it, as if this run had: its cycle-0
        rows and end variables (the optimizer state is not carried: the next cycle starts afresh)."""
        source = self.options.dense_from
        dense = checkpoint.read_cycle(source, 0)
        rows = [r for r in records.read_rows(source / "metrics.jsonl") if r["cycle"] == 0]
        end = jax.tree_util.tree_map(jnp.asarray, dense["end"])
        trained = state.replace(params=end["params"], batch_stats=end["batch_stats"],
                                step=jnp.asarray(self.cfg.cycle_epochs(0) * self.steps_per_epoch, state.step.dtype))
        return checkpoint.Position(self.cfg.cycle_epochs(0), trained, start, self.key, 0, rows)

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
                       **evaluate(self.steps, state, self.feed, self.cfg, tests_after(self.cfg, cycle, epoch)),
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
        self.store.save_state(checkpoint.Position(
            self.epochs_before(cycle) + epoch + 1, state, start, self.key, len(self.rows), pending))
        records.append_rows(self.metrics_path, pending)
        self.rows.extend(pending)

    def counted(self, mask: PyTree) -> PyTree:
        """``mask`` as the remaining shares count it: with BatchNorm scales when they are prunable."""
        return masks.scales_as_kernels(mask) if self.cfg.mask_bn_scale else mask

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
                pending.append({**row, "kind": "cycle", "layer_remaining": {
                    k: 1.0 - float(v) for k, v in masks.layer_sparsity(self.counted(state.mask)).items()}})
            if last or (epoch + 1) % self.options.checkpoint_every == 0:
                self.commit(cycle, epoch, state, start, pending)
                pending = []
        return state

    def run(self, rows: list[Row]) -> list[Row]:
        """Every cycle from where ``rows`` and the checkpoints leave off; returns all rows."""
        cycle, epoch, state, start = self.resume(rows)
        pending: list[Row] = []
        for cycle in tqdm(range(cycle, self.last_cycle + 1), desc=self.label or "cycles", disable=None):
            state = self.train_cycle(cycle, epoch, state, start, pending)
            self.store.save_cycle(cycle, state.mask, start, _variables(state))
            if cycle < self.last_cycle:
                pruned = prune_step(self.cfg, state.mask, state.params, start["params"], cycle)
                pending = [self.prune_row(cycle + 1, state, pruned)]
                mask = pruned.mask
                rewind = None if self.rewind is None else (self.rewind["params"], self.rewind["batch_stats"])
                params, stats = methods.next_start(
                    self.method, (self.theta0["params"], self.theta0["batch_stats"]),
                    (state.params, state.batch_stats), rewind)
                if self.cfg.reinit:
                    seed_key = jax.random.fold_in(jax.random.key(self.cfg.seed), REINIT_STREAM)
                    params = self.initial_variables(jax.random.fold_in(seed_key, cycle + 1))["params"]
                momentum = None if self.cfg.reapply_mask else state.opt_state
                state, start = self.fresh({"params": params, "batch_stats": stats}, mask, cycle + 1, momentum)
                epoch = 0
        return self.rows

    def prune_row(self, cycle: int, trained: train.TrainState, pruned: ap.PruneResult) -> Row:
        """The ``kind="prune"`` row of the prune that gives cycle ``cycle`` its mask: what X and AP
        took (``ap.prune_record``) and the DNR of the trained network right after the prune, before
        any retraining (BatchNorm in eval mode with the trained running statistics)."""
        view = self.counted
        record = ap.prune_record(view(trained.mask), ap.PruneResult(view(pruned.after_x), view(pruned.mask),
                                                                    pruned.ap_budget))
        just_pruned = trained.replace(params=masks.apply(trained.params, pruned.mask), mask=pruned.mask)
        dnr = train.dead_neuron_rate(self.steps, just_pruned, self.feed.dnr_inputs, self.cfg.eval_batch_size)
        return {"kind": "prune", "cycle": cycle, "remaining": float(masks.remaining(view(pruned.mask))),
                **record, "dnr": dnr["overall"], "dnr_per_layer": dnr["per_layer"],
                "wall_s": time.perf_counter() - self.started}


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
        _write_run_files(run_dir, cfg, label, options.devices, restarted, options.dense_from)
        driver = _Run(cfg, dataset, run_dir, label, options)
        try:
            return driver.run(rows)
        finally:
            driver.store.close()
