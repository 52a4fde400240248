"""Atomic writes: a stage that is interrupted leaves nothing half-written for DVC to cache.

Work in progress lives beside its target as `.<name>.partial-XXXX` (ignored by git). A stage
killed outright (SIGKILL, power loss) cannot remove it, so the next write to the same target
does: DVC runs one stage at a time in a workspace, so no live writer owns such leftovers.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fashionbg.core.errors import UserError


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temp dir beside `target`; on success it replaces `target` in one rename."""
    target = Path(target)
    clear_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(target), dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())     # as mkdir gives, not mkdtemp's 0700
        with naming(target):
            yield tmp
        if target.exists():
            old = target.with_name(f"{partial_prefix(target)}old")
            target.rename(old)
            try:
                tmp.rename(target)
            except BaseException:
                old.rename(target)                 # the earlier output stays whole
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temp file beside `target` and rename it over `target` when the block succeeds."""
    target = Path(target)
    clear_leftovers(target)
    fd, tmp = tempfile.mkstemp(prefix=partial_prefix(target), dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())     # as open() gives, not mkstemp's 0600
        with naming(target), os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def naming(target: Path) -> Iterator[None]:
    """A write that fails without saying where (a full disk, a size limit: write() knows no
    name) names the output it was writing, so the user's one line says which."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = str(target)
        raise


def current_umask() -> int:
    """The process's umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def partial_prefix(target: Path) -> str:
    return f".{target.name}.partial-"


def clear_leftovers(target: Path) -> None:
    """Create target's folder; remove what an earlier, killed write to `target` left there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(partial_prefix(target) + "*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    with atomic_file(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_json(target: Path, data: Any, indent: int | None = 2) -> None:
    with atomic_file(target) as f:
        json.dump(data, f, indent=indent, sort_keys=False,
                  separators=None if indent else (",", ":"))
        f.write("\n")


def read_json(path: Path) -> Any:
    """A JSON file an earlier stage wrote (or a remote brought in): missing or broken is a
    user error."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as err:
        raise UserError(f"{path} does not exist; run the stages before this one "
                        "(dvc repro)") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); run the stage that writes it "
                        "again") from err
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be one of ours; run the stage that "
                        "writes it again") from None


def read_regular(path: Path, limit: int) -> bytes:
    """Up to `limit` + 1 bytes of `path`, which must be a regular file: a FIFO or a device
    named as an input would block the reader or never end (opened without blocking, checked
    on the open file, so nothing can be swapped in between)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path} is not a regular file (a pipe, a device or a socket); "
                            "give the file itself")
        return f.read(limit + 1)
