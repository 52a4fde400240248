"""Device choice and seeding shared by every stage that runs a network."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from fashionbg.core.errors import ParamError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, key: str) -> torch.device:
    """`auto` takes CUDA when present; asking for `cuda` without one is a parameter error."""
    if name not in DEVICES:
        raise ParamError(key, name, "one of " + ", ".join(DEVICES))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamError(key, name, "auto or cpu: this machine has no CUDA device")
    return torch.device(name)


def seed_everything(seed: int, device: torch.device | None = None) -> torch.Generator:
    """Seed every RNG the training code touches and make kernels deterministic where that
    costs little. On the CPU (the default) torch's deterministic mode: a run repeats exactly.
    On CUDA only cuDNN's deterministic convolutions (and a fixed cuBLAS workspace, read when its
    first handle is made): torch's deterministic mode would send torchvision's roi_align to a
    pure-Python fallback that torch.compile builds in every process, slower and still not
    repeatable (its backward and the decoders' upsampling add in an unordered way on a GPU)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cuda = device is not None and device.type == "cuda"
    torch.use_deterministic_algorithms(not cuda, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)
