"""A cold study on Ray, the baseline's code against this one's: a fresh tiny project with an empty
DVC cache, a preset of 4 cells (one arm, both variants, seeds 0 and 1), a Ray the study starts
on this machine, one core per cell (2 cells at a time on 2 cores).

    PYTHONPATH=tests python benchmarks/bench_study_cold.py --baseline /path/to/main/checkout

For each code (the baseline's first) it prints, from what the processes did, not from the
study's own records:
- how many times each upstream stage ran: DVC's "Running stage" lines in every log the study
  kept;
- per workspace, the bytes it held that are not links (one name, no symlink), in all and under
  data/, measured once while its cell trained;
- per cell, the seconds outside its stages: its Ray task's span minus the life of its
  `dvc exp run` process (watched every WATCH_SECONDS); their median, against the goal of 10 s;
- the study's wall time, and the ratios baseline / this.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from helpers_project import ROOT, copy_project, project_env, shrink_params  # tests/ on PYTHONPATH
from helpers_ray import UPSTREAM, WORKSPACES, cell_logs, stage_runs, tiny_preset, unlinked_bytes

WATCH_SECONDS = 0.2
GOAL_OUTSIDE = 10.0


@dataclass
class Watch:
    """What the watcher saw of each workspace: its `dvc exp run`'s first and last sighting, and
    its unlinked bytes (all, data/) once its training stage ran."""
    seen: dict[str, list[float]] = field(default_factory=dict)
    unlinked: dict[str, tuple[int, int]] = field(default_factory=dict)


def watch(project: Path, stop: threading.Event, out: Watch) -> None:
    root = str(project / WORKSPACES)
    while not stop.is_set():
        now = time.monotonic()
        for proc in psutil.process_iter(["cmdline", "cwd"]):
            try:
                cwd = proc.info["cwd"] or ""
                if "exp run" not in " ".join(proc.info["cmdline"] or []) or \
                        not cwd.startswith(root):
                    continue
                out.seen.setdefault(cwd, [now, now])[1] = now
                if cwd not in out.unlinked and any(
                        "stages.train_" in " ".join(c.cmdline())
                        for c in proc.children(recursive=True)):
                    out.unlinked[cwd] = (unlinked_bytes(Path(cwd)),
                                         unlinked_bytes(Path(cwd) / "data"))
            except psutil.Error:
                continue
        stop.wait(WATCH_SECONDS)


def cold_study(code: Path, root: Path) -> dict[str, float]:
    """One cold study of `code`'s project; its figures, printed and returned."""
    project = root / "project"
    copy_project(project, code)
    shrink_params(project / "params.yaml")
    tiny_preset(project, [0, 1])
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "cold"]):
        subprocess.run(cmd, cwd=project, env=project_env(), check=True, capture_output=True)
    env = {k: v for k, v in project_env().items() if k != "RAY_ADDRESS"}
    seen, stop = Watch(), threading.Event()
    watcher = threading.Thread(target=watch, args=(project, stop, seen), daemon=True)
    watcher.start()
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fashionbg.study", "run", "--preset", "tiny",
                             "--engine", "ray", "--cpus-per-cell", "1"], cwd=project, env=env,
                            capture_output=True, text=True)
    wall = time.monotonic() - start
    stop.set()
    watcher.join()
    if result.returncode:
        sys.exit(f"the study of {code} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    runs = stage_runs(project)
    print(f"\n{code}: study {wall:.0f} s; stage runs: "
          + ", ".join(f"{s} {runs.get(s, 0)}" for s in (*UPSTREAM, "train_classifier")))
    print(f"  {'workspace':<34}{'unlinked B':>12}{'of it data/':>12}{'exp run s':>10}")
    for cwd, (first, last) in sorted(seen.seen.items()):
        total, data = seen.unlinked.get(cwd, (0, 0))
        print(f"  {Path(cwd).name:<34}{total:>12,}{data:>12,}{last - first:>10.1f}")
    outside = []
    for name, (info, _) in sorted(cell_logs(project).items()):
        spans = [last - first for cwd, (first, last) in seen.seen.items()
                 if Path(cwd).name.rpartition("-")[0] == name]
        outside.append(float(info["ended"]) - float(info["started"]) - (spans[-1] if spans else 0))
    median = statistics.median(outside)
    cells = [v for k, v in seen.unlinked.items() if not Path(k).name.startswith("upstream-")]
    figures = {"wall": wall, "upstream runs": sum(runs.get(s, 0) for s in UPSTREAM),
               "median outside s": median,
               "max unlinked data/ B": max((d for _, d in cells), default=0)}
    print(f"  seconds per cell outside its stages: {', '.join(f'{o:.1f}' for o in outside)}; "
          f"median {median:.1f} (goal <= {GOAL_OUTSIDE:g})")
    own = [f"{i['before_s']} / {i['after_s']}" for i, _ in cell_logs(project).values()
           if "before_s" in i]   # what the study itself says, where its code records it
    if own:
        print(f"  the study's own record, s before / after the stages: {', '.join(own)}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True,
                        help="a checkout of the code to compare with (e.g. main before the change)")
    args = parser.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    results = {}
    for label, code in (("baseline", args.baseline.resolve()), ("this", ROOT)):
        root = Path(tempfile.mkdtemp(prefix="bench-cold-"))
        try:
            results[label] = cold_study(code, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{'figure':<24}{'baseline':>14}{'this':>14}{'baseline/this':>15}")
    for key in results["this"]:
        before, after = results["baseline"][key], results["this"][key]
        ratio = f"{before / after:.2f}" if after else "-"
        print(f"{key:<24}{before:>14,.1f}{after:>14,.1f}{ratio:>15}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
