"""Feed each stage the bad inputs a user or a DVC remote can hand it, started as users start
stages while debugging (`python -m stages.<name>`, bytecode on), and print what the user sees;
the training stages' cases also through `dvc repro -s <stage>` in a copy of the project (those
stages launch their own worker processes, where a traceback could hide).

    python benchmarks/bad_inputs.py        (needs models/rembg from `dvc repro fetch_model`)

Prints one markdown table (case, stage, how it was run, exit code, our `error:` line or else the
last line of output) and the number of runs that ended in a traceback, hung (no exit within
TIMEOUT), exited 0 on an input that must be refused (a silent wrong result), or wrote anything
outside their project (HOME is a fresh empty folder per run) or ran code from data: the goal for
all four is zero.
"""
from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers_project import copy_project, project_env  # noqa: E402

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
TRAINING = ("train_classifier", "train_segmenter")
TIMEOUT = int(os.environ.get("BAD_INPUTS_TIMEOUT", 300))   # lower it to measure hangs cheaply
# Cases where exit 0 is right: the bad files are quarantined (listed in quarantine.csv) and the
# rest of the data goes on.
MAY_SUCCEED = {"zip member ../../evil.jpg", "zip member with absolute path",
               "COCO file_name ../../x.jpg", "COCO file_name /etc/passwd", "photo name not UTF-8"}
# Cases run under a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored): writes past it fail with
# EFBIG, a real refusal by the OS standing in for a full disk.
FILE_SIZE_LIMIT = {"file size limit hit while writing (stands in for a full disk)": 20_000}


