"""Semantic models (segmentation-models-pytorch) and instance models (torchvision Mask R-CNN).

Every model takes uint8 images (0..255); normalisation lives inside the model so a checkpoint
carries it. ImageNet weights only load where asked (`load_weights`); evaluation rebuilds the
architecture and loads the checkpoint instead, so it never reaches for a hub.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import freeze_batch_norm_2d
from timm.models import FeatureInfo
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from fashionbg.core.errors import ParamError
from fashionbg.nn.lite0 import load_lite0_weights
from fashionbg.nn.normalize import Normalize, Stats, stats_for
from fashionbg.segment.params import SegmentConfig

log = logging.getLogger(__name__)

SMP_ARCHS: dict[str, Callable[..., nn.Module]] = {
    "unet": smp.Unet, "fpn": smp.FPN, "deeplabv3plus": smp.DeepLabV3Plus,
}
SMP_ENCODERS = {
    "resnet18": "resnet18", "resnet34": "resnet34", "mobilenet_v2": "mobilenet_v2",
    "efficientnet_lite0": "tu-tf_efficientnet_lite0",
}
ENCODER_STRIDE = 32
# FPN's GroupNorm needs more than one value per group at stride 32, so inputs are at least 64.
MIN_SIDE = 2 * ENCODER_STRIDE


class SemanticNet(nn.Module):
    """Normalises images, pads them to a multiple of the encoder's stride (and at least
    MIN_SIDE) and crops the logits back."""

    def __init__(self, net: nn.Module, stats: Stats) -> None:
        super().__init__()
        self.normalize = Normalize(stats, scale=255)
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        x = self.normalize(images)
        # Zero padding after normalisation is the mean colour: neutral for the encoder.
        x = F.pad(x, (0, _padding(width), 0, _padding(height)))
        return self.net(x)[..., :height, :width]


def _padding(side: int) -> int:
    return max(MIN_SIDE, side + -side % ENCODER_STRIDE) - side


def _decoder_kwargs(arch: str, width: int) -> dict[str, object]:
    """Decoder channels as multiples of `width` (smp's defaults correspond to about 64)."""
    if arch == "unet":
        return {"decoder_channels": (4 * width, 2 * width, width, width, width)}
    if arch == "fpn":
        # FPN's segmentation head uses GroupNorm with 32 groups.
        return {"decoder_pyramid_channels": 4 * width,
                "decoder_segmentation_channels": 32 * math.ceil(2 * width / 32)}
    return {"decoder_channels": 4 * width}


def build_semantic(config: SegmentConfig, num_classes: int, load_weights: bool) -> SemanticNet:
    """A smp model; `load_weights` with `pretrained` fetches ImageNet encoder weights."""
    name = SMP_ENCODERS[config.encoder]
    make = SMP_ARCHS[config.arch]
    kwargs = {"classes": num_classes, **_decoder_kwargs(config.arch, config.decoder_width)}
    pretrained = load_weights and config.pretrained
    if pretrained and config.encoder != "efficientnet_lite0":
        log.info("loading ImageNet weights for %s from the smp hub (needs internet)", name)
        try:
            net = make(name, encoder_weights="imagenet", **kwargs)
        except Exception as err:  # hub errors come as OSError, HTTP or HF exceptions alike
            raise _offline_error(config.encoder, err) from err
    else:
        net = make(name, encoder_weights=None, **kwargs)
        if pretrained:
            load_lite0_weights(net.get_submodule("encoder.model"))  # smp's timm trunk
    return SemanticNet(net, stats_for(config.encoder))


def _offline_error(what: str, err: Exception) -> ParamError:
    return ParamError("segment.pretrained", True,
                      f"false: ImageNet weights for {what} download from a hub and could not be "
                      f"loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                      "Only efficientnet_lite0 (encoder or instance_backbone) has weights that "
                      "ship offline")


# Mask R-CNN ---------------------------------------------------------------------------------

# Outputs of mobilenet_v3_large.features at strides 4, 8, 16, 32 and their channels.
MOBILENET_V3_LAYERS = ({"3": "0", "6": "1", "12": "2", "16": "3"}, [24, 40, 112, 960])
LIGHT_FPN_CHANNELS = 64
HUB_WEIGHTS = {
    "mobilenet_v3": torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}


class TimmFPN(nn.Module):
    """A timm features-only trunk under a torchvision FPN, shaped like BackboneWithFPN."""

    def __init__(self, body: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        # a plain attribute of timm's features-only trunks, which nn.Module's __getattr__
        # types as Tensor | Module
        info = cast(FeatureInfo, body.feature_info)
        self.fpn = FeaturePyramidNetwork(info.channels(), out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def _anchor_generator(image_size: tuple[int, int]) -> AnchorGenerator:
    """Five FPN levels with anchors from ~1/16 to the whole image (garments are small here),
    tall ratios included since h/w of legs and dresses reaches 4."""
    base = 8
    while base * 32 < max(image_size):
        base *= 2
    sizes = tuple((base * 2 ** level,) for level in range(5))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0, 4.0),) * len(sizes))


def _lite0_trunk(pretrained: bool, fetch: bool) -> nn.Module:
    body = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2, 3, 4))
    if fetch:
        load_lite0_weights(body)
    return TimmFPN(freeze_batch_norm_2d(body) if pretrained else body, LIGHT_FPN_CHANNELS)


