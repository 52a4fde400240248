"""The study's own inputs are untrusted: study.yaml is checked key by key (one line naming the
file, the dotted key, the value and what is allowed), and an experiment whose files are
malformed (`dvc exp pull` brings other people's) is named and left out of the report."""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from helpers_params import PARAMS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashionbg.core.errors import UserError
from fashionbg.study.plan.definition import Study, load_study

ROOT = Path(__file__).resolve().parents[1]
STUDY = yaml.safe_load((ROOT / "study.yaml").read_text())
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["classify", "gain", "original", "rembg", "reports/a.md",
                                     "classify.epochs", "shallow", "${oc.env:HOME}"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=6), scalars.filter(
        lambda v: not isinstance(v, float) or not math.isnan(v))), inner, max_size=3)),
    max_leaves=10)


def write(tmp_path: Path, study: Any) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False, allow_unicode=True))
    return path


def changed(keys: str, value: Any) -> dict[str, Any]:
    """The repository's study with the value at dotted `keys` ('claims.0.id') replaced."""
    study = copy.deepcopy(STUDY)
    *parents, last = keys.split(".")
    node: Any = study
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return study


def refused(tmp_path, monkeypatch, study: Any, params: dict | None = PARAMS) -> str:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, study)
    with pytest.raises(UserError) as err:
        load_study(Path("study.yaml"), params)
    message = str(err.value)
    assert "\n" not in message and message.startswith("study.yaml")
    return message