class Pwned:
    """A pickle that runs code when loaded: it creates the file named in its argument."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def jpeg(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def jpeg_mask() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((32, 24), 255, np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def write(project: Path, rel: str, data: bytes | str) -> None:
    path = project / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def params(project: Path, **data: object) -> None:
    setting(project, {f"data.{key}": value for key, value in data.items()})


def setting(project: Path, values: dict[str, object]) -> None:
    """params.yaml with the "section.key" (or "section.sub.key") values changed."""
    changed = json.loads(json.dumps(PARAMS))
    for dotted, value in values.items():
        *parents, key = dotted.split(".")
        node = changed
        for name in parents:
            node = node[name]
        node[key] = value
    write(project, "params.yaml", yaml.safe_dump(changed))


def raw(project: Path, rows: str) -> None:
    params(project)
    write(project, "data/raw/images/a.jpg", jpeg())
    write(project, "data/raw/index.csv", "path,split,label,mask\n" + rows)
    write(project, "data/raw/classes.json", '{"labels": ["casual"], "mask_classes": []}')
    write(project, "data/rembg/failures.csv", "path,reason\n")


def weights(project: Path) -> None:
    shutil.copytree(ROOT / "models" / "rembg", project / "models" / "rembg")


def prepared(project: Path, changes: dict[str, object] | None = None) -> None:
    """A well-formed three-row cache of each variant (masks with one garment class), and
    params.yaml with `changes`."""
    from fashionbg.contracts.prepared import save_prepared

    setting(project, changes or {})
    for variant in ("original", "rembg"):
        save_prepared(project / "data/prepared" / variant, np.zeros((3, 8, 8, 3), np.uint8),
                      np.zeros((3, 8, 8), np.uint8), np.array([0, 0, 0]), np.array([0, 1, 2]),
                      {"variant": variant, "labels": ["casual"],
                       "mask_classes": ["background", "top"], "image_size": [8, 8],
                       "paths": ["a", "b", "c"], "fill": "black"})


def checkpoint(project: Path, obj: object) -> None:
    params(project)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write(project, "models/classifier.pt", buffer.getvalue())


def zip_with(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def folder_zip(project: Path, members: dict[str, bytes]) -> None:
    write(project, "photos.zip", zip_with(members))
    params(project, source="folder", path=str(project / "photos.zip"))


def coco(project: Path, file_name: str) -> None:
    write(project, "coco/images/a.jpg", jpeg())
    write(project, "coco/instances_train.json", json.dumps({
        "images": [{"id": 1, "file_name": file_name, "width": 24, "height": 32}],
        "annotations": [], "categories": [{"id": 1, "name": "top"}]}))
    params(project, source="coco", path=str(project / "coco"))


def truncate(project: Path, rel: str, keep: int = 100) -> None:
    path = project / rel
    path.write_bytes(path.read_bytes()[:keep])


Case = tuple[str, str, Callable[[Path], None]]
PHOTOS = {f"photos/{c}/{c}{i}.jpg": jpeg(i) for c in ("coat", "dress") for i in range(5)}
CASES: list[Case] = [
    ("params.yaml: unclosed bracket", "download",
     lambda p: write(p, "params.yaml", "data: [1, 2\n")),
    ("params.yaml: a tab for indentation", "prepare",
     lambda p: write(p, "params.yaml", "data:\n\tsource: demo\n")),
    ("params.yaml: empty file", "train_classifier", lambda p: write(p, "params.yaml", "")),
    ("params.yaml: unknown key classify.lr_typo", "train_classifier",
     lambda p: write(p, "params.yaml", yaml.safe_dump(
         {**PARAMS, "classify": {**PARAMS["classify"], "lr_typo": 1}}))),
    ("data.split sums to 0.9", "download", lambda p: params(p, split=[0.5, 0.2, 0.2])),
    ("demo with data.path set", "download", lambda p: params(p, path="/photos")),
    ("demo with data.max_images = 0", "download", lambda p: params(p, max_images=0)),
    ("folder split leaves test empty", "download",
     lambda p: (folder_zip(p, PHOTOS), params(p, source="folder", path=str(p / "photos.zip"),
                                               split=[0.5, 0.5, 0.0]))),
    ("zip member ../../evil.jpg", "download",
     lambda p: folder_zip(p, {**PHOTOS, "../../evil.jpg": jpeg()})),
    ("zip member with absolute path", "download",
     lambda p: folder_zip(p, {**PHOTOS, "/tmp/evil.jpg": jpeg()})),
    ("COCO file_name ../../x.jpg", "download", lambda p: coco(p, "../../x.jpg")),
    ("COCO file_name /etc/passwd", "download", lambda p: coco(p, "/etc/passwd")),
    ("COCO file not JSON", "download",
     lambda p: (coco(p, "a.jpg"), write(p, "coco/instances_train.json", "{not json"))),
    ("index row images/../../../../x.jpg", "remove_background",
     lambda p: (raw(p, "images/../../../../x.jpg,train,casual,\n"), weights(p))),
    ("index row /etc/passwd", "prepare", lambda p: raw(p, "/etc/passwd,train,casual,\n")),
    ("index row mask masks/../../x.png", "prepare",
     lambda p: raw(p, "images/a.jpg,train,casual,masks/../../x.png\n")),
    ("index.csv missing", "remove_background", lambda p: params(p)),
    ("index row with a label not in classes.json", "prepare",
     lambda p: (raw(p, "images/a.jpg,train,formal,\n"), write(p, "data/rembg/masks/a.png",
                                                              jpeg_mask()))),
    ("classes.json labels not a list", "prepare",
     lambda p: (raw(p, "images/a.jpg,train,casual,\n"),
                write(p, "data/raw/classes.json", '{"labels": "casual"}'))),
    ("index.csv in UTF-16", "prepare",
     lambda p: (raw(p, ""), write(p, "data/raw/index.csv", "path,split\n".encode("utf-16")))),
    ("classes.json not JSON", "prepare",
     lambda p: (raw(p, "images/a.jpg,train,casual,\n"), write(p, "data/raw/classes.json", "{"))),
    ("data.variants without rembg", "prepare", lambda p: params(p, variants=["original"])),
    ("data.variant that prepare does not build", "train_classifier",
     lambda p: params(p, variants=["original", "rembg"], variant="mixed_rand")),
    ("oracle asked of a source without masks", "prepare",
     lambda p: raw(p, "images/a.jpg,train,casual,\n")),
    ("mixed_rand with a single class", "prepare",
     lambda p: (raw(p, "images/a.jpg,train,casual,\n"),
                params(p, variants=["original", "rembg", "only_bg", "mixed_rand"]))),
    ("rembg weights missing", "remove_background",
     lambda p: raw(p, "images/a.jpg,train,casual,\n")),
    ("rembg weights tampered", "remove_background",
     lambda p: (raw(p, "images/a.jpg,train,casual,\n"), weights(p),
                write(p, "models/rembg/u2netp.onnx", b"not onnx"))),
    ("prepared cache missing", "train_classifier", lambda p: params(p)),
    ("classify.lr = -1", "train_classifier", lambda p: prepared(p, {"classify.lr": -1})),
    ("train.nproc = 1.5", "train_classifier", lambda p: prepared(p, {"train.nproc": 1.5})),
    ("train.nproc = 0", "train_segmenter", lambda p: prepared(p, {"train.nproc": 0})),
    ("train.nproc = '2; touch pwned'", "train_classifier",
     lambda p: prepared(p, {"train.nproc": "2; touch pwned"})),
    ("segment.instance_classes naming a class the data lacks", "train_segmenter",
     lambda p: prepared(p, {"segment.task": "instance", "segment.instance_classes": ["hat"]})),
    ("the same on 2 processes (every rank finds it)", "train_segmenter",
     lambda p: prepared(p, {"segment.task": "instance", "segment.instance_classes": ["hat"],
                            "train.nproc": 2})),
    ("prepared images.npy truncated", "train_classifier",
     lambda p: (prepared(p), truncate(p, "data/prepared/original/images.npy"))),
    ("prepared meta.json garbage", "train_segmenter",
     lambda p: (prepared(p), write(p, "data/prepared/original/meta.json", "[1, 2]"))),
    ("prepared labels.npy pickled object array", "train_classifier",
     lambda p: (prepared(p), np.save(p / "data/prepared/original/labels.npy",
                                     np.array([Pwned(p / "PWNED")] * 3, dtype=object),
                                     allow_pickle=True))),
    ("prepared labels out of range", "train_classifier",
     lambda p: (prepared(p), np.save(p / "data/prepared/original/labels.npy",
                                     np.array([0, 7, 0])))),
    ("checkpoint that runs code (pickle)", "evaluate_classifier",
     lambda p: checkpoint(p, {"x": Pwned(p / "PWNED")})),
    ("checkpoint truncated", "evaluate_classifier",
     lambda p: (checkpoint(p, {"task": "classify"}), truncate(p, "models/classifier.pt", 40))),
    ("checkpoint garbage bytes", "evaluate_segmenter",
     lambda p: (params(p), write(p, "models/segmenter.pt", os.urandom(500)))),
    ("checkpoint with foreign keys", "evaluate_classifier",
     lambda p: checkpoint(p, {"weights": torch.zeros(2)})),
    ("checkpoint with wrong field types", "evaluate_classifier",
     lambda p: (prepared(p), checkpoint(p, {
         "task": "classify", "variant": "original", "config": "x", "classes": 3,
         "image_size": None, "epoch": "one", "model": [1, 2]}))),
    ("checkpoint whose weights do not fit the model", "evaluate_classifier",
     lambda p: (prepared(p), checkpoint(p, {
         "task": "classify", "variant": "original", "config": {**PARAMS["classify"]},
         "classes": ["casual"], "image_size": [8, 8], "epoch": 1,
         "model": {"conv.weight": torch.zeros(3)}}))),
]


def deep_yaml(project: Path) -> None:
    write(project, "params.yaml", "data: " + "[" * 20000 + "]" * 20000 + "\n")


def undecodable_name(project: Path) -> None:
    folder_zip(project, PHOTOS)
    for c in ("coat", "dress"):
        for i in range(5):
            write(project, f"photos/{c}/{c}{i}.jpg", jpeg(i))
    bad = os.fsencode(project / "photos" / "coat") + b"/bad\xff.jpg"
    with open(bad, "wb") as f:
        f.write(jpeg(9))
    params(project, source="folder", path=str(project / "photos"), max_bad_fraction=0.5)


def limited(size: int | None) -> Callable[[], None] | None:
    if size is None:
        return None

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


CASES += [
    ("classify.lr = NaN", "train_classifier",
     lambda p: prepared(p, {"classify.lr": float("nan")})),
    ("segment.lr = inf", "train_segmenter", lambda p: prepared(p, {"segment.lr": float("inf")})),
    ("data.max_bad_fraction = NaN", "download", lambda p: params(p, max_bad_fraction=float("nan"))),
    ("data.demo.context_correlation = -inf", "download",
     lambda p: setting(p, {"data.demo.context_correlation": float("-inf")})),
    ("data.split = [NaN, 0.5, 0.5]", "download", lambda p: params(p, split=[float("nan"), .5, .5])),
    ("data.image_size = [100000, 100000]", "prepare",
     lambda p: (raw(p, "images/a.jpg,train,casual,\n"),
                params(p, image_size=[100000, 100000]))),
    ("data.demo.images_per_class = 10**7", "download",
     lambda p: setting(p, {"data.demo.images_per_class": 10**7})),
    ("background.batch_size = 100000", "remove_background",
     lambda p: (raw(p, "images/a.jpg,train,casual,\n"), weights(p),
                setting(p, {"background.batch_size": 100000}))),
    ("classify.batch_size = 10**6", "train_classifier",
     lambda p: prepared(p, {"classify.batch_size": 10**6})),
    ("train.workers = 10000", "train_segmenter", lambda p: prepared(p, {"train.workers": 10000})),
    ("data.variant = ../../outside (a folder there exists)", "train_classifier",
     lambda p: (prepared(p, {"data.variant": "../../outside"}),
                write(p, "../outside/images.npy", b"x"))),
    ("data.path = ~nosuchuser/photos", "download",
     lambda p: params(p, source="folder", path="~nosuchuser/photos")),
    ("data.path 300 characters long", "download",
     lambda p: params(p, source="folder", path="/tmp/" + "x" * 300)),
    ("data.url = http://[::1/x.zip (malformed)", "download",
     lambda p: params(p, source="fashionstyle14", url="http://[::1/x.zip")),
    ("params.yaml nested 20000 deep", "download", deep_yaml),
    ("params.yaml nested 20000 deep", "train_classifier", deep_yaml),
    ("COCO JSON nested 100000 deep", "download",
     lambda p: (coco(p, "a.jpg"), write(p, "coco/instances_train.json", "[" * 100000))),
    ("photo name not UTF-8", "download", undecodable_name),
    ("output folder data/ blocked by a file", "download",
     lambda p: (params(p), write(p, "data", "a file, not a folder"))),
    ("file size limit hit while writing (stands in for a full disk)", "download",
     lambda p: params(p)),
]


# Study commands and make targets, by the name the table shows (the rest are stages).
VENV = Path(sys.executable).parent.parent
SMOKE_DATA = ["--data", "fashionstyle14=fs14.zip", "--data", "fashionpedia=fashionpedia"]
COMMANDS: dict[str, list[str]] = {
    "study preflight": [sys.executable, "-m", "fashionbg.study", "preflight", "--preset",
                        "quick"],
    "study preflight --smoke": [sys.executable, "-m", "fashionbg.study", "preflight",
                                "--preset", "paper", "--smoke", *SMOKE_DATA],
    "make preflight": ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-o",
                       f"{VENV}/.installed", "preflight", f"VENV={VENV}",
                       "PRESET=x'; touch pwned; echo '$(shell touch pwned)"],
}


def study_files(project: Path, study: str | None = None) -> None:
    """params.yaml and study.yaml (the project's, or `study`) in the project."""
    params(project)
    write(project, "study.yaml", study if study is not None
          else (ROOT / "study.yaml").read_text())


def alias_bomb(project: Path) -> None:
    """A billion laughs as the quick preset's seeds: 10^9 values in 400 bytes."""
    study = yaml.safe_load((ROOT / "study.yaml").read_text())
    study["presets"]["quick"]["seeds"] = "BOMB"
    bomb = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
        f"&{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcdefgh", "bcdefghi")) + "]"
    study_files(project, yaml.safe_dump(study).replace("seeds: BOMB", f"seeds: {bomb}"))


