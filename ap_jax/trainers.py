"""What a run trains, and with what: its network, the network's initial weights, and the optimizer
and compiled steps of every LR schedule its cycles use.

Cycle 0 replays the whole LR schedule over ``dense_epochs`` (or ``epochs``) epochs; a pruned cycle
replays it over ``epochs`` epochs, or trains at fine-tuning's constant LR (``methods.schedule_of``).
Each distinct schedule is compiled once, so a second compilation happens only when some cycle
needs it. The train step is built by the factory ``ap_jax.official`` gives for the config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ap_jax import feeds, methods, models, official, train
from ap_jax.config import RunConfig

PyTree = Any
ScheduleKey = tuple[str, int]  # (methods.schedule_of's kind, the cycle's epochs)
Trainer = tuple[optax.GradientTransformation, train.Steps]


def build_model(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The configured network (the shortcut option applies to the CIFAR ResNets only)."""
    cifar_resnet = cfg.model.startswith("resnet") and cfg.model != "resnet50"
    options = {"shortcut": cfg.shortcut} if cifar_resnet else {}
    return models.get(cfg.model, num_classes=num_classes, **options)


@dataclasses.dataclass(frozen=True)
class Network:
    """A run's model, an input of its shape, and how its config draws the first weights."""

    model: nn.Module
    sample: jax.Array
    init_params: Callable[[PyTree, jax.Array], PyTree]

    @classmethod
    def of(cls, cfg: RunConfig, feed: feeds.Feed) -> "Network":
        """The configured network for ``feed``'s images and classes."""
        sample = jnp.zeros((1, *feed.image_shape), jnp.float32)
        return cls(build_model(cfg, feed.num_classes), sample, official.initializer(cfg))

    def initial_variables(self, key: jax.Array) -> PyTree:
        """``{"params", "batch_stats"}`` drawn from ``key`` by the configured ``init``."""
        variables = self.model.init(key, self.sample, train=False)
        return {"params": self.init_params(variables["params"], key),
                "batch_stats": variables.get("batch_stats", {})}


def schedule_key(cfg: RunConfig, method: methods.Method, cycle: int) -> ScheduleKey:
    """Cycle ``cycle``'s LR schedule: its method's kind and the cycle's length in epochs."""
    return methods.schedule_of(method, cycle), cfg.cycle_epochs(cycle)


def lr_schedule(cfg: RunConfig, key: ScheduleKey, steps_per_epoch: int) -> optax.Schedule:
    """The whole LR schedule over the key's epochs (``"replay"``), or fine-tuning's constant LR."""
    kind, epochs = key
    if kind == "constant":
        return optax.constant_schedule(cfg.finetune_lr)
    return official.schedule_function(cfg)(cfg.optim(), epochs * steps_per_epoch, steps_per_epoch)


def build_trainers(cfg: RunConfig, method: methods.Method, network: Network, feed: feeds.Feed, mesh: Mesh,
                   params: PyTree, skip_nonfinite: bool) -> dict[ScheduleKey, Trainer]:
    """``(tx, steps)`` for every LR schedule some cycle of the run uses (augmenting in the step
    only for on-device data); ``params`` tell the optimizer which leaves are kernels."""
    make_steps = official.step_factory(cfg)
    steps_per_epoch = feed.num_train // cfg.batch_size
    used = {schedule_key(cfg, method, c) for c in range(methods.last_cycle(method, cfg.cycles) + 1)}
    trainers = {}
    for key in sorted(used):
        tx = train.optimizer(cfg.optim(), lr_schedule(cfg, key, steps_per_epoch), params)
        trainers[key] = tx, make_steps(network.model, tx, feed.mean, feed.std, augment=feed.augment_on_device,
                                       skip_nonfinite=skip_nonfinite, mesh=mesh)
    return trainers
