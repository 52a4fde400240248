"""GPU acceptance in one command: every CUDA path runs once on small data and is checked,
each row printed as it finishes (path | result | images/s | note); exit code 1 if any row fails.

    python benchmarks/gpu_check.py [--expect-gpus N] [--rehearse]   (or: make gpu-check)

Rows: the devices (the driver's NVIDIA GPUs, as `nvidia-smi -L` or /proc/driver/nvidia list
them, against what torch and ONNX Runtime can use, and --expect-gpus); the remove_background
stage run as users run it (a subprocess: so libraries that only load where torch was imported
first would show), its log saying the session ran on CUDA, its masks against the CPU
provider's (MASKS); rembg's throughput at 8 photos a call against one, every ONNX session's
provider checked; both training stages (classifier, semantic segmenter) with bf16 autocast
(only where the card has it natively), fp16 autocast with loss scaling (forced through
train.precision, and checked in the stage's own log), channels_last and train.augment_on:
device (every training row reads the stage's `model input` line: the layout, device and place
of augmentation its first batch really had); the instance segmenter once; DDP with NCCL over
every visible GPU (skipped on one GPU; NCCL's own log must show it ran), and for the classifier
its rate against one process at the same batch per process (DDP_GOAL: at least 0.8 N on N
GPUs; on the CPU rehearsal a figure only); and each evaluation
stage on CUDA against the same checkpoint evaluated on the CPU (CLASSIFY_EVAL, SEGMENT_EVAL).
Training and evaluation rows run the stages themselves in temporary projects over synthetic
figures, as `dvc repro` would (run_stage starts them; they launch their own DDP processes).

Without CUDA and without NVIDIA devices it prints one line and exits 0; with NVIDIA devices that
torch or ONNX Runtime cannot use it fails. --rehearse runs the same rows on the CPU instead (CPU
autocast, DDP on 2 gloo processes, the CPU provider against itself), to try this script without
a GPU: it proves nothing about CUDA. On a GPU the table is also written to reports/gpu_check.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fashionbg.nn.engine import native_bf16

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "tests"))     # test_segment_train's synthetic figures
REPORT = ROOT / "reports" / "gpu_check.md"
NO_CUDA = ("no CUDA device: gpu-check has nothing to run; run `make gpu-check` on a machine "
           "with an NVIDIA GPU after `make setup-gpu` (docs/gpus-and-clusters.md: GPU acceptance)")
STAGE_TIMEOUT = 240          # seconds for one stage run; the whole check stays under 8 minutes


@dataclass(frozen=True)
class Row:
    path: str
    result: str                  # pass | fail | skipped
    rate: float | None = None    # images/s
    note: str = ""


HEADER = ["| path | result | images/s | note |", "|---|---|---:|---|"]


def table_line(r: Row) -> str:
    rate = f"{r.rate:.1f}" if r.rate is not None else "n/a"
    return f"| {r.path} | {r.result} | {rate} | {r.note.replace('|', '/')} |"


def table(rows: list[Row]) -> str:
    """The one table: path | result | images/s | note, as Markdown (reads as plain text)."""
    return "\n".join([*HEADER, *map(table_line, rows)])


class Printed(list):
    """The rows so far; each printed as it is added, so a long check shows its progress."""

    def append(self, row: Row) -> None:
        print(table_line(row), flush=True)
        super().append(row)

    def extend(self, rows) -> None:     # type: ignore[override]
        for row in rows:
            self.append(row)


# --- devices -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Devices:
    nvidia: list[str]            # what the driver lists
    torch_gpus: int              # what torch can use
    onnx_cuda: bool              # whether ONNX Runtime has its CUDA provider


def seen_devices() -> Devices:
    import onnxruntime as ort

    from fashionbg.core.nvidia import nvidia_devices

    return Devices(nvidia_devices(), torch.cuda.device_count() if torch.cuda.is_available()
                   else 0, "CUDAExecutionProvider" in ort.get_available_providers())


def device_row(seen: Devices, expect: int | None) -> Row:
    """Fails where the driver lists GPUs that torch or ONNX Runtime cannot use (a driver too
    old for torch's CUDA, a CPU build), or fewer GPUs than expected."""
    problems = []
    if seen.nvidia and seen.torch_gpus == 0:
        problems.append(f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use "
                        "them: a CPU build, or a driver too old for its CUDA")
    if seen.nvidia and not seen.onnx_cuda:
        problems.append("ONNX Runtime has no CUDA provider (run make setup-gpu)")
    if expect is not None and seen.torch_gpus < expect:
        problems.append(f"expected {expect} GPU(s)")
    note = (f"driver lists {len(seen.nvidia)} NVIDIA GPU(s), torch uses {seen.torch_gpus}, "
            f"ONNX Runtime CUDA provider {'present' if seen.onnx_cuda else 'absent'}")
    return Row("devices", verdict(not problems), None, "; ".join([note, *problems]))


def exit_code(rows: list[Row]) -> int:
    return 1 if any(r.result == "fail" for r in rows) else 0


def verdict(ok: bool) -> str:
    return "pass" if ok else "fail"


# --- background removal --------------------------------------------------------------------

@dataclass(frozen=True)
class MaskTolerance:
    """How close the CUDA provider's masks must be to the CPU provider's, in /255 units: the
    mean absolute difference, and the share of pixels differing by more than `far`. (Kernels
    sum in another order and rembg min-max-stretches each prediction, so edges move a little.)"""
    mean_abs: float = 2.0
    far: int = 32
    far_share: float = 0.01


MASKS = MaskTolerance()


def mask_difference(a: np.ndarray, b: np.ndarray, far: int = MASKS.far) -> tuple[float, float]:
    """(mean |a - b|, share of pixels with |a - b| > far) of two uint8 masks of one shape."""
    if a.shape != b.shape:
        return float("inf"), 1.0
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(diff.mean()), float((diff > far).mean())


def masks_agree(pairs: list[tuple[np.ndarray, np.ndarray]], tol: MaskTolerance = MASKS
                ) -> tuple[bool, str]:
    """Whether every mask pair is within `tol`, and a note with the worst figures."""
    if not pairs:
        return False, "no masks to compare"
    diffs = [mask_difference(a, b, tol.far) for a, b in pairs]
    worst_mean, worst_far = max(d[0] for d in diffs), max(d[1] for d in diffs)
    ok = worst_mean <= tol.mean_abs and worst_far <= tol.far_share
    return ok, (f"vs cpu provider, worst photo: mean abs diff {worst_mean:.2f}/255 "
                f"(<= {tol.mean_abs}), {worst_far:.2%} of pixels > {tol.far}/255 "
                f"(<= {tol.far_share:.0%})")


def removal_rate(rows: list, root: Path, out: Path, device: str, batch: int) -> float:
    """Masks of `rows` (raw photos under root/raw) into `out` with the stage's own loop, on
    `device`'s provider, `batch` photos a call; images/s after a warm-up at that batch size
    (cuDNN picks its kernels per input shape). Raises if an ONNX session is not on `device`."""
    from fashionbg.background.sod import (
        SodOptions,
        batched_model,
        make_session,
        remove_backgrounds,
    )

    home = sod_home()
    session = make_session("u2netp", home, device)
    batched = batched_model(session, "u2netp", home, batch)
    wanted = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    for name, inner in (("rembg's", session.inner_session), ("the batched", batched.inner)):
        if inner.get_providers()[0] != wanted:
            raise RuntimeError(f"{name} ONNX session runs on {inner.get_providers()[0]}")
    remove_backgrounds(rows[:batch], root / "raw", root / "warm", session, SodOptions(),
                       batched=batched)
    start = time.perf_counter()
    report = remove_backgrounds(rows, root / "raw", out, session, SodOptions(), batched=batched)
    if report.failures:
        raise RuntimeError(f"{len(report.failures)} photo(s) failed: {report.failures[0][1]}")
    return len(rows) / (time.perf_counter() - start)


def sod_home() -> Path:
    from fashionbg.background.weights import ensure_model
    from fashionbg.core import paths

    return ensure_model("u2netp", ROOT / paths.SOD_HOME).parent


@dataclass(frozen=True)
class SodSizes:
    photos: int
    height: int
    batch: int


SOD = SodSizes(photos=16, height=512, batch=8)
SOD_REHEARSAL = SodSizes(photos=4, height=128, batch=2)


def masks_of(rows: list, out: Path) -> list[np.ndarray]:
    from PIL import Image

    from fashionbg.contracts.masks import alpha_path

    return [np.asarray(Image.open(out / alpha_path(r.path))) for r in rows]


def background_rows(root: Path, device: str, sizes: SodSizes) -> list[Row]:
    """The stage in a subprocess, then the batched loop against one photo a call."""
    from bench_rembg import photos

    rows = photos(root, sizes.photos, sizes.height)
    stage_label = f"remove_background stage on {device}"
    rate_label = f"rembg on {device}, batch {sizes.batch} vs 1 per call"
    try:
        removal_rate(rows, root, root / "reference", "cpu", 1)
    except Exception as err:   # e.g. no weights and no registry to fetch them from
        return [Row(label, "fail", None, f"cpu reference failed: {err}"[:150])
                for label in (stage_label, rate_label)]
    reference = masks_of(rows, root / "reference")
    results = [guarded(stage_label, lambda: stage_sod_row(stage_label, root, rows, device,
                                                          reference))]
    try:
        one, many = (removal_rate(rows, root, root / f"{device}{b}", device, b)
                     for b in (1, sizes.batch))
    except Exception as err:   # the provider is missing or its libraries do not load
        return [*results, Row(rate_label, "fail", None, str(err).splitlines()[0][:150])]
    ok, note = masks_agree([*zip(masks_of(rows, root / f"{device}1"), reference),
                            *zip(masks_of(rows, root / f"{device}{sizes.batch}"), reference)])
    return [*results, Row(rate_label, verdict(ok), many,
                          f"{many / one:.2f}x one per call ({one:.1f} images/s); {note}")]


def stage_sod_row(label: str, root: Path, rows: list, device: str,
                  reference: list[np.ndarray]) -> Row:
    """`python -m stages.remove_background` on the photos with background.device `device`
    (batch auto): its log must say it ran there, its masks must match the CPU's."""
    from fashionbg.core import paths

    project = root / "stage"
    (project / "data").mkdir(parents=True)
    (project / paths.RAW).symlink_to(root / "raw")
    (project / paths.SOD_HOME).parent.mkdir(parents=True)
    (project / paths.SOD_HOME).symlink_to(sod_home())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["background"].update(device=device, batch_size="auto")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    start = time.perf_counter()
    try:
        result = run_stage(project, "remove_background")
    except subprocess.TimeoutExpired:
        return Row(label, "fail", None, f"timed out after {STAGE_TIMEOUT} s")
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return Row(label, "fail", None, last_line(result.stderr))
    ran = f"on {device}, {8 if device == 'cuda' else 1} photo(s) per call"
    if ran not in result.stderr:
        return Row(label, "fail", None, f"its log lacks {ran!r}: {last_line(result.stderr)}")
    ok, note = masks_agree(list(zip(masks_of(rows, project / paths.REMBG), reference)))
    return Row(label, verdict(ok), None, f"{ran}; {note}; {seconds:.0f} s with start-up")


# --- training and evaluation ---------------------------------------------------------------

def run_stage(project: Path, stage: str, timeout: float | None = STAGE_TIMEOUT
              ) -> subprocess.CompletedProcess:
    """Run `python -m stages.<stage>` in `project` as users do: the stage starts as many DDP
    processes as the project's train.nproc."""
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=project,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "NCCL_DEBUG": "INFO"},
                          capture_output=True, text=True, timeout=timeout)