def fifo_study(project: Path) -> None:
    params(project)
    os.mkfifo(project / "study.yaml")


def smoke_datasets(project: Path, annotations: str | None = None,
                   damaged: bool = False) -> None:
    """The paper preset's datasets in miniature (tests/helpers_archives), the Fashionpedia
    annotations replaced by `annotations`, or its image zip damaged."""
    from helpers_archives import fashionpedia_folder, fashionstyle14_zip

    study_files(project)
    fashionstyle14_zip(project / "fs14.zip")
    fp = fashionpedia_folder(project / "fashionpedia")
    if annotations is not None:
        for split in ("train", "val"):
            write(fp, f"annotations/instances_attributes_{split}2020.json", annotations)
    if damaged:
        images = fp / "images/train2020.zip"
        raw = bytearray(images.read_bytes())
        raw[200:260] = bytes(60)
        images.write_bytes(bytes(raw))


CASES += [
    ("make PRESET with shell and make syntax", "make preflight", study_files),
    ("study.yaml alias bomb under seeds", "study preflight", alias_bomb),
    ("study.yaml is a FIFO", "study preflight", fifo_study),
    ("Fashionpedia categories not a list of objects", "study preflight --smoke",
     lambda p: smoke_datasets(p, '{"categories": ["a", "b"]}')),
    ("Fashionpedia annotations nested 100000 deep", "study preflight --smoke",
     lambda p: smoke_datasets(p, '{"categories": ' + "[" * 100000 + "}")),
    ("Fashionpedia image zip damaged", "study preflight --smoke",
     lambda p: smoke_datasets(p, damaged=True)),
    ("zip bomb: 64 MiB of zeros in 64 kB", "download",
     lambda p: folder_zip(p, {**PHOTOS, "photos/coat/bomb.jpg": bytes(64 << 20)})),
]