def _norm(pretrained: bool) -> Callable[..., nn.Module]:
    """Frozen batch norm under pretrained weights, as torchvision does; from scratch the
    statistics must be learnt."""
    return FrozenBatchNorm2d if pretrained else nn.BatchNorm2d


def _resnet50_trunk(pretrained: bool, fetch: bool) -> nn.Module:
    """torchvision's standard Mask R-CNN trunk, as in the paper."""
    return resnet_fpn_backbone(backbone_name="resnet50",
                               weights=HUB_WEIGHTS["resnet50"] if fetch else None,
                               norm_layer=_norm(pretrained),
                               trainable_layers=3 if pretrained else 5)


def _mobilenet_v3_trunk(pretrained: bool, fetch: bool) -> nn.Module:
    body = torchvision.models.mobilenet_v3_large(
        weights=HUB_WEIGHTS["mobilenet_v3"] if fetch else None, norm_layer=_norm(pretrained))
    return _light_fpn(body.features, *MOBILENET_V3_LAYERS)


def _resnet18_trunk(pretrained: bool, fetch: bool) -> nn.Module:
    body = torchvision.models.resnet18(weights=HUB_WEIGHTS["resnet18"] if fetch else None,
                                       norm_layer=_norm(pretrained))
    return _light_fpn(body, {f"layer{k}": str(k - 1) for k in range(1, 5)}, [64, 128, 256, 512])


def _light_fpn(body: nn.Module, layers: dict[str, str], in_channels: list[int]) -> nn.Module:
    """A torchvision trunk's `layers` (of `in_channels`) under the light FPN."""
    return BackboneWithFPN(body, layers, in_channels, LIGHT_FPN_CHANNELS,
                           extra_blocks=LastLevelMaxPool())


# Each segment.instance_backbone and the trunk under its FPN: a name without an entry is a
# KeyError, never another trunk (a test keeps it equal to segment.params.INSTANCE_BACKBONES).
# `pretrained` shapes the model (frozen batch norm); `fetch` loads the ImageNet weights, which
# evaluation skips since the checkpoint holds them.
BACKBONES: dict[str, Callable[[bool, bool], nn.Module]] = {
    "efficientnet_lite0": _lite0_trunk,
    "resnet50": _resnet50_trunk,
    "mobilenet_v3": _mobilenet_v3_trunk,
    "resnet18": _resnet18_trunk,
}


class Float32BoxCoder(BoxCoder):
    """torchvision's box coder, decoding in float32 whatever autocast made of the regression:
    its decode casts the reference boxes (anchors, proposals) to the regression's dtype, and
    bf16 keeps 8 significant bits, so a coordinate near 500 px moves by up to 2 px."""

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(rel_codes.device.type, enabled=False):
            return super().decode_single(rel_codes.float(), boxes.float())


class Uint8MaskRCNN(MaskRCNN):
    """Mask R-CNN fed uint8 images like every other model: its transform normalises float
    images with image_mean/std, given here on the 0..255 scale. Proposals and detections are
    decoded in float32 under mixed precision (Float32BoxCoder)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for stage in (self.rpn, self.roi_heads):
            coder = stage.box_coder
            stage.box_coder = Float32BoxCoder(coder.weights, coder.bbox_xform_clip)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None) -> Any:
        return super().forward([image.float() for image in images], targets)


def build_instance(config: SegmentConfig, num_classes: int, image_size: tuple[int, int],
                   load_weights: bool) -> MaskRCNN:
    """Mask R-CNN for `num_classes` labels including background, at the prepared image size
    (min/max size equal to the images', so the transform does not resize them)."""
    name = config.instance_backbone
    fetch = load_weights and config.pretrained
    lite = name == "efficientnet_lite0"
    mean, std = stats_for(name)
    common = {
        "min_size": min(image_size), "max_size": max(image_size),
        "image_mean": [255 * m for m in mean], "image_std": [255 * s for s in std],
        "rpn_anchor_generator": _anchor_generator(image_size),
        "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 150,
        "box_batch_size_per_image": 128, "box_detections_per_img": 50,
    }
    try:
        backbone = BACKBONES[name](config.pretrained, fetch)
    except Exception as err:  # torch.hub raises URLError/HTTPError/OSError when offline
        if not fetch or lite:
            raise
        raise _offline_error(f"instance_backbone {name}", err) from err
    # The heads of torchvision's Mask R-CNN v2 (Li et al., 2021): a two-conv RPN head and conv
    # box/mask heads with batch norm, which train from scratch where the v1 MLP heads stall.
    # Light trunks get heads as wide as their 64-channel FPN, since the heads dominate CPU time.
    channels = backbone.out_channels
    width, representation = (256, 1024) if name == "resnet50" else (channels, 256)
    anchors = common["rpn_anchor_generator"].num_anchors_per_location()[0]
    return Uint8MaskRCNN(
        backbone, num_classes=None,
        rpn_head=RPNHead(channels, anchors, conv_depth=2),
        box_head=FastRCNNConvFCHead((channels, 7, 7), [width] * 4, [representation],
                                    norm_layer=nn.BatchNorm2d),
        box_predictor=FastRCNNPredictor(representation, num_classes),
        mask_head=MaskRCNNHeads(channels, [width] * 4, 1, norm_layer=nn.BatchNorm2d),
        mask_predictor=MaskRCNNPredictor(width, width, num_classes), **common)
