"""Salient-object detection with rembg: one alpha mask per image, always with an explicit
session. Worker processes read, decode and resize the photos ahead of inference and turn its
predictions into written masks behind it (fashionbg/background/workers.py), so the device is
fed; masks already computed for the same image and settings are taken from a cache, so an
interrupted run resumes."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from fashionbg.background import workers
from fashionbg.background.params import SOD_MODELS
from fashionbg.background.weights import MODELS, verified_model
from fashionbg.background.workers import Job, MaskCache, SodOptions, Todo, Written
from fashionbg.contracts.raw import IndexRow
from fashionbg.core.errors import UserError
from fashionbg.core.nvidia import nvidia_devices

AUTO_BATCH = {"cpu": 1, "cuda": 8}
# Worker processes around the inference; each keeps about two photos in flight.
MAX_WORKERS = 8
log = logging.getLogger(__name__)


def make_session(model: str, home: Path, device: str = "cpu") -> Any:
    """A rembg session for `model` on `device` (auto, cpu, cuda), loaded from `home` (the
    weights must already be there). Where CUDA was asked for and did not load, `cuda` stops
    and `auto` says why in a WARNING line."""
    if model not in SOD_MODELS:
        raise ValueError(f"unknown salient-object model {model!r}")
    verified_model(model, home)
    # rembg reads its model directory from the environment, not from an argument.
    os.environ["U2NET_HOME"] = str(Path(home).resolve())
    from rembg import new_session  # imported late: rembg reads U2NET_HOME at import in places

    wanted = providers(device)
    missing = preload_cuda_libraries() if "CUDAExecutionProvider" in wanted else ""
    session = new_session(model, providers=wanted)
    if session_device(session) != "cuda" and "CUDAExecutionProvider" in wanted:
        missing = missing or "CUDA or cuDNN libraries of another version; its log says which"
        why = f"onnxruntime could not load its CUDA provider ({missing})"
        if device == "cuda":
            raise UserError(f"background.device = cuda, but {why}; install onnxruntime-gpu "
                            "with its extras (make setup-gpu) or set background.device: cpu")
        log.warning("background.device = auto: %s; removing backgrounds on the CPU", why)
    return session


def preload_cuda_libraries() -> str:
    """Load the CUDA, cuBLAS and cuDNN libraries of the nvidia-* wheels before a CUDA session
    is made: onnxruntime-gpu finds them itself only where torch was imported first, and this
    stage never imports torch. What onnxruntime printed about those it could not load."""
    import onnxruntime as ort

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):   # it reports failures with print()
        ort.preload_dlls()
    return "; ".join(x.strip() for x in printed.getvalue().splitlines()
                     if x.startswith("Failed to load"))


GPU_RUNTIME, CPU_RUNTIME = "onnxruntime-gpu", "onnxruntime"
SHADOWED = (f"both {CPU_RUNTIME} and {GPU_RUNTIME} are installed and share one module, so the "
            f"CPU package hides the CUDA provider; fix: pip uninstall -y {CPU_RUNTIME} "
            f"{GPU_RUNTIME} && pip install -r requirements-gpu.txt (or make setup-gpu)")


def installed_runtimes() -> set[str]:
    """Which ONNX Runtime distributions pip installed (both install the module onnxruntime)."""
    found = set()
    for name in (CPU_RUNTIME, GPU_RUNTIME):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.add(name)
    return found


def providers(device: str) -> list[str]:
    """ONNX Runtime providers for background.device; `auto` takes CUDA where it is installed,
    and says so in the log when it falls back to the CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        if device in ("auto", "cuda"):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    shadowed = installed_runtimes() == {CPU_RUNTIME, GPU_RUNTIME}
    if device == "cuda":
        raise UserError("background.device = cuda, but this onnxruntime has no CUDA provider: "
                        + (SHADOWED if shadowed else
                           f"install {GPU_RUNTIME} in place of {CPU_RUNTIME} with make "
                           "setup-gpu (docs/gpus-and-clusters.md: Real data on a GPU machine)")
                        + "; or set background.device: cpu")
    if device == "auto":
        gpus = nvidia_devices()
        # a GPU it cannot use is worth a warning; a machine without one is the usual case
        log.log(logging.WARNING if gpus else logging.INFO,
                "background.device = auto: onnxruntime has no CUDA provider%s, so backgrounds "
                "are removed on the CPU%s",
                f" though the driver lists {len(gpus)} NVIDIA GPU(s)" if gpus else "",
                f" ({SHADOWED})" if shadowed else
                f" (install {GPU_RUNTIME}: make setup-gpu)" if gpus else "")
    return ["CPUExecutionProvider"]


