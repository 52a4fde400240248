"""`dvc repro` on copies of the tiny baseline: forced re-runs of training and evaluation write
the same bytes, and a bad param of any stage fails `dvc repro` with the stage's one line."""
import subprocess
from pathlib import Path

import yaml
from helpers_project import copy_baseline, project_env, run

# What training and evaluation write that must repeat byte for byte (dvclive's summaries hold
# throughput figures and are left out; the confusion/overlay PNGs are derived from these).
REPEATED = ("models/classifier.pt", "models/segmenter.pt", "metrics/classification.json",
            "metrics/segmentation.json", "metrics/detail/classification.json",
            "metrics/detail/segmentation.json")

# One refused value per stage, in reverse pipeline order: a failed stage has its outputs
# removed by DVC, which only the stages after it read, and those have already run.
BAD = (("evaluate_segmenter", "evaluate.overlays", 99),
       ("evaluate_classifier", "evaluate.batch_size", "big"),
       ("prepare", "background.fill", "purple"),
       ("remove_background", "background.device", "gpu"),
       ("download", "data.source", "kaggle"))


def set_param(project: Path, keys: str, value: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    *parents, last = keys.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_forced_rerun_of_training_and_evaluation_writes_the_same_bytes(tmp_path,
                                                                       tiny_baseline):
    project = copy_baseline(tiny_baseline, tmp_path / "project")
    log = run(["dvc", "repro", "--force", "-s", "train_classifier", "evaluate_classifier",
               "train_segmenter", "evaluate_segmenter"], project)
    assert log.count("Running stage") == 4, log
    for path in REPEATED:
        assert (project / path).read_bytes() == (tiny_baseline / path).read_bytes(), path


def test_a_bad_param_fails_dvc_repro_with_the_stages_one_line(tmp_path, tiny_baseline):
    project = copy_baseline(tiny_baseline, tmp_path / "project")
    for stage, key, value in BAD:
        run(["git", "checkout", "-q", "params.yaml"], project)
        set_param(project, key, value)
        result = subprocess.run(["dvc", "repro", "-s", stage], cwd=project, env=project_env(),
                                capture_output=True, text=True, timeout=300)
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert result.returncode != 0 and "Traceback" not in output, output
        assert len(errors) == 1 and f"{key} = {value!r}" in errors[0], output
