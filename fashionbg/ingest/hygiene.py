"""Image hygiene: which files are usable photos, and how every stage decodes them the same way.

`check_image` decides whether a file goes into data/raw/ (or into quarantine.csv, with the reason
`RefusedImage` carries) and whether it can be kept byte-for-byte. `open_rgb` is the one decoder
every later stage uses: EXIF orientation applied, then 8-bit RGB.

Conversions to RGB:
- CMYK, grayscale (L, 1, I;16 ...), palette, YCbCr, LAB → RGB; 16-bit samples are scaled (/257),
  not clipped; CMYK through its embedded ICC profile to sRGB when it has one. A profile that
  does not describe RGB pixels is dropped rather than mislabel the converted image.
- Transparency (RGBA, LA, PA, palette or tRNS transparency) is composited on white
  (`TRANSPARENT_FILL`): cut-out product photos are drawn on white by the shops that publish them,
  and a fixed fill keeps the result independent of whatever colour the hidden pixels hold.
Refused: empty, non-regular or unreadable files, anything PIL cannot identify as one of
`FORMATS` (other plugins, e.g. EPS, may run external programs), decompression bombs (more than
`Image.MAX_IMAGE_PIXELS` pixels, PIL's own limit, ~89 MP; its warning is turned into a refusal),
and truncated or corrupt files (every byte of image data is decoded).
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageCms

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG includes MPO (camera JPEGs)
KEPT_FORMATS = ("JPEG", "MPO", "PNG")  # stored byte-for-byte when already upright 8-bit RGB
TRANSPARENT_FILL = (255, 255, 255)
ORIENTATION_TAG = 0x0112
# EXIF orientation → the transpose that makes the pixels upright (as ImageOps.exif_transpose)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_RGB_PROFILED = ("RGB", "RGBA", "RGBa", "P", "PA")  # modes whose ICC profile describes RGB
_SRGB = ImageCms.createProfile("sRGB")


class RefusedImage(Exception):
    """A file that is not a usable photo; the message is the reason quarantine.csv records."""


@dataclass(frozen=True)
class CheckedImage:
    format: str                  # PIL format name: one of FORMATS, or MPO
    raw_size: tuple[int, int]    # (width, height) of the pixels as stored in the file
    orientation: int             # EXIF orientation, 1 when absent or invalid
    clean: bool                  # upright 8-bit RGB JPEG/PNG without transparency

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) once EXIF orientation is applied, i.e. what open_rgb returns."""
        w, h = self.raw_size
        return (h, w) if self.orientation in (5, 6, 7, 8) else (w, h)


def check_image(path: str | os.PathLike[str]) -> CheckedImage:
    """Decode the whole file once; raise RefusedImage with the reason if it is not usable."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as err:
        raise RefusedImage(f"unreadable: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise RefusedImage("not a regular file")
    if info.st_size == 0:
        raise RefusedImage("empty file: 0 bytes")
    with _refusing(), Image.open(path, formats=FORMATS) as img:
        fmt, mode, size = img.format, img.mode, img.size
        orientation = _orientation(img)
        transparent = _has_transparency(img)
        if fmt in ("JPEG", "MPO"):
            # Scaled DCT still reads every entropy-coded byte, so truncation is still caught,
            # at a fraction of the cost of a full-size decode.
            img.draft(img.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
        img.load()
    assert fmt is not None  # Image.open sets the format it opened the file as
    clean = fmt in KEPT_FORMATS and mode == "RGB" and orientation == 1 and not transparent
    return CheckedImage(fmt, size, orientation, clean)


def open_rgb(path: str | os.PathLike[str] | IO[bytes]) -> Image.Image:
    """The photo as an upright 8-bit RGB image (EXIF orientation applied); RefusedImage if not."""
    with _refusing(), Image.open(path, formats=FORMATS) as img:
        img.load()
        orientation = _orientation(img)
        # copy(): the opened image is unusable once its file is closed
        turn = _TRANSPOSE.get(orientation)
        upright = img.transpose(turn) if turn is not None else img.copy()
        return to_rgb(upright)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB, with the conversions documented at the top of this module."""
    rgb = _convert(img)
    if img.mode not in _RGB_PROFILED:  # rgb is a new image here
        rgb.info.pop("icc_profile", None)
    return rgb


def _convert(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if img.mode == "CMYK" and icc:
        try:
            rgb = ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                            _SRGB, outputMode="RGB")
            assert rgb is not None  # None only when converting in place (inPlace=True)
            return rgb
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to the plain conversion
    if img.mode in _SIXTEEN_BIT:
        scaled = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    if _has_transparency(img):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*TRANSPARENT_FILL, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def orient_array(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to a (H, W) array, e.g. a mask drawn on the stored pixels."""
    if orientation not in _TRANSPOSE:
        return array
    img = Image.fromarray(array)
    return np.asarray(img.transpose(_TRANSPOSE[orientation]))


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a corrupt EXIF block does not make the pixels unusable
        return 1
    return value if value in _TRANSPOSE else 1


def _has_transparency(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


@contextmanager
def _refusing() -> Iterator[None]:
    """Turn every way a decoder can fail on a bad file into RefusedImage with a short reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except RefusedImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise RefusedImage(f"decompression bomb: more than Image.MAX_IMAGE_PIXELS = "
                               f"{Image.MAX_IMAGE_PIXELS} pixels") from None
        except Image.UnidentifiedImageError:
            raise RefusedImage(f"not an image: not one of {', '.join(FORMATS)}") from None
        except OSError as err:
            if err.errno is not None:  # the OS refused the read; decoders raise errno-less ones
                raise RefusedImage(f"unreadable: {err.strerror}") from None
            raise RefusedImage(f"truncated or corrupt: {err}") from None
        except Exception as err:  # decoders raise ValueError, SyntaxError, EOFError, ... on
            raise RefusedImage(f"truncated or corrupt: {err}") from None  # damaged data
