"""Training steps for both tasks, and the two segmentation stages run as DVC runs them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fashionbg.contracts.prepared import Prepared, save_prepared
from fashionbg.nn.checkpoint import load_checkpoint
from fashionbg.nn.device import seed_everything
from fashionbg.nn.engine import grad_scaler, train_one_epoch
from fashionbg.segment.models import BACKBONES
from fashionbg.segment.params import INSTANCE_BACKBONES, TASKS, read_segment
from fashionbg.segment.tasks import TASKS as TASK_CLASSES
from fashionbg.segment.tasks import make_task
from fashionbg.study.read.results import parse_detections

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["background", "skin", "top", "pants"]
SEGMENT = {
    "task": "semantic", "arch": "unet", "encoder": "resnet18", "decoder_width": 8,
    "pretrained": False, "instance_backbone": "mobilenet_v3", "instance_classes": ["top", "pants"],
    "min_instance_area": 4, "augment": "standard", "epochs": 2, "batch_size": 4, "lr": 0.003,
    "instance_lr": 0.003,
    "weight_decay": 0.0, "seed": 0, "device": "cpu",
}


def figures(count: int, size: tuple[int, int] = (64, 48), seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Figures on noisy backgrounds: head (skin), top, two trouser legs; and a copy with the
    background blacked out, standing in for the rembg variant."""
    rng = np.random.default_rng(seed)
    height, width = size
    images = rng.integers(0, 256, (count, height, width, 3)).astype(np.uint8)
    masks = np.zeros((count, height, width), np.uint8)
    colours = {1: (220, 170, 140), 2: (40, 60, 200), 3: (200, 200, 40)}
    for i in range(count):
        x = int(rng.integers(4, width - 20))
        masks[i, 4:12, x + 4:x + 12] = 1
        masks[i, 12:34, x:x + 16] = 2
        masks[i, 34:60, x + 1:x + 7] = 3
        masks[i, 34:60, x + 9:x + 15] = 3
        for class_id, colour in colours.items():
            images[i][masks[i] == class_id] = colour
    rembg = images.copy()
    rembg[masks == 0] = 0
    return images, masks, rembg


def prepared(count: int = 8) -> Prepared:
    images, masks, _ = figures(count)
    return Prepared(images, masks, None, np.zeros(count, np.int64), np.zeros(count, np.uint8),
                    {"mask_classes": CLASSES, "paths": [f"images/{i}.png" for i in range(count)]})


def train_losses(task: str, epochs: int, augment: str = "none", images: int = 8
                 ) -> list[float]:
    config = read_segment({"segment": {**SEGMENT, "task": task, "augment": augment}})
    data = prepared(images)
    setup = make_task(config, data, Path("no-raw-dir"))
    generator = seed_everything(0)
    model = setup.build_model(load_weights=False)
    loader = setup.loader(setup.dataset(data.images, setup.rows("train"), augment),
                          config.batch_size, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.003)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cpu = torch.device("cpu")
    return [train_one_epoch(model, loader, setup.step, optimizer, constant, grad_scaler(cpu),
                            cpu, epoch).loss for epoch in range(epochs)]


def test_every_allowed_task_builds_its_own_task_object() -> None:
    """segment.task's allowed names and the registry agree; no name falls through to another."""
    assert set(TASK_CLASSES) == set(TASKS)
    made = {task: make_task(read_segment({"segment": {**SEGMENT, "task": task}}), prepared(4),
                            Path("no-raw-dir")) for task in TASKS}
    assert len({type(t) for t in made.values()}) == len(TASKS)


def test_every_allowed_backbone_builds_its_own_trunk() -> None:
    """segment.instance_backbone's allowed names and the trunks agree, and each name builds a
    trunk of its own (an unmatched name once fell through to ResNet-18)."""
    assert set(BACKBONES) == set(INSTANCE_BACKBONES)
    trunks = {name: BACKBONES[name](False, False) for name in INSTANCE_BACKBONES}
    assert all(trunk.out_channels > 0 for trunk in trunks.values())
    sizes = {sum(p.numel() for p in trunk.parameters()) for trunk in trunks.values()}
    assert len(sizes) == len(trunks)


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_a_few_epochs_reduce_the_loss(task: str) -> None:
    losses = train_losses(task, 6, images=4)   # one batch per epoch
    assert losses[-1] < 0.75 * losses[0], losses


