"""The prepared cache is streamed in chunks: the files are the bytes np.save writes for the
whole arrays, chunking the decoder changes nothing, and an incomplete cache is never left."""
import numpy as np
import pytest
from PIL import Image

from fashionbg.contracts.prepared import load_prepared, prepared_writer, save_prepared
from fashionbg.ingest import decode
from fashionbg.ingest.decode import decode_chunks


def arrays(n=7, size=(6, 5)):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, *size, 3), dtype=np.uint8),
            rng.integers(0, 4, (n, *size), dtype=np.uint8),
            rng.integers(0, 256, (n, *size), dtype=np.uint8))


def test_chunked_cache_has_the_bytes_of_np_save(tmp_path):
    images, masks, alpha = arrays()
    labels, splits = np.arange(7) % 3, np.zeros(7, np.uint8)
    meta = {"variant": "x", "labels": ["a", "b", "c"], "paths": [f"{i}.jpg" for i in range(7)]}
    with prepared_writer(tmp_path / "c", (6, 5), labels, splits, meta, True, True) as writer:
        for start in range(0, 7, 3):
            rows = slice(start, start + 3)
            writer.append(images[rows], masks[rows], alpha[rows])
    for name, array in (("images", images), ("masks", masks), ("alpha", alpha)):
        np.save(tmp_path / f"{name}.npy", array)
        assert (tmp_path / "c" / f"{name}.npy").read_bytes() == \
            (tmp_path / f"{name}.npy").read_bytes()
    data = load_prepared(tmp_path / "c")
    assert isinstance(data.images, np.memmap) and data.meta["has_masks"]
    np.testing.assert_array_equal(data.labels, labels)


def test_incomplete_cache_is_not_left_behind(tmp_path):
    images, _, _ = arrays()
    with pytest.raises(ValueError, match="wrote 3 of 7"):
        with prepared_writer(tmp_path / "c", (6, 5), np.zeros(7), np.zeros(7), {}, False) as w:
            w.append(images[:3])
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="masks is not part"):
        with prepared_writer(tmp_path / "c", (6, 5), np.zeros(7), np.zeros(7), {}, False) as w:
            w.append(*arrays()[:2])
    assert list(tmp_path.iterdir()) == []
    save_prepared(tmp_path / "c", images, None, np.zeros(7), np.zeros(7),
                  {"variant": "x", "labels": ["a"], "paths": [f"{i}.jpg" for i in range(7)]})
    assert not load_prepared(tmp_path / "c").meta["has_masks"]


def test_decode_chunks_match_one_chunk(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    items = []
    for i in range(5):
        image, alpha = tmp_path / f"{i}.png", tmp_path / f"{i}a.png"
        Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(image)
        Image.fromarray(rng.integers(0, 256, (20, 16), dtype=np.uint8)).save(alpha)
        mask = tmp_path / f"{i}m.png" if i % 2 else None
        if mask:
            Image.fromarray(rng.integers(0, 3, (20, 16), dtype=np.uint8)).save(mask)
        items.append((image, mask, alpha))
    whole = list(decode_chunks(items, (10, 8)))
    monkeypatch.setattr(decode, "CHUNK_PIXELS", 2 * 10 * 8)
    chunks = list(decode_chunks(items, (10, 8)))
    assert len(whole) == 1 and [len(c.images) for c in chunks] == [2, 2, 1]
    for field in ("images", "masks", "alphas"):
        np.testing.assert_array_equal(getattr(whole[0], field),
                                      np.concatenate([getattr(c, field) for c in chunks]))
    assert (whole[0].masks[0] == 255).all() and (whole[0].masks[1] < 3).all()