@pytest.mark.parametrize("keys, value, expected", [
    ("presets.paper.seeds", "x", "study.yaml: presets.paper.seeds = 'x' is not allowed; "
                                 "expected a non-empty list of distinct integers ≥ 0"),
    ("presets.paper.seeds", [0, True], "presets.paper.seeds = [0, True] is not allowed"),
    ("presets.paper.seeds", [-1], "presets.paper.seeds = [-1] is not allowed"),
    ("presets.paper.seeds", [1, 1], "presets.paper.seeds = [1, 1] is not allowed"),
    ("presets.quick.arms.instance.seeds", [0.5], "presets.quick.arms.instance.seeds = [0.5]"),
    ("presets.paper.smoke.seeds", "x", "presets.paper.smoke.seeds = 'x' is not allowed"),
    ("minimal_effect", -0.02, "minimal_effect = -0.02 is not allowed; expected a number > 0 "
                              "and < 1"),
    ("minimal_effect", float("nan"), "minimal_effect = nan is not allowed"),
    ("minimal_effect", "0.02", "minimal_effect = '0.02' is not allowed"),
    ("minimal_effect", True, "minimal_effect = True is not allowed"),
    ("minimal_effect", 2, "minimal_effect = 2 is not allowed"),
    ("minimal_effect", 0.03, "minimal_effect = 0.03 is not allowed; expected no value next to "
                             "margins"),
    ("margins", {"top1": 0.02}, "study.yaml: margins.miou is missing"),
    ("margins", [0.02], "margins = [0.02] is not allowed; expected a mapping of metrics"),
    ("margins.top1", 0, "margins.top1 = 0 is not allowed; expected a number > 0 and < 1"),
    ("margins.map", 0.02, "margins.map = 0.02 is not allowed; expected no such key; the known "
                          "keys are top1, miou, mask_ap"),
    ("alpha", 0, "alpha = 0 is not allowed; expected a number > 0 and < 1, e.g. 0.05"),
    ("power", "80 %", "power = '80 %' is not allowed"),
    ("target_effect", 1.5, "target_effect = 1.5 is not allowed"),
    ("claims.0.expect", "equal", "claims.shallow.expect = 'equal' is not allowed; expected one "
                                 "of positive, negative, not_positive, equivalent"),
    ("arms.shallow.params", 3, "arms.shallow.params = 3 is not allowed; expected a mapping"),
    ("arms.shallow.params", {"classify.epochs": {"a": 1}},
     "arms.shallow.params.classify.epochs = {'a': 1} is not allowed; expected a string"),
    ("arms.shallow.params", {"classify.epochs": float("inf")},
     "arms.shallow.params.classify.epochs = inf is not allowed"),
    ("arms.shallow.params", {"classify.batchnrm": False},
     "arms.shallow.params: classify.batchnrm is not a key of params.yaml"),
    ("arms.shallow.params", {"classify.seed": 3},
     "arms.shallow.params.classify.seed = 3 is not allowed; expected no value: each cell sets"),
    ("presets.quick.params", {"data.variant": "rembg"}, "presets.quick.params.data.variant"),
    ("arms.shallow.task", "clasify", "arms.shallow.task = 'clasify' is not allowed; expected "
                                     "one of classify, semantic, instance"),
    ("arms.shallow.about", ["x"], "arms.shallow.about = ['x'] is not allowed; expected a string"),
    ("arms.shallow.taks", "classify", "arms.shallow.taks = 'classify' is not allowed; expected "
                                      "no such key; the known keys are task, about, params"),
    ("minimal_efect", 0.05, "minimal_efect = 0.05 is not allowed; expected no such key"),
    ("claims.1.id", "shallow", "claims[1].id = 'shallow' is not allowed; expected an id no "
                               "other claim has"),
    ("claims.1.baseline", "semantic", "claims.batchnorm.baseline = 'semantic' is not allowed; "
                                      "expected an arm of the same task as shallow_bn"),
    ("claims.0.expect", "up", "claims.shallow.expect = 'up' is not allowed"),
    ("claims.0.arm", ["shallow"], "claims.shallow.arm = ['shallow'] is not allowed"),
    ("claims", {"a": 1}, "claims = {'a': 1} is not allowed"),
    ("presets.quick.arms.shallow", {"sedes": [0]}, "presets.quick.arms.shallow.sedes = [0] is "
                                                   "not allowed; expected no such key"),
    ("presets.quick.arms.shallow", [], "presets.quick.arms.shallow = [] is not allowed"),
    ("presets.quick.arms.nosuch", {}, "presets.quick.arms name = 'nosuch' is not allowed"),
    ("presets.paper.task_params.clasify", {}, "presets.paper.task_params task = 'clasify' is "
                                              "not allowed; expected one of classify"),
    ("presets.paper.smoke.task_params", [1], "presets.paper.smoke.task_params = [1] is not"),
    ("presets.paper.smoke.seed", [0], "presets.paper.smoke.seed = [0] is not allowed"),
    ("presets.quick.report", "reports/../../x.md", "presets.quick.report = 'reports/../../x.md'"),
    ("presets.quick.variants", [["original"], "rembg"], "presets.quick.variants = "),
    ("presets.quick.about", 7, "presets.quick.about = 7 is not allowed; expected a string"),
    ("variants", [{"a": 1}], "variants = [{'a': 1}] is not allowed"),
    ("arms", [], "arms = [] is not allowed"),
    ("presets", {"a b": {}}, "presets name = 'a b' is not allowed"),
])
def test_each_wrong_key_of_study_yaml_is_one_line_naming_it(tmp_path, monkeypatch, keys, value,
                                                            expected):
    assert expected in refused(tmp_path, monkeypatch, changed(keys, value))


def test_null_arm_changes_mean_none(tmp_path):
    study = load_study(write(tmp_path, changed("presets.quick.arms.shallow", None)), PARAMS)
    assert {c.arm.name for c in study.cells("quick")} >= {"shallow"}


@pytest.mark.parametrize("text, expected", [
    ("minimal_effect: 0.02\nminimal_effect: 0.03\n", "duplicate key 'minimal_effect'"),
    ("arms: [" * 5000, "nested too deeply"),
    ("arms: {a: [1, 2}\n", "is not valid YAML at line 1"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("", "must hold a mapping"),
    ("x: !!python/object:os.system {}\n", "is not valid YAML"),
])
def test_unreadable_study_yaml_is_one_line(tmp_path, text, expected):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=expected) as err:
        load_study(path, PARAMS)
    assert "\n" not in str(err.value)


