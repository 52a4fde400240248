"""How a training stage runs, the same for every task: in this process (train.nproc: 1), or as
train.nproc worker processes of itself that this process starts and watches through PyTorch's
elastic launcher (the machinery under `torchrun`), and what each process sets up before it
builds anything (its place in the job, device, seeds, loader options, memory format).

The stage is started the same way either way (`python -m stages.<name>`, as dvc.yaml does), so
no value from params.yaml ever reaches a shell, and a mistake is one line and exit code 2 in
both: a worker does not print its user error but records it for the launcher, which prints the
first one once, however many ranks hit it.
"""
from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing.util
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from fashionbg.core import paths
from fashionbg.core.cli import INTERRUPTED, STOPPED, USER_ERROR
from fashionbg.core.errors import UserError
from fashionbg.nn.data import LoaderOptions, training_options
from fashionbg.nn.device import resolve_device, seed_everything
from fashionbg.nn.distributed import World, per_rank_batch, process_group, world_from_env
from fashionbg.nn.engine import amp_dtype, inputs_in
from fashionbg.nn.params import read_train

# Set by torchrun and by our launcher in every worker: such a process is one rank of a job.
JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")
# How long a failing rank waits before its traceback: when the failure is only the echo of a
# peer that stopped first (a closed connection), the launcher stops this rank quietly meanwhile.
PEER_GRACE_S = 5.0
# Set by our launcher in its workers: its pid (a rank whose parent is no longer it is an orphan)
# and its scratch folder (which an orphan removes, since the launcher no longer can).
LAUNCHER_PID = "FASHIONBG_LAUNCHER_PID"
LAUNCH_SCRATCH = "FASHIONBG_LAUNCH_SCRATCH"
WATCH_INTERVAL_S = 0.5
PR_SET_PDEATHSIG = 1                # linux/prctl.h
# The kernel's word that the launcher died. Not SIGTERM, which the launcher itself sends to stop
# its ranks: the parent-death signal comes as the launcher's threads exit, when getppid() may
# still name it, and a rank that took it for a stop left the scratch for a dead launcher.
LAUNCHER_DIED = signal.SIGUSR2


@dataclass(frozen=True)
class TrainingRun:
    world: World
    device: torch.device
    loader: LoaderOptions
    memory_format: torch.memory_format
    generator: torch.Generator      # the training loader's shuffle (and its workers' seeds)
    augment_on_device: bool         # train.augment_on: device
    amp: torch.dtype | None         # train.precision on this device: autocast dtype, None = fp32

    def batch_size(self, batch_size: int, key: str, min_images: int = 1) -> int:
        """This process's share of the task's batch size (at least `min_images`)."""
        return per_rank_batch(batch_size, self.world, key, min_images)

    def place(self, model: nn.Module) -> nn.Module:
        # Module.to takes device and memory_format together; no overload of its stub does
        model = model.to(  # type: ignore[call-overload]
            self.device, memory_format=self.memory_format)
        model.register_forward_pre_hook(inputs_in(self.memory_format))
        return model


def run_training(module: str, params: dict[str, Any], device: str, device_key: str, seed: int,
                 train: Callable[[TrainingRun], None]) -> None:
    """Run `train` for the stage `module` (`stages.<name>`): here with one process, else in
    train.nproc workers of the same module that this process launches and waits for."""
    nproc = read_train(params).nproc
    if nproc > 1 and not in_job():
        check_devices(nproc, resolve_device(device, device_key), device_key)
        launch_workers(module, nproc)
        return
    with (as_worker() if in_job() else nullcontext()), \
            training_run(params, device, device_key, seed) as run:
        train(run)


def in_job() -> bool:
    return any(name in os.environ for name in JOB_VARIABLES)


