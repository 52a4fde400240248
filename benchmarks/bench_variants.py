"""Disk and time of each background variant on the demo, against the original variant, in the
same run.

    python benchmarks/bench_variants.py [--repeats 3] [--images-per-class 60]

Builds the demo in a temp project (the real download, fetch_model and remove_background stages,
rembg on the CPU), then runs the real `python -m stages.prepare` there with data.variants set to
[original, rembg] (the baseline: the two caches every run builds) and to the baseline plus one
variant (plus only_bg for the mixed ones, whose backgrounds it is), each `--repeats` times,
keeping the fastest. A variant's time is its stage time minus the baseline's (minus only_bg's
too for the mixed ones), its ratio that time over the baseline's; its disk is its cache
directory, its ratio that over the original cache's. only_bg is timed under every
background.person_fill. Timing depends on the load of the machine; it asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fashionbg.background.params import PERSON_FILLS
from fashionbg.contracts.params import MIXED, REQUIRED, VARIANTS

ROOT = Path(__file__).resolve().parents[1]
MIB = 2 ** 20


def stage(project: Path, name: str) -> float:
    """Seconds `python -m stages.<name>` takes in `project` (interpreter start included)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=project, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def set_params(project: Path, variants: list[str], person_fill: str) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["variants"] = variants
    params["background"]["person_fill"] = person_fill
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def prepare_time(project: Path, variants: list[str], person_fill: str, repeats: int) -> float:
    """The fastest of `repeats` prepare runs building `variants`."""
    set_params(project, variants, person_fill)
    return min(stage(project, "prepare") for _ in range(repeats))


def disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images-per-class", type=int, default=None,
                        help="the demo's size (default: params.yaml's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        if args.images_per_class:
            params["data"]["demo"]["images_per_class"] = args.images_per_class
        default_fill = params["background"]["person_fill"]
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        setup = {name: stage(project, name)
                 for name in ("download", "fetch_model", "remove_background")}
        print("demo built: " + ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()))

        base = list(REQUIRED)
        baseline = prepare_time(project, base, default_fill, args.repeats)
        fills = {fill: prepare_time(project, [*base, "only_bg"], fill, args.repeats) - baseline
                 for fill in PERSON_FILLS}
        extra = {"original": baseline, "rembg": baseline}
        for v in (v for v in VARIANTS if v not in REQUIRED):
            if v == "only_bg":
                extra[v] = fills[default_fill]
            elif v in MIXED:
                extra[v] = (prepare_time(project, [*base, "only_bg", v], default_fill,
                                         args.repeats) - baseline - fills[default_fill])
            else:
                extra[v] = prepare_time(project, [*base, v], default_fill, args.repeats) - baseline

        set_params(project, list(VARIANTS), default_fill)
        every = min(stage(project, "prepare") for _ in range(args.repeats))
        sizes = {v: disk(project / "data" / "prepared" / v) for v in VARIANTS}

    print(f"\nprepare, best of {args.repeats}: original + rembg {baseline:.2f} s (the baseline),"
          f" all {len(VARIANTS)} variants {every:.2f} s ({every / baseline:.2f}x)")
    print(f"{'variant':<12} {'time s':>8} {'x baseline':>10} {'disk MiB':>9} {'x original':>10}")
    for v in VARIANTS:
        shown = "(baseline)" if v in REQUIRED else f"{extra[v] / baseline:10.2f}"
        when = f"{baseline:8.2f}" if v in REQUIRED else f"{extra[v]:8.2f}"
        print(f"{v:<12} {when} {shown:>10} {sizes[v] / MIB:9.2f} "
              f"{sizes[v] / sizes['original']:10.2f}")
    print("(original and rembg: the baseline run builds both; disk: each cache directory)")
    print("\nonly_bg by background.person_fill (seconds over the baseline): "
          + ", ".join(f"{fill} {t:.2f}" for fill, t in fills.items()))


if __name__ == "__main__":
    main()
