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


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG the training code touches and make kernels deterministic where they can
    be. cuBLAS is deterministic only with a fixed workspace, read when its first handle is made
    (so before any CUDA matmul); without it every matmul warns under deterministic mode."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)