def session_device(session: Any) -> str:
    """Where a rembg session really runs: cuda or cpu."""
    return "cuda" if "CUDAExecutionProvider" in session.inner_session.get_providers() else "cpu"


def predict_alpha(image: Image.Image, session: Any, options: SodOptions) -> np.ndarray:
    """The foreground alpha (uint8, H×W, 255 = object) rembg predicts for an RGB image."""
    from rembg import remove

    if options.alpha_matting:
        # rembg applies matting only when it cuts out, so take the alpha of the cutout.
        cutout = remove(image, session=session, alpha_matting=True,
                        post_process_mask=options.post_process_mask)
        alpha = cutout.getchannel("A")
    else:
        alpha = remove(image, session=session, only_mask=True,
                       post_process_mask=options.post_process_mask)
    return np.asarray(alpha.convert("L"), dtype=np.uint8)


@dataclass(frozen=True)
class Batched:
    inner: Any      # onnxruntime session of the model, with a symbolic batch dimension if size > 1
    size: int       # photos per call

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """U²-Net's saliency (n×320×320) for n inputs: its first output only (the other six
        are side outputs, copied to the host for nothing)."""
        model = self.inner
        first = model.get_outputs()[0].name
        return model.run([first], {model.get_inputs()[0].name: inputs})[0][:, 0]


def resolve_batch(batch_size: int | None, device: str) -> int:
    """`background.batch_size: auto`: 8 on CUDA; 1 on the CPU, where batches measured no
    faster (benchmarks/bench_rembg.py)."""
    return batch_size if batch_size is not None else AUTO_BATCH[device]


