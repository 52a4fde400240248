"""The study's own inputs are untrusted: study.yaml is checked key by key (one line naming the
file, the dotted key, the value and what is allowed), and an experiment whose files are
malformed (`dvc exp pull` brings other people's) is named and left out of the report."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_params import PARAMS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashionbg.core.errors import UserError
from fashionbg.study.definition import Study, load_study

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
    ("arms.shallow.params", 3, "arms.shallow.params = 3 is not allowed; expected a mapping"),
    ("arms.shallow.params", {"classify.epochs": {"a": 1}},
     "arms.shallow.params.classify.epochs = {'a': 1} is not allowed; expected a string"),
    ("arms.shallow.params", {"classify.epochs": float("inf")},
     "arms.shallow.params.classify.epochs = inf is not allowed"),
    ("arms.shallow.params", {"classify.batchnrm": False},
     "arms.shallow.params: classify.batchnrm is not a key of params.yaml"),
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
