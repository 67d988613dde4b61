"""Table 5 and streamed data in the pruning driver, on a tiny fake imagenet2012 in the tfds format.

The tiny run swaps ResNet-50 for the MLP at 16 px (the driver is the same for every model);
resume is checked as in test_resume.py: Ctrl-C at chosen train steps, rerun, and compare with an
uninterrupted run (rows equal apart from wall times, every cycle's mask and weights bitwise).
"""

import dataclasses
import os
import signal

import jax
import numpy as np
import pytest
from fake_tfds import write_fake_imagenet
from test_tables import check_table_matches_runs

from ap_jax import checkpoint, config, cycle, feeds, models, parallel, records, stream, train
from experiments import table5

# The first 200 classes twice each, and 8 examples of other classes that imagenet200 leaves out.
OTHER = [200, 250, 420, 999, 998, 650, 201, 300]
TRAIN_LABELS = np.random.default_rng(1).permutation([*range(200), *range(200), *OTHER]).tolist()
EVAL_LABELS = [3, 250, 199, 0, 999, 42, 150, 7, 201, 60, 61, 62]  # 10 below 200
TINY = ["--scale", "cpu", "--model", "mlp", "--image-size", "16", "--train-size", "200", "--batch-size", "40",
        "--epochs", "2", "--cycles", "1", "--dnr-size", "12", "--eval-batch-size", "4",
        "--methods", "lth_rewind", "--rewind-step", "2", "--seeds", "0"]
ARMS = ("X", "X_AP")


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    return root, write_fake_imagenet(root, {"train": TRAIN_LABELS, "validation": EVAL_LABELS})


@pytest.fixture(autouse=True)
def label_cache(tmp_path, monkeypatch):
    """Each test keeps the split label indexes in its own cache dir, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_full_scale_is_the_renda_recipe():
    # Renda et al. 2020: 90 epochs of ImageNet-1k (1,281,167 images) at batch 1024, LR 0.4 after a
    # 5-epoch linear warm-up, x0.1 at epochs 30, 60 and 80.
    cfg = table5.SPEC.full
    per_epoch = 1251
    schedule = train.lr_schedule(cfg.optim(), cfg.epochs * per_epoch)
    at = lambda epoch, offset=0: float(schedule(epoch * per_epoch + offset))
    assert cfg.model == "resnet50" and cfg.batch_size == 1024 and cfg.epochs == 90 and cfg.image_size == 224
    assert at(0) == 0.0 and at(5) == pytest.approx(0.4) and at(2.5) == pytest.approx(0.2)
    assert [at(e, -1) for e in (30, 60, 80)] == pytest.approx([0.4, 0.04, 0.004])
    assert [at(e) for e in (30, 60, 80)] == pytest.approx([0.04, 0.004, 0.0004])


def test_resnet50_builds_for_streamed_classes():
    model = cycle.build_model(table5.SPEC.config("cpu"), 200)
    assert isinstance(model, models.ResNet)
    image = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)
    assert shapes["params"]["head"]["kernel"].shape == (2048, 200)


def test_imagenet200_subset_is_class_balanced_and_seeded(fake):
    ds = feeds.load("imagenet200", fake[0], train_size=200, seed=0)
    labels = np.asarray(TRAIN_LABELS)[ds.train.ids]
    assert ds.num_train == 200 and sorted(labels.tolist()) == list(range(200))  # one of each class
    assert np.all(np.diff(ds.train.ids) > 0)
    again, other = (feeds.load("imagenet200", fake[0], train_size=200, seed=s) for s in (0, 1))
    assert np.array_equal(again.train.ids, ds.train.ids) and not np.array_equal(other.train.ids, ds.train.ids)
    assert len(ds.test) == sum(y < 200 for y in EVAL_LABELS) and ds.num_classes == 200


def test_streamed_dnr_inputs_are_the_eval_views_of_the_first_training_examples(fake):
    ds = feeds.load("imagenet200", fake[0], train_size=200, seed=0)
    cfg = config.RunConfig(dataset="imagenet200", image_size=16, dnr_size=5, train_size=200)
    feed = feeds.make_feed(ds, cfg, parallel.make_mesh())
    jpegs = fake[1]["train"][2]
    want = np.stack([stream.eval_view(jpegs[i], 16) for i in ds.train.ids[:5]])
    assert feed.image_shape == (16, 16, 3) and not feed.augment_on_device
    np.testing.assert_array_equal(np.asarray(feed.dnr_inputs), want)


def test_missing_imagenet_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        table5.main([*TINY, "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert "nowhere/imagenet2012/5.1.0/dataset_info.json" in err.strip().splitlines()[-1]


def run_table(fake, out, stop_at=None):
    """Table 5's CLI on the fake data; with ``stop_at``, Ctrl-C before that streamed train step."""
    make_steps, calls = train.make_steps, []

    def stopping(*args, **kwargs):
        steps = make_steps(*args, **kwargs)

        def train_batch(*a):
            calls.append(1)
            if len(calls) == stop_at:
                os.kill(os.getpid(), signal.SIGINT)
            return steps.train_batch(*a)
        return dataclasses.replace(steps, train_batch=train_batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "make_steps", stopping)
        return table5.main([*TINY, "--data-dir", str(fake[0]), "--out", str(out)])


def rows_of(root, arm):
    rows = records.read_rows(root / "lth_rewind" / arm / "seed_0" / "metrics.jsonl")
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def test_tiny_table5_runs_and_resumes_bitwise(fake, tmp_path):
    # 200 examples at batch 40: 5 steps per epoch, 2 epochs per cycle, cycles 0 and 1, arm X first.
    assert run_table(fake, tmp_path / "ref") == 0
    (ref,) = (tmp_path / "ref").iterdir()
    check_table_matches_runs(ref, "lth_rewind", [0.8])
    rows = rows_of(ref, "X")
    kinds = ["epoch", "epoch", "cycle", "prune", "epoch", "epoch", "cycle"]
    assert [r["kind"] for r in rows] == kinds and rows[-1]["step"] == 10
    assert all(0 <= r["test_accuracy"] <= 1 and 0 <= r["dnr"] <= 1 for r in rows if r["kind"] != "prune")

    out = tmp_path / "resumed"
    root = out / ref.name
    for stop_at, where in [(8, "X cycle 0 epoch 1, step 3"), (11, "X cycle 1 epoch 1, step 1")]:
        assert run_table(fake, out, stop_at) == 130, where
        for arm in ARMS:  # what is on disk is a prefix of the uninterrupted run's rows
            done = rows_of(root, arm) if (root / "lth_rewind" / arm).exists() else []
            assert done == rows_of(ref, arm)[: len(done)], where
    assert len(rows_of(root, "X")) == 5  # cycle 0's rows, the prune and cycle 1's first epoch survived
    assert run_table(fake, out) == 0
    for arm in ARMS:
        assert rows_of(root, arm) == rows_of(ref, arm), arm
        for c in (0, 1):
            got = checkpoint.read_cycle(root / "lth_rewind" / arm / "seed_0", c)
            want = checkpoint.read_cycle(ref / "lth_rewind" / arm / "seed_0", c)
            for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
                assert a.dtype == b.dtype and np.array_equal(a, b), f"{arm} cycle {c} {path}"
    check_table_matches_runs(root, "lth_rewind", [0.8])