def stage_summary(project: Path, stage: str) -> dict:
    from fashionbg.core import paths

    return json.loads((project / paths.live_dir(stage) / "metrics.json").read_text())


def write_project(root: Path, device: str, processes: int, segment_task: str = "semantic",
                  train: dict | None = None, per_process: int = 8) -> Path:
    """Synthetic figures with masks and two labels, original and rembg variants (train
    `per_process` per DDP process, val 8, test 8), and params.yaml with small models on
    `device`."""
    from test_segment_train import CLASSES, SEGMENT, figures

    from fashionbg.contracts.prepared import save_prepared

    n_train = per_process * processes
    count = n_train + 16
    images, masks, rembg = figures(count)
    splits = np.repeat([0, 1, 2], [n_train, 8, 8])
    labels = np.arange(count) % 2
    for name, pictures in (("original", images), ("rembg", rembg)):
        meta = {"variant": name, "labels": ["a", "b"], "mask_classes": CLASSES,
                "image_size": [64, 48], "paths": [f"images/{i}.png" for i in range(count)],
                "fill": [0, 0, 0]}
        save_prepared(root / "data/prepared" / name, pictures, masks, labels, splits, meta,
                      alpha=(masks > 0).astype(np.uint8) * 255 if name == "rembg" else None)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    batch = 4 * processes        # 4 per process: the same effective batch in every row
    params["data"]["variant"] = "original"
    params["classify"].update(arch="resnet18", pretrained=False, augment="standard", epochs=2,
                              batch_size=batch, device=device)
    params["segment"] = {**params["segment"], **SEGMENT, "task": segment_task,
                         "augment": "standard", "batch_size": batch, "device": device}
    params["train"].update(train or {})
    params["evaluate"].update(device=device, overlays=1, batch_size=16)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


