"""Segmentation throughput per task, and the wall time of the two segmentation stages.

Run after `dvc repro` (it reads params.yaml and data/prepared):
    python benchmarks/bench_segment.py [--steps 12] [--stages] [--set segment.task=instance ...]
Prints training and evaluation images/s for the semantic model and for Mask R-CNN as
params.yaml configures them, and the ratio against the stock models they slim down (smp's
default Unet-ResNet34, torchvision's full-width Mask R-CNN v2 on ResNet-50); with --stages,
runs train_segmenter and evaluate_segmenter as DVC runs them, in a scratch directory (the
project's outputs are left alone), and prints their wall times and headline metrics. It
asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

from fashionbg.contracts.params import read_variant
from fashionbg.contracts.prepared import load_prepared
from fashionbg.core import paths
from fashionbg.core.params import load_params
from fashionbg.nn.device import seed_everything
from fashionbg.nn.engine import grad_scaler, train_one_epoch, warmup_cosine
from fashionbg.segment.params import read_segment
from fashionbg.segment.tasks import make_task


def override(params: dict[str, Any], settings: list[str]) -> dict[str, Any]:
    for setting in settings:
        key, value = setting.split("=", 1)
        section, name = key.split(".", 1)
        params[section][name] = yaml.safe_load(value)
    return params


# The stock configurations each task's default is measured against.
BASELINES = {
    "semantic": {"arch": "unet", "encoder": "resnet34", "decoder_width": 64},
    "instance": {"instance_backbone": "resnet50"},
}


def bench_task(params: dict[str, Any], task: str, steps: int) -> float:
    """Training images/s over `steps` batches (after one warm-up batch); also prints the
    evaluation rate over the val split."""
    variant = read_variant(params)
    config = read_segment({"segment": {**params["segment"], "task": task}})
    data = load_prepared(paths.prepared(variant))
    setup = make_task(config, data, paths.RAW)
    generator = seed_everything(config.seed)
    model = setup.build_model(load_weights=False)
    rows = setup.rows("train")[: (steps + 1) * config.batch_size]
    warm = setup.loader(setup.dataset(data.images, rows[: config.batch_size], config.augment),
                        config.batch_size, generator)
    timed = setup.loader(setup.dataset(data.images, rows[config.batch_size:], config.augment),
                         config.batch_size, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.task_lr)
    scheduler = warmup_cosine(optimizer, len(warm) + len(timed))
    cpu = torch.device("cpu")
    scaler = grad_scaler(cpu)
    train_one_epoch(model, warm, setup.step, optimizer, scheduler, scaler, cpu, 0)
    train = train_one_epoch(model, timed, setup.step, optimizer, scheduler, scaler, cpu, 1)
    val = setup.rows("val")
    start = time.perf_counter()
    setup.evaluate(model, setup.loader(setup.dataset(data.images, val), config.batch_size), cpu)
    evaluated = len(val) / (time.perf_counter() - start)
    name = (f"{config.arch}/{config.encoder}/w{config.decoder_width}" if task == "semantic"
            else f"maskrcnn/{config.instance_backbone}")
    print(f"{task:8s} {name:26s} train {train.images_per_second:7.1f} img/s "
          f"(batch {config.batch_size}, augment {config.augment})   eval {evaluated:7.1f} img/s")
    return train.images_per_second


def bench_stages(params: dict[str, Any]) -> None:
    """Both stages as subprocesses in a scratch dir that links the project's data."""
    with tempfile.TemporaryDirectory(prefix="bench_segment.") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        for name in ("prepared", "raw"):
            if (ROOT / "data" / name).exists():
                (work / "data" / name).symlink_to(ROOT / "data" / name)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for stage in ("train_segmenter", "evaluate_segmenter"):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=work, env=env,
                           check=True, capture_output=True)
            print(f"stage {stage:18s} {time.perf_counter() - start:6.1f} s wall")
        metrics = json.loads((work / "metrics/detail/segmentation.json").read_text())
        key = "miou" if metrics["task"] == "semantic" else "mask_ap"
        cross = metrics["cross_variant"]
        print(f"{metrics['task']} trained on {metrics['variant']}: test {key} "
              f"{metrics['test'][key]}, on {cross['variant']} images {cross[key]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed training batches per task")
    parser.add_argument("--baseline-steps", type=int, default=3,
                        help="timed training batches of each stock baseline model")
    parser.add_argument("--stages", action="store_true", help="also time both stages")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a params.yaml value (repeatable)")
    args = parser.parse_args()
    params = override(load_params(ROOT / "params.yaml"), args.set)
    print(f"torch threads: {torch.get_num_threads()}")
    for task in ("semantic", "instance"):
        ours = bench_task(params, task, args.steps)
        stock = {**params, "segment": {**params["segment"], **BASELINES[task]}}
        baseline = bench_task(stock, task, args.baseline_steps)
        print(f"{task:8s} training speed-up over the stock model: {ours / baseline:.2f}x")
    if args.stages:
        bench_stages(params)


if __name__ == "__main__":
    main()
