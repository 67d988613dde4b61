"""ImageNet streamed from a TFDS data dir through a bounded host pipeline, with device prefetch.

CIFAR fits on the device and stays there (``ap_jax.data``); ImageNet (about 140 GB of JPEGs)
does not, so its batches are read, decoded and augmented on the host while the device trains.

**Datasets.** ``imagenet2012``: tfds ``imagenet2012:5.1.0`` (1000 classes; ``train`` and
``validation`` splits), prepared beforehand with ``tfds build imagenet2012 --manual_dir DIR`` in
the ArrayRecord file format, found in the same data dir as CIFAR (``data.resolve_data_dir``).
``imagenet200``: the examples of the same splits
whose label is below 200. tfds numbers the classes in sorted WordNet-id order (n01440764, ...),
the same order as torchvision's ImageFolder indices, so these are the 200 classes the official
code keeps when it truncates a pretrained ResNet-50's fc to its first 200 outputs (paper.md §3).
Finding them needs every label of a split: the first use reads the whole split once (for the
train split a pass over all its files) and caches the labels as ``.npy`` under ``cache_dir``
(default ``$XDG_CACHE_HOME/ap_jax``, else ``~/.cache/ap_jax``), keyed by the split's files.
Missing data raises the same one-line :class:`ap_jax.data.DataError` as CIFAR.
:func:`load` opens a dataset for the pruning driver as a :class:`StreamedDataset`: the train
split (``train_size``: a class-balanced subset drawn as for CIFAR, from the cached labels) and the
validation split as its test set; ``ap_jax.feeds`` trains and evaluates on it.

**Order.** Epoch ``e`` of key ``k`` splits ``fold_in(k, e)`` into an order key and an
augmentation key, as ``train.train_epoch`` does for CIFAR; the order is ``data.epoch_order``
over the split's examples. Everything a batch holds is a pure function of (key, epoch, step),
so a resumed run streams exactly the batches an uninterrupted one would, with no loader state
to checkpoint. Training drops the final partial batch (``n // B`` steps; every example is seen
at most once per epoch, and which ones are left out changes with the epoch). Eval covers every
example exactly once in on-disk order; its last batch is padded with zero images labelled -1,
which never count as correct (``train.stream_accuracy`` divides by the true count).

**Host transforms** (Pillow, fixed output size ``S``, default 224, uint8 RGB). Train: a random
resized crop (area share in [0.08, 1], aspect ratio in [3/4, 4/3], 10 tries then a centre crop:
the Inception / torchvision recipe), resized bilinearly to S x S, then a horizontal flip with
probability 1/2; each example's draws are seeded by (augmentation key, step, row), so they do not
depend on thread timing or on the number of processes. Eval: the shorter side resized to
``round(S / 0.875)`` (256 for 224) with the longer side ``int(256 * long / short)``, then the
central S x S crop (top and left offsets ``round((side - S) / 2)``), as torchvision's
``Resize(256)`` + ``CenterCrop(224)``.

**Bounded pipeline.** A thread pool reads and transforms examples; at most ``prefetch`` batches
(default 2) are queued or in flight beyond the one the consumer holds, so host memory stays at
``prefetch + 1`` batches however slow the device is. Closing the iterator (or dropping it)
cancels the queued work and joins the pool's threads. :func:`device_batches` puts the next batch
on the device (an asynchronous transfer) before handing out the current one, so the copy
overlaps the running step. On several hosts each process reads only its own rows of every
global batch (``parallel.process_rows``) and ``parallel.shard_local_batch`` assembles the global
array, as ``parallel.shard_batch`` does for CIFAR's index vectors.

**Why tfds ``data_source`` and a thread pool, not grain.** The data is already a random-access
tfds ``data_source`` (ArrayRecord, thread-safe reads), the order and the augmentation are pure
functions of (key, epoch, step), so grain's checkpointable iterator state buys nothing for
resume, and the expensive work per example, JPEG decoding and resampling, runs in Pillow's C
code, which releases the GIL, so threads use every core without grain's worker processes and
shared-memory transfer. It also adds no dependency. If the Python work per example (record
parsing, about 0.1 ms) ever limits throughput, grain's multiprocessing is the next step.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import PIL.Image
from jax.sharding import Mesh

from ap_jax import data, parallel
from ap_jax.catalog import (  # noqa: F401  (re-exported)
    IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, STREAMED, StreamSpec,
)

EVAL_CROP_SHARE = 0.875  # 224 / 256
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
PADDING_LABEL = -1  # the label of eval padding rows, and their position in an epoch plan
THREAD_PREFIX = "ap_jax-stream"
LABEL_CHUNK = 4096  # records per read while scanning a split's labels
PREPARE_HINT = (f"pass --data-dir DIR or set {data.ENV_VAR} to a TFDS data dir that holds it, prepared with: "
                "tfds build imagenet2012 --manual_dir DIR --file_format array_record")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a streamed dataset: its tfds records (images left as JPEG bytes) and members."""

    name: str
    split: str
    title: str
    ds_dir: Path
    records: Sequence[dict[str, Any]]
    ids: np.ndarray  # ascending record indices of the examples that belong to the dataset

    def __len__(self) -> int:
        return int(self.ids.size)


