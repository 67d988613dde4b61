"""Tests for ap_jax.data on a tiny fake TFDS dataset; a smoke check on the real one if present."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fake_tfds import write_fake_cifar

from ap_jax import data

TRAIN_PER_CLASS = 6
TEST_PER_CLASS = 3


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tfds")
    splits = write_fake_cifar(root, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS)
    return root, splits


def _sorted_by_pixels(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = sorted(range(len(images)), key=lambda i: images[i].tobytes())
    return images[order], labels[order]


def _assert_same_examples(
    got_x: jax.Array, got_y: jax.Array, want_x: np.ndarray, want_y: np.ndarray
) -> None:
    gx, gy = _sorted_by_pixels(np.asarray(got_x), np.asarray(got_y))
    wx, wy = _sorted_by_pixels(want_x, want_y)
    np.testing.assert_array_equal(gx, wx)
    np.testing.assert_array_equal(gy, wy)


def _assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message


# ---------------------------------------------------------------- loading


def test_load_returns_exactly_what_was_written(fake):
    root, splits = fake
    ds = data.load("cifar10", data_dir=root)
    n_train, n_test = 10 * TRAIN_PER_CLASS, 10 * TEST_PER_CLASS
    assert ds.x_train.shape == (n_train, 32, 32, 3) and ds.x_train.dtype == jnp.uint8
    assert ds.x_test.shape == (n_test, 32, 32, 3) and ds.x_test.dtype == jnp.uint8
    assert ds.y_train.shape == (n_train,) and ds.y_train.dtype == jnp.int32
    assert ds.y_test.shape == (n_test,) and ds.y_test.dtype == jnp.int32
    assert isinstance(ds.x_train, jax.Array)
    assert ds.x_train.devices() == {jax.devices()[0]}
    assert (ds.name, ds.num_classes) == ("cifar10", 10)
    assert ds.mean == data.DATASETS["cifar10"].mean and ds.std == data.DATASETS["cifar10"].std
    _assert_same_examples(ds.x_train, ds.y_train, *splits["train"][:2])
    _assert_same_examples(ds.x_test, ds.y_test, *splits["test"][:2])


def test_load_split_keeps_disk_order(fake):
    root, splits = fake
    x, y = data.load_split("cifar10", "test", root)
    np.testing.assert_array_equal(x, splits["test"][0])
    np.testing.assert_array_equal(y, splits["test"][1])


def test_load_cifar100_fake(tmp_path):
    splits = write_fake_cifar(
        tmp_path, name="cifar100", num_classes=100, train_per_class=2, test_per_class=1
    )
    ds = data.load("cifar100", data_dir=tmp_path)
    assert (ds.name, ds.num_classes) == ("cifar100", 100)
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)
    assert ds.x_train.shape == (200, 32, 32, 3) and ds.x_test.shape == (100, 32, 32, 3)
    _assert_same_examples(ds.x_train, ds.y_train, *splits["train"][:2])
    _assert_same_examples(ds.x_test, ds.y_test, *splits["test"][:2])
    np.testing.assert_array_equal(np.bincount(np.asarray(ds.y_test)), np.ones(100))


def _feature_kinds(features) -> dict[str, tuple[str, int | None]]:
    return {k: (type(v).__name__, getattr(v, "num_classes", None)) for k, v in features.items()}


def test_fake_cifar100_has_the_real_tfds_features(tmp_path):
    import tensorflow_datasets as tfds

    write_fake_cifar(tmp_path, name="cifar100", num_classes=100, train_per_class=1, test_per_class=1)
    fake = tfds.data_source("cifar100:3.0.2", split="test", data_dir=tmp_path, download=False)
    real = tfds.builder_cls("cifar100")(data_dir=tmp_path / "builder").info.features
    assert _feature_kinds(fake.dataset_info.features) == _feature_kinds(real)
    assert {"label", "coarse_label"} <= set(real)


def test_cifar100_loads_the_fine_label_not_the_coarse_one(tmp_path):
    import tensorflow_datasets as tfds

    write_fake_cifar(tmp_path, name="cifar100", num_classes=100, train_per_class=1, test_per_class=1)
    records = tfds.data_source("cifar100:3.0.2", split="test", data_dir=tmp_path, download=False)
    fine = [r["label"] for r in records]
    coarse = [r["coarse_label"] for r in records]
    assert fine != coarse and max(coarse) == 19
    _, labels = data.load_split("cifar100", "test", tmp_path)
    np.testing.assert_array_equal(labels, fine)


def test_cifar100_class_balanced_subset(tmp_path):
    write_fake_cifar(tmp_path, name="cifar100", num_classes=100, train_per_class=3, test_per_class=1)
    ds = data.load("cifar100", data_dir=tmp_path, train_size=150, seed=1)
    np.testing.assert_array_equal(np.bincount(np.asarray(ds.y_train), minlength=100), [2] * 50 + [1] * 50)
    x_full, y_full = data.load_split("cifar100", "train", tmp_path)
    keep = data.balanced_subset(y_full, 150, 100, seed=1)
    np.testing.assert_array_equal(np.asarray(ds.x_train), x_full[keep])


def test_missing_cifar100(tmp_path):
    write_fake_cifar(tmp_path)  # CIFAR-10 is there, CIFAR-100 is not
    with pytest.raises(data.DataError) as err:
        data.load("cifar100", data_dir=tmp_path)
    _assert_one_line(err, "CIFAR-100 not found", str(tmp_path / "cifar100" / "3.0.2" / "dataset_info.json"))


# ---------------------------------------------------------------- class-balanced subset


@pytest.mark.parametrize(
    ("train_size", "expected"),
    [(20, [2] * 10), (25, [3] * 5 + [2] * 5), (10, [1] * 10), (60, [6] * 10)],
)
def test_subset_is_class_balanced(fake, train_size, expected):
    root, splits = fake
    ds = data.load("cifar10", data_dir=root, train_size=train_size, seed=3)
    np.testing.assert_array_equal(np.bincount(np.asarray(ds.y_train), minlength=10), expected)
    assert ds.x_test.shape[0] == 10 * TEST_PER_CLASS  # test split never subset
    # The subset is the written examples at the chosen indices, in original order.
    x_full, y_full = data.load_split("cifar10", "train", root)
    keep = data.balanced_subset(y_full, train_size, 10, seed=3)
    np.testing.assert_array_equal(np.asarray(ds.x_train), x_full[keep])
    np.testing.assert_array_equal(np.asarray(ds.y_train), y_full[keep])


def test_balanced_subset_indices_sorted_unique_and_seeded():
    labels = np.tile(np.arange(10), 50)
    a = data.balanced_subset(labels, 37, 10, seed=0)
    assert a.size == 37 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(np.bincount(labels[a]), [4] * 7 + [3] * 3)
    np.testing.assert_array_equal(a, data.balanced_subset(labels, 37, 10, seed=0))
    assert not np.array_equal(a, data.balanced_subset(labels, 37, 10, seed=1))


@pytest.mark.parametrize("train_size", [61, 9, 0])
def test_subset_size_out_of_range(fake, train_size):
    root, _ = fake
    with pytest.raises(data.DataError) as err:
        data.load("cifar10", data_dir=root, train_size=train_size)
    _assert_one_line(err, f"train_size={train_size}")


def test_subset_class_with_too_few_examples():
    labels = np.array([0, 0, 0, 0, 1])
    with pytest.raises(data.DataError) as err:
        data.balanced_subset(labels, 4, 2, seed=0)
    _assert_one_line(err, "train_size=4", "class 1")


# ---------------------------------------------------------------- errors and data dir


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DataError) as err:
        data.load("cifar10", data_dir=missing)
    searched = str(missing / "cifar10" / "3.0.2" / "dataset_info.json")
    _assert_one_line(err, searched, data.ENV_VAR, "--data-dir", "--download")


def test_unknown_dataset(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.load("mnist", data_dir=tmp_path)
    _assert_one_line(err, "mnist", "cifar10", "cifar100")


def _zero_middle(blob: bytes) -> bytes:
    mid = len(blob) // 2
    return blob[:mid] + bytes(64) + blob[mid + 64 :]


@pytest.mark.parametrize(
    "damage",
    [lambda b: b"", lambda b: b[:50_000], lambda b: b[: len(b) // 2], _zero_middle],
    ids=["empty", "truncated_50k", "truncated_half", "zeroed_middle"],
)
def test_corrupt_train_file(fake, tmp_path, damage):
    root, _ = fake
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    path = copy / "cifar10" / "3.0.2" / "cifar10-train.array_record-00000-of-00001"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(data.DataError) as err:
        data.load("cifar10", data_dir=copy)
    _assert_one_line(err, str(copy / "cifar10" / "3.0.2"), "train")
    assert err.value.__cause__ is not None


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    """flag, then $AP_JAX_DATA_DIR, then shared/data beside the repo when it exists, then TFDS's default."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    repo_root = Path(__file__).resolve().parents[1]
    assert data.BESIDE_REPO == repo_root.parent / "shared" / "data"
    monkeypatch.setattr(data, "BESIDE_REPO", tmp_path)
    assert data.resolve_data_dir(None) == tmp_path
    monkeypatch.setattr(data, "BESIDE_REPO", tmp_path / "absent")
    monkeypatch.setenv("TFDS_DATA_DIR", "/tfds/default")
    assert data.resolve_data_dir(None) == Path("/tfds/default")
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert data.resolve_data_dir(None) == Path.home() / "tensorflow_datasets"
    monkeypatch.setenv(data.ENV_VAR, "/from/env")
    assert data.resolve_data_dir(None) == Path("/from/env")
    assert data.resolve_data_dir("/from/flag") == Path("/from/flag")