def instance_model() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The instance task's Mask R-CNN (untrained) and two of its training images."""
    data = prepared(4)
    task = make_task(read_segment({"segment": {**SEGMENT, "task": "instance"}}), data,
                     Path("no-raw-dir"))
    torch.manual_seed(0)
    images = [torch.from_numpy(data.images[i]).permute(2, 0, 1) for i in range(2)]
    return task.build_model(load_weights=False), images


def test_boxes_are_decoded_in_float32_under_bf16_autocast() -> None:
    """torchvision's decoding casts anchors and proposals to the regression's dtype, bf16 under
    autocast; Mask R-CNN's proposals and detections must stay float32."""
    model, images = instance_model()
    proposals: list[torch.Tensor] = []
    model.roi_heads.register_forward_pre_hook(lambda _, args: proposals.extend(args[1]))
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        outputs = model(images)
    assert proposals and {p.dtype for p in proposals} == {torch.float32}
    assert {o["boxes"].dtype for o in outputs} == {torch.float32}
    # a box near 500 px decodes exactly, as it would not in bf16 (steps of 2 px there)
    box = torch.tensor([[101.0, 203.0, 301.0, 501.0]])
    for coder in (model.rpn.box_coder, model.roi_heads.box_coder):
        with torch.autocast("cpu", torch.bfloat16):
            decoded = coder.decode(torch.zeros(1, 4, dtype=torch.bfloat16), [box])
        assert decoded.dtype == torch.float32 and torch.equal(decoded.reshape(1, 4), box)


def test_training_repeats_exactly_with_the_seed() -> None:
    assert train_losses("semantic", 2, "standard") == train_losses("semantic", 2, "standard")


def write_project(root: Path, variant: str = "original", **segment: object) -> Path:
    images, masks, rembg = figures(16)
    splits = np.array([0] * 8 + [1] * 4 + [2] * 4)
    for name, pictures in (("original", images), ("rembg", rembg)):
        meta = {"variant": name, "labels": ["x"], "mask_classes": CLASSES,
                "image_size": [64, 48], "paths": [f"images/{i}.png" for i in range(16)],
                "fill": "black"}
        save_prepared(root / "data/prepared" / name, pictures, masks, np.zeros(16), splits, meta)
    write_params(root, variant, **segment)
    return root


