"""One way every stage starts and fails, whether run by `dvc repro` or `python -m stages.<name>`."""
from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from fashionbg.core.errors import UserError

USER_ERROR = 2          # the exit code of a mistake the user can fix (the line says which)
INTERRUPTED = 130       # 128 + SIGINT, as a shell reports Ctrl-C


def stage_main(func: Callable[[], None]) -> Callable[[], None]:
    """Run a stage entry point: log to stderr, turn user errors into one line and exit code 2,
    and Ctrl-C into one line and exit code 130 (outputs are written atomically, so nothing
    half-written is left and the next run starts over)."""

    @functools.wraps(func)
    def wrapper() -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        try:
            func()
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted; re-run to resume", file=sys.stderr)
            sys.exit(INTERRUPTED)

    return wrapper
