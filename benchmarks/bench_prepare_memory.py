"""Peak memory and speed of the `prepare` stage as N grows, against the stage as it was before
it streamed (git revision BASELINE, extracted with `git archive`), in the same run.

    python benchmarks/bench_prepare_memory.py [--sizes 1000 5000 20000]
        [--baseline-sizes 1000 2000] [--image-size 224 224]

For each N it builds a synthetic project in a temp dir (data/raw with N photos of 256x192,
their semantic masks and rembg alphas: copies of a few distinct generated files, so building
it is cheap but every photo is decoded), runs `python -m stages.prepare` there as a child
process and reads that child's peak resident memory from wait4(). Prints peak RSS, images/s
(the whole stage, interpreter start included) and the least-squares slope of peak RSS per
image. The baseline holds every array in memory, so keep its sizes small (about 2 MB per
224x224 image). It asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from fashionbg.contracts.masks import FAILURE_COLUMNS, FAILURES, alpha_path
from fashionbg.contracts.raw import INDEX_COLUMNS
from fashionbg.core.io import write_csv

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "13a0546"        # the last commit whose prepare held every array in memory
DISTINCT = 16               # distinct generated photos, copied to make up N
PHOTO_SIZE = (256, 192)     # [height, width] of the synthetic photos
CLASSES = ["casual", "formal", "street", "sporty"]
MASK_CLASSES = ["background", "skin", "top", "pants"]


def synthetic_files(rng: np.random.Generator) -> list[tuple[bytes, bytes, bytes]]:
    """(JPEG photo, PNG class mask, PNG alpha) triples: smooth colour fields with a figure."""
    height, width = PHOTO_SIZE
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for _ in range(DISTINCT):
        coarse = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        photo = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        cy, cx = rng.uniform(0.4, 0.6) * height, rng.uniform(0.4, 0.6) * width
        inside = ((yy - cy) / (0.4 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2 < 1
        mask = np.where(inside, 1 + (yy > cy) + (yy > cy + 0.1 * height), 0).astype(np.uint8)
        encoded = []
        for image, fmt in ((photo, "JPEG"), (Image.fromarray(mask), "PNG"),
                           (Image.fromarray((inside * 255).astype(np.uint8)), "PNG")):
            path = Path(tempfile.mktemp(suffix="." + fmt.lower()))
            image.save(path, fmt)
            encoded.append(path.read_bytes())
            path.unlink()
        out.append(tuple(encoded))
    return out


def build_project(project: Path, n: int, image_size: tuple[int, int],
                  files: list[tuple[bytes, bytes, bytes]]) -> None:
    """data/raw + data/rembg with n rows, and params.yaml with `image_size`."""
    raw, rembg = project / "data/raw", project / "data/rembg"
    rows = []
    for i in range(n):
        photo, mask, alpha = files[i % len(files)]
        rel, mask_rel = f"images/{i:06d}.jpg", f"masks/{i:06d}.png"
        for path, content in ((raw / rel, photo), (raw / mask_rel, mask),
                              (rembg / alpha_path(rel), alpha)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        split = ("train", "train", "train", "val", "test")[i % 5]
        rows.append((rel, split, CLASSES[i % len(CLASSES)], mask_rel))
    write_csv(raw / "index.csv", INDEX_COLUMNS, rows)
    (raw / "classes.json").write_text(json.dumps({"labels": CLASSES,
                                                  "mask_classes": MASK_CLASSES}))
    write_csv(rembg / FAILURES, FAILURE_COLUMNS, [])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["image_size"] = list(image_size)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def run_prepare(project: Path, code: Path) -> tuple[int, float]:
    """Peak RSS (bytes) and seconds of `python -m stages.prepare` run from `code`."""
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1"}
    with open(project / "prepare.log", "w") as log:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "stages.prepare"], cwd=project,
                                 env=env, stdout=log, stderr=log)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    if status:
        sys.exit(f"prepare failed in {project}:\n{(project / 'prepare.log').read_text()}")
    return usage.ru_maxrss * 1024, seconds


def baseline_code(target: Path) -> Path:
    """The stages and package as of BASELINE, unpacked into `target`."""
    archive = subprocess.run(["git", "archive", BASELINE, "stages", "fashionbg"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    target.mkdir()
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def measure(label: str, code: Path, sizes: list[int], image_size: tuple[int, int],
            files: list[tuple[bytes, bytes, bytes]], work: Path) -> dict[int, int]:
    peaks = {}
    for n in sizes:
        project = work / f"{label}-{n}"
        build_project(project, n, image_size, files)
        peak, seconds = run_prepare(project, code)
        peaks[n] = peak
        print(f"{label:9s} N={n:6d}: peak RSS {peak / 2**20:8.1f} MiB, "
              f"{n / seconds:7.1f} images/s ({seconds:6.1f} s)", flush=True)
        shutil.rmtree(project)
    if len(sizes) > 1:
        slope = np.polyfit(sizes, [peaks[n] for n in sizes], 1)[0]
        pixels = image_size[0] * image_size[1]
        print(f"{label:9s} slope: {slope / 1024:8.1f} KiB per image "
              f"({slope / pixels:.2f} bytes per pixel per image)", flush=True)
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=[1000, 2000])
    parser.add_argument("--image-size", type=int, nargs=2, default=[224, 224])
    args = parser.parse_args()
    image_size = tuple(args.image_size)
    files = synthetic_files(np.random.default_rng(0))
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        work = Path(tmp)
        print(f"prepare at {image_size[0]}x{image_size[1]} from {PHOTO_SIZE[0]}x"
              f"{PHOTO_SIZE[1]} photos with masks and alphas", flush=True)
        streaming = measure("streaming", ROOT, args.sizes, image_size, files, work)
        if args.baseline_sizes:
            old = measure("baseline", baseline_code(work / "baseline"), args.baseline_sizes,
                          image_size, files, work)
            for n in sorted(set(streaming) & set(old)):
                print(f"N={n}: baseline / streaming peak RSS = {old[n] / streaming[n]:.1f}x")


if __name__ == "__main__":
    main()
