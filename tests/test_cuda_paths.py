"""The CUDA paths' classic failures, checked on the CPU where they can be: the autocast dtype
chooser (bf16, else fp16 with loss scaling), GradScaler's use, weights kept in host memory,
pinned memory and worker seeding, validation sharded over two ranks, and ONNX
Runtime's provider choice (fallback lines, onnxruntime shadowing onnxruntime-gpu)."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_engine import FakeLive, regression_step
from test_segment_metrics import square
from torch import nn
from torch.utils.data import Dataset
from torchmetrics.detection import MeanAveragePrecision

from fashionbg.background import sod
from fashionbg.classify.engine import classify_step, validator
from fashionbg.core.errors import ParamError, UserError
from fashionbg.nn import device, distributed, engine
from fashionbg.nn.checkpoint import Checkpoint
from fashionbg.nn.data import (
    LoaderOptions,
    make_loader,
    training_options,
    validation_options,
)
from fashionbg.nn.device import seed_everything
from fashionbg.nn.distributed import SINGLE, process_group, world_from_env
from fashionbg.nn.engine import (
    amp_dtype,
    choose_amp_dtype,
    cpu_state,
    dtype_name,
    fit,
    grad_scaler,
    native_bf16,
    precision_name,
    train_one_epoch,
    warmup_cosine,
)
from fashionbg.segment.instances import boxes_from_masks
from fashionbg.segment.metrics import instance_metric, join_ranks

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
BF16, FP16 = torch.bfloat16, torch.float16
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("precision, device, bf16_supported, expected", [
    ("auto", "cuda", True, BF16),
    ("auto", "cuda", False, FP16),        # e.g. a T4 or V100: fp16, with loss scaling
    ("auto", "cpu", True, None),
    ("fp16", "cuda", True, FP16),         # forced on a bf16 card (make gpu-check does this)
    ("bf16", "cpu", False, BF16),
    ("fp32", "cuda", True, None),
])
def test_autocast_dtype_chooser(precision, device, bf16_supported, expected):
    assert choose_amp_dtype(precision, device, bf16_supported) == expected


def test_chooser_refuses_bf16_on_a_card_without_it_and_unknown_names():
    with pytest.raises(ParamError, match="train.precision = 'bf16'.*no native bf16 support"):
        choose_amp_dtype("bf16", "cuda", False)
    with pytest.raises(ParamError, match="one of auto, bf16, fp16, fp32"):
        choose_amp_dtype("fp8", "cuda", True)


def test_amp_dtype_asks_the_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_dtype(CUDA) == FP16 and precision_name(FP16) == "fp16 autocast with loss scaling"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert native_bf16(CUDA) and not native_bf16(CPU)
    assert amp_dtype(CUDA) == BF16 and amp_dtype(CUDA, "fp16") == FP16
    assert amp_dtype(CPU) is None and precision_name(None) == "fp32"


def emulating_card(including_emulation: bool = True) -> bool:
    """torch.cuda.is_bf16_supported on a V100 or T4: bf16 tensors work, emulated."""
    return including_emulation


def test_emulated_bf16_is_not_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating_card)
    assert not native_bf16(CUDA)
    assert amp_dtype(CUDA) == FP16                  # auto: fp16 with loss scaling
    with pytest.raises(ParamError) as err:          # forced: one line, before any training
        amp_dtype(CUDA, "bf16")
    assert "\n" not in str(err.value) and "emulate" in str(err.value)


@pytest.mark.parametrize("trained, device, native, expected", [
    ("fp32", CUDA, True, None),     # trained in float32: scored in float32, not auto's bf16
    ("bf16", CUDA, True, BF16),
    ("fp16", CUDA, True, FP16),
    ("bf16", CUDA, False, None),    # no native bf16: float32, not fp16's narrower range
    ("bf16", CPU, True, None),      # the CPU scores in float32
])
def test_evaluation_scores_in_the_precision_it_was_trained_in(monkeypatch, trained, device,
                                                               native, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: native)
    trained_model = Checkpoint(task="classify", variant="original", config={}, classes=[],
                               image_size=[8, 8], epoch=1, precision=trained, model={})
    assert trained_model.amp(device) == expected


@pytest.mark.parametrize("amp", [BF16, None])
def test_validation_runs_in_the_training_precision(amp):
    seen = []
    model = nn.Linear(2, 2)
    model.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    loader = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
    validator(loader, CPU, ["a", "b"], amp)(model)
    assert seen == [amp or torch.float32]


def test_training_records_its_precision():
    assert [dtype_name(d) for d in (BF16, FP16, None)] == ["bf16", "fp16", "fp32"]


# Tensor methods that read a value into Python: on CUDA each one waits for the device.
READS = ("item", "tolist", "__bool__", "__float__", "__int__")


def count_reads(monkeypatch) -> Counter:
    """Count every read of a tensor's value into Python, and every GradScaler.get_scale."""
    counts: Counter = Counter()

    def counted(name, original):
        def read(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)
        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.amp.GradScaler, "get_scale",
                        counted("get_scale", torch.amp.GradScaler.get_scale))
    return counts


