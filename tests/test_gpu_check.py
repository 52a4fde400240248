"""`make gpu-check` on a machine without CUDA says so in one line and exits 0; its tolerances
and table, on made-up figures."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fashionbg.core.nvidia import nvidia_devices

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
from gpu_check import (  # noqa: E402
    Devices,
    device_row,
    EvalTolerance,
    MaskTolerance,
    Row,
    classify_eval_agrees,
    exit_code,
    mask_difference,
    masks_agree,
    segment_eval_agrees,
    table,
)


@pytest.mark.skipif(bool(nvidia_devices()), reason="the driver lists NVIDIA GPUs here")
def test_without_cuda_it_prints_one_line_and_exits_0():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [gpu_check.NO_CUDA]
    assert result.stdout.startswith("no CUDA device: gpu-check has nothing to run; ")


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_a_gpu_every_cuda_path_passes():
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mask_difference_in_255_units():
    a = np.zeros((10, 10), np.uint8)
    b = a.copy()
    b[0, :] = 200                      # 10 of 100 pixels far off
    b[1, :] = 10                       # 10 a little off
    mean, far = mask_difference(a, b, far=32)
    assert mean == pytest.approx((10 * 200 + 10 * 10) / 100) and far == pytest.approx(0.10)
    assert mask_difference(a, np.zeros((5, 5), np.uint8)) == (float("inf"), 1.0)


def test_masks_agree_within_the_stated_tolerance_only():
    tol = MaskTolerance(mean_abs=2.0, far=32, far_share=0.01)
    a = np.full((100, 100), 128, np.uint8)
    close = a + np.uint8(1)            # mean 1/255, nothing far
    edge = a.copy()
    edge[:2, :] = 0                    # 2 % of pixels far off: mean 2.56/255
    assert masks_agree([(a, close), (a, a)], tol)[0]
    ok, note = masks_agree([(a, close), (a, edge)], tol)
    assert not ok and "2.56/255" in note and "2.00% of pixels > 32/255" in note
    assert not masks_agree([], tol)[0]


def predictions(predicted: list[str], variant: str = "original") -> list[dict]:
    return [{"path": f"{i}.png", "tested_on": variant, "predicted": p}
            for i, p in enumerate(predicted)]


def test_classification_evaluations_may_differ_on_one_image_per_variant():
    cpu = predictions(list("aabb")) + predictions(list("abab"), "rembg")
    one_off = predictions(list("aaba")) + predictions(list("abab"), "rembg")
    two_off = predictions(list("bbbb")) + predictions(list("abab"), "rembg")
    assert classify_eval_agrees(one_off, cpu, EvalTolerance(images=1)) == \
        (True, "top-1 differs on 1 of 4 test images in the worst variant (<= 1)")
    assert not classify_eval_agrees(two_off, cpu)[0]
    assert gpu_check.predictions_differ(cpu[:2], cpu[:4]) == 2      # missing rows count
    assert not classify_eval_agrees([], [])[0]


def test_segmentation_evaluations_agree_on_miou_within_0_01():
    def detail(miou):
        return {"test": {"miou": miou}}

    assert segment_eval_agrees(detail(0.500), detail(0.509))[0]
    assert not segment_eval_agrees(detail(0.500), detail(0.52))[0]
    assert not segment_eval_agrees(detail(None), detail(0.5))[0]


def test_one_table_and_the_exit_code():
    rows = [Row("rembg, cuda provider, batch 1", "pass", 123.45, "a | b"),
            Row("train_classifier, DDP (NCCL)", "skipped", None, "skipped: 1 GPU")]
    text = table(rows)
    assert text.splitlines() == [
        "| path | result | images/s | note |", "|---|---|---:|---|",
        "| rembg, cuda provider, batch 1 | pass | 123.5 | a / b |",
        "| train_classifier, DDP (NCCL) | skipped | n/a | skipped: 1 GPU |"]
    assert exit_code(rows) == 0
    assert exit_code([*rows, Row("x", "fail")]) == 1


def test_fp16_is_forced_and_checked_in_the_stage_log_and_bf16_only_where_supported():
    variants = {v.label: v for v in gpu_check.training_variants(bf16=True)}
    assert variants["fp16 + loss scaling"].train == {"precision": "fp16"}
    assert variants["fp16 + loss scaling"].expect == "precision: fp16 autocast with loss scaling"
    assert variants["bf16 autocast"].train == {"precision": "bf16"}
    assert "bf16 autocast" not in {v.label for v in gpu_check.training_variants(bf16=False)}


def test_training_rows_fail_when_the_model_input_is_not_what_they_asked():
    """The `model input` line the engine logs at the first batch, read against each row."""
    line = "INFO fashionbg.nn.engine: model input: {} on cuda:0; augmentation standard {}\n"
    last = gpu_check.asked_input({"channels_last": True}, "cuda")
    on_device = gpu_check.asked_input({"augment_on": "device"}, "cuda")
    assert gpu_check.input_problems(line.format("channels_last", "in the loader"), last) == []
    assert gpu_check.input_problems(line.format("contiguous", "on cuda:0"), on_device) == []
    assert gpu_check.input_problems(line.format("contiguous", "in the loader"), last) == [
        "model input contiguous, not channels_last"]
    assert gpu_check.input_problems(line.format("contiguous", "in the loader"), on_device) == [
        "augmentation standard in the loader, not on cuda"]
    assert gpu_check.input_problems(line.format("contiguous", "on cuda:0"),
                                    gpu_check.ModelInput("cpu", augment="on cpu")) == [
        "model input on cuda:0, not cpu", "augmentation standard on cuda:0, not on cpu"]
    assert gpu_check.input_problems("precision: bf16 autocast on cuda", last) == [
        "log lacks its 'model input' line"]


def test_the_ddp_row_wants_0_8_n_times_one_process_on_cuda_only():
    ddp = Row("ddp", "pass", 2.0 * 8 * 0.79)
    one = Row("one", "pass", 2.0)
    on_cuda = gpu_check.ddp_speedup_row("x", ddp, one, "cuda", 8)
    assert (on_cuda.result, on_cuda.rate) == ("fail", ddp.rate)
    assert on_cuda.note.startswith("6.32x one process (2.0 images/s; goal >= 6.4x on CUDA)")
    assert gpu_check.ddp_speedup_row("x", Row("ddp", "pass", 2.0 * 8 * 0.81), one, "cuda",
                                     8).result == "pass"
    assert gpu_check.ddp_speedup_row("x", ddp, one, "cpu", 8).result == "pass"   # a figure
    assert gpu_check.ddp_speedup_row("x", ddp, Row("one", "fail", None, "boom"), "cpu",
                                     8).result == "fail"


H100 = ["GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"]


@pytest.mark.parametrize("seen, expect, result, says", [
    (Devices([], 0, False), None, "pass", "driver lists 0 NVIDIA GPU(s)"),
    (Devices(H100, 1, True), 1, "pass", "torch uses 1"),
    (Devices(H100, 0, True), None, "fail", "cannot use them: a CPU build, or a driver too old"),
    (Devices(H100, 1, False), None, "fail", "ONNX Runtime has no CUDA provider"),
    (Devices(H100 * 2, 2, True), 4, "fail", "expected 4 GPU(s)"),
    (Devices([], 0, False), 1, "fail", "expected 1 GPU(s)"),
])
def test_the_devices_row_fails_on_gpus_the_libraries_cannot_use(seen, expect, result, says):
    row = device_row(seen, expect)
    assert row.result == result and says in row.note, row


def test_nvidia_gpus_torch_cannot_use_fail_the_check_instead_of_skipping_it(monkeypatch,
                                                                            capsys):
    monkeypatch.setattr(gpu_check, "seen_devices", lambda: Devices(H100, 0, False))
    assert gpu_check.main([]) == 1
    out = capsys.readouterr().out
    assert "| devices | fail |" in out and out.rstrip().endswith("FAILED")


def test_expect_gpus_fails_on_a_machine_with_fewer(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "seen_devices", lambda: Devices([], 0, False))
    assert gpu_check.main(["--expect-gpus", "1"]) == 1
    assert "expected 1 GPU(s)" in capsys.readouterr().out
    assert gpu_check.main([]) == 0


def test_logits_may_differ_by_1_percent_of_the_largest():
    cpu = torch.tensor([[10.0, -2.0], [0.5, 3.0]])
    assert gpu_check.logits_difference(cpu + 0.05, cpu) == pytest.approx(0.005, rel=1e-4)
    assert gpu_check.logits_difference(cpu + 0.2, cpu) > gpu_check.LOGITS_RELATIVE
    assert gpu_check.logits_difference(cpu[:1], cpu) == float("inf")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_rehearsal_runs_every_row_on_the_cpu_and_passes(u2netp_home):
    """`--rehearse`: the same rows on the CPU (the CPU provider against itself, CPU autocast,
    DDP on 2 gloo processes), so the script itself is tested where no GPU is."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--rehearse"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    rows = [x for x in result.stdout.splitlines() if x.startswith("| ") and "---" not in x]
    paths = [x.split(" | ")[0][2:] for x in rows[1:]]
    for expected in ("devices", "remove_background stage on cpu",
                     "rembg on cpu, batch 2 vs 1 per call", "logits on cpu vs cpu, seeded models",
                     "training loop vs compute alone on cpu",
                     "train_classifier, DDP 2 processes (gloo)",
                     "train_classifier, DDP 2 vs 1 process (gloo)", "evaluate_segmenter, cpu vs cpu",
                     "train_segmenter (instance), auto precision"):
        assert expected in paths, result.stdout
    assert result.stdout.rstrip().endswith("all passed")


def test_bf16_rows_only_where_the_card_has_native_bf16(monkeypatch):
    """A V100 or T4 emulates bf16, which torch counts as support unless told not to."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert not gpu_check.native_bf16(torch.device("cuda"))
