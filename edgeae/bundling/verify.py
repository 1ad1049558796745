"""Every export verifies itself: checker, then names, shapes and values against PyTorch, all failures collected."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgeae.bundling.graphs import torch_run
from edgeae.bundling.spec import GraphSpec


@dataclass
class GraphCheck:
    role: str
    failures: list[str] = field(default_factory=list)
    max_abs_error: float = 0.0
    tolerance: float = 0.0
    batches: list[int] = field(default_factory=list)


def check_graph(spec: GraphSpec, path: Path, module: torch.nn.Module, batches: list[np.ndarray],
                scale: float = 1.0, compare_values: bool = True, file_label: str | None = None) -> GraphCheck:
    """Run `path` in onnxruntime on each batch and compare with `module`; never raises, collects failures."""
    label = file_label or spec.file
    result = GraphCheck(spec.role, tolerance=spec.atol * scale, batches=[len(b) for b in batches])
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        result.failures.append(f"{label}: onnx checker: {str(exc).splitlines()[0]}")
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for invalid graphs
        result.failures.append(f"{label}: onnxruntime cannot load it: {str(exc).splitlines()[0]}")
        return result
    ins, outs = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    if ins != [spec.input_name] or outs != [spec.output_name]:
        result.failures.append(f"{label}: names {ins} -> {outs}, expected [{spec.input_name!r}] -> [{spec.output_name!r}]")
        return result
    for x in batches:
        got = sess.run(None, {spec.input_name: x})[0]
        ref = torch_run(module, x)
        if got.shape != ref.shape:
            result.failures.append(f"{label}: batch {len(x)} output shape {got.shape}, PyTorch gives {ref.shape}")
            continue
        err = float(np.max(np.abs(got - ref))) if got.size else 0.0
        result.max_abs_error = max(result.max_abs_error, err)
        if compare_values and not err <= result.tolerance:
            result.failures.append(
                f"{label}: batch {len(x)} max abs error {err:.3g} exceeds tolerance {result.tolerance:.3g}")
    return result


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR in dB for images on the [0, 1] scale."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=tuple(range(1, a.ndim)))
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))
