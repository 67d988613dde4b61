"""Tests for ap_jax.stream on a tiny fake imagenet2012 in the real tfds on-disk format."""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from fake_tfds import write_fake_imagenet

from ap_jax import data, masks, parallel, stream, train

# Unique labels, so a batch's labels say which examples it holds; they span > 200 classes.
TRAIN_LABELS = [420, 0, 199, 3, 999, 200, 17, 650, 150, 201, 42, 998]
EVAL_LABELS = [250, 1, 7, 800, 199]
SUBSET_TRAIN = sorted(y for y in TRAIN_LABELS if y < 200)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tfds")
    return root, write_fake_imagenet(root, {"train": TRAIN_LABELS, "validation": EVAL_LABELS})


@pytest.fixture(scope="module")
def train_split(fake, tmp_path_factory) -> stream.Split:
    return stream.open_split("imagenet2012", "train", fake[0], cache_dir=tmp_path_factory.mktemp("cache"))


def _labels(batches) -> list[np.ndarray]:
    return [np.asarray(y) for _, y in batches]


def _host(split: stream.Split, batch: int, epoch: int, train: bool, size: int = 16, **kwargs):
    plan = stream.epoch_plan(len(split), batch, jax.random.key(7), epoch, train)
    augment_key = stream.epoch_keys(jax.random.key(7), epoch)[1] if train else None
    return stream.host_batches(split, plan, train=train, augment_key=augment_key, size=size, **kwargs)


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(stream.THREAD_PREFIX)]


# ---------------------------------------------------------------- the fake matches the real format


def test_fake_imagenet_has_the_real_tfds_features(fake, tmp_path):
    import tensorflow_datasets as tfds

    records = tfds.data_source("imagenet2012:5.1.0", split="validation", data_dir=fake[0], download=False)
    real = tfds.builder_cls("imagenet2012")(data_dir=tmp_path).info.features
    kinds = lambda features: {k: (type(v).__name__, getattr(v, "num_classes", None)) for k, v in features.items()}
    assert kinds(records.dataset_info.features) == kinds(real)
    assert records.dataset_info.features["label"].names == real["label"].names
    assert [r["label"] for r in records] == EVAL_LABELS


# ---------------------------------------------------------------- batches and transforms


def test_batches_have_fixed_shape_and_dtype(train_split):
    for is_train in (True, False):
        for x, y in _host(train_split, 5, 0, is_train):
            assert x.shape == (5, 16, 16, 3) and x.dtype == np.uint8
            assert y.shape == (5,) and y.dtype == np.int32


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel-centre linear interpolation taps (edge-clamped): Pillow's upscaling filter."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), src - lo


