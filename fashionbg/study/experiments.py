"""The experiments a study leaves behind, shared by the rooms that run cells and that read
them back: the git refs DVC writes for every finished experiment (which `dvc exp push` /
`dvc exp pull` move between machines), the study's cache folder, and the one way the study runs
a git or dvc command. Imports no other module of the study."""
from __future__ import annotations

import subprocess
from pathlib import Path

from fashionbg.core.errors import UserError

STUDY_CACHE = Path(".cache/study")
EXPERIMENT_REFS = "refs/exps/"
QUEUE_REFS = "refs/exps/celery/"   # DVC's own bookkeeping of queued and failed runs


class BadExperiment(Exception):
    """An experiment whose files are not what an evaluation writes (pulled from someone else,
    edited, or cut short): the report names it and leaves it out."""

    def __init__(self, file: str, problem: str) -> None:
        super().__init__(f"{file}: {problem}")
        self.file, self.problem = file, problem


def existing_experiments() -> dict[str, str]:
    """Name → commit of every finished experiment in this repository."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)",
                          EXPERIMENT_REFS], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        rev, ref = line.split(" ", 1)
        if not ref.startswith(QUEUE_REFS):
            found[ref.rsplit("/", 1)[-1]] = rev
    return found


def git_file(rev: str, path: str) -> str | None:
    """The text of `path` in commit `rev`; None where the commit has no such file."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True)
    if result.returncode != 0:
        return None
    try:
        return result.stdout.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadExperiment(path, f"not UTF-8 text (byte {err.start})") from err


def fetch_experiments(remote: str) -> None:
    """Every experiment on the Git remote, here: what `dvc exp pull --no-cache` fetches, so
    the cells other machines ran are not run again and the report sees them."""
    output("git", "fetch", "--quiet", remote, "refs/exps/*:refs/exps/*", "^refs/exps/celery/*")


def output(*cmd: str) -> str:
    """The stdout of a git or dvc command that must succeed; its last error line otherwise."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{' '.join(cmd)} failed: "
                        + (result.stderr.strip().splitlines() or ["no output"])[-1])
    return result.stdout