@dataclass(frozen=True)
class Variant:
    """One training row: train: settings and what the stage's log must then say."""
    label: str
    train: dict
    expect: str = ""


def training_variants(bf16: bool) -> list[Variant]:
    rows = [Variant("fp16 + loss scaling", {"precision": "fp16"},
                    "precision: fp16 autocast with loss scaling"),
            Variant("channels_last", {"channels_last": True}),
            Variant("augment_on device", {"augment_on": "device"})]
    if bf16:
        rows.insert(0, Variant("bf16 autocast", {"precision": "bf16"},
                               "precision: bf16 autocast"))
    return rows


@dataclass(frozen=True)
class ModelInput:
    """What a training row asks of the batches its model receives, as the stage's `model
    input` line (logged at the first batch) states them."""
    device: str
    layout: str = "contiguous"          # channels_last; list for Mask R-CNN (a list of images)
    augment: str = "in the loader"      # "on <device>" with train.augment_on: device


MODEL_INPUT = re.compile(r"model input: (\S+) on (\S+); augmentation (.+)")


def asked_input(train: dict, device: str) -> ModelInput:
    return ModelInput(device, "channels_last" if train.get("channels_last") else "contiguous",
                      f"on {device}" if train.get("augment_on") == "device" else "in the loader")


def input_problems(log: str, asked: ModelInput) -> list[str]:
    """How the stage's `model input` line differs from what the row asked (cuda:1 is cuda)."""
    seen = MODEL_INPUT.search(log)
    if seen is None:
        return ["log lacks its 'model input' line"]
    layout, device, augment = seen.groups()
    return [p for p, bad in ((f"model input {layout}, not {asked.layout}",
                              layout != asked.layout),
                             (f"model input on {device}, not {asked.device}",
                              device.split(":")[0] != asked.device),
                             (f"augmentation {augment}, not {asked.augment}",
                              not augment.split(":")[0].endswith(asked.augment)))
            if bad]


