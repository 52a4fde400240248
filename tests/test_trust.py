"""Inputs pulled from a remote are untrusted: a hostile index writes nowhere else, and a broken
one is one clear line with exit code 2, however the stage is started."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def stage(project: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=project,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)


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
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = stage(project, name)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "index.csv line 2" in result.stderr and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


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