def test_non_utf8_and_huge_study_yaml_are_one_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"about: caf\xe9\n")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_study(path)
    path.write_bytes(b"# " + b"x" * (2 << 20))
    with pytest.raises(UserError, match="is larger than 1 MiB"):
        load_study(path)
    path.write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")) + "arms: {x: {task: classify, params: "
        "{classify.epochs: *i}}}\npresets: {p: {seeds: [0], arms: {x: {}}}}\n")
    with pytest.raises(UserError):   # a billion laughs: refused, not walked
        load_study(path)


BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", [
    "presets: {p: {seeds: *i, arms: {}}}\n",        # refused by repr() on every seed before
    "x: &x [*x]\npresets: {p: {seeds: *x}}\n",     # a list inside itself
])
def test_an_alias_bomb_anywhere_is_refused_before_any_check_walks_it(tmp_path, where):
    path = tmp_path / "study.yaml"
    path.write_text(BOMB + where)
    with pytest.raises(UserError, match="expands to more than 100,000 values") as err:
        load_study(path, PARAMS)
    assert "\n" not in str(err.value)


@pytest.mark.timeout(30)
def test_a_fifo_as_study_yaml_is_refused_not_waited_on(tmp_path):
    path = tmp_path / "study.yaml"
    os.mkfifo(path)
    with pytest.raises(UserError, match="study.yaml is not a regular file"):
        load_study(path, PARAMS)


def key_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += key_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += key_paths(value, (*prefix, i))
    return out


PATHS = key_paths(STUDY)


def outcome(tmp_path: Path, study: Any, params: dict | None) -> None:
    """load_study returns a Study or raises UserError with one line: never anything else."""
    path = tmp_path / "study.yaml"
    try:
        path.write_text(yaml.safe_dump(study, allow_unicode=True))
    except (yaml.YAMLError, RecursionError):
        return
    try:
        result = load_study(path, params)
    except UserError as err:
        assert "\n" not in str(err)
        return
    assert isinstance(result, Study)
    for preset in result.presets:      # a study accepted is one whose cells can be named
        names = [c.name for c in result.cells(preset)]
        assert len(names) == len(set(names))


@SETTINGS
@given(where=st.sampled_from(PATHS), value=values, with_params=st.booleans())
def test_any_value_anywhere_in_the_study_is_a_study_or_one_line(tmp_path, where, value,
                                                                 with_params):
    study = copy.deepcopy(STUDY)
    node: Any = study
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    outcome(tmp_path, study, PARAMS if with_params else None)


@SETTINGS
@given(study=values, extra=st.dictionaries(st.sampled_from(
    ["arms", "claims", "presets", "variants", "minimal_effect"]), values, max_size=5))
def test_any_yaml_is_a_study_or_one_line(tmp_path, study, extra):
    outcome(tmp_path, {**study, **extra} if isinstance(study, dict) else study, PARAMS)


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("{}[]:,-&*!| \n\t'\"#a1.")), max_size=60))
def test_any_text_is_a_study_or_one_line(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    try:
        load_study(path, PARAMS)
    except UserError as err:
        assert "\n" not in str(err)


# ---- experiments are inputs too: their files, read from git refs, may be anything ----------

EXPERIMENT_STUDY = """
minimal_effect: 0.02
arms:
  shallow: {task: classify, about: shallow, params: {classify.batchnorm: false}}
  semantic: {task: semantic, about: fpn, params: {segment.task: semantic}}
  instance: {task: instance, about: mask r-cnn, params: {segment.task: instance}}
claims:
  - {id: a, claim: helps shallow nets, test: gain, arm: shallow, expect: positive}
presets:
  s: {about: synthetic, seeds: [0, 1], arms: {shallow: {}}}
  seg: {about: synthetic, seeds: [0], arms: {semantic: {}}}
  inst: {about: synthetic, seeds: [0], arms: {instance: {}}}
"""
IMAGES = [f"images/a/{i:02d}.jpg" for i in range(12)]
CLASSES = ["background", "top"]


def git(repo: Path, *args: str, data: bytes | None = None, env: dict | None = None) -> str:
    import os
    import subprocess

    return subprocess.run(["git", *args], cwd=repo, input=data, capture_output=True, check=True,
                          env={**os.environ, **(env or {})}).stdout.decode().strip()


def experiment(repo: Path, name: str, files: dict[str, bytes]) -> None:
    """A commit holding `files` under refs/exps/<..>/<name>, as `dvc exp pull` leaves one."""
    index = {"GIT_INDEX_FILE": str(repo / ".git" / f"index-{name}")}
    for path, data in files.items():
        blob = git(repo, "hash-object", "-w", "--stdin", data=data)
        git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=index)
    tree = git(repo, "write-tree", env=index)
    commit = git(repo, "commit-tree", tree, "-m", name, data=b"")
    git(repo, "update-ref", f"refs/exps/2a/9fc1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3/{name}", commit)


