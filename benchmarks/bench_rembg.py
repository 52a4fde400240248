"""Background removal on full-size photos: the stage's loop against rembg's own file loop and
against bare ONNX Runtime inference on pre-decoded tensors, in one run, on the same photos.

    python benchmarks/bench_rembg.py [--images 48] [--height 1024] [--device auto] [--batch 8]

Needs models/rembg (`dvc repro fetch_model`). The photos are demo renders at --height pixels.
Rows printed:
  bare inference   session.run on inputs decoded, resized and normalised beforehand (the ceiling)
  bare, batch B    the same, B photos per call (the graph with a symbolic batch dimension)
  rembg files      rembg's `rembg p` loop (read bytes, rembg.remove(only_mask), write PNG); the
                   CLI itself needs the rembg[cli] extras, so its calls are made here directly
  stage, before    the stage's former loop: decode, predict, write, one image after the other
  stage            remove_backgrounds as the stage runs it (decode prefetched in a thread)
  stage, resumed   the same with every mask already in the cache (an interrupted run resumed)
  stage, batch B   remove_backgrounds with background.batch_size B
and the mean absolute difference of the stage's masks (one photo and B per call) from rembg's
(goal <= 1/255).
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fashionbg.background.sod import (
    MEAN,
    SIDE,
    STD,
    MaskCache,
    SodOptions,
    batched_model,
    cache_key,
    make_session,
    predict_alpha,
    remove_backgrounds,
    session_device,
)
from fashionbg.contracts.masks import alpha_path
from fashionbg.contracts.raw import RawWriter, read_index
from fashionbg.core import paths
from fashionbg.ingest.hygiene import open_rgb
from fashionbg.sources.demo import source as demo


def photos(root: Path, n: int, height: int) -> list:
    """n demo photos of height × 3/4 height, written as JPEGs under root/raw."""
    config = demo.DemoConfig(seed=0, images_per_class=max(3, -(-n // 8)),
                             image_size=(height, height * 3 // 4), context_correlation=0.3,
                             split=(0.6, 0.2, 0.2), max_images=n)
    writer = RawWriter(root / "raw")
    result = demo.build(config, writer)
    writer.finish(result.labels, result.mask_classes, result.extra)
    return read_index(root / "raw")


def timed(label: str, n: int, func, baseline: float | None = None) -> float:
    start = time.perf_counter()
    func()
    seconds = time.perf_counter() - start
    ratio = f"  {baseline / seconds:5.2f}x rembg files" if baseline else ""
    print(f"{label:16s} {n / seconds:7.2f} img/s ({seconds:6.1f} s){ratio}", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=8, help="photos per call, batched rows")
    args = parser.parse_args()
    from rembg import remove

    session = make_session("u2netp", paths.SOD_HOME, args.device)
    device = session_device(session)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = photos(root, args.images, args.height)
        n, raw = len(rows), root / "raw"
        print(f"{n} photos of {args.height} px high, u2netp on {device}")
        predict_alpha(open_rgb(raw / rows[0].path), session, SodOptions())   # warm-up

        inputs = [session.normalize(open_rgb(raw / r.path), MEAN, STD, SIDE) for r in rows]
        bare = timed("bare inference", n, lambda: [session.inner_session.run(None, x)
                                                   for x in inputs])
        batched = batched_model(session, "u2netp", paths.SOD_HOME, args.batch)
        name = batched.inner.get_inputs()[0].name
        stacked = [np.concatenate([x[name] for x in inputs[i:i + args.batch]])
                   for i in range(0, n, args.batch)]
        batched.inner.run(None, {name: stacked[0]})     # warm-up at this batch size
        timed(f"bare, batch {args.batch}", n, lambda: [batched.inner.run(None, {name: x})
                                                       for x in stacked])
        (root / "files").mkdir()

        def rembg_files() -> None:
            for i, r in enumerate(rows):
                out = remove((raw / r.path).read_bytes(), session=session, only_mask=True)
                (root / "files" / f"{i}.png").write_bytes(out)

        files = timed("rembg files", n, rembg_files)

        def before() -> None:
            for r in rows:
                alpha = predict_alpha(open_rgb(raw / r.path), session, SodOptions())
                target = root / "before" / alpha_path(r.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(alpha, mode="L").save(target)

        timed("stage, before", n, before, files)
        cache = MaskCache(root / "cache", cache_key("u2netp", SodOptions(), device))
        stage = timed("stage", n, lambda: remove_backgrounds(rows, raw, root / "stage",
                                                             session, SodOptions(), cache),
                      files)
        timed("stage, resumed", n, lambda: remove_backgrounds(rows, raw, root / "again",
                                                              session, SodOptions(), cache),
              files)
        timed(f"stage, batch {args.batch}", n, lambda: remove_backgrounds(
            rows, raw, root / "batched", session, SodOptions(), batched=batched), files)
        print(f"stage / bare inference: {bare / stage:.2f}")
        for label, folder in (("stage", "stage"), (f"stage, batch {args.batch}", "batched")):
            diffs = [np.abs(np.asarray(Image.open(root / folder / alpha_path(r.path)), np.int16)
                            - np.asarray(Image.open(io.BytesIO(
                                (root / "files" / f"{i}.png").read_bytes())).convert("L"),
                                np.int16)).mean() for i, r in enumerate(rows)]
            print(f"mask mean |{label} - rembg|: {max(diffs):.4f} / 255 at most")


if __name__ == "__main__":
    main()