def run_case(name: str, stage: str, setup: Callable[[Path], None], dvc: bool = False
             ) -> tuple[int | None, str, bool, bool]:
    """(exit code or None if it hung, our error line or else the last line of output,
    traceback seen, something written outside/code ran), run by `python -m` or (dvc) by
    `dvc repro -s` in a copy of the project."""
    with tempfile.TemporaryDirectory() as outer, tempfile.TemporaryDirectory() as home:
        project = Path(outer) / "project"
        project.mkdir()
        if dvc:
            copy_project(project)
            (project / "data/raw").mkdir(parents=True)      # a dependency of train_segmenter
        setup(project)
        env = {**{k: v for k, v in project_env().items() if not k.startswith("XDG_")},
               "PYTHONPATH": str(ROOT), "HOME": home}
        if dvc:
            subprocess.run(["git", "init", "-q"], cwd=project, check=True)
        command = (["dvc", "repro", "-s", stage] if dvc else COMMANDS.get(stage)
                   or [sys.executable, "-m", f"stages.{stage}"])
        before = sorted(os.listdir(outer))
        try:
            result = subprocess.run(command, cwd=project, env=env, capture_output=True,
                                    text=True, timeout=TIMEOUT,
                                    preexec_fn=limited(FILE_SIZE_LIMIT.get(name)))
            code, output = result.returncode, result.stdout + result.stderr
        except subprocess.TimeoutExpired as err:
            code, output = None, f"{err.stdout or ''}{err.stderr or ''}"
            output = output.decode(errors="replace") if isinstance(output, bytes) else output
        lines = output.strip().splitlines() or [""]
        shown = next((line for prefix in ("error: ", "ERROR: ") for line in reversed(lines)
                      if line.startswith(prefix)), lines[-1])
        escaped = (sorted(os.listdir(outer)) != before or os.listdir(home) != []
                   or (project / "PWNED").exists() or (project / "pwned").exists()
                   or Path("/tmp/evil.jpg").exists())
        traceback = "Traceback" in output or "ChildFailedError" in output
        return code, shown, traceback, escaped


