"""Both training stages with `train.nproc: 2` on the CPU (gloo), started as users start them
(`dvc repro`, `python -m stages.<name>`): the stage launches two real worker processes, each
rank trains its shard and validates a disjoint half of the validation split, rank 0 alone
writes dvclive and a checkpoint that evaluates like a single-process one, and the launcher
leaves no scratch behind (in the project or in TMPDIR).

"Evaluates like" cannot mean equal weights: the two-process run shuffles with a
DistributedSampler (not the single loader's generator) and normalises batch norm over each
rank's half batch, so its weights differ from one process's by more than any useful tolerance.
What both runs promise alike, and what is checked here for both: the checkpoint holds the
weights of the epoch the model-selection rule picked on the WHOLE validation split, so scoring
it again on that split in this process gives the best validation score dvclive logged (to its
4 decimals: the two-process score, combined from the ranks' halves, is the one-process score
of the same weights on the same images, up to float rounding in batches of other sizes). A
run that scored one rank's half only, validated with another rank's batch norm statistics, or
saved another epoch's or rank's weights, fails it. Which rows each rank read, and the epoch
each kept, are recorded by the processes themselves (tests/rank_probe)."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_project import copy_project, project_env
from test_segment_train import CLASSES, SEGMENT, figures

from fashionbg.classify.params import ClassifyConfig
from fashionbg.classify.task import ClassifyTask
from fashionbg.contracts.prepared import load_prepared, save_prepared
from fashionbg.nn.checkpoint import Checkpoint, load_checkpoint
from fashionbg.nn.task import Task
from fashionbg.segment.params import SegmentConfig
from fashionbg.segment.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
CLASSIFY = {"arch": "shallow_cnn", "batchnorm": True, "pretrained": False, "augment": "standard",
            "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0, "epochs": 2,
            "batch_size": 4, "seed": 0, "device": "cpu"}
CASES = {"classify": ("train_classifier", "evaluate_classifier", "models/classifier.pt",
                      "metrics/detail/classification.json", "top1"),
         "semantic": ("train_segmenter", "evaluate_segmenter", "models/segmenter.pt",
                      "metrics/detail/segmentation.json", "miou"),
         "instance": ("train_segmenter", "evaluate_segmenter", "models/segmenter.pt",
                      "metrics/detail/segmentation.json", "mask_ap")}
# How the two-process run is started: both ways a user does, without running every case twice.
STARTED_BY = {"classify": "dvc", "semantic": "python", "instance": "dvc"}
VAL_ROWS = set(range(12, 18))       # write_project's validation split, all with ground truth
PROBE = Path(__file__).resolve().parent / "rank_probe"


def write_project(root: Path, workers: int | str, segment_task: str = "semantic",
                  nproc: int = 1) -> Path:
    """24 figures with masks and two labels (12 train, 6 val, 6 test) in both variants."""
    images, masks, rembg = figures(24)
    splits = np.repeat([0, 1, 2], [12, 6, 6])
    labels = np.arange(24) % 2
    for name, pictures in (("original", images), ("rembg", rembg)):
        meta = {"variant": name, "labels": ["a", "b"], "mask_classes": CLASSES,
                "image_size": [64, 48], "paths": [f"images/{i}.png" for i in range(24)],
                "fill": [0, 0, 0]}
        save_prepared(root / "data/prepared" / name, pictures, masks, labels, splits, meta,
                      alpha=(masks > 0).astype(np.uint8) * 255 if name == "rembg" else None)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["classify"] = CLASSIFY
    params["segment"] = {**SEGMENT, "augment": "none", "task": segment_task}
    params["train"].update(workers=workers, nproc=nproc)
    params["evaluate"].update(device="cpu", overlays=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def dvc_project(root: Path, workers: int | str, segment_task: str, nproc: int) -> Path:
    """write_project inside a copy of the project (code, dvc.yaml) that `dvc repro` runs in."""
    copy_project(root)
    write_project(root, workers, segment_task, nproc)
    (root / "data/raw").mkdir()            # a dependency of train_segmenter (masks suffice)
    for git in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "tiny"]):  # dvclive needs a rev
        subprocess.run(["git", *git], cwd=root, env=project_env(), check=True)
    return root


def run(project: Path, *args: str, tmp: Path | None = None, probe: Path | None = None
        ) -> subprocess.CompletedProcess:
    """`python *args` (or `dvc *args` when args[0] is "dvc") in project; must succeed. With
    `probe`, a folder, the ranks record there what they read and kept (tests/rank_probe)."""
    env = {**project_env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    if probe is not None:
        env.update(PYTHONPATH=f"{PROBE}:{ROOT}", RANK_PROBE=str(probe))
    command = list(args) if args[0] == "dvc" else [sys.executable, *args]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=400,
                            env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def validation_score(project: Path, checkpoint: Checkpoint, key: str) -> float:
    """The checkpoint's `key` on the whole validation split of project, scored in this process
    by the validator the training uses."""
    prepared = load_prepared(project / "data/prepared" / checkpoint.variant)
    task: Task = (ClassifyTask(checkpoint.rebuild(ClassifyConfig.from_dict), prepared)
                  if checkpoint.task == "classify" else
                  make_task(checkpoint.rebuild(SegmentConfig.from_dict), prepared,
                            project / "data/raw"))
    model = checkpoint.load_into(task.build_model(load_weights=False))
    loader = task.loader(task.dataset(prepared.images, task.rows("val")), 4)
    return float(task.validator(loader, torch.device("cpu"), None)(model)[key])


def probed(probe: Path) -> tuple[dict[str, Counter], dict[str, set[int]]]:
    """What each rank (and its loader workers) recorded: the validation rows it read, with how
    often, and the epochs it kept."""
    rows: dict[str, Counter] = {}
    kept: dict[str, set[int]] = {}
    for path in probe.iterdir():
        rank = path.name.split("-")[0]
        for line in path.read_text().splitlines():
            what, value = line.split()
            if what == "kept":
                kept.setdefault(rank, set()).add(int(value))
            elif int(value) in VAL_ROWS:
                rows.setdefault(rank, Counter())[int(value)] += 1
    return rows, kept


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task", sorted(CASES))
def test_two_gloo_processes_train_a_checkpoint_that_evaluates_like_one(tmp_path, scratch,
                                                                       task):
    stage, evaluate, model_path, metrics_path, key = CASES[task]
    segment_task = "semantic" if task == "classify" else task
    single = write_project(tmp_path / "single", "auto", segment_task)
    tmp, probe = scratch, tmp_path / "probe"  # tmp: where torchelastic_* would be left
    probe.mkdir()
    if STARTED_BY[task] == "dvc":
        ddp = dvc_project(tmp_path / "ddp", 1, segment_task, nproc=2)
        result = run(ddp, "dvc", "repro", "-s", stage, tmp=tmp, probe=probe)
    else:
        ddp = write_project(tmp_path / "ddp", 1, segment_task, nproc=2)
        result = run(ddp, "-m", f"stages.{stage}", tmp=tmp, probe=probe)
    run(single, "-m", f"stages.{stage}")
    log = result.stdout + result.stderr
    assert "on cpu, 2 process(es)" in log and log.count("kept epoch") == 1, log[-3000:]
    assert not list(tmp.iterdir()) and not (ddp / ".cache").exists()

    one, two = (load_checkpoint(p / model_path, (task,)) for p in (single, ddp))
    assert (one.config, one.classes, one.image_size, one.variant) == \
        (two.config, two.classes, two.image_size, two.variant)
    assert {k: v.shape for k, v in one.model.items()} == \
        {k: v.shape for k, v in two.model.items()}       # plain module keys, no "module."
    lives = [json.loads((p / f"dvclive/{stage}/metrics.json").read_text())
             for p in (single, ddp)]
    assert lives[0].keys() == lives[1].keys() and lives[1]["train"]["loss"] > 0
    curve = (ddp / f"dvclive/{stage}/plots/metrics/val/{key}.tsv").read_text().splitlines()
    assert len(curve) == 1 + CLASSIFY["epochs"]     # rank 0 alone logged, once per epoch
    for live, checkpoint, project in zip(lives, (one, two), (single, ddp), strict=True):
        assert live["best_epoch"] == checkpoint.epoch
        assert validation_score(project, checkpoint, key) == \
            pytest.approx(live[f"best_val_{key}"], abs=1e-4), project.name
    # each rank read a disjoint half of the validation images, each once an epoch, and both
    # ranks kept the epoch the checkpoint holds
    rows, kept = probed(probe)
    assert sorted(rows) == ["0", "1"] and not rows["0"].keys() & rows["1"].keys(), rows
    assert rows["0"].keys() | rows["1"].keys() == VAL_ROWS and len(rows["0"]) == 3, rows
    assert set((rows["0"] + rows["1"]).values()) == {CLASSIFY["epochs"]}, rows
    assert kept == {"0": {two.epoch}, "1": {two.epoch}}

    for project in (single, ddp):
        run(project, "-m", f"stages.{evaluate}")
    metrics = [json.loads((p / metrics_path).read_text()) for p in (single, ddp)]
    assert metrics[0].keys() == metrics[1].keys()
    assert metrics[0]["test"].keys() == metrics[1]["test"].keys()
    assert 0 <= metrics[1]["test"][key] <= 1 and metrics[1]["best_epoch"] == two.epoch
