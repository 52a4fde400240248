"""Downloading one file over HTTP(S): streamed, resumable, retried, verified, then renamed.

Bytes go to `<dest>.part`; a dropped connection resumes from its size with an HTTP Range
request, with exponential backoff between attempts that made no progress. The file is renamed
to `dest` only once its sha256 is known and, when one is expected, matches; otherwise the part
file is deleted and `dest` is left as it was.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path

import requests
from tqdm import tqdm

from fashionbg.core.errors import UserError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class DownloadError(UserError):
    """The file could not be fetched (offline, unreachable, HTTP error, too many failures)."""


class ChecksumMismatch(UserError):
    """The bytes downloaded are not the ones expected; nothing was replaced."""


class _Retry(Exception):
    """A failure worth another attempt (server error, short read, refused resume)."""


def sha256_file(path: Path) -> str:
    return _hash_file(hashlib.sha256(), path).hexdigest()


def _hash_file(digest: hashlib._Hash, path: Path) -> hashlib._Hash:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest


def fetch(url: str, dest: Path, sha256: str | None = None, *, retries: int = 5,
          backoff: float = 1.0, timeout: float = 30.0) -> str:
    """Download `url` to `dest`; return the sha256 of the bytes. See the module docstring."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _PartFile(dest.with_name(dest.name + ".part"))
    failures = 0
    with requests.Session() as session:
        while True:
            before = part.size
            try:
                _attempt(session, url, part, timeout)
                break
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError, _Retry) as err:
                if _name_unresolved(err):
                    raise DownloadError(f"could not download {url}: the host name does not "
                                        "resolve (no network or DNS)") from None
                failures = 0 if part.size > before else failures + 1
                if failures > retries:
                    raise DownloadError(f"could not download {url} after {retries + 1} "
                                        f"attempts without progress: {_short(err)}") from None
                delay = backoff * 2 ** max(failures - 1, 0)
                log.warning("download of %s interrupted (%s); retrying in %.1fs",
                            dest.name, _short(err), delay)
                time.sleep(delay)
            except requests.RequestException as err:  # bad URL, too many redirects, ...
                raise DownloadError(f"could not download {url}: {_short(err)}") from None
            except OSError as err:  # writing the part file: disk full, permissions
                raise DownloadError(f"could not write {part.path}: {err.strerror}") from None
    observed = part.digest.hexdigest()
    if sha256 is not None and observed != sha256.lower():
        part.reset()
        raise ChecksumMismatch(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, "
                               f"got {observed}. The download was deleted and {dest} was not "
                               "replaced; if the file changed upstream on purpose, set "
                               "data.sha256 to the new value.")
    os.replace(part.path, dest)
    return observed


class _PartFile:
    """The `.part` file and the sha256 of the bytes it holds, kept in step across attempts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        if path.exists():
            log.info("resuming %s from %d bytes already on disk", path.name, self.size)
            _hash_file(self.digest, path)

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.digest = hashlib.sha256()


def _attempt(session: requests.Session, url: str, part: _PartFile, timeout: float) -> None:
    """One request that appends to the part file, resuming from its size."""
    offset = part.size
    headers = {"Accept-Encoding": "identity"}  # the sha256 is of the file, not a re-encoding
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        status = response.status_code
        if status == 416 and offset and _range_total(response) == offset:
            return  # the part file already holds every byte
        if status in (408, 416, 425, 429) or status >= 500:
            if status == 416:
                part.reset()
            raise _Retry(f"HTTP {status} {response.reason}")
        if status >= 400:
            raise DownloadError(f"could not download {url}: HTTP {status} {response.reason}")
        if offset and (status != 206 or _range_start(response) != offset):
            log.info("server did not resume %s; starting again from byte 0", part.path.name)
            part.reset()
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(part.path, "ab") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.path.name.removesuffix(".part"), disable=None) as bar:
            for chunk in response.iter_content(CHUNK):
                f.write(chunk)
                part.digest.update(chunk)
                bar.update(len(chunk))
        if total is not None and part.size != total:
            raise _Retry("connection closed before the end of the file")


def _range_start(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _range_total(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes */200"
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def _name_unresolved(err: BaseException) -> bool:
    """Whether a requests error comes from DNS failing: offline, so retrying would only wait."""
    seen: set[int] = set()
    stack: list[object] = [err]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, socket.gaierror) or type(item).__name__ == "NameResolutionError":
            return True
        stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None),
                      *item.args])
    return False


def _short(err: BaseException) -> str:
    while err.args and isinstance(err.args[0], BaseException):  # requests wraps urllib3's
        err = err.args[0]
    first = err.args[0] if err.args else None
    text = first if isinstance(first, str) else str(err) or type(err).__name__
    return text if len(text) < 200 else text[:200] + "..."
