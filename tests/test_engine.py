"""The shared training engine, model-selection rule and checkpoint schema."""
import logging
import os
import pickle

import pytest
import torch
from test_segment_train import SEGMENT
from torch import nn

from fashionbg.core.errors import UserError
from fashionbg.nn.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fashionbg.nn.data import auto_workers
from fashionbg.nn.distributed import SINGLE, World, per_rank_batch
from fashionbg.nn import engine
from fashionbg.nn.engine import EpochStats, fit, steady_throughput, warmup_cosine
from fashionbg.nn.launch import training_run
from fashionbg.segment.models import build_semantic
from fashionbg.segment.params import read_segment
from fashionbg.segment.tasks import InstanceTask, SemanticTask

CPU = torch.device("cpu")


class FakeLive:
    """Records what `fit` logs, in place of dvclive."""

    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = [{}]
        self.summary: dict[str, object] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.logged[-1][name] = value

    def next_step(self) -> None:
        self.logged.append({})


def regression_step(model, inputs, targets, device):
    return nn.functional.mse_loss(model(inputs), targets), {"seen": torch.tensor(len(inputs))}


def tiny_fit(scores: list[float | None] | None, epochs: int = 4):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    data = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]
    snapshots, calls = [], iter(scores or [])

    def validate(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"score": next(calls)}

    live = FakeLive()
    result = fit(model, data, regression_step, validate if scores is not None else None,
                 "score", torch.optim.SGD(model.parameters(), lr=0.1), epochs, CPU, live)
    return result, snapshots, live, model


def test_keeps_the_epoch_best_on_validation_and_the_earliest_on_a_tie():
    result, snapshots, live, _ = tiny_fit([0.2, 0.5, 0.5, 0.3])
    assert result.best_epoch == 2 and result.best_score == 0.5
    assert all(torch.equal(result.state[k], snapshots[1][k]) for k in result.state)
    assert live.summary["best_epoch"] == 2 and live.summary["best_val_score"] == 0.5
    assert [step["val/score"] for step in live.logged[:4]] == [0.2, 0.5, 0.5, 0.3]
    assert all(step["train/seen"] == 1.0 for step in live.logged[:4])   # sums per image


def test_without_validation_or_scores_the_last_epoch_is_kept():
    result, _, _, model = tiny_fit(None, epochs=3)
    assert result.best_epoch == 3
    assert all(torch.equal(result.state[k], v) for k, v in model.state_dict().items())
    unscored, _, _, _ = tiny_fit([None, None], epochs=2)
    assert unscored.best_epoch == 2 and unscored.best_score is None


def test_diverging_training_is_a_user_error():
    model = nn.Linear(2, 1)

    def nan_step(m, inputs, targets, device):
        return m(inputs).sum() * float("nan"), {}

    with pytest.raises(UserError, match="diverged at epoch 1"):
        fit(model, [(torch.randn(2, 2), None)], nan_step, None, "score",
            torch.optim.SGD(model.parameters(), lr=0.1), 1, CPU, FakeLive())


def test_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, 100)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10:] == sorted(rates[10:], reverse=True) and rates[-1] < 0.001


def test_throughput_leaves_out_the_first_epoch():
    epochs = [EpochStats(1.0, {}, 100, 10.0), EpochStats(1.0, {}, 100, 1.0),
              EpochStats(1.0, {}, 100, 3.0)]
    assert steady_throughput(epochs) == 50.0
    assert steady_throughput(epochs[:1]) == 10.0


def checkpoint(task: str = "classify") -> Checkpoint:
    return Checkpoint(task=task, variant="rembg", config={"arch": "x", "lr": 0.1},
                      classes=["a", "b"], image_size=[8, 6], epoch=3, precision="bf16",
                      model={"w": torch.arange(4.0)})


def test_checkpoint_round_trip_and_task_check(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, checkpoint())
    loaded = load_checkpoint(path, ("classify",))
    assert loaded.variant == "rembg" and loaded.epoch == 3 and loaded.classes == ["a", "b"]
    assert loaded.precision == "bf16"
    assert torch.equal(loaded.model["w"], torch.arange(4.0))
    with pytest.raises(UserError, match="holds a 'classify' model"):
        load_checkpoint(path, ("semantic", "instance"))
    with pytest.raises(UserError, match="cannot rebuild"):
        loaded.rebuild(lambda values: dict(**values, lr=1))   # TypeError: lr given twice
    with pytest.raises(UserError, match="weights do not fit the model"):
        loaded.load_into(torch.nn.Linear(2, 2))
    fitting = torch.nn.Module()
    fitting.register_buffer("w", torch.zeros(4))
    assert torch.equal(loaded.load_into(fitting).w, torch.arange(4.0))


