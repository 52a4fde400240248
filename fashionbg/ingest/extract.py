"""Safe extraction of zip and tar archives into a new directory.

Refused, and the whole archive with them: absolute paths, `..` components, links whose target
is absolute or outside the destination, device files and FIFOs, encrypted or duplicate zip
members, and archives that would unpack to more than `Limits` (zip/tar bombs: a member, or a
tar, expanding more than `max_ratio` times, refused before anything is written; sizes are also
counted as bytes are written, not trusted from headers). Tar members go through Python's own `data`
filter as well. On any refusal or error the destination is removed, so nothing half-extracted
is left behind and nothing is ever written outside it.
"""
from __future__ import annotations

import logging
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from fashionbg.core.errors import UserError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    # Fashionpedia's train2020.zip, the largest archive here, unpacks to ~3.3 GB / 45,623 files.
    max_bytes: int = 64 << 30
    max_files: int = 1_000_000
    # Photos barely compress and JSON or CSV about 10-fold; deflate's ceiling is ~1,000-fold,
    # which is what a zip bomb uses. Checked on the headers before anything is written, past
    # `ratio_from` bytes (a tiny file of zeros may compress well).
    max_ratio: int = 100
    ratio_from: int = 16 << 20


class UnsafeArchive(UserError):
    """The archive tries to write outside its destination, or would unpack to too much."""


def archive_kind(path: Path) -> str | None:
    """'zip', 'tar' (any compression tarfile reads) or None, judged by content, not name."""
    if zipfile.is_zipfile(path):
        return "zip"
    return "tar" if tarfile.is_tarfile(path) else None


def extract(archive: Path, dest: Path, select: Callable[[str], bool] | None = None,
            limits: Limits = Limits()) -> int:
    """Unpack `archive` into the new directory `dest`; return the number of files written.

    `select(member_name)` picks the regular files to write (all by default); every member is
    checked for safety either way.
    """
    archive, dest = Path(archive), Path(dest)
    kind = archive_kind(archive)
    if kind is None:
        raise UserError(f"{archive} is neither a zip nor a tar archive")
    dest.mkdir(parents=True)
    try:
        unpack = _extract_zip if kind == "zip" else _extract_tar
        count = unpack(archive, dest, select, limits)
    except UnsafeArchive:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as err:
        shutil.rmtree(dest, ignore_errors=True)
        raise UserError(f"could not extract {archive}: {err}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    log.info("extracted %d files from %s", count, archive.name)
    return count


class _Budget:
    """Counts files and bytes as they are written; refuses past the limits."""

    def __init__(self, archive: Path, limits: Limits) -> None:
        self.archive, self.limits = archive, limits
        self.files = self.bytes = 0

    def add_file(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise UnsafeArchive(f"{self.archive} holds more than {self.limits.max_files} files; "
                                "refusing to extract it (zip/tar bomb?)")

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_bytes:
            raise self.too_big()

    def check_ratio(self) -> None:
        """A tar's members so far against the archive's own size (a compressed tar has no
        per-member sizes to compare)."""
        packed = max(self.archive.stat().st_size, 1)
        if self.bytes > max(self.limits.ratio_from, self.limits.max_ratio * packed):
            raise UnsafeArchive(f"{self.archive} unpacks to more than {self.limits.max_ratio} "
                                f"times its {packed} bytes; refusing to extract it (tar bomb?)")

    def too_big(self) -> UnsafeArchive:
        return UnsafeArchive(f"{self.archive} unpacks to more than {self.limits.max_bytes} "
                             "bytes; refusing to extract it (zip/tar bomb?)")


def _unsafe_name(name: str) -> str | None:
    """Why a member name could land outside the destination, or None if it cannot."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "'..' in path"
    if "\0" in posix:
        return "NUL in name"
    return None


def _refuse(archive: Path, name: str, why: str) -> UnsafeArchive:
    return UnsafeArchive(f"{archive} has an unsafe member {name!r} ({why}); refusing to extract "
                         "anything from it")


def _extract_zip(archive: Path, dest: Path, select: Callable[[str], bool] | None,
                 limits: Limits) -> int:
    budget = _Budget(archive, limits)
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        wanted = []
        for info in members:  # check every member before writing anything
            mode = info.external_attr >> 16
            why = _unsafe_name(info.filename)
            if why is None and stat.S_ISLNK(mode):
                link = zf.read(info).decode("utf-8", "replace")
                escapes = _unsafe_name(link) or _unsafe_name(
                    str(PurePosixPath(info.filename).parent / link))
                why = f"link to {link!r}" if escapes else None
                if why is None:
                    log.warning("skipping symbolic link %s in %s", info.filename, archive.name)
                    continue
            if why is None and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)
                                or stat.S_ISSOCK(mode)):
                why = "device file or FIFO"
            if why is None and info.flag_bits & 0x1:
                why = "encrypted"
            if why is None and not (root / info.filename).resolve().is_relative_to(root):
                why = "resolves outside the destination"
            if why is None and info.file_size > max(limits.ratio_from,
                                                    limits.max_ratio * info.compress_size):
                why = (f"{info.compress_size} bytes that unpack to {info.file_size}, more than "
                       f"{limits.max_ratio} times as many: a zip bomb?")
            if why:
                raise _refuse(archive, info.filename, why)
            if info.is_dir() or select is None or select(info.filename):
                wanted.append(info)
        declared = sum(i.file_size for i in wanted)
        if declared > limits.max_bytes:
            raise budget.too_big()
        free = shutil.disk_usage(dest).free
        if declared > free:
            raise UserError(f"{archive} needs {declared} bytes unpacked but only {free} are "
                            f"free under {dest}")
        with tqdm(total=declared, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"unzip {archive.name}", disable=None) as bar:
            for info in wanted:
                target = dest / info.filename
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                budget.add_file(info.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    out = open(target, "xb")  # never overwrite: duplicate names are refused
                except FileExistsError:
                    raise _refuse(archive, info.filename, "duplicate name") from None
                with out, zf.open(info) as src:
                    written = 0
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > info.file_size:
                            raise _refuse(archive, info.filename, "larger than its header says")
                        budget.add_bytes(len(chunk))
                        out.write(chunk)
                        bar.update(len(chunk))
    return budget.files


def _extract_tar(archive: Path, dest: Path, select: Callable[[str], bool] | None,
                 limits: Limits) -> int:
    budget = _Budget(archive, limits)

    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        why = _unsafe_name(member.name)
        if why:
            raise _refuse(archive, member.name, why)
        try:
            member = tarfile.data_filter(member, path)
        except tarfile.FilterError as err:
            raise _refuse(archive, member.name, str(err)) from None
        if member.isfile() or member.islnk():
            if select is not None and not select(member.name):
                return None
            budget.add_file(member.name)
            budget.add_bytes(member.size)
            budget.check_ratio()
        return member

    with tarfile.open(archive, "r:*") as tf:
        tf.copybufsize = CHUNK  # type: ignore[attr-defined]  # undocumented; typeshed omits it
        tf.extractall(dest, filter=check)
    return budget.files

