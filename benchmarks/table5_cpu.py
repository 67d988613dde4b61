"""Wall time per cycle of Table 5's CPU scale (ResNet-50, 64 px, imagenet200) on fake ImageNet.

    python -m benchmarks.table5_cpu [--validation 10000] [--method lth]

Prints numbers; it is not a test. Writes a fake imagenet2012 with the tests' writer to a
temporary data dir: two training images of each of the first 200 classes (the CPU scale's
class-balanced ``train_size`` of 400 takes them all) and ``--validation`` images spread over
those classes (the real imagenet200 validation split has 10,000), all random-noise JPEGs with
sides between 375 and 500 (ImageNet's typical size; noise decodes slower than photos). Then
runs the X+AP arm of one base method at the CPU scale with ``--cycles 1`` (cycles 0 and 1)
and prints each cycle's wall seconds (training, test accuracy and DNR after every epoch,
checkpoints; the first cycle includes compilation).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

from ap_jax import cycle, records, stream
from ap_jax.config import positive_int
from experiments import paper_table, table5

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_tfds import write_fake_imagenet  # noqa: E402  (the tests' on-disk writer)

SIDES = (375, 500)
CLASSES = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation", type=positive_int, default=10_000)
    parser.add_argument("--method", choices=paper_table.PAPER_METHODS, default="lth")
    args = parser.parse_args()
    base = dataclasses.replace(table5.SPEC.config("cpu"), cycles=1)
    cfg = paper_table.arm_configs(base, args.method, 0, table5.SPEC.rewind_step["cpu"])["X+AP"]
    with tempfile.TemporaryDirectory() as root:
        rng = np.random.default_rng(0)
        labels = {"train": rng.permutation(np.repeat(np.arange(CLASSES), 2)).tolist(),
                  "validation": rng.permutation(np.arange(args.validation) % CLASSES).tolist()}
        write_fake_imagenet(Path(root) / "tfds", labels, sizes=SIDES)
        dataset = stream.load(cfg.dataset, Path(root) / "tfds", train_size=cfg.train_size, seed=0, cache_dir=root)
        rows = cycle.run(cfg, dataset, Path(root) / "run")
        seconds = paper_table.cycle_wall_seconds(rows)
        print(f"{cfg.model} at {cfg.image_size} px on fake {cfg.dataset}: {dataset.num_train} training, "
              f"{len(dataset.test)} validation images, {cfg.epochs} epoch(s) per cycle, batch {cfg.batch_size}")
        for c, s in enumerate(seconds):
            print(f"cycle {c}: {s:.0f} s")
        print(f"final test accuracy {records.cycle_rows(rows)[-1]['test_accuracy']:.4f} (fake data: chance)")


if __name__ == "__main__":
    main()
