"""Fetching CIFAR-10/100 on a fresh machine: tfds downloads and prepares them as ArrayRecord.

``--download`` (every experiment CLI) or :func:`prepare` runs tfds's own builder into the data dir
that ``data.resolve_data_dir`` picks, in the ArrayRecord file format that ``data.load`` reads.
Reading needs no TensorFlow, but preparing does: tfds's CIFAR builder reads the archive with
``tf.io.gfile`` and encodes every image as PNG with TensorFlow, and tfds 4.9 needs
``importlib_resources`` to locate its builder code (a dependency it declares for Python < 3.9
only). Both come with the ``download`` extra: ``pip install -e ".[download]"``. ImageNet cannot be
fetched this way (its files need a manual download; see ``ap_jax.stream``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from ap_jax import data

NEEDS = ("tensorflow", "importlib_resources")


def add_args(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--download``, with the data dir's resolution order in the help."""
    parser.add_argument("--data-dir", default=None,
                        help=f"TFDS data dir (default: ${data.ENV_VAR}, else shared/data beside the repo "
                             "when present, else TFDS's default data dir)")
    parser.add_argument("--download", action="store_true",
                        help="fetch and prepare CIFAR-10/100 with tfds into the data dir first, where "
                             "the network allows (needs: pip install -e \".[download]\")")


def missing_packages() -> list[str]:
    """The packages tfds needs to prepare CIFAR that are not installed."""
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def prepare(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download and prepare dataset ``name`` (``cifar10`` or ``cifar100``) unless it is there.

    Returns its version directory; raises a one-line ``data.DataError`` when a package is
    missing or the download or preparation fails.
    """
    entry = data.spec(name)
    root = data.resolve_data_dir(data_dir)
    if (root / name / entry.version / "dataset_info.json").is_file():
        return root / name / entry.version
    if missing := missing_packages():
        raise data.DataError(f"--download needs {' and '.join(missing)} to prepare {entry.title} with tfds: "
                             "pip install -e \".[download]\"")
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(f"{name}:{entry.version}", data_dir=root, file_format="array_record")
        builder.download_and_prepare()
    except Exception as err:  # network, disk and tfds failures come in many types
        raise data.DataError(f"could not download and prepare {entry.title} into {root}: "
                             f"{type(err).__name__}: {' '.join(str(err).split())[:200]}") from err
    return data.check_data_dir(name, root)


def prepare_if_asked(args: argparse.Namespace, names: Iterable[str]) -> None:
    """:func:`prepare` every dataset in ``names`` when ``args.download`` is set; a streamed
    dataset (ImageNet) there is a one-line ``data.DataError``: it cannot be fetched."""
    if not args.download:
        return
    for name in sorted(set(names)):
        if name not in data.DATASETS:
            raise data.DataError(f"--download fetches {' and '.join(data.DATASETS)} only; {name} needs a manual "
                                 "download (tfds build imagenet2012 --manual_dir DIR --file_format array_record)")
        prepare(name, args.data_dir)
