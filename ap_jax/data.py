"""CIFAR data: offline loading from a TFDS ArrayRecord directory, subsets, batching, augmentation.

Datasets are read with ``tfds.data_source`` (random access, no TensorFlow, no network) from a
TFDS data dir that holds ``<name>/<version>/`` in ArrayRecord files, found by
:func:`resolve_data_dir` (``ap_jax.fetch`` prepares one where the network allows). CIFAR is
small, so both splits are decoded once into uint8 arrays and put on the device once; every
later step (epoch shuffling, crop + flip augmentation, normalisation) is a pure jittable
function of those arrays and a PRNG key, so a training step never goes back to the host for data.

Problems with the data (missing directory, unknown name, truncated or corrupt files) raise
:class:`DataError` with a one-line message that says which path was used and how to fix it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ap_jax.catalog import DATASETS, RGB, DatasetSpec  # noqa: F401  (re-exported)

ENV_VAR = "AP_JAX_DATA_DIR"
BESIDE_REPO = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIX = (f"pass --data-dir DIR or set {ENV_VAR} to a TFDS data dir that holds it, or pass --download "
       "to fetch and prepare it with tfds")
PAD = 4  # pixels of zero padding on each side before the random crop


class DataError(ValueError):
    """Missing, unknown or unreadable data; the message is a single line."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Both splits on the default device: images uint8 NHWC, labels int32."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    num_classes: int
    mean: RGB
    std: RGB
    name: str

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def spec(name: str) -> DatasetSpec:
    """The table entry for ``name``; an unknown name raises DataError listing the known ones."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def resolve_data_dir(flag: str | os.PathLike[str] | None) -> Path:
    """The TFDS data dir, the first of: ``flag``; ``$AP_JAX_DATA_DIR``; ``shared/data`` in the
    directory that holds the repo, when it exists; TFDS's default data dir (``$TFDS_DATA_DIR``,
    else ``~/tensorflow_datasets``)."""
    if flag is not None:
        return Path(flag)
    if env := os.environ.get(ENV_VAR):
        return Path(env)
    if BESIDE_REPO.is_dir():
        return BESIDE_REPO
    from tensorflow_datasets.core import constants  # deferred: importing tfds costs ~0.3 s

    return Path(constants.get_default_data_dir())


def check_data_dir(name: str, data_dir: str | os.PathLike[str]) -> Path:
    """Raise DataError unless ``<data_dir>/<name>/<version>/dataset_info.json`` exists.

    Checked up front because tfds, given a wrong dir and ``download=False``, raises a misleading
    error about TFRecord random access. Returns the dataset's version directory.
    """
    entry = spec(name)
    return require_prepared(entry.title, name, entry.version, data_dir, FIX)


def require_prepared(
    title: str, tfds_name: str, version: str, data_dir: str | os.PathLike[str], hint: str
) -> Path:
    """Raise a one-line DataError naming ``title`` unless ``<tfds_name>/<version>`` is prepared.

    Shared by the on-device datasets here and the streamed ones (``ap_jax.stream``); ``hint``
    ends the message with the ways out. Returns the version directory.
    """
    ds_dir = Path(data_dir) / tfds_name / version
    info = ds_dir / "dataset_info.json"
    if not info.is_file():
        raise DataError(f"{title} not found: no {info}; {hint}")
    return ds_dir


def load_split(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one whole split into host arrays: images uint8 (N, H, W, C), labels int32 (N,).

    Order is the on-disk order. Any failure while reading becomes a one-line DataError.
    """
    import tensorflow_datasets as tfds  # deferred: importing tfds costs ~0.3 s

    entry = spec(name)
    root = resolve_data_dir(data_dir)
    ds_dir = check_data_dir(name, root)
    try:
        source = tfds.data_source(
            f"{name}:{entry.version}", split=split, data_dir=root, download=False
        )
        examples = source.__getitems__(range(len(source)))
        images = np.stack([np.asarray(e["image"], dtype=np.uint8) for e in examples])
        labels = np.asarray([e["label"] for e in examples], dtype=np.int32)
    except Exception as err:  # tfds / array_record / PIL raise many unrelated types
        raise unreadable(entry.title, split, ds_dir, err) from err
    return images, labels


