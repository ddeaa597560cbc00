"""What every stage entry point shares: environment, thread count, logging and one-line errors.

Importing this module first sets ``OPENBLAS_NUM_THREADS=1`` (before numpy/scipy load: on 2 cores their
thread pool fights torch's) and the offline switches for MLflow and DVC.

Memory: the evaluators allocate and free activations of tens of MB per step; glibc returns such blocks to the
system at once (they are mmap'ed above its 128 kB threshold), so every step page-faulted fresh memory in again —
more time than its arithmetic (a surface point on 60,000 examples: 0.27 s, 0.17 s without the faults). Importing
this module raises glibc's mmap and trim thresholds (:func:`keep_freed_memory`), so freed blocks are reused;
peak memory is unchanged. Set ``LANDSCAPE_SYSTEM_MALLOC=1`` to keep glibc's defaults.

Determinism: CPU kernels that reduce in parallel (matrix products, sums) split the work by the number of
threads, so the same computation gives different low-order bits with 1 and 2 threads. Every compute stage
therefore calls :func:`configure_torch` with ``train.threads`` before any torch work: the same params give
the same bytes on any machine with the same torch build and CPU instruction set, whatever its core count.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import ctypes
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from landscape.errors import LandscapeError as StageError


def keep_freed_memory() -> bool:
    """glibc's M_MMAP_THRESHOLD to 1 GiB and M_TRIM_THRESHOLD to 16 GiB: large blocks are served from and
    returned to the heap instead of mmap/munmap. Returns whether it took effect (not glibc: nothing to do)."""
    if os.environ.get("LANDSCAPE_SYSTEM_MALLOC") == "1":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 30)) and bool(libc.mallopt(-1, 1 << 34))  # M_MMAP_/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


keep_freed_memory()


def remap_for_one_visible_gpu(name: str, env: dict[str, str] | os._Environ) -> str:
    """``cuda:N`` → ``cuda:0`` inside a Ray task (``LANDSCAPE_ONE_VISIBLE_GPU=1``): Ray gives a task the GPU it
    reserved as the only visible device (``CUDA_VISIBLE_DEVICES`` = that one id), so the index in params.yaml
    names a GPU of some machine, not of the task; the params, and the run key, stay as written."""
    if env.get("LANDSCAPE_ONE_VISIBLE_GPU") == "1" and name.startswith("cuda:") and name != "cuda:0":
        logging.getLogger(__name__).info("train.device = %s: this Ray task sees one GPU (CUDA_VISIBLE_DEVICES=%s), "
                                         "as cuda:0", name, env.get("CUDA_VISIBLE_DEVICES", "?"))
        return "cuda:0"
    return name


def resolve_device(name: str) -> Any:
    """``train.device`` as a ``torch.device``: auto = cuda when available, else cpu. A CUDA device that this
    machine does not have stops the stage with one line, before any work."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(remap_for_one_visible_gpu(name, os.environ))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StageError(f"train.device = {name}: this machine has no CUDA device (torch {torch.__version__}); "
                             "allowed here: cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StageError(f"train.device = {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"allowed: cuda:0 … cuda:{torch.cuda.device_count() - 1}, cpu or auto")
        # determinism where torch has deterministic kernels (CUDA results are still not promised bit for bit)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return device


def configure_torch(threads: int, device: str = "cpu") -> dict[str, Any]:
    """Fix torch's intra-op threads to ``threads`` (and inter-op to 1) and resolve ``train.device``; return
    what is now in effect (``threads``, ``device``, ``torch``)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or parallel work already ran) in this process: leave it
        pass
    if torch.get_num_threads() != threads:
        raise StageError(f"train.threads = {threads}: torch runs with {torch.get_num_threads()} threads instead")
    return {"threads": torch.get_num_threads(), "device": str(resolve_device(device)), "torch": torch.__version__}


TIMINGS_DIR = Path("reports/timings")


def run_stage(name: str, main: Callable[[], None], timing: bool = True) -> None:
    """Run ``main`` with logging; turn known failures into one line on stderr and a non-zero exit.

    On success, ``reports/timings/<name>.json`` records when the stage ran (``started_at``, ``finished_at``:
    seconds since the epoch; ``wall_s``): the track stage gives the MLflow run the pipeline's real span and
    logs each stage's wall time. Timings never enter the result files, which stay byte-identical run to run.
    """
    from landscape.config import ConfigError

    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(levelname)s %(name)s: %(message)s")
    started, t0 = time.time(), time.perf_counter()
    try:
        main()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except StageError as exc:
        from landscape.errors import InputError

        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, InputError) else 1)
    if timing:
        from landscape.io import write_json

        write_json(TIMINGS_DIR / f"{name}.json", {"stage": name, "started_at": started, "finished_at": time.time(),
                                                  "wall_s": time.perf_counter() - t0})
