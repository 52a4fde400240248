"""Salient-object detection with rembg: one alpha mask per image, always with an explicit
session; photos are read and decoded in threads ahead of inference, and masks already computed
for the same image and settings are taken from a cache so an interrupted run resumes."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
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
# A study gives every workspace on a machine the project's mask cache through this variable, so
# a photo's mask is computed once per machine, not once per clone.
MASK_CACHE_ENV = "FASHIONBG_MASK_CACHE"
# rembg's U²-Net input (its U2netSession and U2netpSession): ImageNet statistics at 320×320
MEAN, STD, SIDE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320)
AUTO_BATCH = {"cpu": 1, "cuda": 8}
log = logging.getLogger(__name__)


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

    wanted = providers(device)
    session = new_session(model, providers=wanted)
    if session_device(session) != "cuda" and "CUDAExecutionProvider" in wanted:
        if device == "cuda":
            raise UserError("background.device = cuda, but onnxruntime could not load its CUDA "
                            "provider (CUDA or cuDNN libraries missing or of another version; "
                            "its log above says which); install them or set "
                            "background.device: cpu")
        log.warning("background.device = auto: onnxruntime could not load its CUDA provider "
                    "(its log above says why); removing backgrounds on the CPU")
    return session


GPU_RUNTIME, CPU_RUNTIME = "onnxruntime-gpu", "onnxruntime"
SHADOWED = (f"both {CPU_RUNTIME} and {GPU_RUNTIME} are installed and share one module, so the "
            f"CPU package hides the CUDA provider; fix: pip uninstall -y {CPU_RUNTIME} "
            f"{GPU_RUNTIME} && pip install {GPU_RUNTIME}")


def installed_runtimes() -> set[str]:
    """Which ONNX Runtime distributions pip installed (both install the module onnxruntime)."""
    found = set()
    for name in (CPU_RUNTIME, GPU_RUNTIME):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.add(name)
    return found


def providers(device: str) -> list[str]:
    """ONNX Runtime providers for background.device; `auto` takes CUDA where it is installed,
    and says so in the log when it falls back to the CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        if device in ("auto", "cuda"):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    shadowed = installed_runtimes() == {CPU_RUNTIME, GPU_RUNTIME}
    if device == "cuda":
        raise UserError("background.device = cuda, but this onnxruntime has no CUDA provider: "
                        + (SHADOWED if shadowed else
                           f"install {GPU_RUNTIME} in place of {CPU_RUNTIME} "
                           "(docs/gpus-and-clusters.md: Real data on a GPU machine)")
                        + "; or set background.device: cpu")
    if device == "auto":
        log.info("background.device = auto: onnxruntime has no CUDA provider, so backgrounds "
                 "are removed on the CPU%s", f" ({SHADOWED})" if shadowed else "")
    return ["CPUExecutionProvider"]


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


@dataclass(frozen=True)
class Batched:
    inner: Any      # onnxruntime session of the model with a symbolic batch dimension
    size: int       # photos per call


def resolve_batch(batch_size: int | None, device: str) -> int:
    """`background.batch_size: auto`: 8 on CUDA; 1 on the CPU, where batches measured no
    faster (benchmarks/bench_rembg.py) and each mask comes from rembg's own remove()."""
    return batch_size if batch_size is not None else AUTO_BATCH[device]