# ---------------------------------------------------------------- epoch order


def test_epoch_order_is_a_partial_permutation():
    key = jax.random.key(0)
    order = data.epoch_order(key, 0, 103, 10)
    assert order.shape == (10, 10) and order.dtype == jnp.int32
    flat = np.asarray(order).ravel()
    assert len(set(flat.tolist())) == 100
    assert flat.min() >= 0 and flat.max() < 103


def test_epoch_order_is_deterministic_per_epoch_and_jittable():
    key = jax.random.key(1)
    jitted = jax.jit(data.epoch_order, static_argnums=(2, 3))
    e0, e1 = jitted(key, 0, 64, 8), jitted(key, 1, 64, 8)
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e0, data.epoch_order(key, 0, 64, 8))
    np.testing.assert_array_equal(e1, jitted(key, jnp.int32(1), 64, 8))


def test_epoch_order_batch_larger_than_data():
    with pytest.raises(ValueError, match="batch_size=11.*num_examples=10"):
        data.epoch_order(jax.random.key(0), 0, 10, 11)


# ---------------------------------------------------------------- augmentation and normalisation


def _reference_views(image: np.ndarray) -> dict[bytes, tuple[int, int, bool]]:
    """Every crop (81 offsets) of the zero-padded image, flipped or not, keyed by pixel bytes."""
    pad = data.PAD
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    views = {}
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy : dy + 32, dx : dx + 32]
            views[crop.tobytes()] = (dy, dx, False)
            views[crop[:, ::-1].tobytes()] = (dy, dx, True)
    return views


