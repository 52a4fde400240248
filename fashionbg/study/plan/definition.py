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
import math
import re
import reprlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

from fashionbg.contracts.params import REQUIRED, VARIANTS
from fashionbg.contracts.tasks import TASKS
from fashionbg.core.errors import UserError
from fashionbg.core.io import read_regular
from fashionbg.core.params import UniqueKeyLoader, yaml_error

STUDY_FILE = Path("study.yaml")
TESTS = ("gain", "interaction")
SMOKE_SUFFIX = "-smoke"
LAST = "applied_last"   # a smoke preset's settings, over every arm's own
EXPECTS = ("positive", "negative", "not_positive", "equivalent")
METRICS = tuple(dict.fromkeys(spec.key_metric for spec in TASKS.values()))


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
        return TASKS[self.arm.task].evaluate_stage


@dataclass(frozen=True)
class Study:
    arms: dict[str, Arm]
    claims: list[Claim]
    margins: dict[str, float]   # metric → equivalence margin Δ, fixed before any run
    alpha: float                # family-wise error rate of a preset's claims
    power: float                # for the minimal detectable effect and the sizes needed
    target_effect: float        # the effect size the sizes are planned for (the paper's)
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
                # split_seeds: the seed also draws the split, a randomised factor of the study
                split = {SPLIT_KEY: seed} if spec.get("split_seeds") else {}
                for variant in changes.get("variants", spec.get("variants", self.variants)):
                    params = {**base, **split, "data.variant": variant,
                              TASKS[arm.task].seed_key: seed}
                    cells.append(Cell(arm, variant, seed, params))
        return cells


def load_study(path: Path = STUDY_FILE, params: dict[str, Any] | None = None) -> Study:
    """The study in `path`, every key checked (a wrong type, a value out of range or an unknown
    key is one line naming the file, the dotted key, the value and what is allowed); with
    `params` (params.yaml), every overridden key must exist there, since `dvc exp run -S` only
    sets keys params.yaml has."""
    raw = _read(Path(path))
    check = _Checker(str(path), params)
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a mapping with arms, claims and presets, "
                        f"not {_show(raw)}")
    check.keys("", raw, TOP_KEYS, required=("arms", "presets"))
    arms = {name: check.arm(name, spec)
            for name, spec in check.named("arms", raw["arms"], NAME).items()}
    claims = check.claims(raw.get("claims", []), arms)
    presets = {name: check.preset(name, spec, arms)
               for name, spec in check.named("presets", raw["presets"], PRESET_NAME).items()}
    presets = {**presets, **{name + SMOKE_SUFFIX: check.smoke(name, preset, presets, arms)
                             for name, preset in presets.items() if "smoke" in preset}}
    variants = _variants(f"{path}: variants", raw.get("variants", list(REQUIRED)))
    fraction = "a number > 0 and < 1"
    in_units = f"{fraction} (a difference in the metric's units, e.g. 0.02 for 2 points)"
    return Study(arms, claims, check.margins(raw, in_units),
                 check.number("alpha", raw.get("alpha", 0.05), f"{fraction}, e.g. 0.05"),
                 check.number("power", raw.get("power", 0.8), f"{fraction}, e.g. 0.8"),
                 check.number("target_effect", raw.get("target_effect", 0.05), in_units),
                 presets, variants)


TOP_KEYS = ("variants", "margins", "minimal_effect", "alpha", "power", "target_effect", "arms",
            "claims", "presets")
ARM_KEYS = ("task", "about", "params")
CLAIM_KEYS = ("id", "claim", "test", "arm", "baseline", "expect")
PRESET_KEYS = ("about", "seeds", "split_seeds", "params", "task_params", "variants", "report",
               "arms", "smoke")