def good_files(cell) -> dict[str, bytes]:
    """What a finished cell's experiment holds, as the evaluation stages write it."""
    import json

    params = copy.deepcopy(PARAMS)
    for key, value in cell.params.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    variants = ("original", "rembg")
    score = 0.5 + 0.1 * (cell.variant == "rembg")
    if cell.arm.task == "classify":
        metrics, detail = "metrics/classification.json", "metrics/detail/classification.json"
        key, predictions = "top1", "predictions/classification.csv"
        lines = ["path,tested_on,label,predicted,correct"] + [
            f"{p},{v},a,a,{int(i % 2 == 0 or v == 'rembg')}"
            for v in variants for i, p in enumerate(IMAGES)]
        extra: dict = {}
    elif cell.arm.task == "instance":   # every garment found exactly: mask AP 1
        metrics, detail = "metrics/segmentation.json", "metrics/detail/segmentation.json"
        key, predictions, score = "mask_ap", "predictions/instances.json", 1.0
        lines = [json.dumps({"tested_on": cell.variant, "classes": ["top"],
                             "images": [detections(p) for p in IMAGES]})]
        extra = {"task": "instance"}
    else:
        metrics, detail = "metrics/segmentation.json", "metrics/detail/segmentation.json"
        key, predictions = "miou", "predictions/segmentation.csv"
        lines = ["path,tested_on,class,intersection,union,truth"] + [
            f"{p},{v},{c},{5 + i},{10 + i},{8 + i}"
            for v in variants for i, p in enumerate(IMAGES) for c in CLASSES]
        extra = {"task": "semantic", "test": {"per_class_iou": dict.fromkeys(CLASSES, 0.5)}}
    return {
        "params.yaml": yaml.safe_dump(params).encode(),
        metrics: json.dumps({"test": {key: score}, "cross": {key: score - 0.2}}).encode(),
        detail: json.dumps({"variant": cell.variant, "test": {},
                            "by_test_variant": {v: {key: score} for v in variants},
                            **extra}).encode(),
        predictions: ("\n".join(lines) + "\n").encode()}


def detections(path: str, counts: list | None = None, score: float = 0.9) -> dict:
    """One 4 x 4 test image with a top in its middle, found exactly."""
    counts = [5, 2, 2, 2, 5] if counts is None else counts
    return {"path": path, "size": [4, 4], "truth": [{"label": 1, "counts": [5, 2, 2, 2, 5]}],
            "detections": [{"label": 1, "score": score, "counts": counts}]}


@pytest.fixture()
def repo(tmp_path, monkeypatch):
    """A git repository with the project's params.yaml and a small study; cwd."""
    git(tmp_path, "init", "-q")
    (tmp_path / "study.yaml").write_text(EXPERIMENT_STUDY)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


