"""ONNX Runtime sessions with options chosen on purpose for small CPUs.

- One intra-op thread by default: an edge box runs other work, and graphs this small gain
  little from more (``threads`` raises it).
- Full graph optimization, once: the optimized graph is saved in a cache keyed by the graph's
  sha256, the ORT version and the CPU architecture, and later loads read it back with
  optimization off, which cuts cold start (ORT's "offline" mode). The saved graph may hold
  CPU-specific fused kernels, which is why the cache lives on the device, never in the package.
- The CPU provider only, so behaviour does not change with whatever else is installed.
- A package's segment sessions can draw from one CPU arena registered with ORT's environment
  (``shared_arena=True``), as the nodes of one graph do: each session's own arena leaves the
  activations of consecutive segments in different memory. Measured on all-MiniLM-L6-v2's six
  segments, the engine went from 1.07x to 1.04x its monolithic graph (tools/bench_text_layout.py).
"""

from __future__ import annotations

import os
import platform
import threading
from pathlib import Path

import onnxruntime as ort

from edgeexit.errors import PackageError


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeexit" / "ort"


_ARENA_LOCK = threading.Lock()
_arena_registered = False


def register_shared_arena() -> None:
    """One CPU arena in ORT's environment for the sessions that opt in; once per process (ORT
    refuses a second allocator with the same memory info, e.g. one another library registered,
    which the opting-in sessions then share instead)."""
    global _arena_registered
    with _ARENA_LOCK:
        if _arena_registered:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
        except Exception as err:  # onnxruntime raises its own untyped errors
            if "already" not in str(err).lower():
                raise
        _arena_registered = True


def session_options(threads: int = 1, *, optimize: bool = True, shared_arena: bool = False,
                    spin: bool = True) -> ort.SessionOptions:  # fmt: skip
    """``spin=False``: a thread pool's idle threads sleep instead of spinning between runs (with
    two threads on a 2-core box a decoder spent its time in the spin: 3.5x slower per token)."""
    options = ort.SessionOptions()
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if shared_arena:
        register_shared_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    return options


def load_session(
    path: Path,
    threads: int = 1,
    *,
    cache_dir: Path | None = None,
    sha256: str | None = None,
    shared_arena: bool = False,
    optimize: bool = True,
    spin: bool = True,
) -> ort.InferenceSession:
    """Load a graph; with ``cache_dir`` and ``sha256``, reuse (or write) its optimized form.

    ``optimize=False`` runs the graph exactly as written (no fusion, no cache): an int8 graph's
    QDQ pairs then stay Dequantize -> float op -> Quantize, the arithmetic its kernels must match."""
    if not optimize:
        return _create(path, session_options(threads, optimize=False, shared_arena=shared_arena, spin=spin))
    cached = _cache_path(cache_dir, sha256, threads) if cache_dir is not None and sha256 else None
    if cached is not None and cached.is_file():
        try:
            return _create(cached, session_options(threads, optimize=False, shared_arena=shared_arena, spin=spin))
        except PackageError:
            cached.unlink(missing_ok=True)  # stale or truncated: rebuild it below
    options = session_options(threads, shared_arena=shared_arena, spin=spin)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            options.optimized_model_filepath = str(partial)
            session = _create(path, options)
            if partial.is_file():
                os.replace(partial, cached)
            return session
        except OSError:  # an unwritable cache only costs cold-start time
            options = session_options(threads, shared_arena=shared_arena, spin=spin)
    return _create(path, options)


def _cache_path(cache_dir: Path, sha256: str, threads: int) -> Path:
    key = f"{sha256[:32]}-ort{ort.__version__}-{platform.machine()}-t{threads}.onnx"
    return cache_dir / key


def _create(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise PackageError(f"ONNX Runtime cannot load {path}: {str(err)[:300]}") from None
