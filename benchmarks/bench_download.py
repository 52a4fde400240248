"""Download, extraction and index-build speed, each against a baseline run in the same script.

    PYTHONPATH=tests python benchmarks/bench_download.py [--mb 256] [--images 1000] [--repeat 3]

- download: fashionbg.ingest.fetch (streamed, sha256 verified) vs `curl -o` and
  `curl -o && sha256sum`, the same file from the same local server on 127.0.0.1;
- extraction: fashionbg.ingest.extract (safety checks, byte budget) vs `unzip -q` and `tar -xzf`;
- index build: the `folder` and `coco` sources on real-photo JPEGs (grace_hopper.jpg and
  skimage's astronaut, randomly cropped to 600x800 portraits): hygiene decode + store, per
  1,000 images.
Prints MB/s, seconds and ratios (ours / baseline time); it asserts nothing. Needs curl, unzip, tar.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would cost time and clutter output
ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
from helpers_http import FileServer  # noqa: E402  (tests/ on PYTHONPATH: see the Makefile)
from PIL import Image  # noqa: E402

from fashionbg.contracts.params import data_section  # noqa: E402
from fashionbg.contracts.raw import RawWriter  # noqa: E402
from fashionbg.core.params import load_params  # noqa: E402
from fashionbg.ingest.extract import extract  # noqa: E402
from fashionbg.ingest.fetch import fetch  # noqa: E402
from fashionbg.sources import coco, folder  # noqa: E402


def best(func: Callable[[], object], repeat: int, reset: Callable[[], None]) -> float:
    """Best wall time of `repeat` runs (the least disturbed by the rest of the machine)."""
    times = []
    for _ in range(repeat):
        reset()
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def photos(n: int, size: tuple[int, int] = (600, 800), seed: int = 0) -> list[bytes]:
    """n distinct JPEGs (width, height = size) with real-photo statistics: random crops of
    two offline photos."""
    import matplotlib
    from skimage import data

    hopper = Image.open(Path(matplotlib.get_data_path()) / "sample_data/grace_hopper.jpg")
    sources = [hopper.convert("RGB"), Image.fromarray(data.astronaut())]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = sources[i % 2]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = src.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=int(rng.integers(80, 95)))
        out.append(buf.getvalue())
    return out


def bench_transfer(work: Path, mb: int, repeat: int) -> None:
    pool = photos(64, seed=1)
    members, total = {}, 0
    while total < mb << 20:
        data = pool[len(members) % len(pool)] + len(members).to_bytes(4, "big")
        members[f"dataset/c{len(members) % 14}/{len(members):06d}.jpg"] = data
        total += len(data)
    work.mkdir(parents=True)
    archive = work / "photos.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    unpacked = work / "src"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(unpacked)
    sh("tar", "-czf", str(work / "photos.tar.gz"), "-C", str(unpacked), "dataset")
    size = archive.stat().st_size
    print(f"archive: {size / 1e6:.0f} MB zip, {len(members)} JPEGs "
          f"({total / 1e6:.0f} MB unpacked)")

    out = work / "out"

    def clean() -> None:
        shutil.rmtree(out, ignore_errors=True)

    with FileServer() as server:
        server.files["photos.zip"] = archive
        url = server.url("photos.zip")
        ours = best(lambda: fetch(url, out / "a.zip"), repeat, clean)
        curl = best(lambda: sh("curl", "-s", "-f", "--create-dirs", "-o", str(out / "b.zip"),
                               url), repeat, clean)
        curl_sha = best(lambda: (sh("curl", "-s", "-f", "--create-dirs", "-o",
                                    str(out / "c.zip"), url),
                                 sh("sha256sum", str(out / "c.zip"))), repeat, clean)
    print(f"download  fetch()         {size / ours / 1e6:8.0f} MB/s  {ours:6.2f} s")
    print(f"          curl -o         {size / curl / 1e6:8.0f} MB/s  {curl:6.2f} s   "
          f"ratio ours/curl {ours / curl:.2f}")
    print(f"          curl + sha256sum{size / curl_sha / 1e6:8.0f} MB/s  {curl_sha:6.2f} s   "
          f"ratio {ours / curl_sha:.2f}")

    for kind, path, tool in (("zip", archive, ("unzip", "-q", "-o", str(archive), "-d")),
                             ("tar.gz", work / "photos.tar.gz",
                              ("tar", "-xzf", str(work / "photos.tar.gz"), "-C"))):
        ours = best(lambda p=path: extract(p, out / "x"), repeat, clean)
        theirs = best(lambda t=tool: (os.makedirs(out / "y"), sh(*t, str(out / "y"))),
                      repeat, clean)
        print(f"extract   {kind:7s} ours   {total / ours / 1e6:8.0f} MB/s  {ours:6.2f} s")
        print(f"          {tool[0]:13s}   {total / theirs / 1e6:8.0f} MB/s  {theirs:6.2f} s   "
              f"ratio ours/{tool[0]} {ours / theirs:.2f}")
    clean()


def bench_index(work: Path, n: int, repeat: int) -> None:
    pool = photos(n, seed=2)
    tree = work / "mine"
    for i, data in enumerate(pool):
        (tree / f"c{i % 14:02d}").mkdir(parents=True, exist_ok=True)
        (tree / f"c{i % 14:02d}" / f"{i:05d}.jpg").write_bytes(data)
    mb = sum(map(len, pool)) / 1e6
    print(f"index: {n} JPEGs 600x800, {mb:.0f} MB")
    params = {**data_section(load_params(ROOT / "params.yaml")), "path": str(tree)}
    raw = work / "raw"

    def clean() -> None:
        shutil.rmtree(raw, ignore_errors=True)

    def build(source: Callable, config: object) -> None:
        writer = RawWriter(raw)
        source(config, writer)
        assert len(writer.rows) == n and not writer.refused, writer.refused[:3]

    config = folder.validate(params)
    took = best(lambda: build(folder.build, config), repeat, clean)
    print(f"folder    {took / n * 1000:6.2f} s per 1,000 images  ({n / took:6.1f} img/s)")
    copy = best(lambda: shutil.copytree(tree, raw), repeat, clean)
    print(f"          cp -r baseline  {copy / n * 1000:6.2f} s per 1,000 images; "
          f"ratio {took / copy:.1f}")

    # COCO: every image with 7 polygons (Fashionpedia's mean is ~7 instances per image)
    rng = np.random.default_rng(3)
    images, anns = [], []
    for i in range(n):
        images.append({"id": i, "file_name": f"c{i % 14:02d}/{i:05d}.jpg", "width": 600,
                       "height": 800})
        for k in range(7):
            x, y = rng.integers(0, 500), rng.integers(0, 700)
            poly = [float(v) for v in (x, y, x + 90, y + 10, x + 80, y + 95, x - 5, y + 70)]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": k % 4,
                         "segmentation": [poly], "iscrowd": 0})
    cats = [{"id": k, "name": f"cat{k}", "supercategory": "s"} for k in range(4)]
    (tree / "instances_train.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": cats}))
    config = coco.validate({**params, "split": [0.8, 0.1, 0.1]})
    took = best(lambda: build(coco.build, config), repeat, clean)
    print(f"coco      {took / n * 1000:6.2f} s per 1,000 images  ({n / took:6.1f} img/s), "
          "masks + instances.json")
    clean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=256, help="unpacked size of the test archive")
    parser.add_argument("--images", type=int, default=1000, help="photos for the index build")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        os.chdir(tmp)  # the sources' cache (.cache/) lands here too
        bench_transfer(Path(tmp) / "transfer", args.mb, args.repeat)
        bench_index(Path(tmp) / "index", args.images, args.repeat)


if __name__ == "__main__":
    main()
