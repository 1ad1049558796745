"""onnxruntime sessions from a graph plus a device profile and/or a thread count; CPU provider only."""

from __future__ import annotations

import os

import onnxruntime as ort

from edgeae.errors import BundleError, InputError
from edgeae.runtime.devices import DeviceProfile, load_profile

PROVIDERS = ["CPUExecutionProvider"]
SPINNING_KEY = "session.intra_op.allow_spinning"
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_MODES = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}


ProfileLike = DeviceProfile | str | os.PathLike[str]


def session_options(profile: ProfileLike | None = None, threads: int | None = None,
                    enable_profiling: bool = False, profile_prefix: str | None = None,
                    arena: bool = True) -> ort.SessionOptions:
    """SessionOptions for a device profile (or its name / TOML path); an explicit `threads` overrides the
    profile's intra-op threads. With neither, onnxruntime's defaults stand (a thread per core, spinning on).
    `arena=False` turns onnxruntime's CPU memory arena off (lower peak memory, slightly slower repeated runs).
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: onnxruntime's warnings are advice for graph authors
    so.enable_cpu_mem_arena = arena
    if profile is not None:
        s = load_profile(profile).session
        so.intra_op_num_threads = s.intra_op_threads
        so.inter_op_num_threads = s.inter_op_threads
        so.graph_optimization_level = _LEVELS[s.graph_optimization_level]
        so.execution_mode = _MODES[s.execution_mode]
        so.add_session_config_entry(SPINNING_KEY, "1" if s.allow_spinning else "0")
    if threads is not None:
        so.intra_op_num_threads = threads
        if profile is None:
            so.inter_op_num_threads = 1  # inter-op threads only serve the parallel execution mode
    if enable_profiling:
        so.enable_profiling = True
        if profile_prefix:
            so.profile_file_prefix = profile_prefix
    return so


def make_session(model: str | os.PathLike[str] | bytes, profile: ProfileLike | None = None,
                 threads: int | None = None, enable_profiling: bool = False,
                 profile_prefix: str | None = None, arena: bool = True) -> ort.InferenceSession:
    """An InferenceSession on the CPU provider for a graph path (or its bytes) with a device's settings."""
    so = session_options(profile, threads, enable_profiling, profile_prefix, arena)
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, so, providers=PROVIDERS)
    except Exception as exc:  # onnxruntime raises its own pybind classes (Fail, InvalidProtobuf, NoSuchFile, ...)
        what = "graph bytes" if isinstance(model, bytes) else str(model)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BundleError(f"onnxruntime cannot load {what}: {first}") from None


def applied_settings(session: ort.InferenceSession) -> dict[str, object]:
    """What the live session really runs with (read back from onnxruntime, not from the profile)."""
    so = session.get_session_options()
    level = {v: k for k, v in _LEVELS.items()}.get(so.graph_optimization_level, str(so.graph_optimization_level))
    mode = {v: k for k, v in _MODES.items()}.get(so.execution_mode, str(so.execution_mode))
    try:
        spinning = so.get_session_config_entry(SPINNING_KEY)
    except RuntimeError:  # unset: onnxruntime's default, spinning on
        spinning = "1"
    return {"intra_op_threads": so.intra_op_num_threads, "inter_op_threads": so.inter_op_num_threads,
            "graph_optimization_level": level, "execution_mode": mode, "allow_spinning": spinning != "0",
            "memory_arena": bool(so.enable_cpu_mem_arena),
            "providers": session.get_providers()}
