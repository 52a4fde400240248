"""One command for a GPU machine: images/s of background removal (ONNX Runtime's CPU provider
against its CUDA provider, one photo and a batch per call), and of both training stages in one
process and under DDP over every visible GPU (train.nproc: the stage's own launcher), in one
table.

    python benchmarks/bench_gpu.py [--quick]        (or: make bench-gpu)

Training rows run the stages themselves (gpu_check.run_stage: `python -m stages.train_*`,
with train.nproc 1 and the number of GPUs) in a temporary project over a synthetic prepared cache, and report the
engine's own steady throughput (every epoch but the first, summed over ranks; dvclive's
train_images_per_second). Without CUDA the same rows run on the CPU, DDP with
2 gloo processes, and the CUDA provider rows say why they are missing. --quick shrinks sizes so
the whole table takes about a minute on 2 CPU cores. Needs models/rembg (fetched if absent).
It asserts nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from bench_rembg import photos
from bench_train_input import synthetic_cache
from gpu_check import SOD, removal_rate, run_stage, stage_summary

from fashionbg.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Sizes:
    photos: int                     # background removal
    photo_height: int
    images: int                     # training cache rows
    classify: tuple[int, int]
    segment: tuple[int, int]
    epochs: int                     # the first is left out of the throughput


FULL = Sizes(photos=64, photo_height=1024, images=1024, classify=(224, 224),
             segment=(384, 288), epochs=3)
QUICK = Sizes(photos=4, photo_height=256, images=16, classify=(64, 48), segment=(64, 48),
              epochs=2)


def row(label: str, rate: float | None, note: str = "") -> None:
    figure = f"{rate:9.1f}" if rate is not None else f"{'n/a':>9s}"
    print(f"{label:40s} {figure}  {note}", flush=True)


def background_rows(root: Path, sizes: Sizes) -> None:
    """u2netp over the same demo photos with each provider (the stage's own loop)."""
    import onnxruntime as ort

    rows = photos(root, sizes.photos, sizes.photo_height)

    def rate(device: str, batch: int) -> float:
        return removal_rate(rows, root, root / f"{device}{batch}", device, batch)

    cpu = rate("cpu", 1)
    row("background removal, cpu provider", cpu, f"{len(rows)} photos, "
        f"{sizes.photo_height} px high, u2netp")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        why = "no CUDA provider (install onnxruntime-gpu)"
        row("background removal, cuda provider", None, why)
        row(f"background removal, cuda, batch {SOD.batch}", None, why)
        return
    for batch in (1, SOD.batch):
        label = "cuda provider" if batch == 1 else f"cuda, batch {SOD.batch}"
        try:
            cuda = rate("cuda", batch)
        except UserError as err:     # the provider is installed but its libraries do not load
            row(f"background removal, {label}", None, str(err)[:60])
            continue
        row(f"background removal, {label}", cuda, f"{cuda / cpu:.2f}x cpu provider")


def project(root: Path, size: tuple[int, int], sizes: Sizes, processes: int, nproc: int
            ) -> Path:
    """A project with a synthetic cache and params.yaml's training settings (augmentation
    standard, batch sizes rounded up to a multiple of `processes`, train.nproc `nproc`)."""
    synthetic_cache(root / "data/prepared/original", sizes.images, size)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["variant"] = "original"
    for task in ("classify", "segment"):
        batch = params[task]["batch_size"]
        params[task].update(epochs=sizes.epochs, augment="standard",
                            batch_size=-(-batch // processes) * processes)
    params["segment"].update(task="semantic", pretrained=False)
    params["train"]["nproc"] = nproc
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def stage_rate(root: Path, stage: str) -> float:
    """The stage's steady images/s, with as many processes as its train.nproc."""
    result = run_stage(root, stage, timeout=None)
    if result.returncode != 0:
        sys.exit(f"{stage} failed:\n{result.stderr[-3000:]}")
    return stage_summary(root, stage)["train_images_per_second"]


def training_rows(root: Path, sizes: Sizes) -> None:
    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    ddp = gpus if cuda else 2
    ddp_batch = max(ddp, 1)
    where = f"{gpus} GPU(s)" if cuda else "cpu, DDP on 2 gloo processes"
    for stage, size in (("train_classifier", sizes.classify), ("train_segmenter", sizes.segment)):
        shape = f"{sizes.images} images of {size[0]}x{size[1]}"
        # the same batch size in both runs: rounded up to a multiple of the DDP processes
        one = stage_rate(project(root / stage / "one", size, sizes, ddp_batch, 1), stage)
        row(f"{stage}, 1 process", one, f"{shape}, {where}")
        if ddp < 2:
            row(f"{stage}, DDP", None, "one GPU: nothing to spread over")
            continue
        many = stage_rate(project(root / stage / "ddp", size, sizes, ddp_batch, ddp), stage)
        row(f"{stage}, DDP {ddp} processes", many, f"{many / one:.2f}x 1 process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests, CPU)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"{device}; torch {torch.__version__}; {os.cpu_count()} CPU cores")
    print(f"{'row':40s} {'images/s':>9s}  note")
    with tempfile.TemporaryDirectory() as tmp:
        background_rows(Path(tmp) / "sod", sizes)
        training_rows(Path(tmp), sizes)


if __name__ == "__main__":
    main()
