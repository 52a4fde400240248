"""The per-photo work of background removal, run in worker processes around the inference:
read, hash and decode a photo and make U²-Net's input (or take its mask from the cache), then
turn a prediction into the mask, encode it once and write it. The arithmetic is rembg's own
(U2netpSession / U2netSession and remove()), so the masks are byte-identical to rembg's."""
from __future__ import annotations

import hashlib
import io
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fashionbg.contracts.masks import alpha_path
from fashionbg.ingest.hygiene import open_rgb

# A study gives every workspace on a machine the project's mask cache through this variable, so
# a photo's mask is computed once per machine, not once per clone.
MASK_CACHE_ENV = "FASHIONBG_MASK_CACHE"
# rembg's U²-Net input (its U2netSession and U2netpSession): ImageNet statistics at 320×320
MEAN, STD, SIDE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320)


def ignore_ctrl_c() -> None:
    """Pool initializer: Ctrl-C reaches the whole process group, and the stage's own process
    handles it (it cancels the queued photos and stops the pool); a worker that took it too
    would print a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def mask_cache_root(default: Path) -> Path:
    """The mask cache: the folder a study shares between its workspaces, else `default`."""
    return Path(os.environ.get(MASK_CACHE_ENV) or default)


@dataclass(frozen=True)
class SodOptions:
    alpha_matting: bool = False
    post_process_mask: bool = False


class MaskCache:
    """Masks computed before, by image content, under one key (model, weights, options,
    device, rembg version): what lets an interrupted run resume. It lives outside DVC's outputs
    and holds only what the same inputs would give again, so reusing it keeps `dvc repro`
    honest; deleting it only costs time."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key

    def path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.png"   # sharded: big datasets, small folders

    def get(self, digest: str, size: tuple[int, int]) -> bytes | None:
        """The cached mask PNG of an image of `size` (w, h), or None (also when unreadable)."""
        try:
            data = self.path(digest).read_bytes()
            with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                ok = img.size == size and np.asarray(img.convert("L")).shape == (size[1], size[0])
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        return data if ok else None

    def put(self, digest: str, png: bytes) -> None:
        """Write-then-rename, under a name of this process's own (workspaces share the cache),
        so a kill leaves at most one stale `.partial` per photo and process."""
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_bytes(png)
        os.replace(partial, path)


@dataclass(frozen=True)
class Job:
    """One photo of the index and where its mask goes."""
    index: int
    path: str                        # under raw_dir
    mask: str | None                 # its ground-truth mask under raw_dir, if any
    raw_dir: Path
    out_dir: Path


@dataclass(frozen=True)
class Written:
    """A photo whose mask is written, with its IoU against the ground truth where known."""
    index: int
    iou: float | None


@dataclass(frozen=True)
class Todo:
    """A photo the cache did not have: U²-Net's input for it."""
    job: Job
    digest: str                      # sha256 of the file's bytes
    size: tuple[int, int]            # (w, h)
    tensor: np.ndarray               # 1×3×320×320 float32


def mask_iou(alpha: np.ndarray, truth: np.ndarray, threshold: int = 128) -> float:
    """IoU of the thresholded alpha against a boolean ground-truth foreground."""
    pred = alpha >= threshold
    union = np.logical_or(pred, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, truth).sum() / union)


def u2net_input(image: Image.Image) -> np.ndarray:
    """rembg's BaseSession.normalize, operation for operation (float64, then float32)."""
    pixels = np.array(image.convert("RGB").resize(SIDE, Image.Resampling.LANCZOS))
    pixels = pixels / max(np.max(pixels), 1e-6)
    normalised = (pixels - np.array(MEAN)) / np.array(STD)
    return np.expand_dims(normalised.transpose((2, 0, 1)), 0).astype(np.float32)


def prepare(job: Job, cache: MaskCache | None) -> Written | Todo:
    """Read a photo once: its cached mask copied to the output, or the input to infer it."""
    data = (job.raw_dir / job.path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    image = open_rgb(io.BytesIO(data))
    cached = cache.get(digest, image.size) if cache else None
    if cached is None:
        return Todo(job, digest, image.size, u2net_input(image))
    return write(job, cached, None)


def finish(todo: Todo, pred: np.ndarray, options: SodOptions, cache: MaskCache | None
           ) -> Written:
    """The mask of U²-Net's prediction (320×320) for `todo`'s photo, as rembg makes it,
    encoded once and written to the output and the cache."""
    alpha = sod_mask(pred, todo.size)
    if options.alpha_matting:
        alpha = matted(todo.job, alpha, options)
    elif options.post_process_mask:
        from rembg.bg import post_process

        alpha = post_process(alpha)
    png = encode(alpha)
    if cache:
        cache.put(todo.digest, png)
    return write(todo.job, png, alpha)


def sod_mask(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """rembg's U2netpSession.predict after inference: min-max scaling, LANCZOS to `size`."""
    pred = (pred - np.min(pred)) / (np.max(pred) - np.min(pred))
    mask = Image.fromarray((pred * 255).astype("uint8"), mode="L")
    return np.asarray(mask.resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)


class Predicted:
    """A rembg session whose prediction is already made: lets rembg's remove() apply its own
    mask post-processing and alpha matting to it."""

    def __init__(self, alpha: np.ndarray) -> None:
        self.alpha = alpha

    def predict(self, img: Any, *args: Any, **kwargs: Any) -> list[Image.Image]:
        return [Image.fromarray(self.alpha, mode="L")]


def matted(job: Job, alpha: np.ndarray, options: SodOptions) -> np.ndarray:
    """remove()'s alpha matting of the photo (decoded again: matting is far slower)."""
    from rembg import remove

    cutout = remove(open_rgb(job.raw_dir / job.path), session=Predicted(alpha),
                    alpha_matting=True, post_process_mask=options.post_process_mask)
    return np.asarray(cutout.getchannel("A").convert("L"), dtype=np.uint8)


def encode(alpha: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(alpha, mode="L").save(out, format="PNG")
    return out.getvalue()


def write(job: Job, png: bytes, alpha: np.ndarray | None) -> Written:
    """Write the mask's PNG to the output; its IoU where the index has a true mask."""
    target = job.out_dir / alpha_path(job.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png)
    if job.mask is None:
        return Written(job.index, None)
    if alpha is None:
        alpha = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    truth = np.asarray(Image.open(job.raw_dir / job.mask)) > 0
    return Written(job.index, mask_iou(alpha, truth))
