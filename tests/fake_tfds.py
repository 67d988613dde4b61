"""Write a tiny fake CIFAR-like TFDS dataset in the real on-disk format, without TensorFlow.

The result looks like ``shared/data/cifar10/3.0.2``: ``{name}-{split}.array_record-00000-of-00001``
files holding serialized ``tf.Example`` protos (features ``image``: (32, 32, 3) uint8 PNG,
``label``: ClassLabel, ``id``: Text), plus ``dataset_info.json``, ``features.json`` and
``label.labels.txt``. ``tfds.data_source(f"{name}:{version}", data_dir=..., download=False)``
reads it back exactly like the real dataset.

Why not ``tfds.dataset_builders.store_as_tfds_dataset``: in tfds 4.9.10 any builder class that
lives in a package module evaluates ``importlib_resources.abc.Traversable`` in
``DatasetBuilder.code_path``, and ``importlib_resources`` is only a declared dependency for
Python < 3.9, so it fails with ``ModuleNotFoundError``. Numpy images are also PNG-encoded
through TensorFlow there; passing a ``PIL.Image`` makes tfds encode with Pillow instead. So
this writer uses the lower-level public pieces: ``FeaturesDict.encode_example``,
``tfds.core.ExampleSerializer``, the ArrayRecord file adapter and
``tfds.folder_dataset.write_metadata``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"

Split = tuple[np.ndarray, np.ndarray, list[str]]


def _label_names(num_classes: int) -> list[str]:
    if num_classes == len(CIFAR10_LABELS):
        return list(CIFAR10_LABELS)
    return [f"class_{c:03d}" for c in range(num_classes)]


def _features(names: list[str]) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "id": tfds.features.Text(),
            "image": tfds.features.Image(shape=(32, 32, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=names),
        }
    )


def _make_split(
    rng: np.random.Generator, split: str, names: list[str], per_class: int, colours: np.ndarray
) -> Split:
    """Images = class colour + noise, in a seeded shuffled order (like tfds's hashed order).

    ids follow the real ``<split>_<class name>_<NNNN>`` form.
    """
    labels = np.repeat(np.arange(len(names), dtype=np.int64), per_class)
    noise = rng.normal(0.0, 20.0, size=(labels.size, 32, 32, 3))
    images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    ids = [f"{split}_{c}_{i:04d}" for c in names for i in range(per_class)]
    order = rng.permutation(labels.size)
    return images[order], labels[order], [ids[i] for i in order]


def _write_split(
    ds_dir: Path, name: str, split: str, data: Split, features: tfds.features.FeaturesDict
) -> tfds.core.SplitInfo:
    template = tfds.core.ShardedFileTemplate(
        data_dir=ds_dir,
        template=FILENAME_TEMPLATE,
        dataset_name=name,
        split=split,
        filetype_suffix=file_adapters.FileFormat.ARRAY_RECORD.file_suffix,
    )
    serializer = tfds.core.ExampleSerializer(features.get_serialized_info())
    images, labels, ids = data
    records = [
        serializer.serialize_example(
            features.encode_example(
                {"id": id_, "image": PIL.Image.fromarray(image), "label": int(label)}
            )
        )
        for image, label, id_ in zip(images, labels, ids)
    ]
    adapter = file_adapters.ADAPTER_FOR_FORMAT[file_adapters.FileFormat.ARRAY_RECORD]
    path = template.sharded_filepath(shard_index=0, num_shards=1)
    adapter.write_examples(path, enumerate(records))
    return tfds.core.SplitInfo(
        name=split,
        shard_lengths=[len(records)],
        num_bytes=sum(len(r) for r in records),
        filename_template=template,
    )


def write_fake_cifar(
    data_dir: Path,
    name: str = "cifar10",
    version: str = "3.0.2",
    num_classes: int = 10,
    train_per_class: int = 4,
    test_per_class: int = 2,
    seed: int = 0,
) -> dict[str, Split]:
    """Write ``<data_dir>/<name>/<version>/`` and return ``{split: (images, labels, ids)}``.

    ``images`` is uint8 (N, 32, 32, 3), ``labels`` int64 (N,), both in on-disk order.
    """
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40.0, 215.0, size=(num_classes, 3))
    names = _label_names(num_classes)
    features = _features(names)
    ds_dir = Path(data_dir) / name / version
    ds_dir.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": _make_split(rng, "train", names, train_per_class, colours),
        "test": _make_split(rng, "test", names, test_per_class, colours),
    }
    split_infos = [_write_split(ds_dir, name, s, data, features) for s, data in splits.items()]
    tfds.folder_dataset.write_metadata(
        data_dir=ds_dir,
        features=features,
        split_infos=split_infos,
        version=version,
        filename_template=FILENAME_TEMPLATE,
        check_data=False,  # the check calls .as_dataset(), which ArrayRecord does not support
        description=f"Tiny fake {name} for tests.",
        supervised_keys=("image", "label"),
    )
    return splits
