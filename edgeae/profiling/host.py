"""The machine a profile was measured on: CPU model and features, cores, library versions; peak RSS."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

# Features that decide whether int8 can pay off (onnxruntime quantization docs: VNNI on x86, dot-product on ARM).
INT8_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")


def _cpuinfo() -> dict[str, str]:
    """The first value of each /proc/cpuinfo key (Linux); empty elsewhere."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip(), value.strip())
    return info


def cpu_model(info: dict[str, str] | None = None) -> str:
    info = _cpuinfo() if info is None else info
    # x86: "model name"; Raspberry Pi kernels: "Model"; other ARM boards: only "CPU part" (e.g. 0xd08 = A72).
    for key in ("model name", "Model", "Hardware"):
        if info.get(key):
            return info[key]
    if info.get("CPU part"):
        return f"ARM CPU part {info['CPU part']}"
    return platform.processor() or "unknown CPU"


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def describe_host() -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    from edgeae import __version__

    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "cpu_model": cpu_model(info),
        "architecture": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(usable_cpus()),
        "int8_features": [f for f in INT8_FEATURES if f in flags],
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "edgeae": __version__,
    }


def peak_rss_mb() -> float | None:
    """This process's peak resident set size so far, in MiB; None where the OS cannot say.

    Linux: VmHWM from /proc/self/status. getrusage's ru_maxrss is not used there because it survives
    execve: a worker started by a parent that holds 240 MB (say, with torch imported) would report 240 MB
    before doing anything. Elsewhere getrusage is all there is.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere
