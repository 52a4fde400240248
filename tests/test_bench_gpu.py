"""The one-command GPU benchmark runs here too (CPU, DDP on 2 gloo processes, --quick) and
prints every row of its table."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ["background removal, cpu provider", "background removal, cuda provider",
        "background removal, cuda, batch 8", "train_classifier, 1 process",
        "train_classifier, DDP", "train_segmenter, 1 process", "train_segmenter, DDP"]


@pytest.mark.timeout(300)
def test_bench_gpu_quick_prints_every_row(u2netp_home):
    result = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--quick"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ROWS:
        line = next((x for x in result.stdout.splitlines() if x.startswith(label)), None)
        assert line is not None, f"no row {label!r} in:\n{result.stdout}"
        assert re.search(r"\s(\d+\.\d|n/a)\s", line[len(label):]), line
    assert "Traceback" not in result.stderr