def _resize_then_crop(image: np.ndarray, size: int) -> np.ndarray:
    """torchvision Resize(size / 0.875) + CenterCrop(size), hand-written in numpy (upscaling only)."""
    h, w, _ = image.shape
    short = round(size / 0.875)
    new_h, new_w = (int(short * h / w), short) if w <= h else (short, int(short * w / h))
    (y0, y1, wy), (x0, x1, wx) = _bilinear_axis(h, new_h), _bilinear_axis(w, new_w)
    img = image.astype(np.float64)
    rows = img[y0] * (1 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    resized = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
    return resized[top : top + size, left : left + size]


def test_eval_batches_are_numpy_resize_and_centre_crop(fake, tmp_path):
    images = fake[1]["validation"][0]
    split = stream.open_split("imagenet2012", "validation", fake[0], cache_dir=tmp_path)
    (x, y), = list(_host(split, len(images), 0, train=False, size=224))
    assert x.shape == (len(images), 224, 224, 3)
    np.testing.assert_array_equal(y, EVAL_LABELS)
    shapes = {np.sign(image.shape[0] - image.shape[1]) for image in images}
    assert shapes >= {-1, 1}  # landscape and portrait: both crop offsets are exercised
    for got, image in zip(x, images):
        np.testing.assert_allclose(got, _resize_then_crop(image, 224), atol=1)


@pytest.mark.parametrize(("short", "long", "want"),
                         [(375, 500, (256, 341)), (45, 60, (256, 341)), (40, 40, (256, 256))])
def test_eval_size_hand_values(short, long, want):
    assert stream.eval_size(short, long, 224) == want


def test_random_crop_box_stays_in_range():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = stream.crop_box(rng, 375, 500)
        assert 0 <= top <= 375 - h and 0 <= left <= 500 - w
        assert 0.08 * 0.97 <= h * w / (375 * 500) <= 1.0
        assert 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03


def test_random_crop_box_fallback_is_a_centre_crop_of_aspect_4_3():
    # 10 x 200: every try needs h >= sqrt(0.08 * 2000 * 3/4) > 10, so all ten fail
    assert stream.crop_box(np.random.default_rng(0), 10, 200) == (0, 93, 10, 13)


def test_train_views_are_flipped_about_half_the_time_and_crops_vary():
    ramp = np.broadcast_to(np.linspace(0, 255, 50).astype(np.uint8)[None, :, None], (40, 50, 3))
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.ascontiguousarray(ramp)).save(buffer, format="PNG")  # lossless
    views = [stream.train_view(buffer.getvalue(), np.random.default_rng(seed), 16) for seed in range(200)]
    assert all(v.shape == (16, 16, 3) and v.dtype == np.uint8 for v in views)
    flipped = [int(v[:, 0].mean()) > int(v[:, -1].mean()) for v in views]  # the ramp rises left to right
    assert 0.4 < np.mean(flipped) < 0.6
    assert len({v.tobytes() for v in views}) > 150
    same_seed = stream.train_view(buffer.getvalue(), np.random.default_rng(3), 16)
    np.testing.assert_array_equal(same_seed, views[3])


# ---------------------------------------------------------------- order


