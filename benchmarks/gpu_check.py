"""GPU acceptance in one command: every CUDA path runs once on small data and is checked,
in one table (path | result | images/s | note); exit code 1 if any row fails.

    python benchmarks/gpu_check.py                  (or: make gpu-check; at most ~8 minutes)

Rows: rembg on ONNX Runtime's CUDA provider, one photo a call and a batch of 8, with masks
compared to the CPU provider's (MASKS); both training stages (classifier, semantic segmenter)
with bf16 autocast, fp16 autocast with loss scaling (forced through train.precision, and
checked in the stage's own log), channels_last and train.augment_on: device; the instance
segmenter once; DDP with NCCL over every visible GPU (skipped on one GPU); and each evaluation
stage on CUDA against the same checkpoint evaluated on the CPU (CLASSIFY_EVAL, SEGMENT_EVAL).
Training and evaluation rows run the stages themselves in temporary projects over synthetic
figures, as `dvc repro` would (run_stage starts them; they launch their own DDP processes).

Without CUDA it prints one line and exits 0. --rehearse runs the same rows on the CPU instead
(CPU autocast, DDP on 2 gloo processes, the CPU provider against itself), to try this script
without a GPU: slow on 2 cores, and it proves nothing about CUDA. On a GPU the table is also
written to reports/gpu_check.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "tests"))     # test_segment_train's synthetic figures
REPORT = ROOT / "reports" / "gpu_check.md"
NO_CUDA = ("no CUDA device: gpu-check has nothing to run; run `make gpu-check` on a machine "
           "with an NVIDIA GPU and onnxruntime-gpu (docs/gpus-and-clusters.md: GPU acceptance)")
STAGE_TIMEOUT = 240          # seconds for one stage run; the whole check stays under 8 minutes
SOD_PHOTOS, SOD_HEIGHT, SOD_BATCH = 8, 512, 8


@dataclass(frozen=True)
class Row:
    path: str
    result: str                  # pass | fail | skipped
    rate: float | None = None    # images/s
    note: str = ""


def table(rows: list[Row]) -> str:
    """The one table: path | result | images/s | note, as Markdown (reads as plain text)."""
    lines = ["| path | result | images/s | note |", "|---|---|---:|---|"]
    for r in rows:
        rate = f"{r.rate:.1f}" if r.rate is not None else "n/a"
        lines.append(f"| {r.path} | {r.result} | {rate} | {r.note.replace('|', '/')} |")
    return "\n".join(lines)


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
    `device`'s provider, `batch` photos a call; images/s after a one-photo warm-up."""
    from fashionbg.background.sod import (
        SodOptions,
        batched_model,
        make_session,
        remove_backgrounds,
    )
    from fashionbg.background.weights import ensure_model
    from fashionbg.core import paths

    home = ensure_model("u2netp", ROOT / paths.SOD_HOME).parent
    session = make_session("u2netp", home, device)
    batched = batched_model(session, "u2netp", home, batch)
    remove_backgrounds(rows[:1], root / "raw", root / "warm", session, SodOptions(),
                       batched=batched)
    start = time.perf_counter()
    report = remove_backgrounds(rows, root / "raw", out, session, SodOptions(), batched=batched)
    if report.failures:
        raise RuntimeError(f"{len(report.failures)} photo(s) failed: {report.failures[0][1]}")
    return len(rows) / (time.perf_counter() - start)


def background_rows(root: Path, device: str) -> list[Row]:
    from bench_rembg import photos
    from PIL import Image

    from fashionbg.contracts.masks import alpha_path

    rows = photos(root, SOD_PHOTOS, SOD_HEIGHT)

    def masks(out: Path) -> list[np.ndarray]:
        return [np.asarray(Image.open(out / alpha_path(r.path))) for r in rows]

    try:
        removal_rate(rows, root, root / "reference", "cpu", 1)
    except Exception as err:   # e.g. no weights and no registry to fetch them from
        return [Row(f"rembg, {device} provider, batch {b}", "fail", None,
                    f"cpu reference failed: {err}"[:150]) for b in (1, SOD_BATCH)]
    reference, results = masks(root / "reference"), []
    for batch in (1, SOD_BATCH):
        label, out = f"rembg, {device} provider, batch {batch}", root / f"{device}{batch}"
        try:
            rate = removal_rate(rows, root, out, device, batch)
        except Exception as err:   # the provider is missing or its libraries do not load
            results.append(Row(label, "fail", None, str(err).splitlines()[0][:150]))
            continue
        ok, note = masks_agree(list(zip(masks(out), reference)))
        results.append(Row(label, verdict(ok), rate, f"{len(rows)} photos, {note}"))
    return results