@contextmanager
def training_run(params: dict[str, Any], device: str, device_key: str, seed: int
                 ) -> Iterator[TrainingRun]:
    """Validate the train: section, join the job if this process is a worker of one, and seed
    every RNG (rank r with seed + r, so ranks augment differently; rank 0, like a single
    process, with `seed`)."""
    train = read_train(params)
    world = world_from_env()
    with process_group(world, resolve_device(device, device_key)) as rank_device:
        yield TrainingRun(world, rank_device,
                          training_options(train.workers, rank_device, world, seed),
                          train.memory_format, seed_everything(seed + world.rank, rank_device),
                          train.augment_on == "device",
                          amp_dtype(rank_device, train.precision))


def check_devices(nproc: int, device: torch.device, device_key: str) -> None:
    """Refuse before anything starts when CUDA workers would outnumber the visible GPUs."""
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise UserError(f"train.nproc = {nproc} starts one process per GPU but {device_key} "
                        f"runs on CUDA and {torch.cuda.device_count()} GPU(s) are visible; "
                        "lower train.nproc")


# ----------------------------------------------------------------------------- in a worker

@contextmanager
def as_worker() -> Iterator[None]:
    """A rank's part of the one-line promise: a user error goes to the launcher (not the
    console) with exit code 2; being stopped by the launcher, or Ctrl-C forwarded by another
    launcher, ends the rank quietly, after its `finally` blocks (atomic writes) have run."""
    signal.signal(signal.SIGTERM, _stop_quietly)
    # The launcher's SIGTERM (to the rank's process group) kills its DataLoader workers
    # outright: a worker forked with this handler would take the rank's parent for a dead
    # launcher and remove the rank's folders under it. Made here, the multiprocessing temp dir
    # the workers would each make (pymp-*) is this rank's, removed at its exit.
    os.register_at_fork(after_in_child=_default_sigterm)
    multiprocessing.util.get_temp_dir()
    follow_launcher()
    try:
        yield
    except UserError as err:
        record_user_error(str(err))
        sys.exit(USER_ERROR)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    except Exception:
        if world_from_env().distributed:
            time.sleep(PEER_GRACE_S)
        raise


def follow_launcher() -> None:
    """End this rank when the launcher that started it dies (SIGKILL, the OOM killer), so that
    no rank trains on and rewrites the stage's outputs after the stage has failed: the kernel
    sends LAUNCHER_DIED at the launcher's death (Linux), and a thread watching the parent pid
    is the backstop (other systems, or a main thread stuck in C code that never sees the
    signal)."""
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is None:        # started by hand (torchrun): its agent watches it
        return
    if sys.platform.startswith("linux"):
        signal.signal(LAUNCHER_DIED, _launcher_died)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, LAUNCHER_DIED, 0, 0, 0)
    if os.getppid() != int(launcher):       # it died before the line above
        abandon()
    threading.Thread(target=_watch_launcher, args=(int(launcher),), daemon=True,
                     name="launcher-watchdog").start()


