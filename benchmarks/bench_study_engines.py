"""The study's two engines on the same grid: DVC's queue (one cell at a time) against Ray (as many
cells at once as the cores hold, `--cpus-per-cell` each), from the same empty experiment set.

    PYTHONPATH=tests python benchmarks/bench_study_engines.py --preset quick \
        [--arms shallow,shallow_bn] [--seeds 0] [--epochs 2] [--tiny]

In a copy of the project (its pipeline run once, then copied, so both engines start from the
same DVC cache and no experiment) it prints:
- the grid's wall time per engine and their ratio (queue / Ray);
- the same grid again after its experiments are removed: the upstream stages restore from the
  run cache, but train_* has an uncached output (dvclive/<stage>, `cache: false`), for which
  DVC keeps no run cache, so training runs again: this is an upper bound of the overhead per
  cell, not the bookkeeping alone;
- the retry cost: two new cells on Ray, one of whose `dvc exp run` is SIGKILLed once its
  training has run for `--kill-after` seconds; the killed cell's time from its first start to
  its end, against the other cell's.
Each engine's run includes the study's pre-flight and, for Ray, starting a local Ray. It asserts
nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from helpers_project import copy_project, project_env, shrink_params  # tests/ on PYTHONPATH
from helpers_ray import cell_logs, training_cell


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", help="the preset of study.yaml to reduce")
    parser.add_argument("--arms", default="", help="a comma-separated subset of its arms")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the preset's)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs of every cell (0: as set)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny demo params")
    parser.add_argument("--cpus-per-cell", default="1")
    parser.add_argument("--kill-after", type=float, default=5.0)
    return parser.parse_args()


def bench_preset(project: Path, args: argparse.Namespace, seeds: list[int] | None = None) -> int:
    """The chosen cells of `args.preset` as the preset `bench`; its number of cells."""
    definition = yaml.safe_load((project / "study.yaml").read_text())
    preset = dict(definition["presets"][args.preset])
    preset.pop("smoke", None)
    preset["about"] = f"{args.preset}, reduced for the engines' benchmark"
    if args.arms:
        preset["arms"] = {a: preset["arms"][a] for a in args.arms.split(",")}
    if seeds or args.seeds:
        preset["seeds"] = seeds or [int(s) for s in args.seeds.split(",")]
        preset["arms"] = {a: {k: v for k, v in (spec or {}).items() if k != "seeds"}
                          for a, spec in preset["arms"].items()}
    if args.epochs:
        preset["params"] = {**preset.get("params", {}), "classify.epochs": args.epochs,
                            "segment.epochs": args.epochs}
        preset["arms"] = {a: {**spec, "params": {k: v for k, v in spec.get("params", {}).items()
                                                 if not k.endswith(".epochs")}}
                          for a, spec in preset["arms"].items()}
    definition["presets"]["bench"] = preset
    (project / "study.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    git(project, "commit", "-qam", "bench preset")
    return cells(project)


def cells(project: Path) -> int:
    out = sh(project, [sys.executable, "-c", "from fashionbg.core.params import load_params;"
                       "from fashionbg.study.plan.definition import load_study;"
                       "print(len(load_study(params=load_params()).cells('bench')))"])
    return int(out.strip())


def sh(cwd: Path, cmd: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env or project_env(), capture_output=True,
                            text=True)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def git(project: Path, *args: str) -> str:
    return sh(project, ["git", *args])


def study(project: Path, engine: str, cpus: str) -> float:
    """Wall seconds of `python -m fashionbg.study run --preset bench --engine <engine>`."""
    env = {k: v for k, v in project_env().items() if k != "RAY_ADDRESS"}
    start = time.monotonic()
    sh(project, [sys.executable, "-m", "fashionbg.study", "run", "--preset", "bench",
                 "--engine", engine, "--cpus-per-cell", cpus], env)
    return time.monotonic() - start


def baseline(root: Path, args: argparse.Namespace) -> Path:
    project = root / "queue"
    copy_project(project)
    if args.tiny:
        shrink_params(project / "params.yaml")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "bench project")
    sh(project, ["dvc", "repro"])
    git(project, "add", "-A")
    git(project, "commit", "-qm", "baseline run")
    return project


def retry_cost(project: Path, args: argparse.Namespace) -> None:
    """Two new cells (a new seed of the first arm, both variants) on Ray, one killed once."""
    args.arms = args.arms.split(",")[0] if args.arms else next(iter(yaml.safe_load(
        (project / "study.yaml").read_text())["presets"]["bench"]["arms"]))
    shutil.rmtree(project / ".cache/study/logs", ignore_errors=True)
    n = bench_preset(project, args, seeds=[99])
    env = {k: v for k, v in project_env().items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "fashionbg.study", "run", "--preset", "bench",
                             "--engine", "ray", "--cpus-per-cell", args.cpus_per_cell], cwd=project,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    victim = training_cell(project)
    if victim:
        time.sleep(args.kill_after)
        victim.send_signal(signal.SIGKILL)
    proc.wait()
    wall = time.monotonic() - start
    logs = {name: info for name, (info, _) in cell_logs(project).items()}
    print(f"\nretry cost ({n} cells at once on Ray, one `dvc exp run` SIGKILLed "
          f"{args.kill_after:g} s into its training): study {wall:.1f} s, exit {proc.returncode}")
    for name, info in sorted(logs.items()):
        took = float(info["ended"]) - float(info["started"])
        print(f"  {name}: attempts {info['attempts']}, last attempt {took:.1f} s")


def main() -> None:
    args = arguments()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    root = Path(tempfile.mkdtemp(prefix="bench-study-"))
    try:
        queue = baseline(root, args)
        n = bench_preset(queue, args)
        ray = root / "ray"
        shutil.copytree(queue, ray, symlinks=True)   # the same cache, run cache and commit
        print(f"grid: preset {args.preset}, arms {args.arms or 'all'}, seeds "
              f"{args.seeds or 'as set'}, epochs {args.epochs or 'as set'}, "
              f"{'tiny' if args.tiny else 'default'} params: {n} cells; "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
        times = {"queue": study(queue, "queue", args.cpus_per_cell),
                 "ray": study(ray, "ray", args.cpus_per_cell)}
        print(f"\n{'engine':<8}{'grid s':>10}{'s / cell':>10}")
        for engine, took in times.items():
            print(f"{engine:<8}{took:>10.1f}{took / n:>10.1f}")
        print(f"ratio queue / ray: {times['queue'] / times['ray']:.2f}")

        print("\nthe same grid again (upstream restored; training re-runs: DVC keeps no run cache "
              "for train_*, whose dvclive folder is uncached)")
        for engine, project in (("queue", queue), ("ray", ray)):
            sh(project, ["dvc", "exp", "remove", "-A"])
            shutil.rmtree(project / ".cache/study/logs", ignore_errors=True)
            took = study(project, engine, args.cpus_per_cell)
            print(f"  {engine:<6} {took:7.1f} s for {n} cells: {took / n:.1f} s per cell "
                  "(with the pre-flight" + (" and starting Ray)" if engine == "ray" else ")"))
        spans = [float(i["ended"]) - float(i["started"]) for i, _ in cell_logs(ray).values()]
        print(f"  ray, inside each task (clone, dvc exp run, push back, remove): "
              f"{sum(spans) / len(spans):.1f} s per cell, {n} cells")
        retry_cost(ray, args)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
