"""Throughput of the pipeline's hot paths, each against a baseline run in the same script.

Run after `dvc repro` (it reads data/raw, data/rembg and data/prepared):
    python benchmarks/bench_pipeline.py [--images 64]
Prints images/s and ratios; it asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fashionbg.background.sod import SodOptions, make_session, predict_alpha
from fashionbg.classify.data import split_loader
from fashionbg.contracts.masks import alpha_path
from fashionbg.contracts.prepared import load_prepared
from fashionbg.contracts.raw import read_index
from fashionbg.core import paths
from fashionbg.ingest.decode import decode_chunks, resize_rgb
from fashionbg.ingest.hygiene import open_rgb

RAW, REMBG, PREPARED = paths.RAW, paths.REMBG, paths.prepared("original")


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.1f} img/s ({seconds:6.2f} s for {n})"


def timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def bench_sod(rows, n: int) -> None:
    """rembg with onnxruntime on all cores (what the stage does) vs one intra-op thread."""
    import onnxruntime as ort
    from rembg import new_session

    images = [open_rgb(RAW / r.path) for r in rows[:n]]
    session = make_session("u2netp", paths.SOD_HOME)
    one = ort.SessionOptions()
    one.intra_op_num_threads = one.inter_op_num_threads = 1
    single = new_session("u2netp", sess_opts=one)
    predict_alpha(images[0], session, SodOptions())  # warm-up
    fast = timed(lambda: [predict_alpha(i, session, SodOptions()) for i in images])
    slow = timed(lambda: [predict_alpha(i, single, SodOptions()) for i in images])
    print(f"rembg u2netp, all cores : {rate(n, fast)}  = {fast / n:.3f} s/img")
    print(f"rembg u2netp, 1 thread  : {rate(n, slow)}  ratio {slow / fast:.2f}x")


def bench_decode(rows, n: int, size: tuple[int, int]) -> None:
    """prepare's threaded decode vs a plain sequential decode loop."""
    items = [(RAW / r.path, None, REMBG / alpha_path(r.path)) for r in rows[:n]]
    threaded = timed(lambda: list(decode_chunks(items, size, workers=2)))
    plain = timed(lambda: [resize_rgb(open_rgb(p), size) for p, _, _ in items])
    print(f"prepare decode, 2 threads: {rate(n, threaded)}")
    print(f"prepare decode, 1 loop   : {rate(n, plain)}  ratio {plain / threaded:.2f}x")


def bench_loader(rows, batch: int) -> None:
    """One epoch of batches from the uint8 cache vs decoding the JPEGs every epoch."""
    data = load_prepared(PREPARED)
    size = tuple(data.meta["image_size"])
    loader = split_loader(data, "train", batch, generator=torch.Generator().manual_seed(0))
    n = len(loader.dataset)
    cached = timed(lambda: [b for b in loader])
    train = [r for r in rows if r.split == "train"]
    decoded = timed(lambda: [torch.from_numpy(resize_rgb(open_rgb(RAW / r.path), size))
                             for r in train])
    print(f"training input, cache    : {rate(n, cached)}")
    print(f"training input, JPEGs    : {rate(len(train), decoded)}  "
          f"ratio {decoded / len(train) / (cached / n):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = read_index(RAW)
    size = tuple(np.load(PREPARED / "images.npy", mmap_mode="r").shape[1:3])
    bench_sod(rows, min(args.images, len(rows)))
    bench_decode(rows, min(args.images * 4, len(rows)), size)
    bench_loader(rows, 32)


if __name__ == "__main__":
    main()
