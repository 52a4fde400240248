"""Salient-object detection with rembg: one alpha mask per image, always with an explicit
session on an explicit ONNX Runtime provider, reusing masks already computed for the same image
bytes under the same model weights, options, provider and library versions (`MaskCache`)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from fashionbg.background.params import SOD_MODELS
from fashionbg.contracts.masks import alpha_path
from fashionbg.contracts.raw import IndexRow
from fashionbg.core.errors import ParamError
from fashionbg.ingest.hygiene import open_rgb


@dataclass(frozen=True)
class SodOptions:
    alpha_matting: bool = False
    post_process_mask: bool = False


CPU_PROVIDERS = ["CPUExecutionProvider"]
CUDA_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def sod_providers(device: str) -> list[str]:
    """ONNX Runtime providers for `background.device`: `auto` takes CUDA when onnxruntime-gpu
    offers it (`pip install rembg[gpu]`), `cuda` insists on it, `cpu` never uses it."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise ParamError("background.device", device, "auto or cpu: this onnxruntime has no "
                         "CUDA provider (install rembg[gpu], which brings onnxruntime-gpu)")
    return CUDA_PROVIDERS if device == "cuda" or (device == "auto" and has_cuda) \
        else CPU_PROVIDERS


def make_session(model: str, home: Path, providers: list[str] = CPU_PROVIDERS) -> Any:
    """A rembg session for `model`, loaded from `home` (the weights must already be there)."""
    if model not in SOD_MODELS:
        raise ValueError(f"unknown salient-object model {model!r}")
    # rembg reads its model directory from the environment, not from an argument.
    os.environ["U2NET_HOME"] = str(Path(home).resolve())
    # imported late: rembg reads U2NET_HOME at import in places
    from rembg import new_session

    return new_session(model, providers=list(providers))


class MaskCache:
    """Alphas already computed, one PNG per image content (sha256 of the file's bytes), in a
    folder named by everything else that shapes a mask: the model's weights (md5), the rembg
    options, the providers and the rembg and onnxruntime versions. A stage interrupted after
    hours resumes where it stopped; a mask is reused only when it would be computed again
    byte for byte, so DVC's view of the stage stays true. Failures are never cached."""

    def __init__(self, root: Path, key: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / digest
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")

    def path(self, content: bytes) -> Path:
        return self.dir / f"{hashlib.sha256(content).hexdigest()}.png"

    def store(self, saved: Path, content: bytes) -> None:
        """Keep a copy of the alpha PNG `saved` for the image with these bytes (atomically,
        so an interrupted copy is never taken for a mask)."""
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        os.close(fd)
        shutil.copyfile(saved, tmp)
        os.replace(tmp, self.path(content))


def cache_key(model: str, home: Path, options: SodOptions, providers: list[str]
              ) -> dict[str, Any]:
    """What shapes a mask besides the image: the weights at `home/<model>.onnx` (where rembg
    finds them), the options, the providers and the library versions."""
    from importlib.metadata import version

    import onnxruntime  # its distribution is onnxruntime or onnxruntime-gpu: ask the module

    with open(Path(home) / f"{model}.onnx", "rb") as f:
        weights_md5 = hashlib.file_digest(f, "md5").hexdigest()
    return {"model": model, "weights_md5": weights_md5,
            "alpha_matting": options.alpha_matting,
            "post_process_mask": options.post_process_mask, "providers": providers,
            "rembg": version("rembg"), "onnxruntime": onnxruntime.__version__}


def predict_alpha(image: Image.Image, session: Any, options: SodOptions) -> np.ndarray:
    """The foreground alpha (uint8, H×W, 255 = object) rembg predicts for an RGB image."""
    from rembg import remove

    if options.alpha_matting:
        # rembg applies matting only when it cuts out, so take the alpha of the cutout.
        cutout = remove(image, session=session, alpha_matting=True,
                        post_process_mask=options.post_process_mask)
        alpha = cutout.getchannel("A")
    else:
        alpha = remove(image, session=session, only_mask=True,
                       post_process_mask=options.post_process_mask)
    return np.asarray(alpha.convert("L"), dtype=np.uint8)


def mask_iou(alpha: np.ndarray, truth: np.ndarray, threshold: int = 128) -> float:
    """IoU of the thresholded alpha against a boolean ground-truth foreground."""
    pred = alpha >= threshold
    union = np.logical_or(pred, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, truth).sum() / union)


@dataclass
class SodReport:
    images: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0            # predicting, over the images not taken from the cache
    reused: int = 0                 # alphas copied from the cache
    ious: list[float] = field(default_factory=list)

    def metrics(self, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "images": self.images,
            "failures": len(self.failures),
            # measured on the images predicted in this run; none when every mask was reused
            "seconds_per_image": round(self.seconds / (self.images - self.reused), 4)
            if self.images > self.reused else None,
            "images_with_ground_truth": len(self.ious),
            "mean_iou": round(float(np.mean(self.ious)), 4) if self.ious else None,
        }


def remove_backgrounds(rows: Iterable[IndexRow], raw_dir: Path, out_dir: Path, session: Any,
                       options: SodOptions, cache: MaskCache | None = None) -> SodReport:
    """Predict and save the alpha of every indexed image, or copy it from `cache`; a failing
    image is recorded, not fatal."""
    report = SodReport()
    rows = list(rows)
    for row in tqdm(rows, desc="rembg", unit="img", disable=None):
        target = out_dir / alpha_path(row.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        content = (raw_dir / row.path).read_bytes() if cache is not None else b""
        if cache is not None and cache.path(content).exists():
            shutil.copyfile(cache.path(content), target)
            alpha = np.asarray(Image.open(target))
            report.reused += 1
        else:
            start = time.perf_counter()
            try:
                alpha = predict_alpha(open_rgb(raw_dir / row.path), session, options)
            except Exception as err:  # one bad image must not stop the run; it is recorded
                report.failures.append((row.path, f"{type(err).__name__}: {err}"))
                continue
            report.seconds += time.perf_counter() - start
            Image.fromarray(alpha, mode="L").save(target)
            if cache is not None:
                cache.store(target, content)
        report.images += 1
        if row.mask:
            truth = np.asarray(Image.open(raw_dir / row.mask)) > 0
            report.ious.append(mask_iou(alpha, truth))
    return report