def train_row(label: str, project: Path, stage: str, asked: ModelInput, nproc: int = 1,
              expect: str = "") -> Row:
    """Run a training stage and check it: exit 0, one kept epoch, a finite loss, `expect` in
    its log, and its model input as `asked`."""
    try:
        result = run_stage(project, stage)
    except subprocess.TimeoutExpired:
        return Row(label, "fail", None, f"timed out after {STAGE_TIMEOUT} s")
    log = result.stdout + result.stderr
    if result.returncode != 0:
        return Row(label, "fail", None, last_line(result.stderr))
    summary = stage_summary(project, stage)
    loss = summary.get("train", {}).get("loss")
    problems = [p for p, bad in ((f"log lacks {expect!r}", expect and expect not in log),
                                 ("no finite training loss",
                                  not (isinstance(loss, float) and np.isfinite(loss))),
                                 (f"'kept epoch' logged {log.count('kept epoch')} times",
                                  log.count("kept epoch") != 1),
                                 (f"not {nproc} process(es)", f"{nproc} process(es)" not in log))
                if bad] + input_problems(log, asked)
    rate = summary.get("train_images_per_second")
    return Row(label, verdict(not problems), rate,
               "; ".join(problems) or f"train loss {loss:.3f}, {nproc} process(es)")


