"""Device choice and seeding shared by every stage that runs a network."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from fashionbg.core.errors import ParamError
from fashionbg.core.nvidia import nvidia_devices
from fashionbg.core.params import DEVICES

log = logging.getLogger(__name__)


def resolve_device(name: str, key: str) -> torch.device:
    """`auto` takes CUDA when present; asking for `cuda` without one is a parameter error."""
    if name not in DEVICES:
        raise ParamError(key, name, "one of " + ", ".join(DEVICES))
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        warn_unused_gpus(key)
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamError(key, name, "auto or cpu: this machine has no CUDA device")
    return torch.device(name)


def warn_unused_gpus(key: str) -> None:
    """`auto` on the CPU is the usual case, but not where the driver lists GPUs torch cannot
    use: hours of training on the CPU would otherwise pass unnoticed."""
    gpus = nvidia_devices()
    if not gpus:
        return
    cuda = torch.version.cuda
    why = ("this torch is built without CUDA (a CPU wheel: make setup-gpu)" if cuda is None else
           f"this torch (CUDA {cuda}) finds no usable CUDA device: a driver older than "
           f"CUDA {cuda} needs, or CUDA_VISIBLE_DEVICES hiding them")
    log.warning("%s = auto: the driver lists %d NVIDIA GPU(s), but %s; running on the CPU",
                key, len(gpus), why)


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