def stream_spec(name: str) -> StreamSpec:
    """The table entry for ``name``; an unknown name raises DataError listing the known ones."""
    if name not in STREAMED:
        raise data.DataError(f"unknown streamed dataset {name!r}; known: {', '.join(sorted(STREAMED))}")
    return STREAMED[name]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ap_jax``, else ``~/.cache/ap_jax``: where split label indexes are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ap_jax"


def open_split(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Split:
    """Open ``split`` (``"train"`` or ``"validation"``) of streamed dataset ``name`` for reading.

    Raises a one-line DataError if the data is missing or its files cannot be read.
    """
    import tensorflow_datasets as tfds  # deferred: importing tfds costs ~0.3 s

    entry = stream_spec(name)
    root = data.resolve_data_dir(data_dir)
    ds_dir = data.require_prepared(entry.title, entry.tfds_name, entry.version, root, PREPARE_HINT)
    try:
        records = tfds.data_source(f"{entry.tfds_name}:{entry.version}", split=split, data_dir=root,
                                   download=False, decoders={"image": tfds.decode.SkipDecoding()})
        ids = np.arange(len(records), dtype=np.int64)
        if entry.num_classes < records.dataset_info.features["label"].num_classes:
            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            ids = np.flatnonzero(split_labels(records, ds_dir, split, cache) < entry.num_classes)
    except Exception as err:  # tfds / array_record raise many unrelated types
        raise data.unreadable(entry.title, split, ds_dir, err) from err
    return Split(name=name, split=split, title=entry.title, ds_dir=ds_dir, records=records, ids=ids)


def _label_cache_path(ds_dir: Path, split: str, cache_dir: Path) -> Path:
    """A cache file name that changes when the split's files (path, size, mtime) change."""
    files = sorted(ds_dir.glob(f"*-{split}.*"))
    stamp = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    return cache_dir / f"{ds_dir.parent.name}-{ds_dir.name}-{split}-labels-{digest}.npy"


def split_labels(records: Sequence[dict[str, Any]], ds_dir: Path, split: str, cache_dir: Path) -> np.ndarray:
    """Every label of a split in record order (int32), read once and then kept in ``cache_dir``
    (a cache that cannot be written is a warning: the labels are read again next time)."""
    path = _label_cache_path(ds_dir, split, cache_dir)
    if path.is_file():
        return np.load(path)
    labels = np.empty(len(records), np.int32)
    for start in range(0, len(records), LABEL_CHUNK):
        chunk = records.__getitems__(range(start, min(start + LABEL_CHUNK, len(records))))
        labels[start : start + len(chunk)] = [r["label"] for r in chunk]
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as f:
            np.save(f, labels)
        os.replace(partial, path)  # atomic: concurrent processes never read a half-written file
    except OSError as err:
        with contextlib.suppress(OSError):  # a half-written temporary, if any
            partial.unlink()
        warnings.warn(f"cannot write the label cache {path} ({err.strerror or err}); the labels are read "
                      "again next time", stacklevel=2)
    return labels


# ---------------------------------------------------------------- per-example host transforms


def decode(jpeg: bytes) -> PIL.Image.Image:
    """An RGB Pillow image from encoded bytes (grey or CMYK sources are converted)."""
    return PIL.Image.open(io.BytesIO(jpeg)).convert("RGB")


def crop_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random resized crop: the Inception / torchvision recipe."""
    for _ in range(CROP_TRIES):
        area = height * width * rng.uniform(*CROP_AREA)
        ratio = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_view(jpeg: bytes, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """A random resized crop to ``size`` x ``size``, flipped with probability 1/2; uint8 HWC."""
    image = decode(jpeg)
    top, left, h, w = crop_box(rng, image.height, image.width)
    view = image.resize((size, size), PIL.Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        view = view.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(view)


def eval_size(short: int, long: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """The (short, long) side lengths after resizing the shorter side to ``round(size / 0.875)``."""
    target = round(size / EVAL_CROP_SHARE)
    return target, int(target * long / short)


def eval_view(jpeg: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Shorter side resized to ``round(size / 0.875)``, then the central ``size`` crop; uint8 HWC."""
    image = decode(jpeg)
    if image.width <= image.height:
        width, height = eval_size(image.width, image.height, size)
    else:
        height, width = eval_size(image.height, image.width, size)
    top, left = int(round((height - size) / 2)), int(round((width - size) / 2))
    resized = image.resize((width, height), PIL.Image.Resampling.BILINEAR)
    return np.asarray(resized.crop((left, top, left + size, top + size)))


# ---------------------------------------------------------------- epoch plan and pipeline


def epoch_keys(key: jax.Array, epoch: int) -> tuple[jax.Array, jax.Array]:
    """``(order_key, augment_key)`` of one epoch, split from ``fold_in(key, epoch)`` as for CIFAR."""
    order_key, augment_key = jax.random.split(jax.random.fold_in(key, epoch))
    return order_key, augment_key


def epoch_plan(num_examples: int, batch_size: int, key: jax.Array, epoch: int, train: bool) -> np.ndarray:
    """Positions into the split's examples, shape (steps, batch_size); -1 marks eval padding.

    Train: ``data.epoch_order`` under the epoch's order key, final partial batch dropped. Eval:
    ``0 .. n - 1`` in order, the last batch padded with -1.
    """
    if train:
        return np.asarray(data.epoch_order(epoch_keys(key, epoch)[0], 0, num_examples, batch_size))
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    steps = -(-num_examples // batch_size)
    padded = np.full(steps * batch_size, PADDING_LABEL, np.int64)
    padded[:num_examples] = np.arange(num_examples)
    return padded.reshape(steps, batch_size)


def _example(split: Split, position: int, train: bool, seed: list[int] | None, size: int) -> tuple[np.ndarray, int]:
    """One transformed example and its label; a padding position gives zeros and label -1."""
    if position == PADDING_LABEL:
        return np.zeros((size, size, 3), np.uint8), PADDING_LABEL
    record = split.records[int(split.ids[position])]
    if train:
        return train_view(record["image"], np.random.default_rng(seed), size), int(record["label"])
    return eval_view(record["image"], size), int(record["label"])


def host_batches(
    split: Split, plan: np.ndarray, *, train: bool, augment_key: jax.Array | None = None,
    size: int = IMAGE_SIZE, rows: slice | None = None, workers: int | None = None, prefetch: int = 2,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This process's ``rows`` of each batch of ``plan`` as host arrays: images uint8, labels int32.

    A pool of ``workers`` threads (default: the usable cores) works at most ``prefetch`` batches
    ahead of the consumer. Train examples are seeded by (``augment_key``, step, row). Closing
    the iterator cancels the queued work and joins the threads.
    """
    if prefetch < 1:
        raise ValueError(f"prefetch={prefetch} must be >= 1")
    if train and augment_key is None:
        raise ValueError("a training stream needs augment_key")
    rows = slice(0, plan.shape[1]) if rows is None else rows
    base = np.asarray(jax.random.key_data(augment_key)).ravel().tolist() if train else None
    return _pipeline(split, plan, train, base, size, rows, workers or _usable_cores(), prefetch)


def _usable_cores() -> int:
    """The cores this process may run on (all of them where the OS cannot say)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _pipeline(
    split: Split, plan: np.ndarray, train: bool, base: list[int] | None, size: int, rows: slice,
    workers: int, prefetch: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The generator behind :func:`host_batches`; its pool starts with the first batch asked for."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix=THREAD_PREFIX)

    def submit(step: int) -> list[Future]:
        return [pool.submit(_example, split, int(plan[step, row]), train,
                            [*base, step, row] if train else None, size)
                for row in range(rows.start, rows.stop)]

    pending: collections.deque[list[Future]] = collections.deque()
    try:
        for step in range(plan.shape[0]):
            while len(pending) <= prefetch and step + len(pending) < plan.shape[0]:
                pending.append(submit(step + len(pending)))
            yield _collect(split, pending.popleft())
    finally:
        for batch in pending:
            for future in batch:
                future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(split: Split, futures: list[Future]) -> tuple[np.ndarray, np.ndarray]:
    """Wait for one batch's examples and stack them; a read or decode failure is a DataError."""
    try:
        examples = [f.result() for f in futures]
    except Exception as err:  # array_record / protobuf / Pillow raise many unrelated types
        raise data.unreadable(split.title, split.split, split.ds_dir, err) from err
    return np.stack([x for x, _ in examples]), np.asarray([y for _, y in examples], np.int32)


def device_batches(
    host: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int, mesh: Mesh,
) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Global ``(x, y)`` batches sharded ``P('data')`` on ``mesh``, each put one step before use.

    Each process passes its own rows; the transfer of the next batch overlaps the current step.
    Closing this iterator closes ``host``.
    """
    ahead = None
    try:
        for x, y in host:
            batch = (parallel.shard_local_batch(x, batch_size, mesh), parallel.shard_local_batch(y, batch_size, mesh))
            if ahead is not None:
                yield ahead
            ahead = batch
        if ahead is not None:
            yield ahead
    finally:
        if hasattr(host, "close"):
            host.close()


def stream(
    split: Split, batch_size: int, key: jax.Array, epoch: int, *, train: bool, mesh: Mesh | None = None,
    size: int = IMAGE_SIZE, workers: int | None = None, prefetch: int = 2, augment: bool = True,
) -> Iterator[tuple[jax.Array, jax.Array]]:
    """One epoch of ``split`` as device batches on ``mesh``: the plan, the host pipeline, prefetch.

    Feed it to ``train.train_stream_epoch`` (train) or ``train.stream_accuracy`` (eval). A train
    epoch with ``augment=False`` keeps the train order but shows each example's eval view.
    """
    mesh = parallel.resolve(mesh)
    parallel.check_batch_size(batch_size, mesh)
    plan = epoch_plan(len(split), batch_size, key, epoch, train)
    views = train and augment
    host = host_batches(split, plan, train=views, augment_key=epoch_keys(key, epoch)[1] if views else None,
                        size=size, rows=parallel.process_rows(batch_size, mesh), workers=workers,
                        prefetch=prefetch)
    return device_batches(host, batch_size, mesh)


def eval_images(split: Split, count: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """The eval views of the split's first ``count`` examples, uint8 (count, size, size, 3).

    The fixed inputs the DNR is measured on (``ap_jax.feeds``): read once, kept on the host.
    """
    [(images, _)] = list(host_batches(split, np.arange(count)[None], train=False, size=size))
    return images


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
    """A streamed dataset's training split (maybe a class-balanced subset) and its test split.

    The counterpart of ``data.Dataset`` for ``cycle.run``: the splits are opened, not read.
    """

    train: Split
    test: Split
    num_classes: int
    mean: data.RGB
    std: data.RGB
    name: str

    @property
    def num_train(self) -> int:
        return len(self.train)


def subset(split: Split, size: int, num_classes: int, seed: int, cache_dir: Path) -> Split:
    """``split`` cut to a class-balanced subset of ``size`` examples, as ``data.load`` cuts CIFAR.

    Needs every label of the split: read once, then kept in ``cache_dir`` (see :func:`split_labels`).
    """
    try:
        labels = split_labels(split.records, split.ds_dir, split.split, cache_dir)[split.ids]
    except Exception as err:  # tfds / array_record raise many unrelated types
        raise data.unreadable(split.title, split.split, split.ds_dir, err) from err
    return dataclasses.replace(split, ids=split.ids[data.balanced_subset(labels, size, num_classes, seed)])


def load(
    name: str, data_dir: str | os.PathLike[str] | None = None, train_size: int | None = None, seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> StreamedDataset:
    """Open streamed dataset ``name``: its ``train`` split (optionally a class-balanced subset of
    ``train_size``, drawn with ``seed``) and its ``validation`` split as the test set.

    Missing or unreadable data raises the one-line ``data.DataError`` (as ``data.load``).
    """
    entry = stream_spec(name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    train = open_split(name, "train", data_dir, cache)
    if train_size is not None:
        train = subset(train, train_size, entry.num_classes, seed, cache)
    return StreamedDataset(train=train, test=open_split(name, "validation", data_dir, cache),
                           num_classes=entry.num_classes, mean=entry.mean, std=entry.std, name=name)
