"""Masked training: TrainState, optimizer and schedule, jitted train/eval/count steps, epoch loop.

The mask lives in the TrainState beside the params (never inside the optimizer state) and is
applied twice: in the forward pass, so a pruned weight's gradient is exactly 0, and after every
update, so momentum and weight decay can never revive it. Every reset builds a fresh optimizer
state. Batches are gathered, augmented and normalised inside the compiled step from the uint8
dataset that sits on the device (airbench style), so the host never stalls the step.

How a step uses the mask is one ``MaskRule`` (``MASKED``, the above, by default), and the
optimizer state a fresh state starts from may be given, so ``ap_jax.official`` builds the official
AP code's step and reset from these without this module knowing them.

Every step is compiled once for a 1-D ``('data',)`` device mesh (``ap_jax.parallel``), the same
code for 1 and N devices: state and data replicated, the per-step index vector sharded, so the
batch is split over devices and BatchNorm sees global-batch moments. Eval batches are gathered
the same way; ReLU counts are per-device partial counts summed with ``psum`` in ``shard_map``.

Data too large for the device (ImageNet) is streamed instead (``ap_jax.stream``): the same update
is compiled a second time as ``Steps.train_batch``, which takes a host-augmented uint8 batch that
is already sharded on the device, and :func:`train_stream_epoch` / :func:`stream_accuracy` are the
epoch loop and the eval for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh
from tqdm.auto import tqdm

from ap_jax import data, masks, parallel, stats
from ap_jax.config import OptimConfig

PyTree = Any


class TrainState(struct.PyTreeNode):
    """Everything one training run carries from step to step."""

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    mask: PyTree


def lr_schedule(cfg: OptimConfig, total_steps: int, steps_per_epoch: int = 0) -> optax.Schedule:
    """Piecewise-constant LR (÷ 1/gamma at each drop) after an optional linear warm-up.

    The paper's schedule (``lr_schedule="step"``); ``official.schedule_function`` picks the one a
    config names (``steps_per_epoch`` is for the schedules that need it).
    """
    boundaries: dict[int, float] = {}
    for share in cfg.lr_drops:  # drops that round to one step (tiny runs) multiply there
        step = int(round(share * total_steps))
        boundaries[step] = boundaries.get(step, 1.0) * cfg.lr_gamma
    decay = optax.piecewise_constant_schedule(cfg.lr, boundaries)
    if cfg.warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, lambda step: decay(step + cfg.warmup_steps)], [cfg.warmup_steps])


def optimizer(cfg: OptimConfig, schedule: optax.Schedule, params: PyTree) -> optax.GradientTransformation:
    """``wd * w`` added to the gradient (kernels only unless ``decay_all``), then SGD + momentum."""
    decay_mask = None if cfg.decay_all else masks.prunable(params)
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=cfg.momentum),
    )


def fresh_state(params: PyTree, batch_stats: PyTree, mask: PyTree, tx: optax.GradientTransformation,
                opt_state: optax.OptState | None = None) -> TrainState:
    """A TrainState at step 0 with masked params and ``opt_state`` (default: ``tx.init``'s).

    The state owns copies of its inputs, so the donating train step never deletes the caller's
    arrays (theta_0, the mask and the cycle-start weights are needed after training); a given
    ``opt_state`` is the caller's to hand over.
    """
    params = masks.apply(params, mask)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=jax.tree_util.tree_map(jnp.copy, batch_stats),
        opt_state=tx.init(params) if opt_state is None else opt_state,
        mask=jax.tree_util.tree_map(jnp.copy, mask),
    )


class MaskRule(NamedTuple):
    """How a train step uses the mask: ``weights(params, mask)`` are the weights it computes with
    and keeps after an update, ``grads(grads, params)`` the gradient it hands the optimizer."""

    weights: Callable[[PyTree, PyTree], PyTree]
    grads: Callable[[PyTree, PyTree], PyTree]


# The paper's rule: pruned weights are 0 in every forward pass (so their gradient is 0) and after
# every update (so momentum and weight decay cannot revive them).
MASKED = MaskRule(weights=masks.apply, grads=lambda grads, params: grads)


def _variables(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


@dataclasses.dataclass(frozen=True)
class Steps:
    """The compiled steps of one (model, optimizer, dataset) combination, and their mesh.

    ``train(state, images, labels, index, key)``, ``correct(state, images, labels, index)`` and
    ``relu_counts(state, images, index)`` gather the batch ``images[index]`` on the device.
    ``mesh`` None stands for a mesh over every device. For streamed data (``ap_jax.stream``),
    ``train_batch(state, x, y)`` and ``correct_batch(state, x, y)`` take a uint8 batch that is
    already on the device, sharded ``P('data')`` and augmented on the host.
    """

    train: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
    correct: Callable[..., jax.Array]
    relu_counts: Callable[..., PyTree]
    mesh: Mesh | None = None
    train_batch: Callable[..., tuple[TrainState, dict[str, jax.Array]]] | None = None
    correct_batch: Callable[..., jax.Array] | None = None


def _with_counts_of(old: PyTree, new: PyTree) -> PyTree:
    """``old`` optimizer state with the step counts (``count`` fields) of ``new``: a skipped step
    leaves momenta alone, yet the LR schedule, which reads the count, stays aligned with the data."""
    return jax.tree_util.tree_map_with_path(
        lambda path, o, n: n if getattr(path[-1], "name", None) == "count" else o, old, new)


def make_steps(
    model: nn.Module, tx: optax.GradientTransformation, mean, std, augment: bool = True,
    skip_nonfinite: bool = False, mesh: Mesh | None = None, count_relu: bool = False,
    mask_rule: MaskRule = MASKED,
) -> Steps:
    """Build the jitted train step, the eval step (correct count) and the ReLU-count step.

    With ``skip_nonfinite`` a step whose loss is NaN or inf leaves params, BatchNorm statistics
    and optimizer momenta as they were (the step counter and the optimizer's ``count`` still
    advance, so the LR schedule stays aligned with the data); without it the update is applied
    and the caller decides what to do.
    ``mesh`` (default: every device) is the ``('data',)`` mesh the steps run on; the state comes
    back replicated on it. With ``count_relu`` the train step's metrics also hold
    ``"relu_counts"``: the ReLU counts of its (augmented, train-mode) batch, packed into one
    int32 vector by ``stats.pack_counts`` (``stats.unpack_counts`` restores the pytree).
    ``mask_rule`` says how the steps use the mask (``MASKED``: in the forward pass and after
    every update).
    """
    mesh = parallel.resolve(mesh)
    rep, split = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    collections = ["batch_stats", stats.COLLECTION] if count_relu else ["batch_stats"]

    def gather(images, index):
        return jax.lax.with_sharding_constraint(images[index], split)

    masked = mask_rule.weights

    def forward_train(params, state: TrainState, x):
        variables = _variables(masked(params, state.mask), state.batch_stats)
        logits, updates = model.apply(variables, x, train=True, mutable=collections)
        return logits, (updates.get("batch_stats", state.batch_stats), updates.get(stats.COLLECTION))

    def update(state: TrainState, x_uint8, y):
        x = data.normalize(x_uint8, mean, std)

        def loss_fn(params):
            logits, batch_stats = forward_train(params, state, x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (logits, batch_stats)

        (loss, (logits, (batch_stats, counts))), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = mask_rule.grads(grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = masked(optax.apply_updates(state.params, updates), state.mask)
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        if skip_nonfinite:
            keep = state.replace(step=state.step + 1, opt_state=_with_counts_of(state.opt_state, opt_state))
            new = jax.tree_util.tree_map(lambda n, k: jnp.where(jnp.isfinite(loss), n, k), new, keep)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
        return new, {**metrics, "relu_counts": stats.pack_counts(counts)} if count_relu else metrics

    def train_step(state: TrainState, images, labels, index, key):
        x_uint8 = gather(images, index)
        if augment:
            x_uint8 = data.augment(key, x_uint8)
        return update(state, x_uint8, labels[index])

    def eval_variables(state: TrainState):
        return _variables(masked(state.params, state.mask), state.batch_stats)

    def correct(state: TrainState, images, labels, index):
        x = data.normalize(gather(images, index), mean, std)
        logits = model.apply(eval_variables(state), x, train=False)
        return jnp.sum(jnp.argmax(logits, -1) == labels[index])

    def correct_batch(state: TrainState, x_uint8, y):
        logits = model.apply(eval_variables(state), data.normalize(x_uint8, mean, std), train=False)
        return jnp.sum(jnp.argmax(logits, -1) == y)

    def relu_counts(state: TrainState, images, index):
        x = data.normalize(gather(images, index), mean, std)
        return stats.sharded_relu_counts(model, eval_variables(state), x, mesh, train=False)

    return Steps(
        train=jax.jit(train_step, donate_argnums=0, in_shardings=(rep, rep, rep, split, rep),
                      out_shardings=rep),
        correct=jax.jit(correct, in_shardings=(rep, rep, rep, split), out_shardings=rep),
        relu_counts=jax.jit(relu_counts, in_shardings=(rep, rep, split), out_shardings=rep),
        mesh=mesh,
        train_batch=jax.jit(update, donate_argnums=0, in_shardings=(rep, split, split), out_shardings=rep),
        correct_batch=jax.jit(correct_batch, in_shardings=(rep, split, split), out_shardings=rep),
    )


def accuracy(steps: Steps, state: TrainState, images: jax.Array, labels: jax.Array, batch_size: int) -> float:
    """Top-1 accuracy over every example (BN in eval mode, no augmentation)."""
    mesh = parallel.resolve(steps.mesh)
    images, labels = parallel.replicate((images, labels), mesh)
    total = 0
    for index, multiplicity in parallel.eval_batches(int(images.shape[0]), batch_size, mesh):
        total += int(steps.correct(state, images, labels, parallel.shard_batch(index, mesh))) // multiplicity
    return total / int(images.shape[0])


def dead_neuron_rate(steps: Steps, state: TrainState, images: jax.Array, batch_size: int) -> dict[str, Any]:
    """DNR over ``images`` (BN in eval mode, no augmentation), counts summed over batches on the
    host in int64 (a device's int32 counts of one batch cannot overflow; a sum over many could)."""
    mesh = parallel.resolve(steps.mesh)
    images, counts = parallel.replicate(images, mesh), None
    for index, multiplicity in parallel.eval_batches(int(images.shape[0]), batch_size, mesh):
        batch_counts = jax.device_get(steps.relu_counts(state, images, parallel.shard_batch(index, mesh)))
        batch_counts = jax.tree_util.tree_map(lambda c: np.asarray(c, np.int64) // multiplicity, batch_counts)
        counts = batch_counts if counts is None else jax.tree_util.tree_map(np.add, counts, batch_counts)
    return stats.dead_neuron_rate(counts)


def train_epoch(
    steps: Steps, state: TrainState, dataset: data.Dataset, batch_size: int, key: jax.Array,
    epoch: int, desc: str = "", after_step: Callable[[int, TrainState], None] | None = None,
) -> tuple[TrainState, dict[str, float]]:
    """One pass over the training set in the order ``fold_in(key, epoch)``.

    ``after_step(n, state)``, when given, is called after the epoch's n-th step (n from 1) with
    the state that step returned, valid until the next step (which donates it): copy to keep.

    Returns the mean loss and accuracy over the steps whose loss was finite, and
    ``nonfinite_steps``: the indices (within the epoch) of the steps whose loss was NaN or inf,
    checked once per epoch so the loop never waits on the device.
    """
    mesh = parallel.resolve(steps.mesh)
    parallel.check_batch_size(batch_size, mesh)
    images, labels = parallel.replicate((dataset.x_train, dataset.y_train), mesh)
    state = parallel.replicate(state, mesh)  # placed as the step returns it: one compilation
    order_key, aug_key = jax.random.split(jax.random.fold_in(key, epoch))
    order = np.asarray(data.epoch_order(order_key, 0, int(images.shape[0]), batch_size))
    losses, accs = [], []
    for i in tqdm(range(order.shape[0]), desc=desc, leave=False, disable=None):
        state, metrics = steps.train(state, images, labels, parallel.shard_batch(order[i], mesh),
                                     jax.random.fold_in(aug_key, i))
        if after_step is not None:
            after_step(i + 1, state)
        losses.append(metrics["loss"])
        accs.append(metrics["accuracy"])
    return state, _fit_summary(losses, accs)


def _fit_summary(losses: list[jax.Array], accs: list[jax.Array]) -> dict[str, Any]:
    """Mean loss and accuracy over the finite-loss steps, and the indices of the others."""
    losses, accs = np.asarray(jax.device_get(losses)), np.asarray(jax.device_get(accs))
    finite = np.isfinite(losses)
    fit = {"train_loss": float(np.mean(losses[finite])) if finite.any() else float("nan"),
           "train_accuracy": float(np.mean(accs[finite])) if finite.any() else float("nan")}
    return {**fit, "nonfinite_steps": np.flatnonzero(~finite).tolist()}


# ---------------------------------------------------------------- streamed data (ap_jax.stream)


def train_stream_epoch(
    steps: Steps, state: TrainState, batches: Iterable[tuple[jax.Array, jax.Array]], desc: str = "",
    after_step: Callable[[int, TrainState], None] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """One epoch over device batches ``(x uint8, y int32)``, e.g. from ``stream.stream``.

    The counterpart of :func:`train_epoch` for data too large for the device: the batches come
    augmented from the host, and ``after_step`` and the summary are as in :func:`train_epoch`.
    """
    losses, accs = [], []
    state = parallel.replicate(state, parallel.resolve(steps.mesh))  # one compilation, as above
    for i, (x, y) in enumerate(tqdm(batches, desc=desc, leave=False, disable=None)):
        state, metrics = steps.train_batch(state, x, y)
        if after_step is not None:
            after_step(i + 1, state)
        losses.append(metrics["loss"])
        accs.append(metrics["accuracy"])
    return state, _fit_summary(losses, accs)


def stream_accuracy(
    steps: Steps, state: TrainState, batches: Iterable[tuple[jax.Array, jax.Array]], num_examples: int,
) -> float:
    """Top-1 accuracy over ``num_examples`` from eval batches whose padding rows have label -1."""
    correct = [steps.correct_batch(state, x, y) for x, y in batches]
    return int(np.sum(jax.device_get(correct))) / num_examples
