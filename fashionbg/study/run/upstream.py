"""Each distinct upstream pipeline of a study runs once, before its cells.

DVC fills its run cache only when a stage finishes, so cells started together would each run
download, remove_background and prepare. Cells whose upstream params are the same (the params
of UPSTREAM and the stages it depends on, read from dvc.yaml) share one upstream; each is run
once as `dvc exp run <UPSTREAM>` in a workspace of its own (fashionbg.study.run.workspace), which
leaves its outputs and run cache in the shared cache (and on the DVC remote, when there is
one), never an experiment. The cells' own `dvc exp run` then restores them. An upstream already
run (a second study, or after `make repro`) is restored there too: no stage runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from fashionbg.core.errors import UserError
from fashionbg.study.run.workspace import CellJob, CellOutcome

log = logging.getLogger("study")
UPSTREAM = "prepare"   # the stage whose outputs every training stage reads
RAN = re.compile(r"Running stage '([\w-]+)'")


def upstream_params(dvc_yaml: Path = Path("dvc.yaml")) -> set[str]:
    """The params of UPSTREAM and of every stage whose outputs it depends on, transitively."""
    stages: dict[str, Any] = yaml.safe_load(dvc_yaml.read_text())["stages"]
    producer = {_path(out): name for name, stage in stages.items()
                for out in stage.get("outs", [])}
    seen: set[str] = set()
    todo = [UPSTREAM]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [producer[d] for d in map(_path, stages[name].get("deps", [])) if d in producer]
    return {p for name in seen for p in stages[name].get("params", []) if isinstance(p, str)}


def _path(entry: str | dict[str, Any]) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def touches(key: str, params: set[str]) -> bool:
    """Whether `-S key=…` changes one of `params` (a key inside one, or one inside the key)."""
    return any(key == p or key.startswith(f"{p}.") or p.startswith(f"{key}.") for p in params)


def upstream_jobs(cells: Sequence[CellJob]) -> list[CellJob]:
    """One job per distinct upstream among the cells: their overrides of upstream params only,
    run up to UPSTREAM and never published as an experiment."""
    params = upstream_params()
    jobs: dict[tuple[str, ...], CellJob] = {}
    for cell in cells:
        sets = tuple(sorted(s for s in cell.sets if touches(s.partition("=")[0], params)))
        if sets not in jobs:
            digest = hashlib.sha256(json.dumps(sets).encode()).hexdigest()[:6]
            jobs[sets] = dataclasses.replace(cell, name=f"upstream-{digest}", stage=UPSTREAM,
                                             sets=sets, publish=False)
    return list(jobs.values())


def run_upstreams(cells: Sequence[CellJob],
                  run: Callable[[list[CellJob]], list[CellOutcome]], logs: Path) -> None:
    """Run every distinct upstream of `cells` (through `run`, which may run them at once) before
    any cell starts; each one's log is kept in `logs`. A failed upstream stops the study: every
    cell that needs it would fail the same way."""
    jobs = upstream_jobs(cells)
    log.info("%d distinct upstream pipeline(s) for %d cells: running each once first",
             len(jobs), len(cells))
    logs.mkdir(parents=True, exist_ok=True)
    for job, outcome in zip(jobs, run(jobs)):
        (logs / f"{job.name}.log").write_text(json.dumps(outcome.seen) + "\n" + outcome.log)
        ran = RAN.findall(outcome.log)
        said = " ".join(job.sets) or "the defaults"
        if not outcome.ok:
            tail = " | ".join([line for line in outcome.log.splitlines() if line.strip()][-3:])
            raise UserError(f"the upstream stages of {job.name} ({said}) failed: "
                            f"{tail or 'no log'} (full log: {logs / job.name}.log)")
        log.info("upstream %s (%s): %s in %s s", job.name, said,
                 f"ran {', '.join(ran)}" if ran else "every stage restored from the run cache",
                 outcome.seen["stages_s"])
