"""Classifier architectures: a shallow CNN from scratch, ResNet-18, EfficientNet-Lite0."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from itertools import pairwise
from typing import cast

from torch import nn

from fashionbg.classify.params import ClassifyConfig
from fashionbg.nn.lite0 import load_lite0_weights
from fashionbg.nn.normalize import Normalize, stats_for


def shallow_cnn(num_classes: int, batchnorm: bool) -> nn.Module:
    """Four conv blocks and a linear head: the kind of shallow net the study found helped."""
    layers: list[nn.Module] = []
    channels = [3, 32, 64, 128, 192]
    for cin, cout in pairwise(channels):
        layers.append(nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(cout))
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(channels[-1], num_classes))


def resnet18(num_classes: int) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    return tv_resnet18(weights=None, num_classes=num_classes)


def efficientnet_lite0(num_classes: int, load_weights: bool) -> nn.Module:
    import timm
    from timm.models.efficientnet import EfficientNet

    # create_model is typed as returning any nn.Module; this name builds an EfficientNet
    model = cast(EfficientNet, timm.create_model("tf_efficientnet_lite0", pretrained=False))
    if load_weights:
        load_lite0_weights(model)
    model.reset_classifier(num_classes)
    return model


# Each name of classify.arch and its network (config, classes, load ImageNet weights): a name
# without an entry here is a KeyError, never another network (a test keeps it equal to ARCHS).
ARCHITECTURES: dict[str, Callable[[ClassifyConfig, int, bool], nn.Module]] = {
    "shallow_cnn": lambda config, classes, _: shallow_cnn(classes, config.batchnorm),
    "resnet18": lambda _, classes, __: resnet18(classes),
    "efficientnet_lite0": lambda config, classes, load: efficientnet_lite0(
        classes, load and config.pretrained),
}


def build_classifier(config: ClassifyConfig, num_classes: int, load_weights: bool
                     ) -> nn.Sequential:
    """The network behind the normalisation of 0..255 pixels that its weights expect;
    `load_weights` loads ImageNet weights where `pretrained` asks for them (training only:
    evaluation loads the checkpoint instead)."""
    net = ARCHITECTURES[config.arch](config, num_classes, load_weights)
    return nn.Sequential(OrderedDict(normalize=Normalize(stats_for(config.arch), scale=255),
                                     net=net))