def last_line(log: str) -> str:
    lines = [x for x in log.strip().splitlines() if x.strip()]
    return (lines[-1] if lines else "no output")[:150]


@dataclass(frozen=True)
class EvalTolerance:
    """How far evaluation on CUDA (autocast) may be from the CPU's (float32) on one checkpoint:
    top-1 predictions may differ on at most `images` test images (per tested variant);
    segmentation mIoU by at most `miou`."""
    images: int = 1
    miou: float = 0.01


EVAL = EvalTolerance()


def predictions_differ(a: list[dict], b: list[dict]) -> int:
    """Rows of two classification prediction files whose predicted label differs."""
    key = lambda r: (r["tested_on"], r["path"])   # noqa: E731
    other = {key(r): r["predicted"] for r in b}
    return sum(other.get(key(r)) != r["predicted"] for r in a) + abs(len(a) - len(b))


def classify_eval_agrees(a: list[dict], b: list[dict], tol: EvalTolerance = EVAL
                         ) -> tuple[bool, str]:
    variants = {r["tested_on"] for r in a} or {""}
    worst = max(predictions_differ([r for r in a if r["tested_on"] == v],
                                   [r for r in b if r["tested_on"] == v]) for v in variants)
    return (bool(a) and worst <= tol.images,
            f"top-1 differs on {worst} of {len(a) // len(variants)} test images in the worst "
            f"variant (<= {tol.images})")


def segment_eval_agrees(cuda: dict, cpu: dict, tol: EvalTolerance = EVAL) -> tuple[bool, str]:
    a, b = cuda["test"]["miou"], cpu["test"]["miou"]
    if a is None or b is None:
        return False, "no mIoU"
    return abs(a - b) <= tol.miou, f"test mIoU {a:.4f} vs cpu {b:.4f} (abs diff <= {tol.miou})"


def eval_row(label: str, project: Path, stage: str, device: str,
             agree: Callable[[Path, Path], tuple[bool, str]]) -> Row:
    """Evaluate the project's checkpoint on `device` and on the CPU, and compare."""
    runs = {}
    for i, where in enumerate((device, "cpu")):
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["evaluate"]["device"] = where
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        start = time.perf_counter()
        try:
            result = run_stage(project, stage)
        except subprocess.TimeoutExpired:
            return Row(label, "fail", None, f"{where}: timed out after {STAGE_TIMEOUT} s")
        if result.returncode != 0:
            return Row(label, "fail", None, f"{where}: {last_line(result.stderr)}")
        out = project / f"eval-{i}-{where}"
        out.mkdir()
        for name in ("metrics", "predictions"):     # what the next run would overwrite
            os.replace(project / name, out / name)
        runs[where] = (out, time.perf_counter() - start)
    ok, note = agree(runs[device][0], runs["cpu"][0])
    return Row(label, verdict(ok), None, f"{note}; stage {runs[device][1]:.0f} s on {device}, "
                                         f"{runs['cpu'][1]:.0f} s on cpu")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def classify_outputs_agree(a: Path, b: Path) -> tuple[bool, str]:
    from fashionbg.core import paths

    return classify_eval_agrees(*(read_csv(d / paths.CLASSIFICATION_PREDICTIONS) for d in (a, b)))