CSV = "predictions/classification.csv"
HEADER = "path,tested_on,label,predicted,correct\n"
CORRUPTIONS = [   # (file, content, what the warning says)
    (CSV, b"", "no column path, tested_on, correct"),
    (CSV, b"path,tested_on\nimages/a/00.jpg,rembg\n", "no column correct"),
    (CSV, (HEADER + "images/a/00.jpg,rembg,a,a,yes\n").encode(), "correct = 'yes' is not 0 or 1"),
    (CSV, (HEADER + "images/a/00.jpg,rembg,a,a,nan\n").encode(), "correct = 'nan'"),
    (CSV, (HEADER + "images/a/00.jpg,rembg,a,a,1\nimages/a/00.jpg,rembg,a,a,1\n").encode(),
     "line 3 repeats images/a/00.jpg, rembg"),
    (CSV, (HEADER + "images/a/00.jpg,rembg,a,a,1\nimages/a/01.jpg,original,a,a,1\n").encode(),
     "the images tested on original are not those tested on rembg"),
    (CSV, (HEADER + "images/a/00.jpg,original,a,a,1\n").encode(), "no row tested on rembg"),
    (CSV, (HEADER + "images/a/00.jpg,rembg,a\n").encode(), "line 2 has 3 fields"),
    (CSV, (HEADER + "images/a/00.jpg,rembg,a,a,1,extra\n").encode(), "line 2 has 6 fields"),
    (CSV, b"\xff\xfe\x00garbage", "not UTF-8 text"),
    (CSV, None, "predictions/classification.csv: missing from the experiment"),
    ("metrics/classification.json", b"{not json", "not valid JSON"),
    ("metrics/classification.json", b"[1, 2]", "holds a JSON list, not an object"),
    ("metrics/classification.json", b'{"test": {"top1": NaN}, "cross": {}}', "holds NaN"),
    ("metrics/classification.json", b'{"test": {"top1": "0.5"}, "cross": {}}',
     "test.top1 = '0.5' is not a score from 0 to 1"),
    ("metrics/classification.json", b'{"test": {"top1": 7}, "cross": {}}', "test.top1 = 7"),
    ("metrics/classification.json", b'{"test": {}, "cross": {}}', "test.top1 is missing"),
    ("metrics/classification.json", b'{"test": {"top1": 0.5}}', "cross is missing"),
    ("metrics/classification.json", b'{"test": 1, "cross": {}}', "test is a int, not an obj"),
    ("metrics/classification.json", b"[" * 100000, "not valid JSON"),
    ("metrics/detail/classification.json", b'{"variant": "rembg", "by_test_variant": []}',
     "by_test_variant is a list, not an object"),
    ("metrics/detail/classification.json",
     b'{"variant": "rembg", "by_test_variant": {"rembg": {"top1": true}}}',
     "by_test_variant.rembg.top1 = True is not a score"),
    ("params.yaml", b"data: [unclosed", "params.yaml: not valid YAML"),
    ("params.yaml", b"- just\n- a list\n", "params.yaml: holds a list, not a mapping"),
    ("params.yaml", b"a: 1\na: 2\n", "duplicate key"),
]


@pytest.mark.parametrize("file, content, problem", CORRUPTIONS)
def test_a_malformed_experiment_is_named_and_left_out(repo, caplog, file, content, problem):
    from fashionbg.study.read.results import read_results

    study = load_study(Path("study.yaml"), PARAMS)
    cells = study.cells("s")
    bad = next(c for c in cells if c.variant == "rembg")
    for cell in cells:
        files = good_files(cell)
        if cell is bad:
            files.pop(file, None) if content is None else files.update({file: content})
        experiment(repo, cell.name, files)
    with caplog.at_level("WARNING", logger="study"):
        results, missing = read_results(cells)
    assert [c.name for c in missing] == [bad.name] and len(results) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert f"experiment {bad.name} (" in warnings[0] and f"{file}: " in warnings[0]
    assert problem in warnings[0], warnings[0]


SEG_CSV = "predictions/segmentation.csv"
SEG_HEADER = "path,tested_on,class,intersection,union,truth\n"


@pytest.mark.parametrize("content, problem", [
    (SEG_HEADER + "images/a/00.jpg,rembg,sky,1,2,3\n", "class 'sky' is not one of"),
    (SEG_HEADER + "images/a/00.jpg,rembg,top,1,-2,3\n", "are not pixel counts"),
    (SEG_HEADER + "images/a/00.jpg,rembg,top,1," + "9" * 5000 + ",3\n", "not pixel counts"),
    ("path,tested_on,class,intersection,union\nimages/a/00.jpg,rembg,top,1,2\n",
     "no truth column: scored by an older evaluate_segmenter"),
])
def test_a_malformed_segmentation_experiment_is_named_and_left_out(repo, caplog, content,
                                                                   problem):
    from fashionbg.study.read.results import read_results

    cells = load_study(Path("study.yaml"), PARAMS).cells("seg")
    experiment(repo, cells[0].name, good_files(cells[0]))
    experiment(repo, cells[1].name, {**good_files(cells[1]), SEG_CSV: content.encode()})
    with caplog.at_level("WARNING", logger="study"):
        results, missing = read_results(cells)
    assert len(results) == 1 and results[0].per_image.shape == (12, 2, 3)
    assert [c.name for c in missing] == [cells[1].name]
    assert problem in caplog.text and cells[1].name in caplog.text


