"""One way every stage starts and fails, whether run by `dvc repro` or `python -m stages.<name>`."""
from __future__ import annotations

import _thread
import errno
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from fashionbg.core.errors import UserError

USER_ERROR = 2          # the exit code of a mistake the user can fix (the line says which)
INTERRUPTED = 130       # 128 + SIGINT, as a shell reports Ctrl-C
STOPPED = 128 + signal.SIGTERM   # a training rank its launcher stopped (nn.launch)


def stage_main(func: Callable[[], None]) -> Callable[[], None]:
    """Run a stage entry point: log to stderr, turn user errors and refusals by the operating
    system (a full disk, a read-only folder, a missing file) into one line and exit code 2, and
    Ctrl-C into one line and exit code 130 (outputs are written atomically, so nothing
    half-written is left and the next run starts over)."""

    @functools.wraps(func)
    def wrapper() -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
        previous_hook = sys.unraisablehook
        sys.unraisablehook = functools.partial(keep_ctrl_c, others=previous_hook)
        try:
            func()
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(USER_ERROR)
        except OSError as err:
            print(f"error: {os_error_line(err)}", file=sys.stderr)
            sys.exit(USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted; re-run to resume", file=sys.stderr)
            sys.exit(INTERRUPTED)
        finally:
            sys.unraisablehook = previous_hook

    return wrapper


def keep_ctrl_c(unraisable: sys.UnraisableHookArgs,
                others: Callable[[sys.UnraisableHookArgs], object]) -> None:
    """Python drops a KeyboardInterrupt raised in a callback it cannot raise from (an at-fork
    hook while a DataLoader forks its workers, a finalizer) with an "Exception ignored" message,
    and the stage would run on without the workers Ctrl-C killed. Interrupt the main thread
    again a moment later from another thread instead (raised in this hook, it would be dropped
    too), once it is back in the stage's own code. A rank's quiet exit on its launcher's
    SIGTERM (SystemExit(STOPPED)) dropped the same way gets its SIGTERM again. Anything else
    goes to the `others` hook."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        _thread.start_new_thread(_signal_main_soon, (signal.SIGINT,))
    elif (issubclass(unraisable.exc_type, SystemExit)
          and getattr(unraisable.exc_value, "code", None) == STOPPED):
        _thread.start_new_thread(_signal_main_soon, (signal.SIGTERM,))
    else:
        others(unraisable)


def _signal_main_soon(signum: int) -> None:
    """`signum` to the main thread itself, so a system call it is blocked in returns at once."""
    time.sleep(0.05)
    main = threading.main_thread().ident
    if main is not None:            # None only before the interpreter's main thread started
        signal.pthread_kill(main, signum)


# What the user can do about each refusal, by errno; anything else: the system's own words.
_REMEDIES = {
    errno.ENOSPC: ("no space left on device", "free space and re-run"),
    errno.EDQUOT: ("disk quota exceeded", "free space and re-run"),
    errno.EACCES: ("permission denied", "make it readable and writable by this user and re-run"),
    errno.EPERM: ("operation not permitted", "make it writable by this user and re-run"),
    errno.EROFS: ("read-only file system", "run the project from a writable folder"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path and re-run"),
    errno.ENOENT: ("no such file or folder", "check the path (and params.yaml) and re-run"),
    errno.ENOTDIR: ("not a folder", "check the path (and params.yaml) and re-run"),
    errno.EISDIR: ("is a folder, not a file", "check the path (and params.yaml) and re-run"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and re-run"),
    errno.EFBIG: ("file too large for the file system or the size limit",
                  "free space or raise the limit (ulimit -f) and re-run"),
    errno.EEXIST: ("something is in the way", "move it away and re-run"),
}


def os_error_line(err: OSError) -> str:
    """One line for an OSError: what happened, on which path, and what to do."""
    fallback = (err.strerror or type(err).__name__, "fix it and re-run")
    what, todo = _REMEDIES.get(err.errno, fallback) if err.errno is not None else fallback
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    where = " and ".join(_shown(p) for p in paths)
    if not paths and not err.strerror:
        what = f"{what}: {err}"
    return f"{what}{' on ' + where if where else ''}: {todo}"


def _shown(path: object) -> str:
    """A path as the user typed it, relative to the project where it lies inside it; names the
    file system could not decode are shown with escapes rather than failing to print."""
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    try:
        rel = os.path.relpath(text)
        text = rel if not rel.startswith("..") else text
    except ValueError:
        pass
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
