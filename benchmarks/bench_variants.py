"""Disk and time of each background variant on the demo, against the original variant, in the
same run.

    python benchmarks/bench_variants.py [--repeats 3] [--images-per-class 60] [--keep DIR]

Builds the demo in a project folder (the real download, fetch_model and remove_background
stages, rembg on the CPU; `--keep DIR` builds it there once and reuses it), then:

- runs the real `python -m stages.prepare` with data.variants = [original, rembg] (the two
  caches every run builds) and with all variants, and reads each variant's cache size;
- times each variant's own work in this process, on the decoded demo, as prepare does it a chunk
  at a time: for the original, decoding and resizing the photos (what its cache costs); for the
  others, building their images from the decoded arrays (the mixed ones: drawing the partners
  and compositing onto only_bg); only_bg under every background.person_fill.

Ratios are against the original variant. Best of `--repeats`; timing depends on the load of the
machine. It asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from fashionbg.background.composite import composite
from fashionbg.background.params import PERSON_FILLS
from fashionbg.background.variants import Chunk, partner_rows, per_image_variant, truth_alpha
from fashionbg.contracts.masks import alpha_path
from fashionbg.contracts.params import MIXED, REQUIRED, VARIANTS
from fashionbg.contracts.prepared import Prepared, load_variants
from fashionbg.contracts.raw import read_index
from fashionbg.ingest.decode import chunk_rows, decode_chunks

ROOT = Path(__file__).resolve().parents[1]
MIB = 2 ** 20


def stage(project: Path, name: str) -> float:
    """Seconds `python -m stages.<name>` takes in `project` (interpreter start included)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=project, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def set_variants(project: Path, variants: list[str]) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["variants"] = variants
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def build_demo(project: Path, images_per_class: int | None) -> None:
    """The demo's raw photos and rembg masks in `project`, unless a kept folder has them."""
    if (project / "data" / "rembg" / "summary.json").exists():
        print(f"demo reused from {project}")
        return
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if images_per_class:
        params["data"]["demo"]["images_per_class"] = images_per_class
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    took = {name: stage(project, name)
            for name in ("download", "fetch_model", "remove_background")}
    print("demo built: " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))


def best(repeats: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return min(times)


def variant_times(project: Path, built: dict[str, Prepared], person_fill: str,
                  repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds each variant's own work takes on the whole demo, and only_bg's by person fill."""
    original, rembg = built["original"], built["rembg"]
    raw = project / "data" / "raw"
    masks = {r.path: r.mask for r in read_index(raw)}
    items = [(raw / p, raw / masks[p] if masks[p] else None,
              project / "data" / "rembg" / alpha_path(p)) for p in original.meta["paths"]]
    size = tuple(original.meta["image_size"])
    step = chunk_rows(size)
    chunks = [slice(i, i + step) for i in range(0, len(items), step)]
    images, alphas = np.asarray(original.images), np.asarray(rembg.alpha)
    person = truth_alpha(np.asarray(original.masks), alphas)[0]
    fill = tuple(original.meta["fill"])

    def per_image(name: str, how: str) -> Callable[[], object]:
        build = per_image_variant(name)
        return lambda: [build(Chunk(images[c], alphas[c], person[c], fill, how)) for c in chunks]

    def mixed(name: str) -> Callable[[], object]:
        backgrounds = np.asarray(built["only_bg"].images)
        def work() -> None:
            partners = partner_rows(name, original.labels, original.splits, 0)
            for c in chunks:
                composite(images[c], alphas[c], backgrounds[partners[c]])
        return work

    times = {"original": best(repeats, lambda: list(decode_chunks(items, size)))}
    for v in VARIANTS[1:]:
        times[v] = best(repeats, mixed(v) if v in MIXED else per_image(v, person_fill))
    fills = {how: best(repeats, per_image("only_bg", how)) for how in PERSON_FILLS}
    return times, fills


def disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=None,
                        help="the demo's size (default: params.yaml's)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="build the demo in this folder once and reuse it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = args.keep or Path(tmp)
        project.mkdir(parents=True, exist_ok=True)
        build_demo(project, args.images_per_class)
        set_variants(project, list(REQUIRED))
        two = min(stage(project, "prepare") for _ in range(args.repeats))
        set_variants(project, list(VARIANTS))
        every = min(stage(project, "prepare") for _ in range(args.repeats))
        built = load_variants(project / "data" / "prepared")
        sizes = {v: disk(project / "data" / "prepared" / v) for v in VARIANTS}
        person_fill = built["only_bg"].meta["person_fill"]
        times, fills = variant_times(project, built, person_fill, args.repeats)

    n = len(built["original"].splits)
    print(f"\n{n} demo images at {built['original'].meta['image_size']}, best of "
          f"{args.repeats}; prepare (the whole stage, interpreter start included): "
          f"original + rembg {two:.2f} s, all {len(VARIANTS)} variants {every:.2f} s "
          f"({every / two:.2f}x)")
    print(f"{'variant':<12} {'own work s':>10} {'x original':>10} {'disk MiB':>9} "
          f"{'x original':>10}")
    for v in VARIANTS:
        print(f"{v:<12} {times[v]:10.3f} {times[v] / times['original']:10.2f} "
              f"{sizes[v] / MIB:9.2f} {sizes[v] / sizes['original']:10.2f}")
    print("(original: decoding and resizing the photos; disk: each cache directory, masks "
          "included; rembg also keeps its alphas)")
    print(f"only_bg by background.person_fill (default {person_fill}): "
          + ", ".join(f"{how} {t:.3f} s ({t / times['original']:.2f}x original)"
                      for how, t in fills.items()))


if __name__ == "__main__":
    main()
