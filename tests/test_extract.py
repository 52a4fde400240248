"""Safe extraction: hostile zips and tars are refused whole, and nothing lands outside."""
from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from fashionbg.ingest.extract import Limits, UnsafeArchive, extract


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def make_zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None,
             ) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tf.addfile(info, io.BytesIO(member[1]))
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.fixture()
def sandbox(tmp_path: Path) -> Path:
    """tmp/box/ holds the archives and the destination; tmp/ itself must stay empty."""
    box = tmp_path / "box" / "inner"
    box.mkdir(parents=True)
    return box


def test_zip_and_tar_extract_with_selection(sandbox: Path) -> None:
    members = {"d/a.jpg": b"a" * 100, "d/b.jpg": b"b" * 50, "d/sub/c.txt": b"c"}
    archive = make_zip(sandbox / "ok.zip", members)
    assert extract(archive, sandbox / "z") == 3
    assert (sandbox / "z/d/sub/c.txt").read_bytes() == b"c"
    archive = make_tar(sandbox / "ok.tar.gz", list(members.items()))
    assert extract(archive, sandbox / "t", select=lambda n: n.endswith(".jpg")) == 2
    assert tree(sandbox / "t") == {"d", "d/a.jpg", "d/b.jpg"}


@pytest.mark.parametrize("name", ["../../evil.txt", "/tmp/abs-evil.txt", "d/../../evil.txt",
                                  "..\\..\\evil.txt", "C:/evil.txt"])
def test_zip_slip_is_refused_and_nothing_is_written(sandbox: Path, name: str) -> None:
    archive = make_zip(sandbox / "slip.zip", {"good.jpg": b"x", name: b"evil"})
    with pytest.raises(UnsafeArchive, match="unsafe member"):
        extract(archive, sandbox / "out")
    assert not (sandbox / "out").exists()
    assert tree(sandbox.parent.parent) == {"box", "box/inner", "box/inner/slip.zip"}
    assert not Path("/tmp/abs-evil.txt").exists()


def test_zip_link_escaping_is_refused(sandbox: Path) -> None:
    archive = make_zip(sandbox / "l.zip", {"a.jpg": b"x"}, links={"d/l": "../../../etc/passwd"})
    with pytest.raises(UnsafeArchive, match="link"):
        extract(archive, sandbox / "out")
    assert not (sandbox / "out").exists()


@pytest.mark.parametrize("member", [
    link("d/escape", "../../../outside"),
    link("d/abs", "/etc/passwd"),
    link("d/hard", "../../outside.txt", tarfile.LNKTYPE),
    ("../outside.txt", b"evil"),
])
def test_tar_escapes_are_refused(sandbox: Path, member: tarfile.TarInfo | tuple) -> None:
    archive = make_tar(sandbox / "t.tar.gz", [("d/ok.jpg", b"x"), member,
                                              ("d/after.jpg", b"y")])
    with pytest.raises(UnsafeArchive, match="unsafe member"):
        extract(archive, sandbox / "out")
    assert not (sandbox / "out").exists()
    assert tree(sandbox.parent.parent) == {"box", "box/inner", "box/inner/t.tar.gz"}


def test_device_files_are_refused(sandbox: Path) -> None:
    device = tarfile.TarInfo("dev/sda")
    device.type, device.devmajor, device.devminor = tarfile.BLKTYPE, 8, 0
    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    for n, member in enumerate((device, fifo)):
        archive = make_tar(sandbox / f"d{n}.tar", [member])
        with pytest.raises(UnsafeArchive):
            extract(archive, sandbox / f"out{n}")
    zipped = sandbox / "dev.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        info = zipfile.ZipInfo("dev/null")
        info.external_attr = (stat.S_IFCHR | 0o666) << 16
        zf.writestr(info, b"")
    with pytest.raises(UnsafeArchive, match="device"):
        extract(zipped, sandbox / "outz")


def test_bombs_are_capped(sandbox: Path) -> None:
    small = Limits(max_bytes=10_000, max_files=3)
    zeros = make_zip(sandbox / "zeros.zip", {"big.bin": bytes(1_000_000)})
    assert zeros.stat().st_size < 5_000  # compresses ~1000:1
    with pytest.raises(UnsafeArchive, match="more than 10000 bytes"):
        extract(zeros, sandbox / "a", limits=small)
    many = make_tar(sandbox / "many.tar.gz", [(f"f{i}", b"x") for i in range(5)])
    with pytest.raises(UnsafeArchive, match="more than 3 files"):
        extract(many, sandbox / "b", limits=small)
    big_tar = make_tar(sandbox / "big.tar.gz", [("big.bin", bytes(1_000_000))])
    with pytest.raises(UnsafeArchive, match="bytes"):
        extract(big_tar, sandbox / "c", limits=small)
    assert not any((sandbox / d).exists() for d in "abc")


def test_duplicate_zip_names_are_refused(sandbox: Path) -> None:
    archive = sandbox / "dup.zip"
    with zipfile.ZipFile(archive, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("a.jpg", b"1")
        zf.writestr("a.jpg", b"2")
    with pytest.raises(UnsafeArchive, match="duplicate"):
        extract(archive, sandbox / "out")


def test_not_an_archive(sandbox: Path) -> None:
    (sandbox / "x.zip").write_text("hello")
    with pytest.raises(Exception, match="neither a zip nor a tar"):
        extract(sandbox / "x.zip", sandbox / "out")


def test_a_member_that_expands_absurdly_is_refused_before_anything_is_written(
        sandbox: Path) -> None:
    """A zip bomb honest about its size (32 MiB of zeros in ~32 kB, the 2 MB → 2 GiB kind at
    a test's scale) under the default limits: refused whole by its ratio, nothing written; a
    small file that compresses as well, and ordinary files, still unpack."""
    bomb = bytes(32 << 20)
    zipped = make_zip(sandbox / "bomb.zip", {"a.jpg": b"photo", "bomb.bin": bomb})
    with pytest.raises(UnsafeArchive, match=r"'bomb.bin' \(\d+ bytes that unpack to 33554432, "
                                            r"more than 100 times as many: a zip bomb\?\)"):
        extract(zipped, sandbox / "a")
    tarred = make_tar(sandbox / "bomb.tar.gz", [("a.jpg", b"photo"), ("bomb.bin", bomb)])
    with pytest.raises(UnsafeArchive, match="unpacks to more than 100 times its"):
        extract(tarred, sandbox / "b")
    assert not any((sandbox / d).exists() for d in "ab")
    small = make_zip(sandbox / "small.zip", {"zeros.bin": bytes(1 << 20), "a.jpg": b"photo"})
    assert extract(small, sandbox / "c") == 2
