"""study.yaml: the arms, claims and presets of the study, checked, and the cells a preset runs.

A *cell* is one arm trained on one variant with one seed: one DVC experiment, named after the
arm, variant, seed and a short hash of every param it sets, so a changed definition gives new
cells instead of reusing stale ones. Where a dataset lies on this machine (data.path / data.url)
is not part of a cell's identity: the same cell run from another copy is the same cell.

A preset with a `smoke:` block also has a smoke run, `<preset>-smoke`: the same arms, variants,
tasks and claims with the block's seeds and tiny settings applied last, reported on its own.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from fashionbg.contracts.params import REQUIRED, VARIANTS
from fashionbg.core.errors import UserError
from fashionbg.core.params import is_number

STUDY_FILE = Path("study.yaml")
TASKS = {   # task: (seed key, evaluation stage, headline metric, metrics file)
    "classify": ("classify.seed", "evaluate_classifier", "top1", "metrics/classification.json"),
    "semantic": ("segment.seed", "evaluate_segmenter", "miou", "metrics/segmentation.json"),
    "instance": ("segment.seed", "evaluate_segmenter", "mask_ap", "metrics/segmentation.json"),
}
TESTS = ("gain", "interaction")
SMOKE_SUFFIX = "-smoke"
LAST = "applied_last"   # a smoke preset's settings, over every arm's own
EXPECTS = ("positive", "negative", "not_positive")


@dataclass(frozen=True)
class Arm:
    name: str
    task: str
    about: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    test: str
    arm: str
    baseline: str | None
    expect: str


@dataclass(frozen=True)
class Cell:
    arm: Arm
    variant: str
    seed: int
    params: dict[str, Any]   # every -S override that defines the cell, seed and variant included
    where: dict[str, Any] = field(default_factory=dict)   # data.path / url / sha256 here

    @property
    def overrides(self) -> dict[str, Any]:
        """Every -S override the cell's experiment runs with."""
        return {**self.params, **self.where}

    @property
    def source(self) -> str | None:
        return self.params.get("data.source")

    @property
    def name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()
        return f"{self.arm.name}-{self.variant}-s{self.seed}-{digest[:6]}"

    @property
    def stage(self) -> str:
        return TASKS[self.arm.task][1]


@dataclass(frozen=True)
class Study:
    arms: dict[str, Arm]
    claims: list[Claim]
    minimal_effect: float
    presets: dict[str, dict[str, Any]]
    variants: list[str]     # the training variants of every arm, unless a preset says others

    def cells(self, preset: str) -> list[Cell]:
        """Every cell of `preset`, in a stable order (arm, seed, variant)."""
        spec = self.presets[preset]
        last = spec.get(LAST, {})
        cells = []
        for arm_name, changes in spec["arms"].items():
            arm = self.arms[arm_name]
            base = {**spec.get("params", {}), **spec.get("task_params", {}).get(arm.task, {}),
                    **arm.params, **changes.get("params", {}),
                    **last.get("params", {}), **last.get("task_params", {}).get(arm.task, {})}
            seeds = spec["seeds"] if last else changes.get("seeds", spec["seeds"])
            for seed in seeds:
                for variant in changes.get("variants", spec.get("variants", self.variants)):
                    params = {**base, "data.variant": variant, TASKS[arm.task][0]: seed}
                    cells.append(Cell(arm, variant, seed, params))
        return cells