INSTANCES = "predictions/instances.json"


def instances(images: list, tested_on: str = "rembg", classes: Any = ("top",)) -> str:
    import json

    return json.dumps({"tested_on": tested_on, "classes": list(classes), "images": images})


@pytest.mark.parametrize("content, problem", [
    (instances([detections(p) for p in IMAGES], tested_on="original"),
     "tested_on = 'original', not rembg"),
    (instances([detections(p) for p in IMAGES], classes=[]), "classes = [] is not a list"),
    (instances([]), "images is not a non-empty list"),
    (instances([detections(IMAGES[0]), detections(IMAGES[0])]), "images[1] repeats path"),
    (instances([detections(IMAGES[0], counts=[5, 2, 2, 2, 6])]),
     "images[0].detections[0].counts is not a run-length encoding of a 4x4 mask"),
    (instances([detections(IMAGES[0], counts=[-1, 17])]), "is not a run-length encoding"),
    (instances([detections(IMAGES[0], counts=[16.0])]), "is not a run-length encoding"),
    (instances([detections(IMAGES[0], score=1.5)]),
     "images[0].detections[0].score = 1.5 is not a score from 0 to 1"),
    (instances([{**detections(IMAGES[0]), "size": [4, 0]}]), "images[0].size = [4, 0] is not"),
    (instances([{**detections(IMAGES[0]), "truth": [{"label": 2, "counts": [16]}]}]),
     "images[0].truth[0].label = 2 is not a class from 1 to 1"),
    (instances([{**detections(IMAGES[0]), "detections": []}]),
     "its detections give mask AP 0.0000, not the reported 1.0000"),
])
def test_a_malformed_instance_experiment_is_named_and_left_out(repo, caplog, content, problem):
    from fashionbg.segment.detections import MaskAP
    from fashionbg.study.read.results import read_results

    cells = load_study(Path("study.yaml"), PARAMS).cells("inst")
    experiment(repo, cells[0].name, good_files(cells[0]))
    experiment(repo, cells[1].name, {**good_files(cells[1]), INSTANCES: content.encode()})
    with caplog.at_level("WARNING", logger="study"):
        results, missing = read_results(cells)
    assert len(results) == 1 and isinstance(results[0].per_image, MaskAP)
    assert results[0].per_image.score(np.ones(len(IMAGES))) == 1.0
    assert results[0].images == tuple(sorted(IMAGES))
    assert [c.name for c in missing] == [cells[1].name]
    assert problem in caplog.text and cells[1].name in caplog.text


@SETTINGS
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_in_any_file_of_an_experiment_are_read_or_named(tmp_path, data):
    """Each file's parser, on anything: a result or BadExperiment, never another exception."""
    from fashionbg.study.read import results as r

    text = data.decode("utf-8", "replace")
    for parse in (lambda: r.parse_params(text), lambda: r.parse_json(text, "x.json"),
                  lambda: r.parse_headline(text, "x.json", "top1"),
                  lambda: r.parse_predictions(text, "x.csv", "classify", "original", []),
                  lambda: r.parse_predictions(text, "x.csv", "semantic", "original", CLASSES),
                  lambda: r.parse_detections(text, "x.json", "original", None)):
        try:
            parse()
        except r.BadExperiment as err:
            assert "\n" not in str(err)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
              st.text(max_size=5), st.sampled_from(["top1", "rembg", "original", "test"])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["test", "cross", "top1", "miou", "by_test_variant", "per_class_iou",
                         "variant", "rembg", "original", "x"]), inner, max_size=4),
    max_leaves=12)


@SETTINGS
@given(data=json_values, task=st.sampled_from(["classify", "semantic"]))
def test_any_json_in_the_metrics_is_read_or_named(data, task):
    import json

    from fashionbg.study.read import results as r

    key = "top1" if task == "classify" else "miou"
    text = json.dumps(data)
    for parse in (lambda: r.parse_headline(text, "m.json", key),
                  lambda: r.parse_detail(r.parse_json(text, "d.json"), "d.json", task, key)):
        try:
            scores = parse()
        except r.BadExperiment as err:
            assert "\n" not in str(err)
            continue
        values = scores if isinstance(scores, tuple) and len(scores) == 2 else ()
        for value in values:
            assert value is None or isinstance(value, (float, list, dict))