def _watch_launcher(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(WATCH_INTERVAL_S)
    abandon()


def launcher_gone() -> bool:
    launcher = os.environ.get(LAUNCHER_PID)
    return launcher is not None and os.getppid() != int(launcher)


def abandon() -> NoReturn:
    """The launcher is gone: remove the scratch it can no longer remove and this rank's pymp-*
    folder, and end at once with its DataLoader workers, running none of the stage's code (no
    `finally` that commits an output, no dvclive summary): nothing is written after the stage
    died."""
    scratch = os.environ.get(LAUNCH_SCRATCH)
    if scratch:
        remove_scratch(Path(scratch))
    shutil.rmtree(multiprocessing.util.get_temp_dir(), ignore_errors=True)
    if os.getpgid(0) == os.getpid():    # torch starts each rank in a session of its own
        os.killpg(0, signal.SIGKILL)
    os._exit(STOPPED)


def _launcher_died(signum: int, frame: Any) -> NoReturn:
    abandon()


def _stop_quietly(signum: int, frame: Any) -> NoReturn:
    if launcher_gone():     # a SIGTERM from elsewhere once the launcher is gone
        abandon()
    # The launcher stops this rank's DataLoader workers too (one process group): their exit is
    # expected now, not an error for torch's SIGCHLD check to raise while we unwind. (A no-op
    # rather than SIG_DFL: Python raises for a pending signal whose handler became SIG_DFL.)
    signal.signal(signal.SIGCHLD, _ignore)
    sys.exit(STOPPED)


def _ignore(signum: int, frame: Any) -> None:
    pass


def _default_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():   # signal.signal's own rule
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def record_user_error(message: str) -> None:
    """Leave the message in the error file the launcher reads (torch's error-file format);
    print it where no launcher asked for one (e.g. a hand-made torchrun)."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not error_file:
        print(f"error: {message}", file=sys.stderr)
        return
    with open(error_file, "w") as f:
        json.dump({"message": message, "timestamp": int(time.time()), "user_error": True}, f)


# ------------------------------------------------------------------------- in the launcher

def launch_workers(module: str, nproc: int) -> None:
    """Start `python -m module` nproc times as one job on this machine (rendezvous on
    127.0.0.1, a port the OS picks) and wait; a failed rank becomes one line here."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun's default for several processes, so they do not oversubscribe the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    quiet_elastic_logs()
    with launch_scratch() as scratch:
        os.environ.update({LAUNCHER_PID: str(os.getpid()), LAUNCH_SCRATCH: str(scratch)})
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=scratch.name,
            rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
            max_restarts=0,                      # a failure is reported, not retried
            logs_specs=DefaultLogsSpecs(log_dir=str(scratch)),
            # Ctrl-C stays a KeyboardInterrupt here (stage_main's one line); the agent then
            # stops the workers with SIGTERM, which they end on quietly
            signals_to_handle="SIGTERM,SIGHUP,SIGQUIT", shutdown_timeout=10)
        try:
            elastic_launch(config, sys.executable)("-m", module)
        except ChildFailedError as err:
            report_failure(err.failures)
        except SignalException as err:
            print(f"stopped by {err.sigval.name}; re-run to resume", file=sys.stderr)
            sys.exit(128 + err.sigval)


@contextmanager
def launch_scratch() -> Iterator[Path]:
    """A fresh folder for the launcher's per-rank files inside the project's ignored cache
    (torch would leave /tmp/torchelastic_* behind), removed afterwards."""
    paths.LAUNCH_SCRATCH.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=paths.LAUNCH_SCRATCH)).resolve()
    try:
        yield scratch
    finally:
        remove_scratch(scratch)


def remove_scratch(scratch: Path) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        os.removedirs(paths.LAUNCH_SCRATCH)     # and .cache, where nothing else is there
    except OSError:
        pass                    # another run's scratch, or the caches, are still there


def quiet_elastic_logs() -> None:
    """The agent's warnings (a worker failed, workers being stopped) repeat what our one line
    says, with tracebacks; keep them off the console."""
    for name in ("torch.distributed.elastic", "torch.distributed.launcher"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def report_failure(failures: dict[int, Any]) -> NoReturn:
    """The first user error any rank recorded, as a UserError (one line, exit code 2); Ctrl-C
    where the ranks ended on it before the launcher's own KeyboardInterrupt was raised (the
    stage's one line, 130); else one line naming the first rank that failed (its own
    traceback, if any, is above)."""
    codes = [f.exitcode for f in failures.values()]
    if INTERRUPTED in codes and all(c in (INTERRUPTED, STOPPED) or c < 0 for c in codes):
        raise KeyboardInterrupt
    # ranks killed by a signal, or that exited on the launcher's SIGTERM (STOPPED), were most
    # likely stopped after the first failure, whose timestamp (whole seconds) they may share
    by_time = sorted(failures.items(),
                     key=lambda item: (item[1].exitcode < 0 or item[1].exitcode == STOPPED,
                                       item[1].timestamp, item[0]))
    for _, failure in by_time:
        if failure.exitcode == USER_ERROR and failure.error_file_data.get("user_error"):
            raise UserError(failure.message)
    rank, failure = by_time[0]
    how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
           else f"exited with code {failure.exitcode}")
    raise SystemExit(f"error: training process rank {rank} {how}")
