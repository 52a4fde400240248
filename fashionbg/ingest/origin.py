"""Where a source's files come from: `data.path` on disk, or downloads (`data.url`, `data.sha256`).

Downloads are cached in `.cache/datasets/<source>/` (outside DVC's outputs, so a re-run of the
stage neither re-downloads nor stores the archives twice); the sha256 of every file used is
recorded in data/raw/summary.json, so DVC captures exactly what went in (local paths are
recorded by name only, so the same data gives the same data/raw on every machine). A file put in
that cache directory by hand is used as if it had been downloaded.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from fashionbg.core.errors import ParamError, UserError
from fashionbg.core.params import optional_str
from fashionbg.core.paths import DATASET_CACHE
from fashionbg.ingest.extract import archive_kind, extract
from fashionbg.ingest.fetch import DownloadError, fetch, sha256_file

log = logging.getLogger(__name__)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Remote:
    name: str            # file name in the cache
    url: str
    sha256: str | None   # expected; None = accept and record what arrives


@dataclass(frozen=True)
class Origin:
    source: str
    homepage: str                  # where a person can get the files by hand
    path: Path | None = None       # data.path: an archive or a folder
    path_sha256: str | None = None
    remotes: tuple[Remote, ...] = ()


@dataclass
class Tree:
    """The source's files as a folder."""

    root: Path
    owned: bool                    # a staging copy of ours: files may be moved out of it
    provenance: list[dict[str, Any]] = field(default_factory=list)


def parse_origin(data: dict[str, Any], source: str, homepage: str,
                 defaults: dict[str, str] | None = None) -> Origin:
    """Validate data.path, data.url and data.sha256.

    `defaults` maps each file the source downloads (a path under the base URL) to its default
    URL. With one file, data.url replaces its URL; with several, data.url is the base URL the
    paths are joined to. Sources with no default download need data.path or data.url.
    """
    defaults = defaults or {}
    path = optional_str(data, "data", "path")
    url = optional_str(data, "data", "url")
    sha = data.get("sha256")
    if path is not None:
        local = _local_path(path)
        if not (local.is_dir() or (local.is_file() and archive_kind(local))):
            raise ParamError("data.path", path, "an existing folder, or a zip or tar archive")
        if sha is not None and not (local.is_file() and _is_hex(sha)):
            raise ParamError("data.sha256", sha, "null, or the sha256 (64 hex digits) of the "
                             "archive data.path names")
        if url is not None:
            log.info("data.path is set, so data.url is not used")
        return Origin(source, homepage, path=local, path_sha256=sha and sha.lower())
    if url is not None and not _is_http_url(url):
        raise ParamError("data.url", url, "null or an http(s)://host/... URL")
    if url is None and not defaults:
        raise ParamError("data.path", None, f"a folder or archive on disk (or set data.url): "
                         f"the {source} source has no default download")
    if url is not None and len(defaults) > 1:
        urls = {key: f"{url.rstrip('/')}/{key}" for key in defaults}
    elif url is not None:
        urls = {PurePosixPath(urlparse(url).path).name or next(iter(defaults), source): url}
    else:
        urls = defaults
    return Origin(source, homepage, remotes=tuple(
        Remote(PurePosixPath(key).name, u, _expected(sha, key, len(urls)))
        for key, u in urls.items()))


def _local_path(path: str) -> Path:
    """data.path with ~ expanded; an unknown ~user, a NUL byte or a name the file system
    refuses is a ParamError, not a traceback."""
    try:
        local = Path(path).expanduser()
        local.stat()
    except RuntimeError:                       # ~user names no user of this machine
        raise ParamError("data.path", path, "an existing folder, or a zip or tar archive "
                         "(~ names no home folder here)") from None
    except FileNotFoundError:
        return local                           # said below, with what is allowed
    except (OSError, ValueError) as err:       # too long, NUL byte, permission denied...
        raise ParamError("data.path", path, "an existing folder, or a zip or tar archive "
                         f"this user can read ({getattr(err, 'strerror', None) or err})"
                         ) from None
    return local


def _is_http_url(url: str) -> bool:
    """An http(s) URL with a host and a valid port (urlparse raises on some malformed ones)."""
    try:
        parsed = urlparse(url)
        _ = parsed.port                        # raises on a port out of range or not a number
    except ValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.hostname)


def _expected(sha: Any, key: str, n: int) -> str | None:
    if sha is None:
        return None
    if n == 1 and _is_hex(sha):
        return sha.lower()
    name = PurePosixPath(key).name
    if isinstance(sha, dict) and all(_is_hex(v) for v in sha.values()):
        value = sha.get(name)
        return value.lower() if value else None
    allowed = ("null or 64 hex digits" if n == 1
               else "null or a mapping {file name: sha256} for the files downloaded")
    raise ParamError("data.sha256", sha, allowed)


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and bool(_HEX64.fullmatch(value))


