"""Reading params.yaml and validating each section before a stage touches any output.

Every section is read the same way: `section()` checks it is a mapping holding exactly the keys
its config declares (a typo is an error, not a silent default), and the checkers below turn each
value into a typed field or raise ParamError naming the key, the value and what is allowed.
params.yaml is the only source of defaults.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from fashionbg.core.errors import ParamError, UserError
from fashionbg.core.paths import PARAMS

# Upper bounds where memory grows with a value: well above what a real run needs (FashionStyle14
# at 224 x 224, Fashionpedia at 512 x 512, batches of a few hundred), low enough that a typo
# (image_size: [40960, 512], batch_size: 32000) is refused before anything is allocated.
MAX_IMAGE_SIDE = 4096
MAX_BATCH = 1024
# Where a stage runs its network: `auto` takes CUDA when there is one (fashionbg.nn.device).
DEVICES = ("auto", "cpu", "cuda")


class UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (as DVC does): PyYAML would keep
    the last one silently, so a stage and `dvc repro` could disagree on a value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_error(path: Path, err: yaml.YAMLError) -> UserError:
    """A YAML syntax error as one line naming the file, line and column."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return UserError(f"{path} is not valid YAML{where}: {problem}")


def load_params(path: Path = PARAMS) -> dict[str, Any]:
    """params.yaml as a mapping of sections; a syntax error names its line and column."""
    try:
        with open(path) as f:
            params = yaml.load(f, Loader=UniqueKeyLoader) or {}
    except FileNotFoundError as err:
        raise UserError(f"{path} not found; run stages from the project root") from err
    except yaml.YAMLError as err:
        raise yaml_error(path, err) from err
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be params (sections of keys); check "
                        "its brackets") from None
    if not isinstance(params, dict):
        raise UserError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str, keys: Iterable[str], within: str = ""
            ) -> dict[str, Any]:
    """The mapping `params[name]` holding exactly `keys`; `within` is the dotted path of
    `params` itself for nested sections (e.g. "data" for data.demo)."""
    value = params.get(name)
    name = f"{within}.{name}" if within else name
    keys = tuple(keys)
    if not isinstance(value, dict):
        raise ParamError(name, value, "a mapping with the keys " + ", ".join(keys))
    for key in value:
        if key not in keys:
            raise ParamError(f"{name}.{key}", value[key],
                             "no such key; the known keys are " + ", ".join(keys))
    for key in keys:
        if key not in value:
            raise ParamError(f"{name}.{key}", None, "a value: the key is missing")
    return value


def choice(cfg: dict[str, Any], prefix: str, key: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    value = cfg.get(key)
    if value not in allowed:
        raise ParamError(f"{prefix}.{key}", value, "one of " + ", ".join(map(str, allowed)))
    return value


def boolean(cfg: dict[str, Any], prefix: str, key: str) -> bool:
    value = cfg.get(key)
    if not isinstance(value, bool):
        raise ParamError(f"{prefix}.{key}", value, "true or false")
    return value


def is_number(value: Any) -> TypeGuard[int | float]:
    """An int or a finite float (not a bool): NaN and ±inf pass every comparison or none, so
    a range check alone would let them through (or refuse them with a misleading message)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def integer(cfg: dict[str, Any], prefix: str, key: str, minimum: int | None = None,
            maximum: int | None = None, why: str = "") -> int:
    """An integer in [minimum, maximum]; `why` says what the maximum protects."""
    value = cfg.get(key)
    if not (isinstance(value, int) and not isinstance(value, bool)
            and (minimum is None or value >= minimum)
            and (maximum is None or value <= maximum)):
        raise ParamError(f"{prefix}.{key}", value,
                         _range_text("an integer", minimum, maximum) + why)
    return value


def optional_integer(cfg: dict[str, Any], prefix: str, key: str, minimum: int,
                     word: str | None = None, maximum: int | None = None,
                     why: str = "") -> int | None:
    """An integer >= minimum (and <= maximum), or None where the value is `word` (null, or
    e.g. auto); `why` says what the maximum protects."""
    value = cfg.get(key)
    if value == word and not isinstance(value, bool):
        return None
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        raise ParamError(f"{prefix}.{key}", value, f"{'null' if word is None else word} or "
                         + _range_text("an integer", minimum, maximum) + why)
    return value


def number(cfg: dict[str, Any], prefix: str, key: str, minimum: float | None = None,
           maximum: float | None = None, exclusive_min: bool = False) -> float:
    value = cfg.get(key)
    if not (is_number(value)
            and (minimum is None or (value > minimum if exclusive_min else value >= minimum))
            and (maximum is None or value <= maximum)):
        lower = f"> {minimum}" if exclusive_min else f">= {minimum}"
        text = "a finite number" + (f" {lower}" if minimum is not None else "")
        text += f" and <= {maximum}" if maximum is not None else ""
        raise ParamError(f"{prefix}.{key}", value, text)
    return float(value)


def batch_size(cfg: dict[str, Any], prefix: str, key: str, minimum: int = 1) -> int:
    """A training or evaluation batch size, bounded by what fits in a GPU's memory."""
    return integer(cfg, prefix, key, minimum=minimum, maximum=MAX_BATCH,
                   why=" (images per step; a larger batch does not fit in a GPU's memory)")


def image_size(cfg: dict[str, Any], prefix: str, key: str, minimum: int = 1
               ) -> tuple[int, int]:
    """A [height, width] of images held in memory or on disk, 3 bytes per pixel."""
    return size_pair(cfg, prefix, key, minimum, MAX_IMAGE_SIDE,
                     ": 3 bytes per pixel per image, in memory and on disk")


def optional_str(cfg: dict[str, Any], prefix: str, key: str) -> str | None:
    value = cfg.get(key)
    if value is not None and not (isinstance(value, str) and value):
        raise ParamError(f"{prefix}.{key}", value, "null or a non-empty string")
    return value


def size_pair(cfg: dict[str, Any], prefix: str, key: str, minimum: int = 1,
              maximum: int | None = None, why: str = "") -> tuple[int, int]:
    """A [height, width] pair of integers from `minimum` to `maximum`; `why` says what the
    maximum protects."""
    value = cfg.get(key)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum
                    and (maximum is None or v <= maximum) for v in value)):
        return int(value[0]), int(value[1])
    what = "positive integers" if minimum == 1 else f"integers >= {minimum}"
    bound = f", each at most {maximum}{why}" if maximum is not None else ""
    raise ParamError(f"{prefix}.{key}", value, f"two {what} [height, width]{bound}")


def _range_text(kind: str, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} from {minimum} to {maximum}"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind
