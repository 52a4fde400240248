"""Inputs pulled from a remote are untrusted: a hostile index writes nowhere else, and a broken
one is one clear line with exit code 2, however the stage is started."""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers_project import shrink_params
from test_properties import run_stage

ROOT = Path(__file__).resolve().parents[1]


def stage(project: Path, name: str) -> SimpleNamespace:
    """The stage run in this process (test_properties.run_stage): its exit code and stderr."""
    returncode, stderr = run_stage(project, name)
    return SimpleNamespace(returncode=returncode, stderr=stderr)


@pytest.mark.parametrize("row, expected", [
    ("images/../../../../elsewhere/x.jpg,train,casual,", "path 'images/../../../../elsewhere"),
    ("/etc/passwd,train,casual,", "path '/etc/passwd' is not allowed"),
    ("images/a.jpg,train,casual,masks/../../x.png", "path 'masks/../../x.png'"),
    ("images/a.jpg,holdout,casual,", "split 'holdout' is not one of train, val, test"),
])
@pytest.mark.parametrize("name", ["remove_background", "prepare"])
def test_hostile_index_rows_are_refused_before_anything_is_written(tmp_path, row, expected,
                                                                   name):
    project = tmp_path / "project"
    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (raw / "index.csv").write_text(f"path,split,label,mask\n{row}\n")
    (raw / "classes.json").write_text('{"labels": ["casual"], "mask_classes": []}')
    (project / "data" / "rembg").mkdir()
    (project / "data" / "rembg" / "failures.csv").write_text("path,reason\n")
    before = files(tmp_path)
    result = stage(project, name)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "index.csv line 2" in result.stderr and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert files(tmp_path) == before


def files(root: Path) -> list[Path]:
    """Everything under root but matplotlib's font cache (project/.cache/matplotlib: an ignored
    cache, kept there so that nothing is written in the user's home)."""
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if ".cache" not in p.relative_to(root).parts)


def test_missing_index_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = stage(tmp_path, "remove_background")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "index.csv does not exist; run the download stage first" in result.stderr


@pytest.mark.parametrize("rel", ["../x.jpg", "a/../../x.jpg", "/tmp/x.jpg", "a\\..\\x.jpg"])
def test_raw_writer_keeps_every_name_from_the_data_inside_raw(tmp_path, rel):
    from fashionbg.contracts.raw import RawWriter
    from fashionbg.core.errors import UserError

    writer = RawWriter(tmp_path / "raw")
    with pytest.raises(UserError, match="is not allowed; expected a relative path"):
        writer.add_image(rel, b"\xff\xd8", "train")
    with pytest.raises(UserError, match="is not allowed"):
        writer.write_mask(rel.replace(".jpg", ".png"), np.zeros((2, 2), np.uint8))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "raw", "raw/images", "raw/masks"]


# --- refusals by the operating system: one line, exit 2, nothing half-written ---------------

def failing_stage(exc: BaseException):
    from fashionbg.core.cli import stage_main

    @stage_main
    def main():
        raise exc
    return main


@pytest.mark.parametrize("code, path, expected", [
    (28, "data/prepared/original/images.npy",   # ENOSPC
     "error: no space left on device on data/prepared/original/images.npy: free space and re-run"),
    (13, "data/raw", "error: permission denied on data/raw: make it readable and writable"),
    (36, "data/" + "x" * 300, "error: file name too long on data/xxx"),
    (30, "metrics", "error: read-only file system on metrics: run the project from a writable"),
    (2, "nowhere/photos.zip", "error: no such file or folder on nowhere/photos.zip: check"),
])
def test_os_errors_are_one_line_with_the_path_and_exit_2(capsys, code, path, expected):
    with pytest.raises(SystemExit) as stop:
        failing_stage(OSError(code, os.strerror(code), path))()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(expected), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_an_undecodable_file_name_in_an_os_error_still_prints(capsys):
    name = os.fsdecode(b"photos/bad\xff.jpg")
    with pytest.raises(SystemExit):
        failing_stage(PermissionError(13, "Permission denied", name))()
    assert "photos/bad\\udcff.jpg" in capsys.readouterr().err


def raise_enospc(*args, **kwargs):
    raise OSError(28, os.strerror(28))


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_a_full_disk_leaves_the_old_file_and_no_partial(tmp_path, monkeypatch):
    from fashionbg.core import io

    target = tmp_path / "metrics.json"
    io.write_json(target, {"top1": 0.5})
    real_dump = io.json.dump

    def dump_then_fail(data, f, **kw):
        real_dump(data, f, **kw)
        raise_enospc()
    monkeypatch.setattr(io.json, "dump", dump_then_fail)
    with pytest.raises(OSError, match="No space left"):
        io.write_json(target, {"top1": 0.9})
    assert target.read_text() == '{\n  "top1": 0.5\n}\n' and partials(tmp_path) == []


def test_a_failed_directory_swap_keeps_the_old_output_whole(tmp_path, monkeypatch):
    from fashionbg.core import io

    target = tmp_path / "prepared"
    with io.atomic_dir(target) as tmp:
        (tmp / "images.npy").write_text("old")
    real_rename = Path.rename

    def rename(self, dest):
        if ".partial-" in self.name and "old" not in self.name:   # the new tree moving in
            raise_enospc()
        return real_rename(self, dest)
    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError), io.atomic_dir(target) as tmp:
        (tmp / "images.npy").write_text("new")
    assert (target / "images.npy").read_text() == "old" and partials(tmp_path) == []


# A read-only bind mount in a user and mount namespace of its own: unlike chmod, it binds root
# too (CI runs as root), and it needs no privilege on the host.
READ_ONLY = ["unshare", "-rm", "sh", "-c", 'mount --bind "$1" "$1" && '
             'mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"', "sh"]


def read_only_mounts_work() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        [*READ_ONLY, "/tmp", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not read_only_mounts_work(),
                    reason="this kernel or container forbids user and mount namespaces")
