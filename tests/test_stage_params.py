"""Bad parameters stop a stage before it touches outputs, with one clear line and exit code 2."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_properties import run_stage

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(keys: str, value):
    params = copy.deepcopy(PARAMS)
    node = params
    *parents, last = keys.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return params


CASES = [
    ("download", "data.source", "kaggle", "one of demo"),
    ("download", "data.demo.context_correlation", 1.5, "<= 1"),
    ("download", "data.max_bad_fraction", -0.1, ">= 0.0"),
    ("fetch_model", "background.model", "sam", "one of u2netp, u2net"),
    ("remove_background", "background.alpha_matting", "yes", "true or false"),
    ("prepare", "data.image_size", [128], "two positive integers"),
    ("prepare", "data.image_size", [0, 96], "two positive integers"),
    ("prepare", "background.fill", "purple", "black, white, gray or an [r, g, b]"),
    ("prepare", "background.person_fill", "blur", "one of tile, telea, black"),
    ("train_classifier", "data.variant", "nobg", "one of the variants data.variants builds"),
    ("train_classifier", "classify.arch", "vgg16", "one of shallow_cnn, resnet18"),
    ("train_classifier", "classify.lr", 0, "a finite number > 0.0"),
    ("train_classifier", "classify.epochs", 0, "an integer >= 1"),
    ("train_classifier", "classify.lrr", 0.1, "no such key; the known keys are arch"),
    ("train_segmenter", "segment.arch", "segformer", "one of unet, fpn, deeplabv3plus"),
    ("train_classifier", "train.workers", -1, "auto or an integer from 0 to 64"),
    ("train_segmenter", "train.nproc", 0, "an integer from 1 to 64"),
    ("train_classifier", "train.nproc", 1.5, "an integer from 1 to 64"),
    ("train_classifier", "train.nproc", "2; touch pwned", "an integer from 1 to 64"),
    ("train_segmenter", "train.nproc", True, "an integer from 1 to 64"),
    ("train_classifier", "train.nproc", float("nan"), "an integer from 1 to 64"),
    ("train_classifier", "train.nproc", 65, "an integer from 1 to 64"),
    ("train_segmenter", "train.channels_last", "yes", "true or false"),
    ("train_classifier", "train.augment_on", "gpu", "one of loader, device"),
    ("train_segmenter", "train.precision", "fp8", "one of auto, bf16, fp16, fp32"),
    ("evaluate_classifier", "evaluate.batch_size", "big", "an integer from 1 to 1024"),
    ("evaluate_segmenter", "evaluate.overlays", 99, "an integer from 0 to 32"),
    ("evaluate_segmenter", "evaluate.device", "tpu", "one of auto, cpu, cuda"),
    ("remove_background", "background.device", "gpu", "one of auto, cpu, cuda"),
    ("remove_background", "background.batch_size", 0, "auto or an integer from 1 to 256"),
    # NaN and infinities pass or fail range checks by accident: refused centrally, as "finite"
    ("train_classifier", "classify.lr", float("nan"), "a finite number > 0.0"),
    ("train_segmenter", "segment.weight_decay", float("inf"), "a finite number >= 0.0"),
    ("download", "data.demo.context_correlation", float("nan"), "a finite number >= 0.0"),
    ("download", "data.max_bad_fraction", float("-inf"), "a finite number >= 0.0"),
    ("download", "data.split", [float("nan"), 0.5, 0.5], "three finite non-negative numbers"),
    # upper bounds where memory grows with the value, stated in the message
    ("prepare", "data.image_size", [5000, 96], "each at most 4096: 3 bytes per pixel"),
    ("download", "data.demo.image_size", [2048, 192], "each at most 1024"),
    ("download", "data.demo.images_per_class", 10**6, "an integer from 3 to 5000"),
    ("remove_background", "background.batch_size", 100000, "auto or an integer from 1 to 256"),
    ("train_classifier", "classify.batch_size", 32000, "an integer from 1 to 1024"),
    ("train_segmenter", "segment.batch_size", 5000, "an integer from 2 to 1024"),
    ("train_classifier", "train.workers", 1000, "auto or an integer from 0 to 64"),
]


# Each case runs in this process (torch imported once, not once per case); the first case of
# each stage also as users start it, `python -m stages.<name>`, in a subprocess (slow).
BY_ENTRY_POINT = {stage: (stage, key, value, allowed) for stage, key, value, allowed
                  in reversed(CASES)}


# What a stage may not load before it has checked its params: a refusal costs under a second.
HEAVY = {"torch", "onnxruntime", "rembg", "dvclive"}


def refusal(project: Path, stage: str, entry_point: bool) -> tuple[int, str, set[str]]:
    """(exit code, stderr, the top-level packages it imported) of the stage in `project`, in a
    subprocess (`python -X importtime` names each import) or in this process (no names)."""
    if not entry_point:
        return *run_stage(project, stage), set()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"stages.{stage}"],
                            cwd=project, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.splitlines(keepends=True)
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines
                if line.startswith("import time:") and "|" in line}
    return (result.returncode, "".join(x for x in lines if not x.startswith("import time:")),
            imported)


@pytest.mark.parametrize("stage, key, value, allowed, entry_point", [
    *(pytest.param(*case, False, id=f"{case[0]}-{case[1]}-{case[2]!r}") for case in CASES),
    *(pytest.param(*case, True, id=f"{case[0]}-python-m", marks=pytest.mark.slow)
      for case in BY_ENTRY_POINT.values())])
def test_bad_param_stops_stage_cleanly(tmp_path, stage, key, value, allowed, entry_point):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value(key, value)))
    sentinel = tmp_path / "data" / "raw" / "index.csv"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("untouched")
    code, stderr, imported = refusal(tmp_path, stage, entry_point)
    assert code == 2, stderr
    assert not HEAVY & imported, f"{stage} loaded {HEAVY & imported} before refusing a param"
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert f"{key} = {value!r}" in stderr and allowed in stderr, stderr
    assert sentinel.read_text() == "untouched"
    # nothing but matplotlib's font cache in the project's ignored .cache/ (never in HOME)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".cache") == ["data",
                                                                                "params.yaml"]


def test_broken_yaml_names_line_and_column(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("epochs: 15", "epochs: [15", 1)
    (tmp_path / "params.yaml").write_text(text)
    code, stderr = run_stage(tmp_path, "train_classifier")
    assert code == 2 and "Traceback" not in stderr, stderr
    line = text.splitlines().index(next(l for l in text.splitlines() if "epochs: [15" in l))
    assert "params.yaml is not valid YAML at line" in stderr
    assert str(line + 2) in stderr or str(line + 1) in stderr


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  fill: black",
                                                      "  fill: white\n  fill: black", 1)
    (tmp_path / "params.yaml").write_text(text)
    code, stderr = run_stage(tmp_path, "prepare")
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("  fill: black"))
    assert code == 2 and "Traceback" not in stderr, stderr
    assert f"params.yaml is not valid YAML at line {line}, column 3: duplicate key 'fill'" \
        in stderr
