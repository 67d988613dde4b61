"""What the pruning driver trains and measures on: on-device CIFAR or streamed ImageNet, one interface.

``cycle.run`` takes either dataset :func:`load` returns and wraps it in a :class:`Feed`, so the
driver never asks which kind it has:

- ``data.Dataset`` (CIFAR) -> :class:`DeviceFeed`: both splits replicated on the mesh once; each
  step gathers its batch by index and (with ``augment``) crops and flips it inside the compiled
  step (``train.train_epoch``); test accuracy over ``x_test``. Exactly the driver's behaviour
  before streamed data existed.
- ``stream.StreamedDataset`` (ImageNet) -> :class:`StreamFeed`: batches decoded and transformed
  on the host (``stream.stream``) at ``cfg.image_size`` px (0: 224), trained with
  ``Steps.train_batch``; test accuracy over the whole ``validation`` split.

**Augmentation and normalisation.** Both paths normalise on the device, inside the compiled step
(``data.normalize`` with the dataset's mean and std), from uint8 inputs. Augmentation happens in
exactly one place: CIFAR's pad-4 crop and flip in the compiled ``Steps.train`` (which
``make_steps(augment=...)`` switches), ImageNet's random resized crop and flip on the host
(``stream.train_view``; ``augment=False`` shows the eval view in the train order instead).
``Steps.train_batch`` never augments, whatever ``make_steps`` was given, so streamed batches are
not augmented twice; :attr:`Feed.augment_on_device` is False for them all the same.

**Same keys, exact resume.** Epoch ``e`` of a cycle's key splits ``fold_in(key, e)`` into an
order key and an augmentation key on both paths (``stream.epoch_keys``), and a streamed batch is
a pure function of (key, epoch, step), so a resumed streamed run trains on exactly the batches of
an uninterrupted one.

**DNR inputs.** The first ``dnr_size`` training examples (of the subset, if any) without
augmentation: CIFAR's stored images, ImageNet's eval views (resize + centre crop), read once and
held as uint8 on the device, so every epoch's DNR is measured on the same inputs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Protocol, Union

import jax
from jax.sharding import Mesh

from ap_jax import data, parallel, stream, train
from ap_jax.config import RunConfig

AnyDataset = Union[data.Dataset, stream.StreamedDataset]
AfterStep = Callable[[int, train.TrainState], None]
EVAL_KEY = 0  # eval epochs do not use their key; any fixed one will do


class Feed(Protocol):
    """A dataset as the driver uses it: train an epoch, measure test accuracy, hold DNR inputs."""

    num_train: int
    num_classes: int
    mean: data.RGB
    std: data.RGB
    image_shape: tuple[int, int, int]
    augment_on_device: bool  # whether the compiled index step should augment (make_steps' augment)
    dnr_inputs: jax.Array  # uint8, the fixed unaugmented training examples the DNR is measured on

    def train_epoch(self, steps: train.Steps, state: train.TrainState, batch_size: int, key: jax.Array,
                    epoch: int, desc: str = "", after_step: AfterStep | None = None
                    ) -> tuple[train.TrainState, dict[str, Any]]: ...

    def accuracy(self, steps: train.Steps, state: train.TrainState, batch_size: int) -> float: ...


class DeviceFeed:
    """CIFAR: both splits on the device, batches gathered (and augmented) in the compiled step."""

    def __init__(self, dataset: data.Dataset, cfg: RunConfig, mesh: Mesh):
        arrays = {k: getattr(dataset, k) for k in ("x_train", "y_train", "x_test", "y_test")}
        self.dataset = dataclasses.replace(dataset, **parallel.replicate(arrays, mesh))  # once, not per epoch
        self.num_train, self.num_classes = dataset.num_train, dataset.num_classes
        self.mean, self.std = dataset.mean, dataset.std
        self.image_shape = tuple(dataset.x_train.shape[1:])
        self.augment_on_device = cfg.augment
        self.dnr_inputs = self.dataset.x_train[: cfg.dnr_size]

    def train_epoch(self, steps: train.Steps, state: train.TrainState, batch_size: int, key: jax.Array,
                    epoch: int, desc: str = "", after_step: AfterStep | None = None
                    ) -> tuple[train.TrainState, dict[str, Any]]:
        """``train.train_epoch`` over the training arrays."""
        return train.train_epoch(steps, state, self.dataset, batch_size, key, epoch, desc=desc,
                                 after_step=after_step)

    def accuracy(self, steps: train.Steps, state: train.TrainState, batch_size: int) -> float:
        """Top-1 accuracy over every test example."""
        return train.accuracy(steps, state, self.dataset.x_test, self.dataset.y_test, batch_size)


class StreamFeed:
    """ImageNet: batches read, decoded and transformed on the host while the device trains."""

    def __init__(self, dataset: stream.StreamedDataset, cfg: RunConfig, mesh: Mesh):
        self.dataset, self.mesh = dataset, mesh
        self.num_train, self.num_classes = dataset.num_train, dataset.num_classes
        self.mean, self.std = dataset.mean, dataset.std
        self.size = cfg.image_size or stream.IMAGE_SIZE
        self.image_shape = (self.size, self.size, 3)
        self.augment, self.augment_on_device = cfg.augment, False
        dnr = stream.eval_images(dataset.train, min(cfg.dnr_size, dataset.num_train), self.size)
        self.dnr_inputs = parallel.replicate(dnr, mesh)

    def train_epoch(self, steps: train.Steps, state: train.TrainState, batch_size: int, key: jax.Array,
                    epoch: int, desc: str = "", after_step: AfterStep | None = None
                    ) -> tuple[train.TrainState, dict[str, Any]]:
        """``train.train_stream_epoch`` over epoch ``epoch`` of the training split under ``key``."""
        batches = stream.stream(self.dataset.train, batch_size, key, epoch, train=True, mesh=self.mesh,
                                size=self.size, augment=self.augment)
        return train.train_stream_epoch(steps, state, batches, desc=desc, after_step=after_step)

    def accuracy(self, steps: train.Steps, state: train.TrainState, batch_size: int) -> float:
        """Top-1 accuracy over every example of the test (validation) split, eval views."""
        batches = stream.stream(self.dataset.test, batch_size, jax.random.key(EVAL_KEY), 0, train=False,
                                mesh=self.mesh, size=self.size)
        return train.stream_accuracy(steps, state, batches, len(self.dataset.test))


def make_feed(dataset: AnyDataset, cfg: RunConfig, mesh: Mesh) -> Feed:
    """The feed for ``dataset``: streamed for a ``stream.StreamedDataset``, else on the device."""
    if isinstance(dataset, stream.StreamedDataset):
        return StreamFeed(dataset, cfg, mesh)
    return DeviceFeed(dataset, cfg, mesh)


def load(name: str, data_dir: str | os.PathLike[str] | None = None, train_size: int | None = None,
         seed: int = 0) -> AnyDataset:
    """Dataset ``name``: ``data.load`` for CIFAR, ``stream.load`` for ImageNet; a one-line
    ``data.DataError`` when it is missing, unreadable or unknown."""
    if name in stream.STREAMED:
        return stream.load(name, data_dir, train_size=train_size, seed=seed)
    return data.load(name, data_dir, train_size=train_size, seed=seed)