def write_params(root: Path, variant: str, **segment: object) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["variant"] = variant
    params["segment"] = {**SEGMENT, **segment}
    params["evaluate"].update(device="cpu", overlays=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def run_stage(project: Path, stage: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=project,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=300)


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.timeout(300)
def test_semantic_stages_end_to_end(tmp_path: Path) -> None:
    project = write_project(tmp_path)
    ok(run_stage(project, "train_segmenter"))
    checkpoint = load_checkpoint(project / "models/segmenter.pt", ("semantic",))
    assert checkpoint.config["arch"] == "unet" and checkpoint.variant == "original"
    assert checkpoint.precision == "fp32"      # train.precision auto on the CPU
    live = json.loads((project / "dvclive/train_segmenter/metrics.json").read_text())
    assert live["train"]["loss"] > 0 and 0 <= live["val"]["miou"] <= 1
    curve = project / "dvclive/train_segmenter/plots/metrics/val/miou.tsv"
    miou = [float(line.split("\t")[-1]) for line in curve.read_text().splitlines()[1:]]
    assert checkpoint.epoch == 1 + miou.index(max(miou)) == live["best_epoch"]
    assert live["train_images_per_second"] > 0
    assert len((project / "dvclive/train_segmenter/plots/metrics/train/loss.tsv")
               .read_text().splitlines()) == 3

    ok(run_stage(project, "evaluate_segmenter"))
    metrics = json.loads((project / "metrics/detail/segmentation.json").read_text())
    assert metrics["task"] == "semantic" and metrics["variant"] == "original"
    assert metrics["test"]["images"] == 4 and set(metrics["test"]["per_class_iou"]) == set(CLASSES)
    assert metrics["cross_variant"]["variant"] == "rembg"
    for block in (metrics["test"], metrics["cross_variant"]):
        for key in ("miou", "miou_fg", "pixel_acc", "fw_iou"):
            assert 0 <= block[key] <= 1
    for name in ("original", "rembg"):
        assert (project / f"plots/segmentation/overlays/{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((project / "metrics/segmentation.json").read_text()) == {
        "test": {"miou": round(metrics["test"]["miou"], 4)},
        "cross": {"miou": round(metrics["cross_variant"]["miou"], 4)},
        "bg": {"gap": None, "only_bg": None, "no_fg": None}}    # only original and rembg built
    per_class = json.loads((project / "plots/segmentation/per_class.json").read_text())
    assert {row["class"] for row in per_class} <= {f"{name}, tested on {variant}"
                                                   for name in CLASSES
                                                   for variant in ("original", "rembg")}
    assert all(0 <= row["score"] <= 1 for row in per_class)

    # Evaluation rebuilds the model and its variant from the checkpoint, not from params.
    write_params(project, "rembg", arch="fpn")
    ok(run_stage(project, "evaluate_segmenter"))
    detail = json.loads((project / "metrics/detail/segmentation.json").read_text())
    assert detail["variant"] == "original"


@pytest.mark.timeout(300)
def test_instance_stages_end_to_end(tmp_path: Path) -> None:
    project = write_project(tmp_path, "rembg", task="instance", epochs=1)
    ok(run_stage(project, "train_segmenter"))
    live = json.loads((project / "dvclive/train_segmenter/metrics.json").read_text())
    assert "mask_ap" in live["val"]
    ok(run_stage(project, "evaluate_segmenter"))
    metrics = json.loads((project / "metrics/detail/segmentation.json").read_text())
    assert metrics["task"] == "instance" and metrics["cross_variant"]["variant"] == "original"
    for block in (metrics["test"], metrics["cross_variant"]):
        for key in ("mask_ap", "mask_ap50", "mask_ap75", "box_ap", "box_ap50", "box_ap75"):
            assert block[key] is None or 0 <= block[key] <= 1
        assert set(block["per_class_mask_ap"]) == {"top", "pants"}
    assert (project / "plots/segmentation/overlays/rembg.png").stat().st_size > 0
    # The per-image detections give the reported mask AP again (the study's resamples use them).
    found, images = parse_detections((project / "predictions/instances.json").read_text(),
                                     "predictions/instances.json", "rembg",
                                     metrics["test"]["mask_ap"])
    assert images and found.score(np.ones(len(images))) == pytest.approx(
        metrics["test"]["mask_ap"] or 0.0, abs=1e-3)


# Simulate an offline machine even where the network works: no hub cache, a dead proxy.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("changes, expected", [
    ({"arch": "segformer"}, "segment.arch = 'segformer' is not allowed; expected one of unet"),
    ({"pretrained": True}, "segment.pretrained = True is not allowed; expected false: "
                           "ImageNet weights for resnet18"),
    ({"task": "instance", "pretrained": True},
     "ImageNet weights for instance_backbone mobilenet_v3"),
])
def test_bad_params_stop_with_a_message_and_touch_nothing(
        tmp_path: Path, changes: dict, expected: str) -> None:
    project = write_project(tmp_path, **changes)
    olds = {"models/segmenter.pt": "old model", "dvclive/train_segmenter/metrics.json": "{}"}
    for rel, text in olds.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    env = {**OFFLINE, "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    result = run_stage(project, "train_segmenter", **env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert {rel: (project / rel).read_text() for rel in olds} == olds


def test_instance_validation_costs_one_coco_run_and_copies_bool_masks(monkeypatch) -> None:
    """Validation every epoch runs COCO's evaluation once per IoU type (no per-class AP), the
    evaluation stage once per IoU type and class; masks reach the host thresholded."""
    from pycocotools.cocoeval import COCOeval

    data = prepared(4)
    config = read_segment({"segment": {**SEGMENT, "task": "instance"}})
    task = make_task(config, data, Path("no-raw-dir"))
    torch.manual_seed(0)
    model = task.build_model(load_weights=False)
    loader = task.loader(task.dataset(data.images, np.arange(4)), 4)
    runs, copied = [], []
    evaluate, cpu_copy = COCOeval.evaluate, torch.Tensor.cpu
    monkeypatch.setattr(COCOeval, "evaluate", lambda self: runs.append(1) or evaluate(self))
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: (
        self.ndim == 3 and copied.append(self.dtype)) or cpu_copy(self, *a, **k))
    cpu = torch.device("cpu")
    score = task.validator(loader, cpu, None)(model)
    assert set(score) == {"mask_ap"} and len(runs) == 2
    assert copied and set(copied) == {torch.bool}      # (N, H, W) masks reach the host as bool
    runs.clear()
    scores = task.evaluate(model, loader, cpu)
    assert len(runs) == 2 * (1 + len(task.class_names) - 1)   # box and mask AP, per class
    assert scores["mask_ap"] == score["mask_ap"]