def test_a_read_only_folder_is_one_line_and_left_as_it_was(tmp_path):
    """The demo download into a read-only data/ folder, as root or not."""
    (tmp_path / "data").mkdir()
    shrunk = tmp_path / "params.yaml"
    shrunk.write_text((ROOT / "params.yaml").read_text())
    shrink_params(shrunk)
    result = subprocess.run([*READ_ONLY, str(tmp_path / "data"), sys.executable, "-m",
                             "stages.download"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: read-only file system on data/"), result.stderr
    assert list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_writes_keep_the_mode_a_plain_write_gives(tmp_path, umask):
    from fashionbg.core import io

    old = os.umask(umask)
    try:
        io.write_json(tmp_path / "a.json", {})
        with io.atomic_dir(tmp_path / "cache") as tmp:
            (tmp / "x").write_text("x")
        (tmp_path / "plain").write_text("")
        (tmp_path / "plain_dir").mkdir()
    finally:
        os.umask(old)
    mode = lambda name: (tmp_path / name).stat().st_mode & 0o777   # noqa: E731
    assert mode("a.json") == mode("plain") == 0o666 & ~umask
    assert mode("cache") == mode("plain_dir") == 0o777 & ~umask


# --- values a user types that the OS or a parser cannot take --------------------------------

@pytest.mark.parametrize("change, expected", [
    ({"path": "~nosuchuser_fbg/photos"}, "data.path = '~nosuchuser_fbg/photos' is not allowed"),
    ({"path": "/tmp/" + "x" * 300}, "this user can read (File name too long)"),
    ({"path": "a\0b"}, "(embedded null byte)"),
    ({"url": "http://[::1/x.zip"}, "data.url = 'http://[::1/x.zip' is not allowed"),
    ({"url": "https://host:99999/x.zip"}, "expected null or an http(s)://host/... URL"),
    ({"url": "https:///x.zip"}, "expected null or an http(s)://host/... URL"),
])
def test_paths_and_urls_that_cannot_be_used_are_param_errors(change, expected):
    from fashionbg.core.errors import ParamError
    from fashionbg.ingest.origin import parse_origin

    with pytest.raises(ParamError) as err:
        parse_origin({"path": None, "url": None, "sha256": None, **change}, "folder", "home")
    assert expected in str(err.value)


def test_deeply_nested_params_yaml_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("data: " + "[" * 20000 + "]" * 20000 + "\n")
    result = stage(tmp_path, "download")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "params.yaml is nested too deeply" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_deeply_nested_json_is_one_line(tmp_path):
    from fashionbg.core.errors import UserError
    from fashionbg.core.io import read_json
    from fashionbg.sources.coco import load_coco

    (tmp_path / "x.json").write_text("[" * 100000)
    with pytest.raises(UserError, match="nested too deeply"):
        read_json(tmp_path / "x.json")
    with pytest.raises(UserError, match="nested too deeply"):
        load_coco(tmp_path / "x.json", "train")


def test_a_photo_whose_name_is_not_utf8_is_quarantined_not_a_traceback(tmp_path):
    from PIL import Image

    from fashionbg.contracts.raw import RawWriter
    from fashionbg.ingest.origin import Tree
    from fashionbg.ingest.splits import Sampling
    from fashionbg.sources.folder import build_classified

    root = tmp_path / "photos"
    for c in ("coat", "dress"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (24, 32), (i * 40, 0, 0)).save(root / c / f"{c}{i}.jpg")
    Image.new("RGB", (24, 32)).save(os.fsdecode(bytes(root / "coat") + b"/bad\xff.jpg"))
    writer = RawWriter(tmp_path / "raw")
    build_classified(writer, Tree(root, owned=False), root, {}, Sampling(0, None, (0.5, 0.25,
                                                                                 0.25)), "folder")
    assert writer.refused == [("coat/bad\\xff.jpg",
                               "file name is not valid UTF-8; rename it to keep it")]
    assert len(writer.rows) == 6


def test_remove_background_leaves_home_untouched(tmp_path, u2netp_home):
    """ONNX Runtime would write a telemetry database under ~/.cache; rembg, matplotlib and pip
    must not write there either."""
    from PIL import Image

    project, home = tmp_path / "project", tmp_path / "home"
    home.mkdir()
    raw = project / "data" / "raw"
    (raw / "images").mkdir(parents=True)
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    Image.new("RGB", (48, 64), (200, 30, 30)).save(raw / "images" / "a.jpg")
    (raw / "index.csv").write_text("path,split,label,mask\nimages/a.jpg,train,casual,\n")
    (raw / "classes.json").write_text('{"labels": ["casual"], "mask_classes": []}')
    (project / "models" / "rembg").mkdir(parents=True)
    (project / "models" / "rembg" / "u2netp.onnx").write_bytes(
        (u2netp_home / "u2netp.onnx").read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    result = subprocess.run([sys.executable, "-m", "stages.remove_background"], cwd=project,
                            env={**env, "HOME": str(home), "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (project / "data" / "rembg" / "masks" / "a.png").is_file()
    assert list(home.rglob("*")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "project"]


@pytest.mark.slow
def test_make_variables_reach_python_byte_for_byte_and_no_shell(tmp_path):
    """`make preflight PRESET=…` with shell syntax, make syntax and a newline in the value: no
    command runs, and Python refuses the value as the user typed it, in one line."""
    venv = Path(sys.executable).parent.parent
    value = (f"x'; touch {tmp_path}/pwned; echo '\" $(touch {tmp_path}/pwned2)"
             f"$(shell touch {tmp_path}/pwned3)\n`touch {tmp_path}/pwned4`")
    result = subprocess.run(["make", "--no-print-directory", "-o", f"{venv}/.installed",
                             "preflight", f"VENV={venv}", f"PRESET={value}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: PRESET = {value!r} is not allowed; expected one of backgrounds, "
                      "paper, quick"], result.stderr


def test_outputs_that_never_reached_dvcs_cache_are_an_error_end_to_end(tmp_path):
    """What a full disk under .dvc/cache leaves after `dvc repro` exits 0: a folder output in
    the workspace and not in the cache (here the cache emptied after a good run)."""
    import shutil

    from helpers_project import project_env

    env = {**project_env(), "PYTHONPATH": str(ROOT)}
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: mkdir -p out && echo a > out/a && echo b > out/b\n"
        "    outs: [out]\n")
    for step in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        subprocess.run(step, cwd=tmp_path, env=env, check=True, capture_output=True)

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fashionbg.study.run.cache_check"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert check().returncode == 0
    shutil.rmtree(tmp_path / ".dvc/cache/files")
    result = check()
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: 1 output(s) did not reach DVC's cache (out): ")
