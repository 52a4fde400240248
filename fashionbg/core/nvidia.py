"""Whether this machine has NVIDIA GPUs, asked of the driver and not of torch or onnxruntime:
what lets `auto` say it fell back to the CPU on a machine whose GPUs the libraries cannot use
(a driver too old for their CUDA, a CPU build, libraries missing from the loader path)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROC_GPUS = Path("/proc/driver/nvidia/gpus")


def nvidia_devices() -> list[str]:
    """One line per NVIDIA GPU the driver sees (`nvidia-smi -L`, else the driver's /proc
    entries); empty without a driver."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            listed = None
        if listed is not None and listed.returncode == 0:
            lines = [x.strip() for x in listed.stdout.splitlines() if x.startswith("GPU ")]
            if lines:
                return lines
    try:
        return sorted(f"GPU at PCI {entry.name}" for entry in PROC_GPUS.iterdir())
    except OSError:
        return []