rows = st.lists(st.tuples(st.sampled_from(IMAGES[:3] + ["", "../x"]),
                          st.sampled_from(["original", "rembg", ""]),
                          st.sampled_from(["0", "1", "2", "x", "1.0", ""])), max_size=8)


@SETTINGS
@given(rows=rows)
def test_any_prediction_rows_are_paired_or_named(rows):
    from fashionbg.study.read import results as r

    text = HEADER + "".join(f"{p},{v},a,a,{c}\n" for p, v, c in rows)
    try:
        tested, images = r.parse_predictions(text, CSV, "classify", "original", [])
    except r.BadExperiment:
        return
    assert all(a.shape == (len(images),) and set(a) <= {0.0, 1.0} for a in tested.values())


def report(repo: Path, preset: str):
    import subprocess
    import sys

    from helpers_project import project_env

    return subprocess.run([sys.executable, "-m", "fashionbg.study", "report", "--preset",
                           preset], cwd=repo, env=project_env(), capture_output=True, text=True,
                          timeout=600)


README = "# x\n<!-- study:begin -->\nlast time's table\n<!-- study:end -->\n"


def test_report_names_a_bad_experiment_and_reports_the_others(repo):
    (repo / "README.md").write_text(README)
    cells = load_study(Path("study.yaml"), PARAMS).cells("s")
    for i, cell in enumerate(cells):
        files = good_files(cell)
        if i == 3:
            files[CSV] = (HEADER + "images/a/00.jpg,rembg,a,a,maybe\n").encode()
        experiment(repo, cell.name, files)
    result = report(repo, "s")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warned = [line for line in result.stderr.splitlines() if "left out of the report" in line]
    assert len(warned) == 1 and cells[3].name in warned[0] and CSV in warned[0]
    assert "3 cells read from the experiments, 1 not run yet" in result.stdout
    assert (repo / "README.md").read_text() == README    # an incomplete grid: left as it was


def test_a_report_with_nothing_to_report_changes_nothing(repo):
    (repo / "README.md").write_text(README)
    stale = repo / "reports/study/forest.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\x89PNG last time")
    (repo / "reports/study.md").write_text("last time's report")
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    result = report(repo, "s")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no experiments found for preset s (4 cells" in lines[0]
    assert "make study PRESET=s" in lines[0]
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before and result.stdout == ""


detection_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2, 20), st.floats(allow_nan=True),
              st.text(max_size=3), st.sampled_from(["rembg", "top", "images/a/00.jpg"])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["tested_on", "classes", "images", "path", "size", "truth",
                         "detections", "label", "score", "counts"]), inner, max_size=6),
    max_leaves=30)


@SETTINGS
@given(data=detection_values)
def test_any_json_in_the_detections_is_read_or_named(data):
    """pycocotools' C code only ever sees run lengths that cover their image exactly."""
    import json

    from fashionbg.study.read import results as r

    try:
        found, images = r.parse_detections(json.dumps(data), "i.json", "rembg", None)
    except r.BadExperiment as err:
        assert "\n" not in str(err)
        return
    assert found.images == len(images) > 0


def test_the_readme_keeps_its_results_until_every_cell_has_an_experiment(repo, caplog,
                                                                          monkeypatch):
    from fashionbg.study.__main__ import main

    readme = "# x\n<!-- study:begin -->\nold results\n<!-- study:end -->\n"
    (repo / "README.md").write_text(readme)
    cells = load_study(Path("study.yaml"), PARAMS).cells("s")
    for cell in cells[1:]:
        experiment(repo, cell.name, good_files(cell))
    monkeypatch.setattr("sys.argv", ["study", "report", "--preset", "s"])
    with caplog.at_level("WARNING", logger="study"):
        main()
    assert (repo / "README.md").read_text() == readme
    assert (repo / "reports/study.md").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"1 of 4 cells have no experiment here ({cells[0].name})" in w
               for w in warnings), warnings
    experiment(repo, cells[0].name, good_files(cells[0]))
    main()
    assert "4 cells read from the experiments" in (repo / "README.md").read_text()
