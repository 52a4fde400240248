"""Image hygiene: conversions to upright RGB, and every kind of bad file refused with a reason."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionbg.ingest.hygiene import RefusedImage, check_image, open_rgb, orient_array

RED = (220, 20, 20)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def jpeg_bytes(array: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def png_bytes(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **save)
    return buf.getvalue()


def rotated_jpeg() -> bytes:
    """40x20 stored pixels with a red top-left block, EXIF orientation 6 (rotate 90° cw)."""
    pixels = np.full((20, 40, 3), 128, dtype=np.uint8)
    pixels[:8, :8] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(pixels, exif=exif.tobytes())


def convertible_images() -> dict[str, bytes]:
    """Usable photos that need conversion before they are clean RGB."""
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    webp = io.BytesIO()
    Image.fromarray(noise(16, 16)).save(webp, "WEBP")
    return {
        "rotated.jpg": rotated_jpeg(),
        "cmyk.jpg": _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
        "gray.png": png_bytes(Image.new("L", (8, 8), 77)),
        "palette.png": png_bytes(palette, transparency=0),
        "sixteen.png": png_bytes(Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))),
        "rgba.png": png_bytes(rgba),
        "photo.webp": webp.getvalue(),
    }


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write_bad_images(folder: Path) -> dict[str, str]:
    """One file of each refused kind in `folder`; returns name → expected reason kind."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(noise(128, 128))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo at all\n")
    (folder / "truncated.jpg").write_bytes(good[:len(good) // 2])
    png = png_bytes(Image.fromarray(noise(64, 64, 1)))
    (folder / "truncated.png").write_bytes(png[:len(png) // 2])
    (folder / "bomb.png").write_bytes(png_bytes(Image.new("L", (4000, 4000))))
    os.symlink(folder / "does-not-exist.jpg", folder / "dangling.jpg")
    os.mkfifo(folder / "pipe.jpg")
    return {"empty.jpg": "empty file", "notes.jpg": "not an image",
            "truncated.jpg": "truncated or corrupt", "truncated.png": "truncated or corrupt",
            "bomb.png": "decompression bomb", "dangling.jpg": "unreadable",
            "pipe.jpg": "not a regular file"}


@pytest.fixture()
def small_bomb_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4000x4000 image counts as a bomb (the real limit is ~89 MP: too big for a test)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)


def test_bad_files_are_refused_with_their_reason(tmp_path: Path, small_bomb_limit: None) -> None:
    expected = write_bad_images(tmp_path)
    for name, kind in expected.items():
        with pytest.raises(RefusedImage) as err:
            check_image(tmp_path / name)
        assert str(err.value).split(":")[0] == kind, name


def test_bomb_over_twice_the_limit_is_refused_too(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)  # 4,096 px: PIL raises, not warns
    (tmp_path / "a.png").write_bytes(png_bytes(Image.new("L", (64, 64))))
    for check in (check_image, open_rgb):
        with pytest.raises(RefusedImage, match="decompression bomb"):
            check(tmp_path / "a.png")


def test_clean_photos_are_kept_as_they_are(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(noise(30, 50)))
    (tmp_path / "b.png").write_bytes(png_bytes(Image.fromarray(noise(30, 50))))
    for name in ("a.jpg", "b.png"):
        checked = check_image(tmp_path / name)
        assert checked.clean and checked.size == (50, 30) and checked.orientation == 1


def test_conversions_to_upright_rgb(tmp_path: Path) -> None:
    for name, data in convertible_images().items():
        (tmp_path / name).write_bytes(data)
        assert not check_image(tmp_path / name).clean, name
        img = open_rgb(tmp_path / name)
        assert img.mode == "RGB", name
    rotated = open_rgb(tmp_path / "rotated.jpg")
    assert rotated.size == (20, 40)  # width and height swapped by orientation 6
    assert check_image(tmp_path / "rotated.jpg").size == (20, 40)
    top_right = np.asarray(rotated)[:6, -6:].reshape(-1, 3).mean(axis=0)
    assert np.allclose(top_right, RED, atol=25)  # the stored top-left is now top-right
    assert np.allclose(np.asarray(open_rgb(tmp_path / "cmyk.jpg")).mean(axis=(0, 1)),
                       (255, 0, 0), atol=10)
    assert np.all(np.asarray(open_rgb(tmp_path / "gray.png")) == 77)
    assert np.all(np.asarray(open_rgb(tmp_path / "sixteen.png")) == 128)  # 32896 / 257
    palette = np.asarray(open_rgb(tmp_path / "palette.png"))
    assert tuple(palette[0, 0]) == (255, 255, 255) and tuple(palette[1, 1]) == (255, 0, 0)
    rgba = np.asarray(open_rgb(tmp_path / "rgba.png"))
    assert tuple(rgba[0, 0]) == (0, 0, 255) and tuple(rgba[1, 1]) == (255, 255, 255)


def test_orient_array_matches_the_image_transpose() -> None:
    mask = np.zeros((20, 40), dtype=np.uint8)
    mask[:8, :8] = 1
    turned = orient_array(mask, 6)
    assert turned.shape == (40, 20) and turned[:8, -8:].all() and turned.sum() == 64
    assert orient_array(mask, 1) is mask
