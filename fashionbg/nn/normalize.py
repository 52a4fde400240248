"""Input normalisation inside the model, so a checkpoint carries the statistics its weights
expect and every caller feeds plain pixels."""
from __future__ import annotations

import torch
from torch import nn

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]
IMAGENET: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The TF EfficientNet-Lite ports were trained on inputs scaled to [-1, 1].
LITE: Stats = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def stats_for(model_name: str) -> Stats:
    """The input statistics a trunk's (pretrained or scratch) training expects."""
    return LITE if model_name == "efficientnet_lite0" else IMAGENET


class Normalize(nn.Module):
    """(x - mean) / std per channel for NCHW input whose pixels span [0, `scale`]."""

    mean: torch.Tensor  # buffers, which nn.Module's __getattr__ types as Tensor | Module
    std: torch.Tensor

    def __init__(self, stats: Stats, scale: float = 1.0) -> None:
        super().__init__()
        mean, std = stats
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * scale)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std