def segment_outputs_agree(a: Path, b: Path) -> tuple[bool, str]:
    from fashionbg.core import paths

    return segment_eval_agrees(*(json.loads((d / paths.SEGMENTATION_DETAIL).read_text())
                                 for d in (a, b)))


STAGES = {"train_classifier": ("evaluate_classifier", classify_outputs_agree),
          "train_segmenter": ("evaluate_segmenter", segment_outputs_agree)}


def guarded(label: str, make: Callable[[], Row]) -> Row:
    """The row `make` builds, or a failed row when checking it raised (the table still prints)."""
    try:
        return make()
    except Exception as err:
        return Row(label, "fail", None, f"{type(err).__name__}: {err}"[:150])


DDP_GOAL = 0.8       # DDP on N GPUs against one process, the same batch per process: >= 0.8 N
DDP_IMAGES = 32      # classifier training images per process in both: 8 steps an epoch, a rate


def ddp_speedup_row(label: str, ddp_row: Row, one: Row, device: str, ddp: int) -> Row:
    """DDP's training rate against one process's (each with 4 images a step per process); a
    verdict on CUDA only (the rehearsal's gloo processes share the CPU's cores)."""
    if one.result != "pass" or not ddp_row.rate or not one.rate:
        return Row(label, "fail", None, f"no rate: one process {one.result} ({one.note}), "
                                        f"DDP {ddp_row.result}")
    ratio = ddp_row.rate / one.rate
    return Row(label, verdict(device != "cuda" or ratio >= DDP_GOAL * ddp), ddp_row.rate,
               f"{ratio:.2f}x one process ({one.rate:.1f} images/s; goal >= "
               f"{DDP_GOAL * ddp:.1f}x on CUDA)")


def training_rows(rows: list[Row], root: Path, device: str, gpus: int, bf16: bool) -> None:
    """The training and evaluation rows, appended to `rows` as each finishes."""
    ddp = gpus if device == "cuda" else 2      # the rehearsal's DDP: 2 gloo processes
    processes = max(ddp, 1)
    for stage, (evaluate, agree) in STAGES.items():
        checkpoint = None
        for v in training_variants(bf16):
            project = write_project(root / stage / v.label.replace(" ", "_"), device, processes,
                                    train=v.train)
            label = f"{stage}, {v.label}"
            asked = asked_input(v.train, device)
            rows.append(guarded(label, lambda: train_row(label, project, stage, asked, 1,
                                                         v.expect)))
            checkpoint = checkpoint or (project if rows[-1].result == "pass" else None)
        backend = "NCCL" if device == "cuda" else "gloo"
        if ddp < 2:
            rows.append(Row(f"{stage}, DDP ({backend})", "skipped", None, "skipped: 1 GPU"))
        else:
            per_process = DDP_IMAGES if stage == "train_classifier" else 8
            project = write_project(root / stage / "ddp", device, processes,
                                    train={"nproc": ddp}, per_process=per_process)
            label = f"{stage}, DDP {ddp} processes ({backend})"
            # NCCL's own log (NCCL_DEBUG=INFO) shows that NCCL, not another backend, ran
            nccl = "NCCL INFO" if device == "cuda" else ""
            rows.append(guarded(label, lambda: train_row(label, project, stage,
                                                         ModelInput(device), ddp, nccl)))
            if stage == "train_classifier":
                ddp_row = rows[-1]
                one = write_project(root / stage / "one", device, 1, per_process=per_process)
                label = f"{stage}, DDP {ddp} vs 1 process ({backend})"
                rows.append(guarded(label, lambda: ddp_speedup_row(
                    label, ddp_row, train_row(label, one, stage, ModelInput(device)), device,
                    ddp)))
        label = f"{evaluate}, {device} vs cpu"
        rows.append(guarded(label, lambda: eval_row(label, checkpoint, evaluate, device, agree))
                    if checkpoint else
                    Row(label, "fail", None, "no checkpoint: every training row failed"))
    project = write_project(root / "instance", device, processes, "instance")
    label = "train_segmenter (instance), auto precision"
    rows.append(guarded(label, lambda: train_row(label, project, "train_segmenter",
                                                 ModelInput(device, "list"))))