@contextmanager
def staging_dir(label: str) -> Iterator[Path]:
    """A scratch folder beside the download cache (same disk as data/, so moves are renames)."""
    DATASET_CACHE.mkdir(parents=True, exist_ok=True)
    for stale in DATASET_CACHE.glob(f"unpacked-{label}-*"):   # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"unpacked-{label}-", dir=DATASET_CACHE) as tmp:
        yield Path(tmp)


@contextmanager
def materialize(origin: Origin) -> Iterator[Tree]:
    """The source's files as a folder, for the duration of the block.

    data.path folder: used in place, read-only. An archive (data.path or a single download):
    verified, then unpacked into a staging folder removed afterwards. Several downloads: the
    cache folder holding them (the source unpacks what it needs).
    """
    if origin.path is not None and origin.path.is_dir():
        yield Tree(origin.path, owned=False,
                   provenance=[{"path": origin.path.name, "kind": "folder"}])
        return
    if origin.path is not None:
        observed = sha256_file(origin.path)
        if origin.path_sha256 and observed != origin.path_sha256:
            raise UserError(f"checksum mismatch for data.path {origin.path}: expected sha256 "
                            f"{origin.path_sha256}, got {observed}; nothing was extracted")
        archives = [(origin.path, {"path": origin.path.name, "sha256": observed,
                                   "bytes": origin.path.stat().st_size})]
    else:
        archives = [download(origin, remote) for remote in origin.remotes]
    if len(archives) > 1:
        yield Tree(DATASET_CACHE / origin.source, owned=False, provenance=[p for _, p in archives])
        return
    archive, provenance = archives[0]
    with staging_dir(origin.source) as tmp:
        extract(archive, tmp / "tree")
        yield Tree(tmp / "tree", owned=True, provenance=[provenance])


def download(origin: Origin, remote: Remote) -> tuple[Path, dict[str, Any]]:
    """The cached copy of `remote`, fetched if missing or not the expected bytes."""
    dest = DATASET_CACHE / origin.source / remote.name
    observed = _cached_sha(dest, remote)
    if observed is None:
        try:
            observed = fetch(remote.url, dest, remote.sha256)
        except DownloadError as err:
            raise UserError(f"{err}. {_hint(origin, remote, dest)}") from None
        _write_sidecar(dest, remote.url, observed)
    if remote.sha256 is None:
        log.info("%s: sha256 %s (set data.sha256 to pin it)", remote.name, observed)
    return dest, {"file": remote.name, "url": remote.url, "sha256": observed,
                  "bytes": dest.stat().st_size}


def _hint(origin: Origin, remote: Remote, dest: Path) -> str:
    if len(origin.remotes) == 1:
        return (f"If this machine is offline, get {remote.name} by hand ({origin.homepage}) "
                f"and either put it at {dest.resolve()} or set data.path in params.yaml to the "
                f"archive or its unpacked folder, e.g. "
                f"`dvc exp run -S data.path=/data/{remote.name}`")
    names = ", ".join(r.name for r in origin.remotes)
    return (f"If this machine is offline, get {names} by hand ({origin.homepage}) and either "
            f"put them in {dest.parent.resolve()}/ or set data.path in params.yaml to a folder "
            f"holding them (archives unpacked or not), e.g. "
            f"`dvc exp run -S data.path=/data/{origin.source}`")


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256.json")


def _cached_sha(dest: Path, remote: Remote) -> str | None:
    """sha256 of the cached file if it can be used as `remote`, else None."""
    if not dest.is_file():
        return None
    info = dest.stat()
    try:
        meta = json.loads(_sidecar(dest).read_text())
        fresh = meta["bytes"] == info.st_size and meta["mtime_ns"] == info.st_mtime_ns
    except (OSError, ValueError, KeyError, TypeError):
        meta, fresh = {}, False
    if not fresh:  # put there by hand, or changed since: hash it and remember
        meta = {"url": None, "sha256": sha256_file(dest)}
        _write_sidecar(dest, None, meta["sha256"])
    if remote.sha256 is not None:
        if meta["sha256"] == remote.sha256:
            return meta["sha256"]
        log.warning("cached %s has sha256 %s, not the expected %s; downloading it again",
                    dest, meta["sha256"], remote.sha256)
        return None
    if meta["url"] not in (None, remote.url):
        log.info("cached %s came from %s; downloading %s", dest.name, meta["url"], remote.url)
        return None
    log.info("using cached %s", dest)
    return meta["sha256"]


def _write_sidecar(dest: Path, url: str | None, sha: str) -> None:
    info = dest.stat()
    _sidecar(dest).write_text(json.dumps({"url": url, "sha256": sha, "bytes": info.st_size,
                                          "mtime_ns": info.st_mtime_ns}) + "\n")
