"""One way every stage starts and fails, whether run by `dvc repro` or `python -m stages.<name>`."""
from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from fashionbg.core.errors import UserError


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
