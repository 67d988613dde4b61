"""The datasets a run may name, and what loading each needs to know: tables only, so that the
config can offer their names without importing a data pipeline.

CIFAR (``DATASETS``) is loaded onto the device by ``ap_jax.data``; ImageNet (``STREAMED``) is
streamed from the host by ``ap_jax.stream``.
"""

from __future__ import annotations

import dataclasses

IMAGE_SIZE = 224  # side in pixels of a streamed dataset's crops, unless the config says otherwise

RGB = tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What ``load`` needs to know about a supported TFDS dataset."""

    title: str
    version: str
    num_classes: int
    mean: RGB
    std: RGB


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("CIFAR-10", "3.0.2", 10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetSpec("CIFAR-100", "3.0.2", 100, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """A streamed dataset: the labels ``0 .. num_classes - 1`` of a tfds dataset."""

    title: str
    num_classes: int
    tfds_name: str = "imagenet2012"
    version: str = "5.1.0"
    mean: RGB = IMAGENET_MEAN
    std: RGB = IMAGENET_STD


STREAMED: dict[str, StreamSpec] = {
    "imagenet2012": StreamSpec(title="ImageNet (imagenet2012)", num_classes=1000),
    "imagenet200": StreamSpec(title="ImageNet-200 (the first 200 classes of imagenet2012)", num_classes=200),
}