def load_study(path: Path = STUDY_FILE, params: dict[str, Any] | None = None) -> Study:
    """The study in `path`; with `params` (params.yaml), every overridden key must exist there,
    since `dvc exp run -S` only sets keys params.yaml has."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read {path}: {str(err).splitlines()[0]}") from err
    except RecursionError:
        raise UserError(f"cannot read {path}: nested too deeply; check its brackets") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a mapping with arms, claims and presets")
    arms = {name: _arm(path, name, spec) for name, spec in _mapping(path, raw, "arms").items()}
    claims = [_claim(path, arms, spec) for spec in raw.get("claims") or []]
    presets = _mapping(path, raw, "presets")
    for name, preset in presets.items():
        _check_preset(path, name, preset, arms)
    presets = {**presets, **{name + SMOKE_SUFFIX: _smoke_preset(path, name, preset, presets, arms)
                             for name, preset in presets.items() if "smoke" in preset}}
    variants = _variants(f"{path}: variants", raw.get("variants", list(REQUIRED)))
    effect = raw.get("minimal_effect", 0.02)
    if not (is_number(effect) and effect > 0):
        raise UserError(f"{path}: minimal_effect = {effect!r} is not allowed; expected a finite "
                        "number > 0")
    study = Study(arms, claims, float(effect), presets, variants)
    if params is not None:
        for preset in presets:
            for cell in study.cells(preset):
                _check_keys(path, cell.params, params)
    return study


def _mapping(path: Path, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict) or not value:
        raise UserError(f"{path}: {key} must be a non-empty mapping")
    return value


def _arm(path: Path, name: str, spec: Any) -> Arm:
    if not isinstance(spec, dict) or spec.get("task") not in TASKS:
        raise UserError(f"{path}: arms.{name}.task must be one of " + ", ".join(TASKS))
    if not isinstance(spec.get("params", {}), dict):
        raise UserError(f"{path}: arms.{name}.params must be a mapping of params.yaml keys")
    return Arm(name, spec["task"], str(spec.get("about", "")), dict(spec.get("params", {})))


def _claim(path: Path, arms: dict[str, Arm], spec: Any) -> Claim:
    where = f"{path}: claim {spec.get('id') if isinstance(spec, dict) else spec!r}"
    if not isinstance(spec, dict) or spec.get("test") not in TESTS:
        raise UserError(f"{where}: test must be one of " + ", ".join(TESTS))
    if spec.get("expect") not in EXPECTS:
        raise UserError(f"{where}: expect must be one of " + ", ".join(EXPECTS))
    needed = [spec.get("arm")] + ([spec.get("baseline")] if spec["test"] == "interaction" else [])
    for arm in needed:
        if arm not in arms:
            raise UserError(f"{where}: no arm named {arm!r}")
    if spec["test"] == "interaction" and arms[needed[0]].task != arms[needed[1]].task:
        raise UserError(f"{where}: an interaction compares arms of the same task")
    return Claim(str(spec.get("id")), str(spec.get("claim", "")), spec["test"], spec["arm"],
                 spec.get("baseline"), spec["expect"])


def _check_preset(path: Path, name: str, preset: Any, arms: dict[str, Arm]) -> None:
    where = f"{path}: presets.{name}"
    if not isinstance(preset, dict) or not isinstance(preset.get("arms"), dict):
        raise UserError(f"{where}.arms must map arm names to their changes ({{}} for none)")
    seeds = preset.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise UserError(f"{where}.seeds must be a list of integers")
    if "variants" in preset:
        _variants(f"{where}.variants", preset["variants"])
    report = preset.get("report", "reports/study.md")
    if not (isinstance(report, str) and report.startswith("reports/") and report.endswith(".md")
            and ".." not in report):
        raise UserError(f"{where}.report = {report!r} is not allowed; expected a file "
                        "reports/<name>.md")
    for arm, changes in preset["arms"].items():
        if arm not in arms:
            raise UserError(f"{where}.arms: no arm named {arm!r}")
        if not isinstance(changes, dict):
            raise UserError(f"{where}.arms.{arm} must be a mapping (seeds, params, variants) "
                            "or {}")
        if "variants" in changes:
            _variants(f"{where}.arms.{arm}.variants", changes["variants"])


def _smoke_preset(path: Path, name: str, preset: dict[str, Any], presets: dict[str, Any],
                  arms: dict[str, Arm]) -> dict[str, Any]:
    """`<name>-smoke`: the preset's arms, variants and tasks with the smoke block's seeds and
    settings over everything else, and a report of its own (the README's stays as it is)."""
    where = f"{path}: presets.{name}.smoke"
    smoke = preset["smoke"]
    if not isinstance(smoke, dict) or set(smoke) - {"seeds", "params", "task_params", "report"}:
        raise UserError(f"{where} must be a mapping with seeds, params, task_params or report")
    if name + SMOKE_SUFFIX in presets:
        raise UserError(f"{where}: a preset named {name + SMOKE_SUFFIX} exists already")
    for key in ("params", "task_params"):
        if not isinstance(smoke.get(key, {}), dict):
            raise UserError(f"{where}.{key} must be a mapping")
    derived = {**preset, "seeds": smoke.get("seeds", preset["seeds"]),
               "about": f"smoke run of preset {name}: {preset.get('about', '')}",
               "report": smoke.get("report", f"reports/study-{name}{SMOKE_SUFFIX}.md"),
               LAST: {"params": smoke.get("params", {}),
                      "task_params": smoke.get("task_params", {})}}
    del derived["smoke"]
    _check_preset(path, f"{name}.smoke", derived, arms)
    return derived


def locate(cells: list[Cell], places: dict[str, str], sha256: dict[str, str]) -> list[Cell]:
    """The cells with data.path (a folder or archive, made absolute) or data.url (an http(s)
    URL, with data.sha256 where given) for the dataset each reads, from `places` (source →
    where it is, said once for every cell). A place no cell reads is an error: a typo."""
    sources = {c.source for c in cells}
    for name in {*places, *sha256} - sources:
        raise UserError(f"{name.upper()} is given but no cell of this preset reads data.source "
                        f"{name}; the preset reads " + (", ".join(sorted(map(str, sources)))))
    wheres = {name: _where(name, value, sha256.get(name)) for name, value in places.items()}
    return [replace(c, where=wheres.get(c.source, {})) for c in cells]


def _where(source: str, value: str, sha256: str | None) -> dict[str, Any]:
    if "://" in value:
        return {"data.url": value, **({"data.sha256": sha256} if sha256 else {})}
    if sha256:   # data.path takes a sha256 for archives only; parse_origin checks it
        return {"data.path": str(Path(value).expanduser().resolve()), "data.sha256": sha256}
    return {"data.path": str(Path(value).expanduser().resolve())}


def _variants(where: str, value: Any) -> list[str]:
    """A list of training variants holding original and rembg (every claim compares them)."""
    if not (isinstance(value, list) and len(set(map(str, value))) == len(value)
            and set(REQUIRED) <= set(value) <= set(VARIANTS)):
        raise UserError(f"{where} = {value!r} is not allowed; expected a list of distinct "
                        f"names from {', '.join(VARIANTS)} holding {' and '.join(REQUIRED)}")
    return value


def _check_keys(path: Path, overrides: dict[str, Any], params: dict[str, Any]) -> None:
    for key in overrides:
        node: Any = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise UserError(f"{path}: {key} is not a key of params.yaml "
                                "(dvc exp run -S can only change existing keys)")
            node = node[part]
