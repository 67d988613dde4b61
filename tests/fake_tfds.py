"""Write a tiny fake CIFAR-like TFDS dataset in the real on-disk format, without TensorFlow.

The result looks like a prepared TFDS data dir's ``cifar10/3.0.2``:
``{name}-{split}.array_record-00000-of-00001`` files holding serialized ``tf.Example`` protos
(features ``image``: (32, 32, 3) uint8 PNG, ``label``: ClassLabel, ``id``: Text; cifar100 also
``coarse_label``: ClassLabel(20), as tfds's ``Cifar100`` builder), plus ``dataset_info.json``,
``features.json`` and the label name files.
``tfds.data_source(f"{name}:{version}", data_dir=..., download=False)`` reads it back exactly
like the real dataset. :func:`write_fake_imagenet` writes ``imagenet2012/5.1.0`` the same way
(features ``image``: JPEG of any size, ``label``: ClassLabel with tfds's 1000 ImageNet
synsets, ``file_name``: Text).

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

import io
from pathlib import Path

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_COARSE = 20
FILENAME_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"

Split = tuple[np.ndarray, np.ndarray, list[str]]


def _label_names(num_classes: int) -> list[str]:
    if num_classes == len(CIFAR10_LABELS):
        return list(CIFAR10_LABELS)
    return [f"class_{c:03d}" for c in range(num_classes)]


def _features(names: list[str], coarse: bool) -> tfds.features.FeaturesDict:
    coarse_label = {"coarse_label": tfds.features.ClassLabel(num_classes=CIFAR100_COARSE)} if coarse else {}
    return tfds.features.FeaturesDict(
        {
            "id": tfds.features.Text(),
            "image": tfds.features.Image(shape=(32, 32, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=names),
            **coarse_label,
        }
    )


def _cifar_example(image: np.ndarray, label: int, id_: str, coarse: bool) -> dict:
    """A record; the fake coarse label (superclass) is ``label // 5``, not CIFAR-100's real map."""
    example = {"id": id_, "image": PIL.Image.fromarray(image), "label": label}
    return {**example, "coarse_label": label // 5} if coarse else example


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
    images, labels, ids = data
    coarse = "coarse_label" in features
    examples = [_cifar_example(x, int(y), id_, coarse) for x, y, id_ in zip(images, labels, ids)]
    return _write_records(ds_dir, name, split, features, examples)


def _write_records(
    ds_dir: Path, name: str, split: str, features: tfds.features.FeaturesDict, examples: list[dict]
) -> tfds.core.SplitInfo:
    """Encode, serialize and write ``examples`` as one ArrayRecord shard of ``split``."""
    template = tfds.core.ShardedFileTemplate(
        data_dir=ds_dir,
        template=FILENAME_TEMPLATE,
        dataset_name=name,
        split=split,
        filetype_suffix=file_adapters.FileFormat.ARRAY_RECORD.file_suffix,
    )
    serializer = tfds.core.ExampleSerializer(features.get_serialized_info())
    records = [serializer.serialize_example(features.encode_example(e)) for e in examples]
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
    features = _features(names, coarse=name == "cifar100")
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


ImageSplit = tuple[list[np.ndarray], np.ndarray, list[bytes]]


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_fake_imagenet(
    data_dir: Path, labels: dict[str, list[int]], sizes: tuple[int, int] = (30, 60), seed: int = 0
) -> dict[str, ImageSplit]:
    """Write ``<data_dir>/imagenet2012/5.1.0/`` with one example per entry of ``labels[split]``.

    Images are random noise JPEGs with two different sides drawn from ``sizes`` (inclusive),
    landscape for even and portrait for odd positions. Returns
    ``{split: (images, labels, jpegs)}`` in on-disk order; ``images`` are the decoded JPEGs.
    """
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

    rng = np.random.default_rng(seed)
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names_file=imagenet_common.label_names_file()),
            "file_name": tfds.features.Text(),
        }
    )
    synset = features["label"].int2str
    ds_dir = Path(data_dir) / "imagenet2012" / "5.1.0"
    ds_dir.mkdir(parents=True, exist_ok=True)
    written, split_infos = {}, []
    for split, split_labels in labels.items():
        sides = [np.sort(rng.choice(np.arange(sizes[0], sizes[1] + 1), 2, replace=False)) for _ in split_labels]
        shapes = [pair if i % 2 else pair[::-1] for i, pair in enumerate(sides)]
        jpegs = [_jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
        examples = [
            {"image": io.BytesIO(jpeg), "label": int(y), "file_name": f"{synset(y)}_{i}.JPEG"}
            for i, (jpeg, y) in enumerate(zip(jpegs, split_labels))
        ]
        split_infos.append(_write_records(ds_dir, "imagenet2012", split, features, examples))
        images = [np.asarray(PIL.Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
        written[split] = (images, np.asarray(split_labels, np.int64), jpegs)
    tfds.folder_dataset.write_metadata(
        data_dir=ds_dir,
        features=features,
        split_infos=split_infos,
        version="5.1.0",
        filename_template=FILENAME_TEMPLATE,
        check_data=False,
        description="Tiny fake imagenet2012 for tests.",
        supervised_keys=("image", "label"),
    )
    return written
