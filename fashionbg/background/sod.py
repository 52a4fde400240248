"""Salient-object detection with rembg: one alpha mask per image, always with an explicit
session; photos are read and decoded in threads ahead of inference, and masks already computed
for the same image and settings are taken from a cache so an interrupted run resumes."""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from fashionbg.background.params import SOD_MODELS
from fashionbg.background.weights import MODELS, verified_model
from fashionbg.contracts.masks import alpha_path
from fashionbg.contracts.raw import IndexRow
from fashionbg.core.errors import UserError
from fashionbg.ingest.hygiene import open_rgb

T = TypeVar("T")
# Photos decoded ahead of inference: enough to hide decoding, few enough to bound memory. One
# thread: open_rgb's decompression-bomb check uses warnings.catch_warnings, which is
# process-wide state that two decoding threads would race on.
PREFETCH_THREADS = 1
PREFETCH_DEPTH = 4


@dataclass(frozen=True)
class SodOptions:
    alpha_matting: bool = False
    post_process_mask: bool = False


def make_session(model: str, home: Path, device: str = "cpu") -> Any:
    """A rembg session for `model` on `device` (auto, cpu, cuda), loaded from `home` (the
    weights must already be there)."""
    if model not in SOD_MODELS:
        raise ValueError(f"unknown salient-object model {model!r}")
    verified_model(model, home)
    # rembg reads its model directory from the environment, not from an argument.
    os.environ["U2NET_HOME"] = str(Path(home).resolve())
    from rembg import new_session  # imported late: rembg reads U2NET_HOME at import in places

    session = new_session(model, providers=providers(device))
    if device == "cuda" and session_device(session) != "cuda":
        raise UserError("background.device = cuda, but onnxruntime could not load its CUDA "
                        "provider (CUDA or cuDNN libraries missing or of another version; its "
                        "log above says which); install them or set background.device: cpu")
    return session


def providers(device: str) -> list[str]:
    """ONNX Runtime providers for background.device; `auto` takes CUDA where it is installed."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise UserError("background.device = cuda, but this onnxruntime has no CUDA provider; "
                        "install onnxruntime-gpu in place of onnxruntime (README: Real data "
                        "on a GPU machine) or set background.device: cpu")
    cuda = device == "cuda" or (device == "auto" and has_cuda)
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


def session_device(session: Any) -> str:
    """Where a rembg session really runs: cuda or cpu."""
    return "cuda" if "CUDAExecutionProvider" in session.inner_session.get_providers() else "cpu"


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
    seconds: float = 0.0          # inference time of the masks computed in this run
    computed: int = 0             # the others came from the mask cache
    ious: list[float] = field(default_factory=list)

    def metrics(self, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "images": self.images,
            "failures": len(self.failures),
            # None when every mask came from the cache: no inference was timed
            "seconds_per_image": round(self.seconds / self.computed, 4) if self.computed
            else None,
            "images_with_ground_truth": len(self.ious),
            "mean_iou": round(float(np.mean(self.ious)), 4) if self.ious else None,
        }


class MaskCache:
    """Masks computed before, by image content, under one key (model, weights, options,
    device, rembg version): what lets an interrupted run resume. It lives outside DVC's outputs
    and holds only what the same inputs would give again, so reusing it keeps `dvc repro`
    honest; deleting it only costs time."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key

    def path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.png"   # sharded: big datasets, small folders

    def get(self, digest: str, size: tuple[int, int]) -> np.ndarray | None:
        """The cached alpha of an image of `size` (w, h), or None (also when unreadable)."""
        path = self.path(digest)
        try:
            with Image.open(path, formats=["PNG"]) as img:
                alpha = np.asarray(img.convert("L"))
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        return alpha if alpha.shape == (size[1], size[0]) else None

    def put(self, digest: str, alpha: np.ndarray) -> None:
        """Write-then-rename, so a kill leaves at most one stale `.partial` per photo, which
        the photo's next put overwrites."""
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        Image.fromarray(alpha, mode="L").save(partial, format="PNG")
        os.replace(partial, path)


def cache_key(model: str, options: SodOptions, device: str) -> str:
    """Everything a mask depends on besides the image itself (the weights are md5-checked
    against MODELS before a session exists)."""
    import onnxruntime
    import rembg

    # Versions from the modules: onnxruntime-gpu installs the same module under another name.
    parts = [model, MODELS[model].md5, options.alpha_matting, options.post_process_mask,
             device, rembg.__version__, onnxruntime.__version__]
    return f"{model}-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Loaded:
    digest: str                      # sha256 of the file's bytes
    image: Image.Image
    truth: np.ndarray | None         # ground-truth foreground, where the index has a mask


def load(row: IndexRow, raw_dir: Path) -> Loaded:
    """Read a photo once: hash its bytes and decode them (runs in a prefetch thread)."""
    data = (raw_dir / row.path).read_bytes()
    truth = np.asarray(Image.open(raw_dir / row.mask)) > 0 if row.mask else None
    return Loaded(hashlib.sha256(data).hexdigest(), open_rgb(io.BytesIO(data)), truth)


def prefetched(pool: ThreadPoolExecutor, fn: Callable[[T], Any], items: Iterable[T],
               depth: int) -> Iterator[tuple[T, Future]]:
    """(item, future of fn(item)) in order, with at most `depth` items loading ahead, so
    decoding overlaps inference and memory stays bounded."""
    window: deque[tuple[T, Future]] = deque()
    for item in items:
        window.append((item, pool.submit(fn, item)))
        if len(window) > depth:
            yield window.popleft()
    yield from window


def remove_backgrounds(rows: Iterable[IndexRow], raw_dir: Path, out_dir: Path, session: Any,
                       options: SodOptions, cache: MaskCache | None = None) -> SodReport:
    """Predict (or take from the cache) and save the alpha of every indexed image; a failing
    image is recorded, not fatal."""
    report = SodReport()
    rows = list(rows)
    with ThreadPoolExecutor(max_workers=PREFETCH_THREADS) as pool:
        loads = prefetched(pool, lambda row: load(row, raw_dir), rows, PREFETCH_DEPTH)
        for row, future in tqdm(loads, total=len(rows), desc="rembg", unit="img",
                                disable=None):
            try:
                loaded = future.result()
                alpha = cache.get(loaded.digest, loaded.image.size) if cache else None
                if alpha is None:
                    start = time.perf_counter()
                    alpha = predict_alpha(loaded.image, session, options)
                    report.seconds += time.perf_counter() - start
                    report.computed += 1
                    if cache:
                        cache.put(loaded.digest, alpha)
            except Exception as err:  # one bad image must not stop the run; it is recorded
                report.failures.append((row.path, f"{type(err).__name__}: {err}"))
                continue
            report.images += 1
            target = out_dir / alpha_path(row.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(alpha, mode="L").save(target)
            if loaded.truth is not None:
                report.ious.append(mask_iou(alpha, loaded.truth))
    return report
