"""The errors a user can fix: reported as one line and exit code 2, never as a traceback."""
from __future__ import annotations

from typing import Any


class UserError(Exception):
    """An error caused by the user's input (params, data, missing files)."""


class ParamError(UserError):
    """A parameter has a value the stage cannot use."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"params.yaml: {key} = {value!r} is not allowed; expected {allowed}")
        self.key, self.value, self.allowed = key, value, allowed