CHANGE_KEYS = ("seeds", "params", "variants")
SMOKE_KEYS = ("seeds", "params", "task_params", "report")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")         # arms: part of each cell's name
PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # presets: part of a report's name
PARAM_KEY = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
CELL_KEYS = {"data.variant", *(spec.seed_key for spec in TASKS.values())}   # set per cell
SPLIT_KEY = "data.seed"   # set per cell too, by a preset with split_seeds
MAX_BYTES = 1 << 20      # a study of hundreds of arms is a few tens of kB
MAX_SEED = 2**32 - 1     # what numpy and torch seed with
MAX_DEPTH, MAX_ITEMS = 3, 1000   # a param value: lists of lists of scalars, this many in all
# Values once aliases are expanded: YAML's `&a [*b, *b, …]` chains grow exponentially (a
# "billion laughs" under seeds: is 1 kB of text), and every check walks the expanded values.
MAX_NODES = 100_000


def _read(path: Path) -> Any:
    """The YAML in `path`: a syntax error, a key given twice, bytes that are not UTF-8, nesting
    too deep for the parser, a file too large to be a study or expanding to too many values,
    or something other than a regular file, are each one line."""
    try:
        data = read_regular(path, MAX_BYTES)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from err
    if len(data) > MAX_BYTES:
        raise UserError(f"{path} is larger than {MAX_BYTES >> 20} MiB; a study is a few kB")
    try:
        loader = UniqueKeyLoader(data.decode("utf-8"))
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node, {}) > MAX_NODES:
                raise UserError(f"{path} expands to more than {MAX_NODES:,} values (through "
                                "YAML aliases); a study has a few hundred")
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start})") from err
    except yaml.YAMLError as err:
        raise yaml_error(path, err) from err
    except RecursionError as err:
        raise UserError(f"{path} is nested too deeply to be a study") from err


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for with every alias expanded, counted once per shared
    node (so the count itself takes time linear in the text)."""
    if id(node) not in sizes:
        sizes[id(node)] = MAX_NODES + 1         # a node inside itself never ends
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [n for pair in node.value for n in pair]
                    if isinstance(node, yaml.MappingNode) else [])
        sizes[id(node)] = min(MAX_NODES + 1,
                              1 + sum(_expanded_size(child, sizes) for child in children))
    return sizes[id(node)]


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 3


def _show(value: Any) -> str:
    """A value as the user wrote it, shortened: huge or deeply nested ones stay one line."""
    return _REPR.repr(value)


@dataclass(frozen=True)
class _Checker:
    """The checks of study.yaml, each naming the file and the dotted key of what it refuses."""
    path: str
    params: dict[str, Any] | None

    def refuse(self, key: str, value: Any, allowed: str) -> NoReturn:
        raise UserError(f"{self.path}: {key} = {_show(value)} is not allowed; expected {allowed}")

    def keys(self, where: str, spec: dict[str, Any], known: tuple[str, ...],
             required: tuple[str, ...] = ()) -> None:
        for key, value in spec.items():
            if key not in known:
                self.refuse(_dot(where, key), value,
                            "no such key; the known keys are " + ", ".join(known))
        for key in required:
            if key not in spec:
                raise UserError(f"{self.path}: {_dot(where, key)} is missing")

    def number(self, key: str, value: Any, allowed: str) -> float:
        """A number strictly between 0 and 1."""
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and 0 < value < 1):
            self.refuse(key, value, allowed)
        return float(value)

    def margins(self, raw: dict[str, Any], allowed: str) -> dict[str, float]:
        """margins: {metric: Δ}, one per headline metric; or the older minimal_effect: one Δ
        for every metric."""
        margin = self.number("minimal_effect", raw.get("minimal_effect", 0.02), allowed)
        if "margins" not in raw:
            return dict.fromkeys(METRICS, margin)
        if "minimal_effect" in raw:
            self.refuse("minimal_effect", raw["minimal_effect"], "no value next to margins "
                        "(minimal_effect is the older way to give one margin for every metric)")
        margins = self.mapping("margins", raw["margins"], "a mapping of metrics ("
                               + ", ".join(METRICS) + ") to margins")
        self.keys("margins", margins, METRICS, required=METRICS)
        return {m: self.number(f"margins.{m}", margins[m], allowed) for m in METRICS}

    def mapping(self, where: str, value: Any, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.refuse(where, value, what)
        return value

    def named(self, where: str, value: Any, pattern: re.Pattern[str]) -> dict[str, Any]:
        """A non-empty mapping whose keys are names (letters, digits, _)."""
        what = f"a non-empty mapping of names ({pattern.pattern})"
        if not self.mapping(where, value, what):
            self.refuse(where, value, what)
        for name in value:
            if not (isinstance(name, str) and pattern.fullmatch(name)):
                self.refuse(f"{where} name", name, f"a name matching {pattern.pattern}")
        return value

    def text(self, where: str, value: Any) -> str:
        if not isinstance(value, str):
            self.refuse(where, value, "a string")
        return value

    def arm(self, name: str, spec: Any) -> Arm:
        where = f"arms.{name}"
        self.mapping(where, spec, "a mapping with task, about and params")
        self.keys(where, spec, ARM_KEYS, required=("task",))
        if not isinstance(spec["task"], str) or spec["task"] not in TASKS:   # [] is unhashable
            self.refuse(f"{where}.task", spec["task"], "one of " + ", ".join(TASKS))
        return Arm(name, spec["task"], self.text(f"{where}.about", spec.get("about", "")),
                   self.overrides(f"{where}.params", spec.get("params", {})))

    def overrides(self, where: str, value: Any) -> dict[str, Any]:
        """A mapping of params.yaml keys (dotted) to YAML scalars or lists of them."""
        self.mapping(where, value, "a mapping of params.yaml keys (e.g. classify.epochs) "
                     "to values")
        for key, item in value.items():
            if not (isinstance(key, str) and PARAM_KEY.fullmatch(key)):
                self.refuse(f"{where} key", key, "a params.yaml key such as classify.epochs")
            if key in CELL_KEYS:
                self.refuse(_dot(where, key), item, "no value: each cell sets it (list it "
                            "under seeds or variants instead)")
            if not _plain(item, MAX_DEPTH, [MAX_ITEMS]):
                self.refuse(_dot(where, key), item, "a string (without '${'), a finite number, "
                            "true, false, null, or a list of them")
            if self.params is not None and not _in_params(self.params, key):
                raise UserError(f"{self.path}: {where}: {key} is not a key of params.yaml "
                                "(dvc exp run -S can only change existing keys)")
        return dict(value)

    def claims(self, value: Any, arms: dict[str, Arm]) -> list[Claim]:
        if not isinstance(value, list):
            self.refuse("claims", value, "a list of claims (id, claim, test, arm, expect)")
        claims: list[Claim] = []
        for i, spec in enumerate(value):
            where = f"claims[{i}]"
            self.mapping(where, spec, "a mapping with id, claim, test, arm, baseline, expect")
            self.keys(where, spec, CLAIM_KEYS, required=("id", "test", "arm", "expect"))
            cid = spec["id"]
            if not (isinstance(cid, str) and NAME.fullmatch(cid)):
                self.refuse(f"{where}.id", cid, f"a name matching {NAME.pattern}")
            if cid in {c.id for c in claims}:
                self.refuse(f"{where}.id", cid, "an id no other claim has")
            where = f"claims.{cid}"
            if spec["test"] not in TESTS:
                self.refuse(f"{where}.test", spec["test"], "one of " + ", ".join(TESTS))
            if spec["expect"] not in EXPECTS:
                self.refuse(f"{where}.expect", spec["expect"], "one of " + ", ".join(EXPECTS))
            interaction = spec["test"] == "interaction"
            if interaction and "baseline" not in spec:
                raise UserError(f"{self.path}: {where}.baseline is missing (an interaction "
                                "compares the gain of arm with the gain of baseline)")
            if not interaction and "baseline" in spec:
                self.refuse(f"{where}.baseline", spec["baseline"],
                            "no baseline for a gain (only an interaction has one)")
            for key in ("arm", "baseline") if interaction else ("arm",):
                if not (isinstance(spec[key], str) and spec[key] in arms):
                    self.refuse(f"{where}.{key}", spec[key],
                                "the name of an arm: " + ", ".join(arms))
            if interaction and arms[spec["arm"]].task != arms[spec["baseline"]].task:
                self.refuse(f"{where}.baseline", spec["baseline"],
                            f"an arm of the same task as {spec['arm']} "
                            f"({arms[spec['arm']].task})")
            claims.append(Claim(cid, self.text(f"{where}.claim", spec.get("claim", "")),
                                spec["test"], spec["arm"], spec.get("baseline"),
                                spec["expect"]))
        return claims

    def seeds(self, where: str, value: Any) -> list[int]:
        if not (isinstance(value, list) and value and len(set(map(repr, value))) == len(value)
                and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED
                        for s in value)):
            self.refuse(where, value, f"a non-empty list of distinct integers ≥ 0 "
                        f"(and ≤ {MAX_SEED})")
        return value

    def task_params(self, where: str, value: Any) -> dict[str, dict[str, Any]]:
        self.mapping(where, value, "a mapping of tasks (" + ", ".join(TASKS) + ") to params")
        for task, overrides in value.items():
            if task not in TASKS:
                self.refuse(f"{where} task", task, "one of " + ", ".join(TASKS))
            self.overrides(f"{where}.{task}", overrides)
        return value

    def report(self, where: str, value: Any) -> str:
        if not (isinstance(value, str) and REPORT_NAME.fullmatch(value)):
            self.refuse(where, value, "a file reports/<name>.md (letters, digits, _ and -)")
        return value

    def preset(self, name: str, spec: Any, arms: dict[str, Arm]) -> dict[str, Any]:
        where = f"presets.{name}"
        self.mapping(where, spec, "a mapping with about, seeds, params, arms, …")
        self.keys(where, spec, PRESET_KEYS, required=("seeds", "arms"))
        spec = dict(spec)
        self.text(f"{where}.about", spec.get("about", ""))
        self.seeds(f"{where}.seeds", spec["seeds"])
        self.overrides(f"{where}.params", spec.get("params", {}))
        self.task_params(f"{where}.task_params", spec.get("task_params", {}))
        if "variants" in spec:
            _variants(f"{self.path}: {where}.variants", spec["variants"])
        if "report" in spec:
            self.report(f"{where}.report", spec["report"])
        if not self.named(f"{where}.arms", spec["arms"], NAME):
            self.refuse(f"{where}.arms", spec["arms"], "a mapping of arm names to changes")
        spec["arms"] = {arm: self.changes(f"{where}.arms.{arm}", arm, changes, arms)
                        for arm, changes in spec["arms"].items()}
        self.split_seeds(where, spec, arms)
        return spec

    def split_seeds(self, where: str, spec: dict[str, Any], arms: dict[str, Arm]) -> None:
        """split_seeds: true or false; when true no params of the preset or its arms may set
        data.seed, which each cell sets to its seed."""
        split = spec.get("split_seeds", False)
        if not isinstance(split, bool):
            self.refuse(f"{where}.split_seeds", split, "true or false")
        if not split:
            return
        sources = {f"{where}.params": spec.get("params", {}),
                   **{f"{where}.task_params.{t}": p
                      for t, p in spec.get("task_params", {}).items()},
                   **{f"arms.{a}.params": arms[a].params for a in spec["arms"]},
                   **{f"{where}.arms.{a}.params": c.get("params", {})
                      for a, c in spec["arms"].items()}}
        for place, params in sources.items():
            if SPLIT_KEY in params:
                self.refuse(f"{place}.{SPLIT_KEY}", params[SPLIT_KEY], "no value: with "
                            "split_seeds each cell sets it to its seed")

    def changes(self, where: str, arm: str, value: Any, arms: dict[str, Arm]) -> dict[str, Any]:
        """One arm's changes in a preset: seeds, params, variants ({} or nothing for none)."""
        if arm not in arms:
            self.refuse(where.rsplit(".", 1)[0] + " name", arm,
                        "the name of an arm: " + ", ".join(arms))
        value = {} if value is None else value
        self.mapping(where, value, "a mapping with seeds, params or variants, or {}")
        self.keys(where, value, CHANGE_KEYS)
        if "seeds" in value:
            self.seeds(f"{where}.seeds", value["seeds"])
        self.overrides(f"{where}.params", value.get("params", {}))
        if "variants" in value:
            _variants(f"{self.path}: {where}.variants", value["variants"])
        return value

    def smoke(self, name: str, preset: dict[str, Any], presets: dict[str, Any],
              arms: dict[str, Arm]) -> dict[str, Any]:
        """`<name>-smoke`: the preset's arms, variants and tasks with the smoke block's seeds
        and settings over everything else, and a report of its own (the README's stays as it
        is)."""
        where = f"presets.{name}.smoke"
        smoke = self.mapping(where, preset["smoke"], "a mapping with seeds, params, "
                             "task_params or report")
        self.keys(where, smoke, SMOKE_KEYS)
        if name + SMOKE_SUFFIX in presets:
            self.refuse(where, smoke, f"no smoke block: a preset named {name + SMOKE_SUFFIX} "
                        "exists already")
        seeds = self.seeds(f"{where}.seeds", smoke.get("seeds", preset["seeds"]))
        report = self.report(f"{where}.report",
                             smoke.get("report", f"reports/study-{name}{SMOKE_SUFFIX}.md"))
        derived = {**preset, "seeds": seeds, "report": report,
                   "about": f"smoke run of preset {name}: {preset.get('about', '')}",
                   LAST: {"params": self.overrides(f"{where}.params", smoke.get("params", {})),
                          "task_params": self.task_params(f"{where}.task_params",
                                                          smoke.get("task_params", {}))}}
        del derived["smoke"]
        self.split_seeds(where, {**derived, "params": derived[LAST]["params"],
                                 "task_params": derived[LAST]["task_params"]}, arms)
        return derived