def test_augment_outputs_are_padded_crops_maybe_flipped():
    images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    out = np.asarray(jax.jit(data.augment)(jax.random.key(0), jnp.asarray(images)))
    assert out.shape == images.shape and out.dtype == np.uint8
    for image, result in zip(images, out):
        assert result.tobytes() in _reference_views(image)


def test_augment_draws_offsets_and_flips_per_example():
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    batch = jnp.asarray(np.broadcast_to(image, (256, 32, 32, 3)))
    views = _reference_views(image)
    draws = [views[o.tobytes()] for o in np.asarray(data.augment(jax.random.key(2), batch))]
    flips = [flip for _, _, flip in draws]
    offsets = {(dy, dx) for dy, dx, _ in draws}
    assert 0.35 < np.mean(flips) < 0.65
    assert len(offsets) > 50  # of 81; 256 uniform draws hit ~78 on average
    assert {dy for dy, _ in offsets} == set(range(9)) and {dx for _, dx in offsets} == set(range(9))
    other_key = data.augment(jax.random.key(3), batch)
    assert not np.array_equal(other_key, data.augment(jax.random.key(2), batch))


def test_normalize_matches_numpy():
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    mean, std = data.DATASETS["cifar10"].mean, data.DATASETS["cifar10"].std
    got = data.normalize(jnp.asarray(images), mean, std)
    assert got.dtype == jnp.float32
    want = (images / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_batches_cover_everything_in_order():
    x, y = jnp.arange(23 * 2).reshape(23, 2), jnp.arange(23)
    parts = list(data.batches(x, y, 10))
    assert [len(b) for b, _ in parts] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([b for _, b in parts]), np.arange(23))
    np.testing.assert_array_equal(np.concatenate([b for b, _ in parts]), np.asarray(x))


# ---------------------------------------------------------------- the real data, when present


def test_real_cifar10_test_split():
    root = data.resolve_data_dir(None)
    try:
        data.check_data_dir("cifar10", root)
    except data.DataError:
        pytest.skip(f"no real CIFAR-10 under {root}")
    x, y = data.load_split("cifar10", "test", root)
    assert x.shape == (10_000, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)
