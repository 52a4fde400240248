"""Background removal on full-size photos: the stage's worker pipeline against `rembg p` over
a folder, against the stage's former serial loop and against bare ONNX Runtime inference on
pre-decoded tensors, in one run, on the same photos.

    python benchmarks/bench_rembg.py [--images 48] [--height 1024] [--device auto] [--batch 8]

Needs models/rembg (`dvc repro fetch_model`). The photos are demo renders at --height pixels.
Rows printed (images/s, and the ratio to `rembg p`):
  bare inference   session.run on inputs decoded, resized and normalised beforehand (the ceiling)
  bare, batch B    the same, B photos per call (the graph with a symbolic batch dimension)
  rembg p          rembg's folder command with --only-mask (a subprocess, its model load
                   included); where the CLI's extras (rembg[cli]) are not installed, its loop
                   (read bytes, rembg.remove(only_mask), write PNG) in this process
  stage, serial    the stage's former loop, one photo after the other: read, hash, decode,
                   rembg's remove(), two PNG encodes (cache and output)
  stage            remove_backgrounds as the stage runs it (worker processes around inference)
  stage, resumed   the same with every mask already in the cache (an interrupted run resumed)
  stage, batch B   remove_backgrounds with background.batch_size B
Every timed row is warmed up first at its own batch size. Then whether the stage's masks are
byte-identical to the serial loop's, and the mean absolute difference of the batched ones.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fashionbg.background.sod import (
    MaskCache,
    SodOptions,
    batched_model,
    cache_key,
    make_session,
    predict_alpha,
    remove_backgrounds,
    session_device,
)
from fashionbg.background.workers import encode, u2net_input
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
    ratio = f"  {baseline / seconds:5.2f}x rembg p" if baseline else ""
    print(f"{label:16s} {n / seconds:7.2f} img/s ({seconds:6.1f} s){ratio}", flush=True)
    return seconds


def rembg_cli(raw: Path, out: Path) -> bool:
    """`rembg p -m u2netp --only-mask` over the photos' folder, if the CLI runs here."""
    cli = [sys.executable, "-c", "from rembg.cli import main; main()"]
    env = {**os.environ, "U2NET_HOME": str(paths.SOD_HOME.resolve())}
    if subprocess.run([*cli, "p", "--help"], capture_output=True, env=env).returncode != 0:
        return False
    subprocess.run([*cli, "p", "-m", "u2netp", "--only-mask", str(raw), str(out)],
                   check=True, capture_output=True, env=env)
    return True


def serial(rows: list, raw: Path, out: Path, session) -> None:
    """The stage's loop before its workers: everything one photo after the other."""
    for r in rows:
        data = (raw / r.path).read_bytes()
        hashlib.sha256(data).hexdigest()
        png = encode(predict_alpha(open_rgb(raw / r.path), session, SodOptions()))
        for target in (out / "cache" / f"{r.path}.png", out / alpha_path(r.path)):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png)


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
        print(f"{n} photos of {args.height} px high, u2netp on {device}, {os.cpu_count()} cores")
        one, batched = batched_model(session, "u2netp", paths.SOD_HOME, 1), \
            batched_model(session, "u2netp", paths.SOD_HOME, args.batch)
        inputs = [u2net_input(open_rgb(raw / r.path)) for r in rows]
        stacked = [np.concatenate(inputs[i:i + args.batch]) for i in range(0, n, args.batch)]
        one.predict(inputs[0])                           # warm-ups at each timed batch size
        batched.predict(stacked[0])
        bare = timed("bare inference", n, lambda: [one.predict(x) for x in inputs])
        timed(f"bare, batch {args.batch}", n, lambda: [batched.predict(x) for x in stacked])

        def rembg_p() -> None:
            if not rembg_cli(raw / "images", root / "cli"):
                print("(rembg p's CLI extras, rembg[cli], are not installed: its loop runs "
                      "in this process)")
                for i, r in enumerate(rows):
                    out = remove((raw / r.path).read_bytes(), session=session, only_mask=True)
                    (root / "cli" / f"{i}.png").parent.mkdir(exist_ok=True)
                    (root / "cli" / f"{i}.png").write_bytes(out)

        files = timed("rembg p", n, rembg_p)
        timed("stage, serial", n, lambda: serial(rows, raw, root / "serial", session), files)
        cache = MaskCache(root / "cache", cache_key("u2netp", SodOptions(), device))
        remove_backgrounds(rows[:2], raw, root / "warm", session, SodOptions())
        stage = timed("stage", n, lambda: remove_backgrounds(rows, raw, root / "stage",
                                                             session, SodOptions(), cache),
                      files)
        timed("stage, resumed", n, lambda: remove_backgrounds(rows, raw, root / "again",
                                                              session, SodOptions(), cache),
              files)
        remove_backgrounds(rows[:args.batch], raw, root / "warm", session, SodOptions(),
                           batched=batched)
        timed(f"stage, batch {args.batch}", n, lambda: remove_backgrounds(
            rows, raw, root / "batched", session, SodOptions(), batched=batched), files)
        print(f"stage / bare inference: {bare / stage:.2f}")
        same = sum((root / "stage" / alpha_path(r.path)).read_bytes()
                   == (root / "serial" / alpha_path(r.path)).read_bytes() for r in rows)
        print(f"stage masks byte-identical to the serial loop's: {same} of {n}")
        diffs = [np.abs(np.asarray(Image.open(root / "batched" / alpha_path(r.path)), np.int16)
                        - np.asarray(Image.open(root / "serial" / alpha_path(r.path)), np.int16)
                        ).mean() for r in rows]
        print(f"mask mean |stage, batch {args.batch} - serial|: {max(diffs):.4f} / 255 at most")


if __name__ == "__main__":
    main()