def batched_model(session: Any, model: str, home: Path, size: int) -> Batched | None:
    """The session's U²-Net taking `size` photos per call, or None for one at a time. The
    exported graph declares a batch of 1, but no operation depends on it (convolutions,
    pooling, and resizes to shapes read from the tensors), so the batch dimension is made
    symbolic; in memory only, the file on disk keeps its md5."""
    if size == 1:
        return None
    import onnx
    import onnxruntime as ort

    graph = onnx.load(verified_model(model, home))
    for value in (*graph.graph.input, *graph.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    inner = session.inner_session
    return Batched(ort.InferenceSession(graph.SerializeToString(),
                                        sess_options=inner.get_session_options(),
                                        providers=inner.get_providers()), size)


def predict_alphas(images: list[Image.Image], session: Any, batched: Batched,
                   options: SodOptions) -> list[np.ndarray]:
    """predict_alpha for several photos in one call: rembg's own input normalisation and, per
    photo, U²-Net's post-processing as rembg's session does it (min-max scaling, LANCZOS
    resize to the photo's size) and remove()'s optional mask post-processing."""
    from rembg.bg import post_process

    name = batched.inner.get_inputs()[0].name
    inputs = np.concatenate([session.normalize(image, MEAN, STD, SIDE)[name] for image in images])
    alphas = []
    for pred, image in zip(batched.inner.run(None, {name: inputs})[0][:, 0], images):
        pred = (pred - pred.min()) / (pred.max() - pred.min())
        mask = Image.fromarray((pred * 255).astype("uint8"), mode="L")
        mask = mask.resize(image.size, Image.Resampling.LANCZOS)
        if options.post_process_mask:
            mask = Image.fromarray(post_process(np.array(mask)))
        alphas.append(np.asarray(mask, dtype=np.uint8))
    return alphas


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
        """What the masks are, the same on every run (no timing: it lives in the cached masks'
        folder, whose hash must not change when the same masks are computed again)."""
        return {
            "model": model,
            "images": self.images,
            "failures": len(self.failures),
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
        """Write-then-rename, under a name of this process's own (workspaces share the cache),
        so a kill leaves at most one stale `.partial` per photo and process."""
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        Image.fromarray(alpha, mode="L").save(partial, format="PNG")
        os.replace(partial, path)


def mask_cache_root(default: Path) -> Path:
    """The mask cache: the folder a study shares between its workspaces, else `default`."""
    return Path(os.environ.get(MASK_CACHE_ENV) or default)


def cache_key(model: str, options: SodOptions, device: str, batch: int = 1) -> str:
    """Everything a mask depends on besides the image itself (the weights are md5-checked
    against MODELS before a session exists). A batch size above 1 is part of the key, since
    kernels may sum in another order; one photo a call keeps the key it always had."""
    import onnxruntime
    import rembg

    # Versions from the modules: onnxruntime-gpu installs the same module under another name.
    parts = [model, MODELS[model].md5, options.alpha_matting, options.post_process_mask,
             device, rembg.__version__, onnxruntime.__version__]
    parts += [batch] if batch > 1 else []
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
                       options: SodOptions, cache: MaskCache | None = None,
                       batched: Batched | None = None) -> SodReport:
    """Predict (or take from the cache) and save the alpha of every indexed image, through
    `batched` when given; a failing image (or batch) is recorded, not fatal."""
    report = SodReport()
    rows = list(rows)
    size = batched.size if batched else 1
    pending: list[tuple[IndexRow, Loaded]] = []      # cache misses waiting for a full batch
    with ThreadPoolExecutor(max_workers=PREFETCH_THREADS) as pool:
        loads = prefetched(pool, lambda row: load(row, raw_dir), rows, PREFETCH_DEPTH + size)
        for row, future in tqdm(loads, total=len(rows), desc="rembg", unit="img",
                                disable=None):
            try:
                loaded = future.result()
            except Exception as err:  # one bad image must not stop the run; it is recorded
                report.failures.append((row.path, f"{type(err).__name__}: {err}"))
                continue
            alpha = cache.get(loaded.digest, loaded.image.size) if cache else None
            if alpha is not None:
                save_alpha(report, out_dir, row, loaded, alpha)
                continue
            pending.append((row, loaded))
            if len(pending) == size:
                infer(pending, session, options, batched, cache, report, out_dir)
                pending = []
        infer(pending, session, options, batched, cache, report, out_dir)
    return report


def infer(pending: list[tuple[IndexRow, Loaded]], session: Any, options: SodOptions,
          batched: Batched | None, cache: MaskCache | None, report: SodReport, out_dir: Path
          ) -> None:
    """Masks for photos the cache did not have, in one call (or rembg's remove() for one)."""
    if not pending:
        return
    images = [loaded.image for _, loaded in pending]
    start = time.perf_counter()
    try:
        alphas = (predict_alphas(images, session, batched, options) if batched
                  else [predict_alpha(images[0], session, options)])
        report.seconds += time.perf_counter() - start
        for (_, loaded), alpha in zip(pending, alphas):
            if cache:
                cache.put(loaded.digest, alpha)
    except Exception as err:  # recorded for every photo of the batch, as for one photo
        report.failures.extend((row.path, f"{type(err).__name__}: {err}") for row, _ in pending)
        return
    report.computed += len(pending)
    for (row, loaded), alpha in zip(pending, alphas):
        save_alpha(report, out_dir, row, loaded, alpha)


def save_alpha(report: SodReport, out_dir: Path, row: IndexRow, loaded: Loaded,
               alpha: np.ndarray) -> None:
    report.images += 1
    target = out_dir / alpha_path(row.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(alpha, mode="L").save(target)
    if loaded.truth is not None:
        report.ious.append(mask_iou(alpha, loaded.truth))
