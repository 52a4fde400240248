"""A tiny copy of the project for end-to-end tests: the files git would clone, a demo config
small enough to run the whole pipeline in a minute or two, committed in a fresh git repo."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    ("data", "demo", "images_per_class"): 6,
    ("data", "demo", "image_size"): [128, 96],
    ("data", "image_size"): [64, 48],
    ("classify", "epochs"): 2,
    ("classify", "batch_size"): 16,
    ("segment", "epochs"): 2,
}


def project_env() -> dict[str, str]:
    """Bytecode writing on, as on users' machines (__pycache__ lands in the code folders that
    stages depend on, and must not change their hashes); this venv's tools first on PATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update({"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "e2e",
                "GIT_AUTHOR_EMAIL": "e2e@localhost", "GIT_COMMITTER_NAME": "e2e",
                "GIT_COMMITTER_EMAIL": "e2e@localhost"})
    return env


def run_ok(cmd: list[str], cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess:
    """`cmd` in `cwd`, which must succeed; with `home`, that folder is HOME and no XDG_* folder
    is set, so whatever the command writes for the user lands there and can be seen."""
    env = project_env()
    if home is not None:
        env = {k: v for k, v in env.items() if not k.startswith("XDG_")} | {"HOME": str(home)}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def run(cmd: list[str], cwd: Path, home: Path | None = None) -> str:
    """Run a command that must succeed (run_ok); its stdout and stderr together."""
    result = run_ok(cmd, cwd, home)
    return result.stdout + result.stderr


def copy_project(target: Path, source: Path = ROOT) -> None:
    """The files git would clone (tracked and not ignored), without data or the venv."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=source,
                            capture_output=True, text=True, check=True).stdout.split()
    for rel in listed:
        if (source / rel).is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, target / rel)


def shrink_params(path: Path) -> None:
    params = yaml.safe_load(path.read_text())
    for keys, value in TINY.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_project(project: Path) -> Path:
    """The project at `project` with the tiny config, committed in a new git repo."""
    copy_project(project)
    shrink_params(project / "params.yaml")
    run(["git", "init", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "tiny config"], project)
    return project


def copy_baseline(baseline: Path, target: Path) -> Path:
    """A copy of conftest's tiny_baseline (git repo, DVC cache and outputs) to change freely."""
    shutil.copytree(baseline, target, symlinks=True)
    return target


def default_sigint() -> None:
    """preexec_fn for a child a test interrupts: a shell starts background jobs with SIGINT
    ignored, children inherit it, and Python then installs no KeyboardInterrupt handler; a
    user's terminal would deliver Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
