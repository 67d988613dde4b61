"""Official-code parity: the official AP code's behaviour as switches, one preset, and the one
seam through which the driver asks for it.

Every behaviour of the authors' released code that changes results and that the paper does not
describe is one ``RunConfig`` field, each ``added`` so that configs leaving it at its default keep
their hash. ``preset(cfg)`` turns them all on, so a run with and one without them attribute any
gap between the paper's numbers and ours::

    from ap_jax import official
    cfg = official.preset(RunConfig(model="mlp", cycles=10, epochs=5), warmup_steps=900)

The driver (``ap_jax.cycle``, ``ap_jax.trainers``) tests none of these switches: it asks this
module for the prune (``prune_function``), the train-step factory (``step_factory``), the LR
schedule (``schedule_function``), how a pruned cycle's training state starts (``reset_rule``), how
weights are drawn (``initializer``) and how masks are counted (``counted_view``). At the defaults
each hands back the paper's behaviour from the core modules; the official variants live here and
in ``ap_jax.official_prune``.

The switches (``weight_decay``/``decay_all``, ``lr_schedule``, ``reinit``, ``init``,
``mask_bn_scale``, ``prune_rule``, ``duplicated_pool``, ``reapply_mask``), the lines of the
official code each mirrors, the pool's order, how its two training phases map onto our one, and
what is not reproduced and why: ``docs/official.md``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ap_jax import ap, masks, train
from ap_jax.official_prune import (  # noqa: F401  (the official prune's names, re-exported)
    WEIGHT_NAMES, ap_prune_with_scales, pool_sources, prunable_flags, pytorch_weights, restore_shapes,
    scales_as_kernels, threshold_prune,
)

PyTree = Any

OFFICIAL: dict[str, Any] = {
    "init": "xavier",
    "lr_schedule": "official",
    "lr": 0.1,
    "warmup_steps": 20000,
    "lr_drops": (0.5, 0.64),
    "lr_gamma": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "decay_all": True,
    "mask_bn_scale": True,
    "prune_rule": "official",
    "duplicated_pool": True,
    "reinit": True,
    "reapply_mask": False,
    "method": "lth",
    "scope": "global",
    "rate": 0.2,
    "ap_rate": 0.02,
    "ap_start_cycle": 0,
    "ap_variant": "ap",
    "shortcut": "B",
    "augment": True,
}


def preset(cfg: Any, **overrides: Any) -> Any:
    """``cfg`` (a ``RunConfig``) with every official quirk of ``OFFICIAL`` on, then ``overrides``.

    Scale (model, data, cycles, epochs, batch size, seed) stays as ``cfg`` has it.
    """
    return dataclasses.replace(cfg, **{**OFFICIAL, **overrides})


PruneFunction = Callable[[PyTree, PyTree, PyTree, float, float, jax.Array], ap.PruneResult]
Reset = Callable[[PyTree, train.TrainState, int], tuple[PyTree, Any]]  # opt_state None: a fresh one


def prune_function(cfg: Any) -> PruneFunction:
    """The prune a run's config asks for, ``(mask, trained, cycle_start, rate, ap_rate, key) ->
    ap.PruneResult``: the paper's exact counts (over kernels, or kernels and BatchNorm scales with
    ``mask_bn_scale``), or the official code's threshold rule."""
    if cfg.prune_rule == "official":
        return lambda mask, trained, start, rate, ap_rate, key: threshold_prune(
            mask, trained, start, rate, ap_rate, cfg.mask_bn_scale, cfg.duplicated_pool, cfg.ap_variant, key)
    exact = ap_prune_with_scales if cfg.mask_bn_scale else ap.ap_prune_result
    return lambda mask, trained, start, rate, ap_rate, key: exact(
        mask, trained, start, rate=rate, ap_rate=ap_rate, scope=cfg.scope, variant=cfg.ap_variant, key=key)


def counted_view(cfg: Any) -> Callable[[PyTree], PyTree]:
    """How a run counts a mask (remaining shares, prune records): as it is, or with BatchNorm scales
    as kernels when ``mask_bn_scale`` makes them prunable."""
    return scales_as_kernels if cfg.mask_bn_scale else (lambda mask: mask)


def zero_grads_at_zero_weights(grads: PyTree, params: PyTree) -> PyTree:
    """``grads`` set to 0 wherever a PyTorch-``weight`` leaf (kernel, scale) is exactly 0: the
    official code's freezing by value (``resnet_20.py:268-273``), which momentum can undo."""
    return jax.tree_util.tree_map(lambda g, p, w: jnp.where(p == 0, 0.0, g) if w else g,
                                  grads, params, pytorch_weights(params))


# The official code's step: the mask is used nowhere (forward passes see the raw params, nothing
# is masked after an update) and the gradient is zeroed where a kernel or scale is exactly 0.
FREEZE_BY_VALUE = train.MaskRule(weights=lambda params, mask: params, grads=zero_grads_at_zero_weights)


def step_factory(cfg: Any) -> Callable[..., train.Steps]:
    """``train.make_steps`` as a run's config asks for it: the paper's masked steps, or with
    ``reapply_mask=False`` the official code's steps that freeze pruned weights by value only."""
    if cfg.reapply_mask:
        return train.make_steps
    return functools.partial(train.make_steps, mask_rule=FREEZE_BY_VALUE)