# --- training and evaluation ---------------------------------------------------------------

def run_stage(project: Path, stage: str, timeout: float | None = STAGE_TIMEOUT
              ) -> subprocess.CompletedProcess:
    """Run `python -m stages.<stage>` in `project` as users do: the stage starts as many DDP
    processes as the project's train.nproc."""
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=project,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=timeout)


def stage_summary(project: Path, stage: str) -> dict:
    from fashionbg.core import paths

    return json.loads((project / paths.live_dir(stage) / "metrics.json").read_text())


def write_project(root: Path, device: str, processes: int, segment_task: str = "semantic",
                  train: dict | None = None) -> Path:
    """Synthetic figures with masks and two labels, original and rembg variants (train 8 per
    DDP process, val 8, test 8), and params.yaml with small models on `device`."""
    from test_segment_train import CLASSES, SEGMENT, figures

    from fashionbg.contracts.prepared import save_prepared

    n_train = 8 * processes
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


def train_row(label: str, project: Path, stage: str, nproc: int = 1, expect: str = "") -> Row:
    """Run a training stage and check it: exit 0, one kept epoch, a finite loss, and `expect`
    in its log."""
    try:
        result = run_stage(project, stage)
    except subprocess.TimeoutExpired:
        return Row(label, "fail", None, f"timed out after {STAGE_TIMEOUT} s")
    log = result.stderr
    if result.returncode != 0:
        return Row(label, "fail", None, last_line(log))
    summary = stage_summary(project, stage)
    loss = summary.get("train", {}).get("loss")
    problems = [p for p, bad in ((f"log lacks {expect!r}", expect and expect not in log),
                                 ("no finite training loss",
                                  not (isinstance(loss, float) and np.isfinite(loss))),
                                 (f"'kept epoch' logged {log.count('kept epoch')} times",
                                  log.count("kept epoch") != 1),
                                 (f"not {nproc} process(es)", f"{nproc} process(es)" not in log))
                if bad]
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


def training_rows(root: Path, device: str, gpus: int, bf16: bool) -> list[Row]:
    ddp = gpus if device == "cuda" else 2      # the rehearsal's DDP: 2 gloo processes
    processes = max(ddp, 1)
    rows = []
    for stage, (evaluate, agree) in STAGES.items():
        checkpoint = None
        for v in training_variants(bf16):
            project = write_project(root / stage / v.label.replace(" ", "_"), device, processes,
                                    train=v.train)
            label = f"{stage}, {v.label}"
            rows.append(guarded(label, lambda: train_row(label, project, stage, 1, v.expect)))
            checkpoint = checkpoint or (project if rows[-1].result == "pass" else None)
        backend = "NCCL" if device == "cuda" else "gloo"
        if ddp < 2:
            rows.append(Row(f"{stage}, DDP ({backend})", "skipped", None, "skipped: 1 GPU"))
        else:
            project = write_project(root / stage / "ddp", device, processes,
                                    train={"nproc": ddp})
            label = f"{stage}, DDP {ddp} processes ({backend})"
            rows.append(guarded(label, lambda: train_row(label, project, stage, ddp)))
        label = f"{evaluate}, {device} vs cpu"
        rows.append(guarded(label, lambda: eval_row(label, checkpoint, evaluate, device, agree))
                    if checkpoint else
                    Row(label, "fail", None, "no checkpoint: every training row failed"))
    project = write_project(root / "instance", device, processes, "instance")
    label = "train_segmenter (instance), auto precision"
    rows.append(guarded(label, lambda: train_row(label, project, "train_segmenter")))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true",
                        help="run the rows on the CPU (no GPU needed; checks this script only)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.rehearse:
        print(NO_CUDA)
        return 0
    device = "cuda" if cuda else "cpu"
    gpus = torch.cuda.device_count() if cuda else 0
    bf16 = torch.cuda.is_bf16_supported() if cuda else True     # CPU autocast has bf16
    title = (f"gpu-check: {gpus} x {torch.cuda.get_device_name()}" if cuda
             else "gpu-check REHEARSAL on the CPU (proves nothing about CUDA)")
    title += f"; torch {torch.__version__}; {os.cpu_count()} CPU cores"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = background_rows(Path(tmp) / "sod", device)
        rows += training_rows(Path(tmp), device, gpus, bf16)
    if not bf16:
        rows.append(Row("bf16 autocast", "skipped", None, "this GPU has no bf16: auto is fp16"))
    text = (f"{title}; {time.perf_counter() - start:.0f} s\n\n{table(rows)}\n\n"
            f"{'FAILED' if exit_code(rows) else 'all passed'}")
    print(text)
    if cuda:
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text(text + "\n")
    return exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