def test_order_is_deterministic_per_seed_and_epoch_and_thread_count(train_split):
    first = list(_host(train_split, 4, 0, True, workers=1))
    again = list(_host(train_split, 4, 0, True, workers=3))
    for (xa, ya), (xb, yb) in zip(first, again, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other = _labels(_host(train_split, 4, 1, True))
    assert not all(np.array_equal(a, b) for a, b in zip(_labels(first), other))


def test_order_is_the_cifar_epoch_order(train_split):
    order_key = stream.epoch_keys(jax.random.key(7), 3)[0]
    want = np.asarray(TRAIN_LABELS)[np.asarray(data.epoch_order(order_key, 0, 12, 4))]
    np.testing.assert_array_equal(np.stack(_labels(_host(train_split, 4, 3, True))), want)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_train_epoch_visits_each_example_at_most_once_dropping_the_remainder(train_split, epoch):
    labels = np.concatenate(_labels(_host(train_split, 5, epoch, True)))
    assert labels.size == 10  # 12 // 5 = 2 full batches, the last 2 examples dropped
    assert len(set(labels.tolist())) == 10 and set(labels.tolist()) <= set(TRAIN_LABELS)


def test_train_epochs_with_an_exact_split_visit_every_example(train_split):
    for epoch in range(2):
        assert sorted(np.concatenate(_labels(_host(train_split, 4, epoch, True))).tolist()) == sorted(TRAIN_LABELS)


def test_eval_covers_every_example_once_in_disk_order_then_pads(fake, tmp_path):
    split = stream.open_split("imagenet2012", "validation", fake[0], cache_dir=tmp_path)
    batches = list(_host(split, 2, 0, False))
    labels = np.concatenate(_labels(batches))
    np.testing.assert_array_equal(labels, EVAL_LABELS + [stream.PADDING_LABEL])
    assert not batches[-1][0][1].any()  # the padding image is zeros


# ---------------------------------------------------------------- imagenet200


def test_imagenet200_keeps_only_the_first_200_classes(fake, tmp_path):
    split = stream.open_split("imagenet200", "train", fake[0], cache_dir=tmp_path)
    assert len(split) == len(SUBSET_TRAIN)
    assert sorted(np.concatenate(_labels(_host(split, 3, 0, True))).tolist()) == SUBSET_TRAIN
    evals = stream.open_split("imagenet200", "validation", fake[0], cache_dir=tmp_path)
    assert np.concatenate(_labels(_host(evals, 3, 0, False))).tolist() == [1, 7, 199]


def test_imagenet200_label_index_is_read_from_the_cache(fake, tmp_path):
    first = stream.open_split("imagenet200", "train", fake[0], cache_dir=tmp_path)
    (cached,) = tmp_path.glob("imagenet2012-5.1.0-train-labels-*.npy")
    np.testing.assert_array_equal(np.load(cached), TRAIN_LABELS)
    np.save(cached, np.zeros(len(TRAIN_LABELS), np.int32))  # a cache that says: all class 0
    second = stream.open_split("imagenet200", "train", fake[0], cache_dir=tmp_path)
    assert len(first) == len(SUBSET_TRAIN) and len(second) == len(TRAIN_LABELS)


def test_an_unwritable_label_cache_is_a_warning(fake, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.warns(UserWarning, match="cannot write the label cache"):
        split = stream.open_split("imagenet200", "train", fake[0], cache_dir=tmp_path / "file" / "cache")
    assert len(split) == len(SUBSET_TRAIN)


# ---------------------------------------------------------------- errors


def test_missing_imagenet_is_a_one_line_error(tmp_path):
    with pytest.raises(data.DataError) as err:
        stream.open_split("imagenet200", "train", tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message and "ImageNet-200" in message and data.ENV_VAR in message
    assert str(tmp_path / "nowhere" / "imagenet2012" / "5.1.0" / "dataset_info.json") in message


def test_unknown_streamed_dataset(tmp_path):
    with pytest.raises(data.DataError, match="'imagenet21k'.*imagenet200, imagenet2012"):
        stream.open_split("imagenet21k", "train", tmp_path)


def test_a_corrupt_image_is_a_one_line_error(train_split):
    class Broken:
        def __len__(self):
            return len(train_split.records)

        def __getitem__(self, i):
            return {**train_split.records[i], "image": b"not a jpeg"}

    broken = dataclasses.replace(train_split, records=Broken())
    with pytest.raises(data.DataError) as err:
        next(_host(broken, 4, 0, True))
    assert "\n" not in str(err.value) and "train split" in str(err.value)


# ---------------------------------------------------------------- bounded queue and shutdown


class Counting:
    """The split's records, counting reads and optionally slowing each one down."""

    def __init__(self, records, delay: float = 0.0):
        self.records, self.delay, self.reads = records, delay, 0
        self.lock = threading.Lock()

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        with self.lock:
            self.reads += 1
        time.sleep(self.delay)
        return self.records[i]


@pytest.mark.parametrize("prefetch", [1, 2])
def test_the_pipeline_never_runs_more_than_prefetch_batches_ahead(train_split, prefetch):
    counting = Counting(train_split.records)
    split = dataclasses.replace(train_split, ids=np.tile(train_split.ids, 3), records=counting)  # 36 examples
    batch, ahead = 3, []
    for step, _ in enumerate(_host(split, batch, 0, True, workers=2, prefetch=prefetch)):
        time.sleep(0.05)  # a slow consumer: the workers run as far ahead as they may
        ahead.append(counting.reads - (step + 1) * batch)
    assert max(ahead) <= prefetch * batch
    assert max(ahead) == prefetch * batch  # and they do run ahead


def test_closing_early_cancels_the_queue_and_joins_the_threads(train_split):
    counting = Counting(train_split.records, delay=0.2)
    split = dataclasses.replace(train_split, ids=np.tile(train_split.ids, 20), records=counting)  # 240
    batches = _host(split, 4, 0, True, workers=2, prefetch=2)
    next(batches)
    assert _stream_threads()
    batches.close()
    assert not _stream_threads()
    assert counting.reads < 3 * 4  # the queued reads of the two batches ahead were cancelled


def test_dropping_the_device_stream_joins_the_threads(train_split):
    batches = stream.stream(train_split, 4, jax.random.key(0), 0, train=True, size=16, workers=2)
    next(batches)
    del batches
    assert not _stream_threads()


# ---------------------------------------------------------------- training on streamed batches


class TinyCNN(nn.Module):
    """conv-BN-ReLU, global mean, dense."""

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(4, (3, 3), strides=2, name="conv")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn")(x))
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


def _setup(size: int):
    model = TinyCNN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    cfg = train.OptimConfig(lr=0.1)
    tx = train.optimizer(cfg, train.lr_schedule(cfg, 100), variables["params"])
    mask = masks.init(variables["params"])
    state = train.fresh_state(variables["params"], variables["batch_stats"], mask, tx)
    steps = train.make_steps(model, tx, stream.IMAGENET_MEAN, stream.IMAGENET_STD, augment=False)
    return model, variables, state, steps


def test_batch_step_equals_the_index_step_without_device_augmentation():
    _, _, state, steps = _setup(8)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 1000, 12), jnp.int32)
    index = np.array([5, 2, 9, 0])
    mesh = parallel.resolve(None)
    copy = jax.tree_util.tree_map(jnp.copy, state)
    by_index, m1 = steps.train(state, images, labels, parallel.shard_batch(index, mesh), jax.random.key(1))
    by_batch, m2 = steps.train_batch(copy, parallel.shard_batch(np.asarray(images)[index], mesh),
                                     parallel.shard_batch(np.asarray(labels)[index], mesh))
    for a, b in zip(jax.tree_util.tree_leaves((by_index, m1)), jax.tree_util.tree_leaves((by_batch, m2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_after_step_sees_each_streamed_step_once_with_its_state():
    _, _, state, steps = _setup(8)
    rng = np.random.default_rng(0)
    mesh = parallel.resolve(None)
    batches = [(parallel.shard_batch(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), mesh),
                parallel.shard_batch(rng.integers(0, 1000, 4).astype(np.int32), mesh)) for _ in range(3)]
    seen = []
    state, _ = train.train_stream_epoch(steps, state, batches, after_step=lambda n, s: seen.append((n, int(s.step))))
    assert seen == [(1, 1), (2, 2), (3, 3)] and int(state.step) == 3


def test_one_streamed_epoch_trains_and_eval_counts_only_the_real_examples(fake, train_split, tmp_path):
    _, _, state, steps = _setup(16)
    batches = stream.stream(train_split, 4, jax.random.key(0), 0, train=True, size=16, workers=2)
    state, fit = train.train_stream_epoch(steps, state, batches)
    assert int(state.step) == 3 and np.isfinite(fit["train_loss"]) and fit["nonfinite_steps"] == []
    # A head that always predicts class 199: exactly one of the 5 validation examples is right.
    bias = state.params["head"]["bias"].at[199].set(1e4)
    state = state.replace(params={**state.params, "head": {**state.params["head"], "bias": bias}})
    split = stream.open_split("imagenet2012", "validation", fake[0], cache_dir=tmp_path)
    evals = stream.stream(split, 2, jax.random.key(0), 0, train=False, size=16)  # 3 batches, 1 padding row
    assert train.stream_accuracy(steps, state, evals, len(split)) == pytest.approx(1 / 5)


# ---------------------------------------------------------------- several devices and processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("processes", [1, 2])
def test_each_process_reads_its_rows_of_the_global_batch(fake, processes):
    """8 devices as 1 x 8 or 2 x 4: every shard equals the same rows read by a single reader."""
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")])
    port = _free_port()
    workers = [subprocess.Popen([sys.executable, str(repo / "tests" / "stream_scenario.py"), str(fake[0]),
                                 str(processes), str(pid), str(port)], cwd=repo, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for pid in range(processes)]
    logs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * processes, "\n".join(log[-3000:] for log in logs)
