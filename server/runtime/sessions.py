"""ONNX Runtime sessions: execution-provider choice and session options, decided in one place.

Providers: CUDA first, CPU as the fallback. `onnxruntime-gpu` lists the CUDA provider even on
machines without CUDA; its library then fails to load and ONNX Runtime prints a long raw error
before quietly running on the CPU. So the CUDA provider library is probed first: where it
cannot load, one clear log line says why and the CPU is used (device "auto"), or loading
fails with that reason (device "cuda").
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger("rosetta.sessions")

DEVICES = ("auto", "cuda", "cpu")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Rows in flight by default (SessionConfig.max_rows), by the provider that runs the graphs.
DEFAULT_ROWS = {CPU: 128, CUDA: 4096}


class DeviceUnavailableError(RuntimeError):
    """The requested device cannot be used on this machine."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class SessionConfig:
    """How graphs are run.

    device: "auto" (CUDA when usable, else CPU), "cuda" (an error without a usable GPU) or "cpu".
    streams: engines decoding at the same time on the same sessions, one thread each, each with
        its own rows in flight (server/runtime/engine.py); 0 = one per core on the CPU, 1 on
        CUDA. On CPUs several single-threaded streams beat one multi-threaded one: a decoder
        step's matrices are small, and intra-op threads spend much of each step waiting for
        each other (docs/benchmarks.md: 1.05x to 1.3x at batch 32 on 2 cores; for one fp32
        row, where there is nothing to split, two threads on the one stream are faster).
    intra_op_threads: threads inside one operator; 0 = the cores divided among the streams.
    max_rows: rows (sentences x beams) in flight at most in a version's long-lived scheduler
        (the server's), shared among the streams; 0 = the device's default (`DEFAULT_ROWS`):
        tens on a few CPU cores, where a step's time grows with its rows and a short request
        should not wait behind long steps; thousands on a GPU, where a step costs about the
        same for 1 row or 1,000.
    inter_op_threads: operators run in parallel; decoder graphs are a chain, so 1.
    spinning: let the decoder step's idle intra-op threads spin between its parallel sections
        (with more than one thread). A step's sections are microseconds apart, and waking a
        sleeping thread for each costs more than it saves: small fp32 at batch 1 on 2 threads,
        1,179 -> 1,562 tokens/s (bench/session_options.py). Only the step spins: the encoder's
        and the cache operations' threads would spin against it (docs/benchmarks.md).
    optimization: ONNX Runtime graph optimization level: "disable", "basic", "extended" or "all".
    device_cache: keep the key/value cache in ONNX Runtime values on the execution device
        between decoder steps (I/O binding), reordering its rows there too; None = on CUDA only.
        On CUDA this saves copying the whole cache to the host and back at every step; on the
        CPU the cache is already where the graphs read it, and plain arrays cost no more.
    static_cache: decode on caches allocated once at their limits, each step on a bucket's fixed
        shapes with its inputs and outputs bound once, and on CUDA each bucket's step and append
        captured as CUDA graphs (server/runtime/engine.py, StaticEngine). Off by default: not yet
        measured on a GPU, and on CPUs slower, as every step reads max_positions columns a row.
    shortlist: decode over the version's vocabulary shortlist where it has one (its probes were
        recorded so); False: over the whole vocabulary (the parity gate checks both ways).
    """

    device: str = "auto"
    streams: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    spinning: bool = True
    optimization: str = "all"
    device_cache: bool | None = None
    max_rows: int = 0
    static_cache: bool = False
    shortlist: bool = True

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.optimization not in _LEVELS:
            raise ValueError(f"optimization must be one of {sorted(_LEVELS)}, got {self.optimization!r}")
        if min(self.streams, self.intra_op_threads, self.max_rows) < 0 or self.inter_op_threads < 1:
            raise ValueError("streams, intra_op_threads and max_rows must be >= 0, inter_op_threads >= 1")

    def cpu_streams(self) -> int:
        return self.streams or available_cores()

    def cpu_threads(self) -> int:
        return self.intra_op_threads or max(1, available_cores() // self.cpu_streams())

    def rows_limit(self, provider: str) -> int:
        return self.max_rows or DEFAULT_ROWS[provider]


_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@cache
def cuda_unavailable_reason() -> str | None:
    """None where the CUDA provider can load; otherwise why not, in one line."""
    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}) has no CUDA provider; install onnxruntime-gpu"
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(library))
    except OSError as e:
        return f"its library cannot load ({e}); it needs CUDA 13 and cuDNN 9 (see README, GPU notes)"
    return None