def epoch_reads(monkeypatch, steps: int, amp: torch.dtype | None) -> Counter:
    """The reads of one epoch of `steps` classifier steps in `amp`."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])) for _ in range(steps)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = warmup_cosine(optimizer, steps)
    counts = count_reads(monkeypatch)
    stats = train_one_epoch(model, batches, classify_step, optimizer, scheduler,
                            grad_scaler(CPU, amp), CPU, 1, amp)
    monkeypatch.undo()
    assert stats.images == 4 * steps and 0 <= stats.sums["top1"] <= stats.images
    assert scheduler.last_epoch == steps          # the schedule followed every step
    return counts


@pytest.mark.parametrize("amp", [None, BF16])
def test_the_training_step_does_not_wait_for_the_device(monkeypatch, amp):
    """Loss, counts and the divergence check are read once an epoch, not once a step."""
    assert epoch_reads(monkeypatch, 2, amp) == epoch_reads(monkeypatch, 2 * 3, amp)


def test_loss_scaling_reads_only_the_scalers_own_inf_check(monkeypatch):
    """fp16: GradScaler.step reads its inf check once a step (not avoidable with an unfused
    optimizer); the engine adds no read of its own, and never asks for the scale."""
    few, more = epoch_reads(monkeypatch, 2, FP16), epoch_reads(monkeypatch, 6, FP16)
    assert few["get_scale"] == more["get_scale"] == 0
    assert sum(more.values()) - sum(few.values()) == 4       # one read per extra step


def test_loss_scaling_only_for_fp16():
    assert grad_scaler(CPU, FP16).is_enabled()
    assert not grad_scaler(CPU, BF16).is_enabled()
    assert not grad_scaler(CPU, None).is_enabled() and not grad_scaler(CPU).is_enabled()


class RecordingScaler(torch.amp.GradScaler):
    """A GradScaler that records the order of the calls the engine makes."""

    calls: list[str] = []

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def unscale_(self, optimizer):
        self.calls.append("unscale_")
        return super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append("update")
        return super().update(new_scale)


@pytest.mark.parametrize("amp, scaled", [(FP16, True), (BF16, False), (None, False)])
def test_fit_runs_in_the_forced_precision_and_scales_only_fp16(monkeypatch, amp, scaled):
    made = []

    def recording(device, dtype="auto"):
        made.append(RecordingScaler(device.type, enabled=dtype == FP16))
        return made[-1]

    monkeypatch.setattr(engine, "grad_scaler", recording)
    RecordingScaler.calls = []
    seen = []

    def step(model, inputs, targets, device):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return regression_step(model, inputs, targets, device)

    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    batches = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]
    result = fit(model, batches, step, None, "score", torch.optim.SGD(model.parameters(), lr=0.1),
                 2, CPU, FakeLive(), amp=amp)
    assert all(s == (amp is not None, amp or s[1]) for s in seen) and len(seen) == 6
    assert made[0].is_enabled() == scaled
    # scale the loss, step (which unscales first when enabled), update: once per batch
    per_batch = ["scale", "step", "unscale_", "update"] if scaled else ["scale", "step", "update"]
    assert RecordingScaler.calls == per_batch * 6
    assert all(v.dtype == torch.float32 for v in result.state.values())   # weights stay fp32


def test_kept_weights_are_a_host_copy():
    model = nn.Linear(2, 1)
    state = cpu_state(model)
    with torch.no_grad():
        model.weight.add_(1)
    assert all(v.device == CPU for v in state.values())
    assert not torch.equal(state["weight"], model.weight)


def test_pinned_memory_only_for_cuda():
    assert training_options(0, CUDA, SINGLE, 0).pin_memory
    assert not training_options(0, CPU, SINGLE, 0).pin_memory


class Draws(Dataset):
    """Each item is a draw from the loading process's torch generator."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(1)


def test_only_the_training_loaders_workers_persist():
    options = LoaderOptions(workers=2, pin_memory=False, world=SINGLE, shard_seed=0)
    training = make_loader(Draws(), 2, torch.Generator(), options=options)
    validation = make_loader(Draws(), 2, options=validation_options(options))
    assert training.persistent_workers and not validation.persistent_workers
    assert validation.num_workers == 2


def test_loader_workers_draw_differently_and_repeat_with_the_seed():
    options = LoaderOptions(workers=2, pin_memory=False, world=SINGLE, shard_seed=0)

    def epoch(seed: int) -> list[float]:
        loader = make_loader(Draws(), 1, torch.Generator().manual_seed(seed), options=options)
        return [float(x) for x in loader]

    first = epoch(1)
    assert len(set(first)) == len(first)       # no two workers repeat each other's draws
    assert epoch(1) == first and epoch(2) != first


