"""Salient-object detection with rembg: one alpha mask per image, always with an explicit
session."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from fashionbg.background.params import SOD_MODELS
from fashionbg.background.weights import verified_model
from fashionbg.contracts.masks import alpha_path
from fashionbg.contracts.raw import IndexRow
from fashionbg.ingest.hygiene import open_rgb


@dataclass(frozen=True)
class SodOptions:
    alpha_matting: bool = False
    post_process_mask: bool = False


def make_session(model: str, home: Path) -> Any:
    """A rembg session for `model`, loaded from `home` (the weights must already be there)."""
    if model not in SOD_MODELS:
        raise ValueError(f"unknown salient-object model {model!r}")
    verified_model(model, home)
    # rembg reads its model directory from the environment, not from an argument.
    os.environ["U2NET_HOME"] = str(Path(home).resolve())
    from rembg import new_session  # imported late: rembg reads U2NET_HOME at import in places

    return new_session(model)


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
    seconds: float = 0.0
    ious: list[float] = field(default_factory=list)

    def metrics(self, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "images": self.images,
            "failures": len(self.failures),
            "seconds_per_image": round(self.seconds / max(self.images, 1), 4),
            "images_with_ground_truth": len(self.ious),
            "mean_iou": round(float(np.mean(self.ious)), 4) if self.ious else None,
        }


def remove_backgrounds(rows: Iterable[IndexRow], raw_dir: Path, out_dir: Path, session: Any,
                       options: SodOptions) -> SodReport:
    """Predict and save the alpha of every indexed image; a failing image is recorded, not fatal."""
    report = SodReport()
    rows = list(rows)
    for row in tqdm(rows, desc="rembg", unit="img", disable=None):
        start = time.perf_counter()
        try:
            image = open_rgb(raw_dir / row.path)
            alpha = predict_alpha(image, session, options)
        except Exception as err:  # one bad image must not stop the run; it is recorded
            report.failures.append((row.path, f"{type(err).__name__}: {err}"))
            continue
        report.seconds += time.perf_counter() - start
        report.images += 1
        target = out_dir / alpha_path(row.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(alpha, mode="L").save(target)
        if row.mask:
            truth = np.asarray(Image.open(raw_dir / row.mask)) > 0
            report.ious.append(mask_iou(alpha, truth))
    return report