def main() -> None:
    print("| bad input | stage | run by | exit | what the user sees |")
    print("|---|---|---|---|---|")
    runs = tracebacks = hangs = silent = escapes = 0
    only = sys.argv[1:]        # optional: run only the cases whose name contains one of these
    cases = [c for c in CASES if not only or any(o in c[0] for o in only)]
    for name, stage, setup in cases:
        for dvc in (False, True) if stage in TRAINING else (False,):
            code, line, traceback, escaped = run_case(name, stage, setup, dvc)
            quiet = code == 0 and name not in MAY_SUCCEED
            runs += 1
            tracebacks += traceback
            hangs += code is None
            silent += quiet
            escapes += escaped
            flag = " **TRACEBACK**" if traceback else ""
            flag += " **HUNG**" if code is None else ""
            flag += " **SILENT**" if quiet else ""
            flag += " **ESCAPED**" if escaped else ""
            shown = line.replace("|", "\\|")[:160]
            how = "dvc repro" if dvc else "make" if stage.startswith("make") else "python -m"
            print(f"| {name} | {stage} | {how} | {code}{flag} | {shown} |", flush=True)
    print(f"\n{len(cases)} cases, {runs} runs: {tracebacks} tracebacks, {hangs} hangs, {silent} "
          f"silent wrong results, {escapes} wrote outside their project or ran code from data")


if __name__ == "__main__":
    main()