# --- logits: the same seeded weights on the device and on the CPU -------------------------

# How far fp32 logits on CUDA may be from the CPU's for one seeded model and batch, as a share
# of the largest CPU logit: cuDNN picks other kernels and convolutions use TF32 by default
# (10-bit mantissa, ~1e-3 relative error per layer), so 1 % leaves room for depth, not for a bug.
LOGITS_RELATIVE = 0.01
LOGIT_SIZE = (64, 48)


def seeded_models() -> dict[str, tuple[torch.nn.Module, Callable]]:
    """The classifier, the semantic and the instance segmenter of write_project's params,
    each built from seed 0, with the function that gives its logits for a uint8 batch."""
    from test_segment_train import SEGMENT

    from fashionbg.classify.models import build_classifier
    from fashionbg.classify.params import read_classify
    from fashionbg.segment.models import build_instance, build_semantic
    from fashionbg.segment.params import read_segment

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["classify"].update(arch="resnet18", pretrained=False)
    params["segment"] = {**params["segment"], **SEGMENT}
    classify, segment = read_classify(params), read_segment(params)
    torch.manual_seed(0)
    return {"classifier": (build_classifier(classify, 2, False), lambda m, x: m(x)),
            "semantic": (build_semantic(segment, 4, False), lambda m, x: m(x)),
            "instance": (build_instance(segment, 3, LOGIT_SIZE, False), box_logits)}


def box_logits(model: Any, images: torch.Tensor) -> torch.Tensor:
    """Mask R-CNN's box-head class logits and box regressions for two fixed boxes per image
    (its detections would depend on score thresholds)."""
    heads = model.roi_heads
    batch, _ = model.transform([image.float() for image in images])
    features = model.backbone(batch.tensors)
    h, w = LOGIT_SIZE
    boxes = torch.tensor([[0, 0, w, h], [w / 4, h / 4, 3 * w / 4, 3 * h / 4]],
                         device=images.device)
    pooled = heads.box_roi_pool(features, [boxes] * len(images), batch.image_sizes)
    scores, regression = heads.box_predictor(heads.box_head(pooled))
    return torch.cat([scores, regression], dim=1)


def logits_difference(there: torch.Tensor, cpu: torch.Tensor) -> float:
    """max |there - cpu| as a share of the largest CPU logit (inf where shapes differ)."""
    if there.shape != cpu.shape:
        return float("inf")
    return float((there - cpu).abs().max() / cpu.abs().max().clamp_min(1e-12))


