"""Conv and BatchNorm builders shared by the VGG, DenseNet, MobileNetV2 and ResNet-50 models.

One place for the conventions these convolutional networks share with ``resnet_cifar``: bias-free
convolutions (unless asked) with PyTorch-style symmetric padding ``(k - 1) // 2`` (not "SAME",
which pads stride-2 layers asymmetrically) and He-normal ``fan_out`` init (PyTorch's
``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, as torchvision's ResNet and MobileNetV2
use); BatchNorm with ``momentum=0.9, epsilon=1e-5`` (PyTorch's ``momentum=0.1`` defaults), as
``ap_jax.batchnorm.BatchNorm`` (Flax's parameters, fewer passes over the activations).
Convolutions go through ``ap_jax.conv.conv_general_dilated`` (a faster backward pass on CPU,
plain ``lax`` elsewhere and for grouped convolutions).
"""

from __future__ import annotations

import flax.linen as nn

from ap_jax import conv as fast_conv
from ap_jax.batchnorm import BatchNorm

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, name: str, strides: int = 1, groups: int = 1, use_bias: bool = False) -> nn.Conv:
    """A ``kernel x kernel`` convolution padded by ``(kernel - 1) // 2`` on every side."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=(kernel - 1) // 2,
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=conv_init,
        conv_general_dilated=fast_conv.conv_general_dilated,
        name=name,
    )


def batch_norm(train: bool, name: str, relu: bool = False) -> BatchNorm:
    """BatchNorm over the channel axis: batch statistics when ``train``, running averages otherwise;
    ``relu``: a ReLU fused in (count it with ``ap_jax.stats.ReLU(applied=True)``)."""
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, relu=relu, name=name)