class Payload:
    """An object whose unpickling runs code."""

    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("content", [
    pickle.dumps(Payload()),                      # code hidden in a pickle
    b"not a checkpoint at all",                   # garbage
    None,                                         # a real torch file cut in half
], ids=["pickled-code", "garbage", "truncated"])
def test_hostile_or_broken_checkpoints_run_no_code_and_are_one_error(tmp_path, capfd, content):
    path = tmp_path / "m.pt"
    if content is None:
        save_checkpoint(path, checkpoint())
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(UserError, match="train it again"):
        load_checkpoint(path, ("classify",))
    assert "code ran" not in capfd.readouterr().out


def test_checkpoint_with_other_keys_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"model": {}, "epoch": 1}, path)
    with pytest.raises(UserError, match="does not hold the keys"):
        load_checkpoint(path, ("classify",))


def test_training_run_places_the_model_and_picks_loader_workers(monkeypatch):
    params = {"train": {"nproc": 1, "workers": "auto", "channels_last": True,
                        "augment_on": "device", "precision": "auto"}}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with training_run(params, "cpu", "classify.device", 0) as run:
        model = run.place(nn.Conv2d(3, 4, 3))
        assert model.weight.is_contiguous(memory_format=torch.channels_last)
        assert (run.world, run.loader.workers, run.loader.pin_memory, run.augment_on_device) \
            == (SINGLE, 0, False, True)
        assert run.batch_size(32, "classify.batch_size") == 32
        assert run.amp is None                 # auto on the CPU: float32, no autocast
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert auto_workers(torch.device("cuda"), World(rank=1, size=2, local_rank=1)) == 7
    assert auto_workers(torch.device("cuda"), SINGLE) == 8
    with pytest.raises(UserError, match="divisible"):
        per_rank_batch(30, World(rank=0, size=4, local_rank=0), "classify.batch_size")


@pytest.mark.parametrize("channels_last, layout", [(True, "channels_last"),
                                                    (False, "contiguous")])
def test_the_model_gets_batches_in_its_layout_and_says_so_once(monkeypatch, caplog,
                                                                channels_last, layout):
    """What gpu_check reads: the layout the model really receives (a contiguous or a
    channels-last batch comes in, as the loader or device augmentation makes it), its device,
    and where augmentation ran, in one line at the first batch."""
    params = {"train": {"nproc": 1, "workers": "auto", "channels_last": channels_last,
                        "augment_on": "loader", "precision": "auto"}}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with training_run(params, "cpu", "classify.device", 0) as run:
        model = run.place(nn.Conv2d(3, 4, 3))
    engine.log_first_input(model, "standard on cpu")
    batch = torch.zeros(2, 3, 8, 6)     # first in the other layout than the model's
    other = batch if channels_last else batch.contiguous(memory_format=torch.channels_last)
    with caplog.at_level(logging.INFO, logger=engine.__name__):
        model(other)
        model(batch)
    assert [r.message for r in caplog.records] == [
        f"model input: {layout} on cpu; augmentation standard on cpu"]


def test_batch_norm_models_get_two_images_per_process():
    """DeepLabV3+'s pooled branch has one value per channel and image: one image per process
    crashes it, so semantic training refuses such a split before it starts (one line)."""
    config = read_segment({"segment": {**SEGMENT, "arch": "deeplabv3plus"}})
    model = build_semantic(config, 4, load_weights=False).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        model(torch.zeros(1, 3, 64, 48, dtype=torch.uint8))
    two = World(rank=0, size=2, local_rank=0)
    assert SemanticTask.min_rank_batch == 2 and InstanceTask.min_rank_batch == 1
    assert per_rank_batch(4, two, "segment.batch_size", SemanticTask.min_rank_batch) == 2
    with pytest.raises(UserError) as err:
        per_rank_batch(2, two, "segment.batch_size", SemanticTask.min_rank_batch)
    assert "\n" not in str(err.value)
    assert "raise segment.batch_size to 4 or lower train.nproc" in str(err.value)
    assert per_rank_batch(2, two, "segment.batch_size", InstanceTask.min_rank_batch) == 1