def logits_row(device: str) -> Row:
    """Each seeded model's fp32 logits on `device` against the CPU's, one fixed batch."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, *LOGIT_SIZE), dtype=torch.uint8, generator=generator)
    notes, ok = [], True
    for name, (model, logits) in seeded_models().items():
        model.eval()
        with torch.no_grad():
            cpu = logits(model, images).float()
            there = logits(model.to(device), images.to(device)).float().cpu()
        worst = logits_difference(there, cpu)
        ok &= worst <= LOGITS_RELATIVE
        notes.append(f"{name} {worst:.1e}")
    return Row(f"logits on {device} vs cpu, seeded models", verdict(ok), None,
               f"max abs diff / max abs cpu logit (<= {LOGITS_RELATIVE}): " + ", ".join(notes))


# --- the training loop against compute alone ------------------------------------------------

LOOP_GOAL = 0.9      # the engine's epoch over its DataLoader, against steps over staged batches


def loop_row(root: Path, device: str, images: int) -> Row:
    """benchmarks/bench_train_input.py's comparison for the classifier and the semantic
    segmenter (params.yaml's models and batch sizes): images/s of the training loop against
    the same model stepping over batches already augmented and on the device. The goal holds
    on CUDA; the rehearsal only reports."""
    from bench_train_input import (
        CLASSIFY_SIZE,
        SEGMENT_SIZE,
        classify_workload,
        compare,
        segment_workload,
        synthetic_cache,
    )

    from fashionbg.core.params import load_params
    from fashionbg.nn.device import seed_everything

    params = load_params(ROOT / "params.yaml")
    ratios, notes = [], []
    # the rehearsal: the classifier only (the segmenter at its size takes minutes on a CPU)
    tasks = [(classify_workload, CLASSIFY_SIZE)]
    tasks += [(segment_workload, SEGMENT_SIZE)] if device == "cuda" else []
    for build, size in tasks:
        data = synthetic_cache(root / f"{size[0]}x{size[1]}", images, size)
        work = build(params, data, torch.device(device), False, seed_everything(0))
        loop, compute = compare(work, torch.device(device), 1)
        ratios.append(loop / compute)
        notes.append(f"{work.name} {loop:.1f} vs {compute:.1f} images/s ({loop / compute:.2f}x)")
    ok = device != "cuda" or min(ratios) >= LOOP_GOAL
    return Row(f"training loop vs compute alone on {device}", verdict(ok), None,
               "; ".join(notes) + f" (goal >= {LOOP_GOAL} on CUDA)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true",
                        help="run the rows on the CPU (no GPU needed; checks this script only)")
    parser.add_argument("--expect-gpus", type=int, default=None, metavar="N",
                        help="fail unless torch can use at least N GPUs")
    args = parser.parse_args(argv)
    seen = seen_devices()
    cuda = seen.torch_gpus > 0
    if not (cuda or seen.nvidia or args.rehearse or args.expect_gpus):
        print(NO_CUDA)
        return 0
    device = "cuda" if cuda else "cpu"
    bf16 = native_bf16(torch.device("cuda")) if cuda else True     # CPU autocast has bf16
    title = (f"gpu-check: {seen.torch_gpus} x {torch.cuda.get_device_name()}" if cuda
             else "gpu-check REHEARSAL on the CPU (proves nothing about CUDA)"
             if args.rehearse else "gpu-check: no GPU torch can use")
    print(f"{title}; torch {torch.__version__}; {os.cpu_count()} CPU cores", flush=True)
    print("\n".join(HEADER), flush=True)
    start = time.perf_counter()
    rows = Printed()
    rows.append(device_row(seen, args.expect_gpus))
    if cuda or args.rehearse:
        with tempfile.TemporaryDirectory() as tmp:
            rows.extend(background_rows(Path(tmp) / "sod", device,
                                        SOD if cuda else SOD_REHEARSAL))
            rows.append(guarded(f"logits on {device} vs cpu", lambda: logits_row(device)))
            images = 256 if cuda else 8
            rows.append(guarded(f"training loop vs compute alone on {device}",
                                lambda: loop_row(Path(tmp) / "loop", device, images)))
            training_rows(rows, Path(tmp), device, seen.torch_gpus, bf16)
    if not bf16:
        rows.append(Row("bf16 autocast", "skipped", None, "this GPU has no native bf16: auto "
                                                          "is fp16"))
    text = (f"{title}; {time.perf_counter() - start:.0f} s\n\n{table(rows)}\n\n"
            f"{'FAILED' if exit_code(rows) else 'all passed'}")
    print(f"\n{time.perf_counter() - start:.0f} s; {'FAILED' if exit_code(rows) else 'all passed'}")
    if cuda:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(text + "\n")
    return exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