REPORT_NAME = re.compile(r"reports/[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\.md")


def _dot(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _plain(value: Any, depth: int, budget: list[int]) -> bool:
    """A value `-S` can carry as it is: a string without '${' (OmegaConf would resolve it), a
    finite number, a boolean, null, or a list of them (nested at most `depth` deep, with at most
    `budget` items in all, so that an alias bomb is not walked)."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if isinstance(value, str):
        return "${" not in value
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list) and depth > 0:
        return all(_plain(v, depth - 1, budget) for v in value)
    return False


def _in_params(params: dict[str, Any], key: str) -> bool:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def locate(cells: list[Cell], places: dict[str, str], sha256: dict[str, str]) -> list[Cell]:
    """The cells with data.path (a folder or archive, made absolute) or data.url (an http(s)
    URL, with data.sha256 where given) for the dataset each reads, from `places` (source →
    where it is, said once for every cell). A place no cell reads is an error: a typo."""
    sources = {c.source for c in cells}
    for name in {*places, *sha256} - sources:
        raise UserError(f"{name.upper()} is given but no cell of this preset reads data.source "
                        f"{name}; the preset reads " + (", ".join(sorted(map(str, sources)))))
    # Keyed by str | None: a cell without data.source gets no place.
    wheres: dict[str | None, dict[str, Any]] = {
        name: _where(name, value, sha256.get(name)) for name, value in places.items()}
    return [replace(c, where=wheres.get(c.source, {})) for c in cells]


def _where(source: str, value: str, sha256: str | None) -> dict[str, Any]:
    if "://" in value:
        return {"data.url": value, **({"data.sha256": sha256} if sha256 else {})}
    if sha256:   # data.path takes a sha256 for archives only; parse_origin checks it
        return {"data.path": str(Path(value).expanduser().resolve()), "data.sha256": sha256}
    return {"data.path": str(Path(value).expanduser().resolve())}


def _variants(where: str, value: Any) -> list[str]:
    """A list of training variants holding original and rembg (every claim compares them)."""
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)
            and len(set(value)) == len(value) and set(REQUIRED) <= set(value) <= set(VARIANTS)):
        raise UserError(f"{where} = {_show(value)} is not allowed; expected a list of distinct "
                        f"names from {', '.join(VARIANTS)} holding {' and '.join(REQUIRED)}")
    return value
