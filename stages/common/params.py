"""Loading params.yaml and validating values before a stage touches any output."""
from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")


class UserError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class ParamError(UserError):
    """A parameter has a value the stage cannot use."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"params.yaml: {key} = {value!r} is not allowed; expected {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise UserError(f"{path} must hold a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name)
    if not isinstance(value, dict):
        raise ParamError(name, value, "a mapping (section) in params.yaml")
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


def integer(cfg: dict[str, Any], prefix: str, key: str, minimum: int | None = None,
            maximum: int | None = None) -> int:
    value = cfg.get(key)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        raise ParamError(f"{prefix}.{key}", value, _range_text("an integer", minimum, maximum))
    return value


def number(cfg: dict[str, Any], prefix: str, key: str, minimum: float | None = None,
           maximum: float | None = None, exclusive_min: bool = False) -> float:
    value = cfg.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and minimum is not None and (value <= minimum if exclusive_min else value < minimum):
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        lower = f"> {minimum}" if exclusive_min else f">= {minimum}"
        text = "a number" + (f" {lower}" if minimum is not None else "")
        text += f" and <= {maximum}" if maximum is not None else ""
        raise ParamError(f"{prefix}.{key}", value, text)
    return float(value)


def optional_str(cfg: dict[str, Any], prefix: str, key: str) -> str | None:
    value = cfg.get(key)
    if value is not None and not (isinstance(value, str) and value):
        raise ParamError(f"{prefix}.{key}", value, "null or a non-empty string")
    return value


def size_pair(cfg: dict[str, Any], prefix: str, key: str) -> tuple[int, int]:
    """A [height, width] pair of positive integers."""
    value = cfg.get(key)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return int(value[0]), int(value[1])
    raise ParamError(f"{prefix}.{key}", value, "two positive integers [height, width]")


def _range_text(kind: str, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} from {minimum} to {maximum}"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


def stage_main(func: Callable[[], None]) -> Callable[[], None]:
    """Run a stage entry point: log to stderr, turn user errors into one line and exit code 2."""

    @functools.wraps(func)
    def wrapper() -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        try:
            func()
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