def providers_for(device: str) -> list[str]:
    """Execution providers to ask for, best first, for a device setting."""
    if device == "cpu":
        return [CPU]
    reason = cuda_unavailable_reason()
    if reason is None:
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceUnavailableError(f"device 'cuda' was asked for, but the CUDA execution provider is unusable: {reason}")
    _log_fallback_once(reason)
    return [CPU]


@cache
def _log_fallback_once(reason: str) -> None:
    log.warning("CUDA execution provider unavailable, running on CPU: %s", reason)


# TF32 matrix products would round fp32 inputs to 10-bit mantissas: fast, but no longer the
# computation that the PyTorch reference and the export's parity gate check, token for token.
_CUDA_OPTIONS = {"use_tf32": "0"}


def session_options(config: SessionConfig, *, step: bool = False) -> ort.SessionOptions:
    """Options for a session of `config`; `step`: the decoder step's, which may spin."""
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[config.optimization]
    options.intra_op_num_threads = config.cpu_threads()
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if step and config.spinning else "0")
    options.log_severity_level = 3  # errors only: ONNX Runtime's warnings are noise to operators
    return options


def create_session(graph: str | Path | bytes, config: SessionConfig, *, step: bool = False,
                   arena: bool = True, dimensions: Mapping[str, int] | None = None,
                   cuda_graph: bool = False) -> ort.InferenceSession:
    """A session for one graph (a file, or a serialized model) on the configured device; `step`:
    the decoder step's (SessionConfig.spinning); `arena`: ONNX Runtime's CPU memory arena, which
    keeps the largest call's intermediates for the session's life.

    dimensions: the symbolic dimensions of the graph's inputs fixed to sizes (ONNX Runtime's
    free-dimension overrides; every one of them, or ValueError), so that its shape computations
    fold to constants: a CUDA graph needs every node on the GPU. cuda_graph: the CUDA provider
    captures a run as a CUDA graph and replays it (its inputs and outputs bound once through
    I/O binding, their shapes fixed); only on CUDA.

    With device "cuda", a GPU that the provider library found but could not use is an error
    too: the session would otherwise run on the CPU without saying so.
    """
    providers = providers_for(config.device)
    if cuda_graph and providers[0] != CUDA:
        raise ValueError(f"a CUDA graph needs the CUDA provider; device {config.device!r} runs on {providers[0]}")
    cuda_options = {**_CUDA_OPTIONS, "enable_cuda_graph": "1"} if cuda_graph else _CUDA_OPTIONS
    provider_options = [cuda_options if p == CUDA else {} for p in providers]
    options = session_options(config, step=step)
    options.enable_cpu_mem_arena = arena
    for name, size in (dimensions or {}).items():
        options.add_free_dimension_override_by_name(name, size)
    session = ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                   providers=providers, provider_options=provider_options)
    # ONNX Runtime ignores a name the graph does not have: a dimension left free is a misnamed one.
    free = {d for i in session.get_inputs() for d in (i.shape or []) if isinstance(d, str)}
    if dimensions and free:
        raise ValueError(f"dimensions {', '.join(sorted(free))} of the graph's inputs are left free; fixed were "
                         f"{', '.join(sorted(dimensions))}")
    if providers[0] == CUDA and session.get_providers()[0] != CUDA:
        reason = "the CUDA provider loaded but found no usable GPU"
        if config.device == "cuda":
            raise DeviceUnavailableError(f"device 'cuda' was asked for, but {reason}")
        _log_fallback_once(reason)
    return session
