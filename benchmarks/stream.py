"""Host throughput of the streamed ImageNet pipeline (``ap_jax.stream``) on ImageNet-sized JPEGs.

    python -m benchmarks.stream [--images 256] [--batch-size 64] [--workers 1 2 4]

Prints numbers; it is not a test. Writes a fake imagenet2012 split of ``--images`` random-noise
JPEGs with sides between 375 and 500 (ImageNet's typical size; noise compresses badly, so the
files are larger and slower to decode than photos: a conservative number) to a temporary data
dir with the tests' writer, then times one train epoch (random resized crop + flip to 224) and one eval
epoch (resize 256 + centre crop 224) of ``stream.host_batches`` for each worker count: images
per second after the first batch, so the pool's start is not counted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from ap_jax import stream
from ap_jax.config import positive_int

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_tfds import write_fake_imagenet  # noqa: E402  (the tests' on-disk writer)

SIDES = (375, 500)


def images_per_second(split: stream.Split, batch_size: int, train: bool, workers: int) -> float:
    """Throughput of one epoch of host batches, timed from the first batch to the last."""
    key = jax.random.key(0)
    plan = stream.epoch_plan(len(split), batch_size, key, 0, train)
    batches = stream.host_batches(split, plan, train=train, augment_key=stream.epoch_keys(key, 0)[1],
                                  workers=workers)
    next(batches)
    start = time.perf_counter()
    count = sum(x.shape[0] for x, _ in batches)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=positive_int, default=256)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        labels = np.random.default_rng(0).integers(0, 1000, args.images).tolist()
        write_fake_imagenet(Path(root), {"train": labels}, sizes=SIDES)
        split = stream.open_split("imagenet2012", "train", root, cache_dir=root)
        for workers in args.workers:
            train = images_per_second(split, args.batch_size, True, workers)
            evals = images_per_second(split, args.batch_size, False, workers)
            print(f"workers={workers}: train {train:.0f} img/s, eval {evals:.0f} img/s")


if __name__ == "__main__":
    main()