def lr_schedule(cfg: train.OptimConfig, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """The official AP code's LR (``lr_schedule="official"``, ``resnet_20.py:37-39, 241-247``):
    ``lr * min(step + 1, warmup) / warmup``, overwritten to ``lr * gamma^i`` from the epoch
    ``round(lr_drops[i] * epochs)`` on.

    The warm-up adds ``lr / warmup`` before every step (so step 0 already has it) and is cut
    short by the first drop when that comes earlier (official: 0.1/20000 per step, drops at
    epochs 25 and 32 of 50, i.e. ``lr_drops=(0.5, 0.64)``). Drops fall on epoch boundaries.
    """
    if steps_per_epoch < 1 or total_steps % steps_per_epoch:
        raise ValueError(f"the official LR schedule needs whole epochs: {total_steps} steps of "
                         f"{steps_per_epoch} per epoch")
    epochs = total_steps // steps_per_epoch
    warmup = max(cfg.warmup_steps, 1)

    def ramp(step: jax.Array) -> jax.Array:  # not optax.linear_schedule: it loses 1e-4 at step 0 in float32
        return cfg.lr * jnp.minimum(step + 1, warmup).astype(jnp.float32) / warmup

    drops = [optax.constant_schedule(cfg.lr * cfg.lr_gamma ** (i + 1)) for i in range(len(cfg.lr_drops))]
    starts = [int(round(share * epochs)) * steps_per_epoch for share in cfg.lr_drops]
    return optax.join_schedules([ramp, *drops], starts)


def schedule_function(cfg: Any) -> Callable[[train.OptimConfig, int, int], optax.Schedule]:
    """``(optim, total_steps, steps_per_epoch) -> schedule`` as ``cfg.lr_schedule`` names it: the
    paper's step schedule (``train.lr_schedule``) or the official code's (``lr_schedule``)."""
    return lr_schedule if cfg.lr_schedule == "official" else train.lr_schedule


def carried_momentum(opt_state: optax.OptState) -> optax.OptState:
    """A copy of ``opt_state`` with its step counts set to 0: the LR schedule restarts, the momentum
    carries over a prune (official code, ``resnet_20.py:160``)."""
    carried = jax.tree_util.tree_map(jnp.copy, opt_state)
    return optax.tree_utils.tree_set(carried, count=jnp.zeros((), jnp.int32))


def carries_optimizer_state(cfg: Any) -> bool:
    """Whether a pruned cycle starts from the previous cycle's optimizer state (``reapply_mask=False``)."""
    return not cfg.reapply_mask


def reset_rule(cfg: Any, fresh_init: Callable[[int], PyTree]) -> Reset:
    """How cycle ``c``'s training state starts, ``(start, trained, c) -> (start, opt_state)``, from
    the base method's start variables and cycle ``c - 1``'s trained state.

    The paper: the method's start and a fresh optimizer state (``opt_state`` None). The official
    code: with ``reinit`` the params of ``fresh_init(c)`` (a new random init, BatchNorm statistics
    as the method says); without ``reapply_mask`` the trained momentum (``carried_momentum``).
    """
    def reset(start: PyTree, trained: train.TrainState, cycle: int) -> tuple[PyTree, Any]:
        if cfg.reinit:
            start = {**start, "params": fresh_init(cycle)["params"]}
        return start, carried_momentum(trained.opt_state) if carries_optimizer_state(cfg) else None
    return reset


def initializer(cfg: Any) -> Callable[[PyTree, jax.Array], PyTree]:
    """``(params, key) -> params``: a model's freshly initialised params as ``cfg.init`` asks, kept
    (``"model"``) or re-drawn by the official ``weight_init`` (``"xavier"``, ``xavier_init``)."""
    return xavier_init if cfg.init == "xavier" else (lambda params, key: params)


def xavier_init(params: PyTree, key: jax.Array) -> PyTree:
    """``params`` re-drawn as the official ``weight_init``: Xavier-normal kernels (std
    ``sqrt(2 / (fan_in + fan_out))``), scale ~ N(1, 0.02) and its module's bias = 0 (BatchNorm),
    any other kernel's bias ~ N(0, 1); every other leaf is kept."""
    xavier = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
    with_path = jax.tree_util.tree_leaves_with_path(params)
    keys = jax.random.split(key, len(with_path))
    siblings: dict[str, set[str]] = {}
    for path, _ in with_path:
        siblings.setdefault(masks.module_name(path), set()).add(masks.leaf_key(path))

    def draw(path: tuple, leaf: jax.Array, k: jax.Array) -> jax.Array:
        name, shape, dtype = masks.leaf_key(path), jnp.shape(leaf), jnp.asarray(leaf).dtype
        if name == "kernel" and len(shape) >= 2:
            return xavier(k, shape, dtype)
        if name == "scale":
            return 1.0 + 0.02 * jax.random.normal(k, shape, dtype)
        if name == "bias" and "scale" in siblings[masks.module_name(path)]:
            return jnp.zeros(shape, dtype)
        if name == "bias" and "kernel" in siblings[masks.module_name(path)]:
            return jax.random.normal(k, shape, dtype)
        return leaf

    leaves = [draw(path, leaf, k) for (path, leaf), k in zip(with_path, keys)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves)