def unreadable(title: str, split: str, ds_dir: Path, err: BaseException) -> DataError:
    """The one-line DataError for a split whose files failed to read or decode."""
    return DataError(
        f"{title} {split} split in {ds_dir} is unreadable (truncated or corrupt?): "
        f"{type(err).__name__}: {_one_line(err)}"
    )


def balanced_subset(labels: np.ndarray, size: int, num_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced subset of ``size`` examples, drawn by a seeded shuffle.

    Each class gets ``size // num_classes`` examples; the remainder goes one each to the lowest
    class ids. Raises DataError if ``size`` is out of range or a class has too few examples.
    """
    if not num_classes <= size <= labels.size:
        raise DataError(
            f"train_size={size} is out of range: need {num_classes} <= train_size <= "
            f"{labels.size} (the training split's size)"
        )
    order = np.random.default_rng(seed).permutation(labels.size)
    shuffled = labels[order]
    per_class, remainder = divmod(size, num_classes)
    picks = []
    for c in range(num_classes):
        want = per_class + (c < remainder)
        chosen = order[shuffled == c][:want]
        if chosen.size < want:
            raise DataError(
                f"train_size={size} needs {want} examples of class {c}; the split has {chosen.size}"
            )
        picks.append(chosen)
    return np.sort(np.concatenate(picks))


def load(
    name: str = "cifar10",
    data_dir: str | os.PathLike[str] | None = None,
    train_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load both splits onto the default device, optionally a class-balanced training subset.

    The test split is always complete.
    """
    entry = spec(name)
    x_train, y_train = load_split(name, "train", data_dir)
    if train_size is not None:
        keep = balanced_subset(y_train, train_size, entry.num_classes, seed)
        x_train, y_train = x_train[keep], y_train[keep]
    x_test, y_test = load_split(name, "test", data_dir)
    x_train, y_train, x_test, y_test = jax.device_put((x_train, y_train, x_test, y_test))
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=entry.num_classes,
        mean=entry.mean,
        std=entry.std,
        name=name,
    )


def epoch_order(
    key: jax.Array, epoch: int | jax.Array, num_examples: int, batch_size: int
) -> jax.Array:
    """Example indices for one epoch, shape (num_examples // batch_size, batch_size), int32.

    A permutation keyed by ``fold_in(key, epoch)``; the final partial batch is dropped.
    Jittable with ``num_examples`` and ``batch_size`` static.
    """
    if not 0 < batch_size <= num_examples:
        raise ValueError(f"batch_size={batch_size} must be in [1, num_examples={num_examples}]")
    steps = num_examples // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return perm[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def normalize(images: jax.Array, mean: RGB, std: RGB) -> jax.Array:
    """uint8 images -> float32 ``(x / 255 - mean) / std`` per channel."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _crop_flip(
    padded: jax.Array, offset: jax.Array, flip: jax.Array, height: int, width: int
) -> jax.Array:
    size = (height, width, padded.shape[-1])
    crop = jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), size)
    return jnp.where(flip, crop[:, ::-1], crop)


def augment(key: jax.Array, images: jax.Array) -> jax.Array:
    """Standard CIFAR augmentation of a uint8 NHWC batch; same shape and dtype.

    Per example: a random HxW crop of the image zero-padded by ``PAD`` on each side (offsets
    uniform in [0, 2 * PAD]), then a horizontal flip with probability 1/2.
    """
    n, height, width, _ = images.shape
    key_offset, key_flip = jax.random.split(key)
    offsets = jax.random.randint(key_offset, (n, 2), 0, 2 * PAD + 1)
    flips = jax.random.bernoulli(key_flip, 0.5, (n,))
    padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    crop_flip = jax.vmap(lambda p, o, f: _crop_flip(p, o, f, height, width))
    return crop_flip(padded, offsets, flips)


def batches(
    x: jax.Array, y: jax.Array, batch_size: int
) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Contiguous ``(x, y)`` slices in order, the last one partial: every example once (eval)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