def test_cuda_runs_without_torchs_deterministic_mode():
    """It would send torchvision's CUDA roi_align to a torch.compile'd fallback."""
    try:
        seed_everything(0, CUDA)
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled()     # the CPU repeats exactly


def test_seeding_makes_cublas_deterministic(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seed_everything(0)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def join_rank(rank: int, port: int, validation_seconds: float) -> None:
    """One of two gloo ranks whose collectives time out after 2 s (1 s fails on a loaded
    machine). Each validates a shard of 5 images (3 and 2: no padding) and must get the whole
    split's figures, as one process scores them; rank 0's shard validates for longer, which the
    other rank must wait for (not fail inside the next epoch's all-reduce); and both must keep
    the same epoch, validating with rank 0's batch norm statistics."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.COLLECTIVE_TIMEOUT = timedelta(seconds=2)
    world = world_from_env()
    with process_group(world, CPU) as device:
        torch.manual_seed(0)          # the same split on both ranks
        logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
        mine = distributed.shard(torch.arange(5).numpy(), world)
        assert torch.equal(distributed.unshard(logits[mine], world), logits)
        assert torch.equal(distributed.unshard(targets[mine], world), targets)
        alone = distributed.shard(torch.arange(1).numpy(), world)   # rank 1's shard is empty
        assert torch.equal(distributed.unshard(logits[:1][alone], world), logits[:1])
        metric = score_images(mine)
        joined = join_ranks(metric, world).compute()["segm_map"]
        assert joined == score_images(range(5)).compute()["segm_map"], joined

        torch.manual_seed(rank)       # each rank its own batches: its own batch norm statistics
        model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        batches = [(torch.randn(4, 2), torch.randn(4, 2)) for _ in range(2)]
        scores = iter([[1.0, 2.0], [2.0, 1.0]][rank])     # each rank would pick another epoch

        def validate(m):
            if world.is_main:
                time.sleep(validation_seconds)
            means = distributed.unshard([m[1].running_mean.clone()], world)
            assert torch.equal(means[0], means[1])
            return {"score": next(scores)}

        result = fit(model, batches, regression_step, validate, "score",
                     torch.optim.SGD(model.parameters(), lr=0.1), 2, device,
                     FakeLive() if world.is_main else None, world)
        assert (result.best_epoch, result.best_score) == (2, 2.0), (rank, result)


def score_images(indices) -> MeanAveragePrecision:
    """instance_metric(final=False) over the images `indices` of 5 (a detection each, shifted
    by 0 to 4 pixels from its square of truth)."""
    metric = instance_metric(final=False)
    for i in indices:
        truth, found = square(0), square(int(i))
        metric.update([{"boxes": boxes_from_masks(found), "scores": torch.tensor([0.5 + i / 10]),
                        "labels": torch.tensor([1]), "masks": found}],
                      [{"boxes": boxes_from_masks(truth), "labels": torch.tensor([1]),
                        "masks": truth}])
    return metric


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_ranks_validate_disjoint_shards_into_the_whole_splits_figures():
    mp.start_processes(join_rank, args=(free_port(), 5.0), nprocs=2, start_method="spawn")


def test_provider_choice_with_the_cuda_provider(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert sod.providers("auto") == sod.providers("cuda") == ["CUDAExecutionProvider",
                                                              "CPUExecutionProvider"]
    assert sod.providers("cpu") == ["CPUExecutionProvider"]


@pytest.mark.parametrize("shadowed", [False, True])
def test_provider_fallback_says_why_and_how_to_fix(monkeypatch, caplog, shadowed):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(sod, "nvidia_devices", lambda: [])
    both = {"onnxruntime", "onnxruntime-gpu"}
    monkeypatch.setattr(sod, "installed_runtimes",
                        lambda: both if shadowed else {"onnxruntime"})
    fix = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install -r requirements-gpu.txt"
    with pytest.raises(UserError) as err:
        sod.providers("cuda")
    assert "\n" not in str(err.value) and (fix in str(err.value)) == shadowed
    with caplog.at_level(logging.INFO, logger=sod.__name__):
        assert sod.providers("auto") == ["CPUExecutionProvider"]
    assert "no CUDA provider, so backgrounds are removed on the CPU" in caplog.text
    assert (fix in caplog.text) == shadowed
    assert caplog.records[-1].levelname == "INFO"      # no GPU here: the usual case


def test_provider_fallback_is_a_warning_where_the_driver_lists_gpus(monkeypatch, caplog):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(sod, "nvidia_devices", lambda: ["GPU 0: NVIDIA H100 (UUID: x)"])
    monkeypatch.setattr(sod, "installed_runtimes", lambda: {"onnxruntime"})
    with caplog.at_level(logging.INFO, logger=sod.__name__):
        assert sod.providers("auto") == ["CPUExecutionProvider"]
    record = caplog.records[-1]
    assert record.levelname == "WARNING" and "driver lists 1 NVIDIA GPU(s)" in record.message
    assert "make setup-gpu" in record.message


@pytest.mark.parametrize("gpus, cuda_build, says", [
    ([], "13.0", None),                                  # no GPU: the usual case, silent
    (["GPU 0: NVIDIA H100 (UUID: x)"], None, "built without CUDA (a CPU wheel: make setup-gpu)"),
    (["GPU 0: NVIDIA H100 (UUID: x)"], "13.0", "a driver older than CUDA 13.0 needs"),
])
def test_torch_auto_on_the_cpu_warns_where_the_driver_lists_gpus(monkeypatch, caplog, gpus,
                                                                 cuda_build, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    monkeypatch.setattr(device, "nvidia_devices", lambda: gpus)
    with caplog.at_level(logging.INFO, logger=device.__name__):
        assert device.resolve_device("auto", "classify.device") == torch.device("cpu")
    if says is None:
        assert not caplog.records
        return
    record, = caplog.records
    assert record.levelname == "WARNING" and says in record.message
    assert "classify.device = auto: the driver lists 1 NVIDIA GPU(s)" in record.message


def test_installed_runtimes_is_one_onnxruntime_build():
    """The CPU build (make setup) or the CUDA one (make setup-gpu), never both."""
    assert sod.installed_runtimes() in ({"onnxruntime"}, {"onnxruntime-gpu"})


def test_a_cuda_provider_that_does_not_load_is_an_error_or_a_warning_naming_why(
        monkeypatch, caplog, u2netp_home):
    """The provider is listed but cannot start (here: a CPU build asked for CUDA), as when
    CUDA or cuDNN libraries are missing: the nvidia-* wheels' libraries are preloaded first
    (the stage never imports torch, which would load them), then `cuda` stops and `auto`
    warns with what failed to load."""
    import onnxruntime as ort
    from rembg.sessions.base import BaseSession

    calls = []

    def preload(*args, **kwargs):
        calls.append("preload")
        print("Failed to load libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(ort, "preload_dlls", preload)
    real_init = BaseSession.__init__

    def recording_init(self, *args, **kwargs):
        calls.append("session")
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(BaseSession, "__init__", recording_init)
    monkeypatch.setattr(sod, "providers",
                        lambda device: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(UserError, match=r"could not load its CUDA provider .*libcudnn\.so\.9"):
        sod.make_session("u2netp", u2netp_home, "cuda")
    assert calls == ["preload", "session"]
    with caplog.at_level(logging.WARNING, logger=sod.__name__):
        session = sod.make_session("u2netp", u2netp_home, "auto")
    assert sod.session_device(session) == "cpu"
    record = caplog.records[-1]
    assert record.levelname == "WARNING" and "libcudnn.so.9" in record.message
    assert "removing backgrounds on the CPU" in record.message


def test_no_preload_without_the_cuda_provider(monkeypatch, u2netp_home):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: pytest.fail("preloaded"))
    assert sod.session_device(sod.make_session("u2netp", u2netp_home, "cpu")) == "cpu"


def setup_commands(venv: Path) -> list[str]:
    """What `make` would run to set `venv` up (make -n: nothing runs)."""
    result = subprocess.run(["make", "-n", f"VENV={venv}", f"{venv}/.installed"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.splitlines()


def test_a_gpu_venv_keeps_onnxruntime_gpu_through_every_later_setup(tmp_path):
    """`make setup-gpu` marks the venv; every setup of a marked venv installs requirements.txt
    (whose rembg[cpu] brings the CPU build back) and then swaps the CUDA build in, pinned with
    its CUDA and cuDNN wheels; an unmarked venv stays CPU."""
    venv = tmp_path / "venv"
    venv.mkdir()
    cpu = setup_commands(venv)
    assert not any("requirements-gpu.txt" in c or "uninstall" in c for c in cpu)
    (venv / ".gpu").touch()
    gpu = setup_commands(venv)
    base = next(i for i, c in enumerate(gpu) if "-r requirements.txt" in c)
    swap = next(i for i, c in enumerate(gpu) if "-r requirements-gpu.txt" in c)
    assert base < swap and "uninstall --quiet -y onnxruntime onnxruntime-gpu" in gpu[swap]
    pins = [x for x in (ROOT / "requirements-gpu.txt").read_text().splitlines()
            if x and not x.startswith("#")]
    assert pins == [f"onnxruntime-gpu[cuda,cudnn]=={pins[0].split('==')[1]}"]