def batched_model(session: Any, model: str, home: Path, size: int) -> Batched:
    """The session's U²-Net taking `size` photos per call. The exported graph declares a batch
    of 1, but no operation depends on it (convolutions, pooling, and resizes to shapes read
    from the tensors), so above 1 the batch dimension is made symbolic; in memory only, the
    file on disk keeps its md5."""
    inner = session.inner_session
    if size == 1:
        return Batched(inner, 1)
    import onnx
    import onnxruntime as ort

    graph = onnx.load(verified_model(model, home))
    for value in (*graph.graph.input, *graph.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return Batched(ort.InferenceSession(graph.SerializeToString(),
                                        sess_options=inner.get_session_options(),
                                        providers=inner.get_providers()), size)


@dataclass
class SodReport:
    images: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0          # inference time of the masks computed in this run
    computed: int = 0             # the others came from the mask cache
    ious: list[float] = field(default_factory=list)

    def metrics(self, model: str) -> dict[str, Any]:
        """What the masks are, the same on every run (no timing: it lives in the cached masks'
        folder, whose hash must not change when the same masks are computed again)."""
        return {
            "model": model,
            "images": self.images,
            "failures": len(self.failures),
            "images_with_ground_truth": len(self.ious),
            "mean_iou": round(float(np.mean(self.ious)), 4) if self.ious else None,
        }


def cache_key(model: str, options: SodOptions, device: str, batch: int = 1) -> str:
    """Everything a mask depends on besides the image itself (the weights are md5-checked
    against MODELS before a session exists). A batch size above 1 is part of the key, since
    kernels may sum in another order; one photo a call keeps the key it always had."""
    import onnxruntime
    import rembg

    # Versions from the modules: onnxruntime-gpu installs the same module under another name.
    parts = [model, MODELS[model].md5, options.alpha_matting, options.post_process_mask,
             device, rembg.__version__, onnxruntime.__version__]
    parts += [batch] if batch > 1 else []
    return f"{model}-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def worker_count() -> int:
    """Worker processes for the per-photo work: one per core, at most MAX_WORKERS."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


def remove_backgrounds(rows: Iterable[IndexRow], raw_dir: Path, out_dir: Path, session: Any,
                       options: SodOptions, cache: MaskCache | None = None,
                       batched: Batched | None = None, processes: int | None = None
                       ) -> SodReport:
    """Predict (or take from the cache) and save the alpha of every indexed image, through
    `batched` when given (else one photo a call); a failing image (or batch) is recorded, not
    fatal. `processes` workers (default: one per core) prepare and finish the photos while
    this process runs the model, with a bounded number of photos in flight."""
    model = batched or Batched(session.inner_session, 1)
    jobs = [Job(i, row.path, row.mask or None, Path(raw_dir), Path(out_dir))
            for i, row in enumerate(rows)]
    processes = processes or worker_count()
    run = Run(model, options, cache, depth=2 * processes + model.size)
    # forkserver: workers start from a fresh process, not a fork of this one and its
    # onnxruntime threads
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([workers.__name__])
    with ProcessPoolExecutor(processes, mp_context=context,
                             initializer=workers.ignore_ctrl_c) as pool:
        run.pool = pool
        try:
            for job, future in tqdm(ahead(pool, jobs, cache, run.depth), total=len(jobs),
                                    desc="rembg", unit="img", disable=None):
                run.take(job, future)
            run.flush()
            run.drain(0)
        except BaseException:       # Ctrl-C or a bug: the photos queued are dropped, not done
            pool.shutdown(cancel_futures=True)
            raise
    return run.report(jobs)


def ahead(pool: ProcessPoolExecutor, jobs: list[Job], cache: MaskCache | None, depth: int
          ) -> Iterator[tuple[Job, Future]]:
    """(job, future of workers.prepare) in order, at most `depth` being prepared ahead."""
    window: deque[tuple[Job, Future]] = deque()
    for job in jobs:
        window.append((job, pool.submit(workers.prepare, job, cache)))
        if len(window) > depth:
            yield window.popleft()
    yield from window


@dataclass
class Run:
    """One remove_backgrounds call: photos waiting for a full batch, masks being finished, and
    what became of every photo."""
    model: Batched
    options: SodOptions
    cache: MaskCache | None
    depth: int
    pool: ProcessPoolExecutor | None = None
    pending: list[Todo] = field(default_factory=list)
    finishing: deque[tuple[Job, Future]] = field(default_factory=deque)
    written: dict[int, Written] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    computed: int = 0

    def take(self, job: Job, future: Future) -> None:
        """A prepared photo: written from the cache, or waiting for inference."""
        outcome = self.outcome(job, future)
        if isinstance(outcome, Todo):
            self.pending.append(outcome)
            if len(self.pending) == self.model.size:
                self.flush()

    def outcome(self, job: Job, future: Future) -> Any:
        try:
            outcome = future.result()
        except Exception as err:  # one bad image must not stop the run; it is recorded
            self.failed[job.index] = f"{type(err).__name__}: {err}"
            return None
        if isinstance(outcome, Written):
            self.written[job.index] = outcome
        return outcome

    def flush(self) -> None:
        """Infer the waiting photos in one call and hand the predictions to the workers."""
        todo, self.pending = self.pending, []
        if not todo:
            return
        start = time.perf_counter()
        try:
            preds = self.model.predict(np.concatenate([t.tensor for t in todo]))
        except Exception as err:  # recorded for every photo of the batch, as for one photo
            self.failed.update((t.job.index, f"{type(err).__name__}: {err}") for t in todo)
            return
        self.seconds += time.perf_counter() - start
        self.computed += len(todo)
        assert self.pool is not None
        for t, pred in zip(todo, preds):
            self.finishing.append((t.job, self.pool.submit(workers.finish, t, pred,
                                                           self.options, self.cache)))
        self.drain(self.depth)

    def drain(self, keep: int) -> None:
        """Wait for the oldest masks being finished until at most `keep` are left."""
        while len(self.finishing) > keep:
            self.outcome(*self.finishing.popleft())

    def report(self, jobs: list[Job]) -> SodReport:
        """Failures and IoUs in index order, whatever order the workers finished in."""
        return SodReport(
            images=len(self.written),
            failures=[(j.path, self.failed[j.index]) for j in jobs if j.index in self.failed],
            seconds=self.seconds, computed=self.computed,
            ious=[w.iou for _, w in sorted(self.written.items()) if w.iou is not None])
