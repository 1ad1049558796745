"""Every export verifies itself: checker, then names, shapes and values against a reference, all failures kept.

Values are compared element-wise, numpy.allclose-style: |graph - reference| <= atol * scale + rtol * |reference|.
Each output is reported per batch (batch 1 and a larger one, and a second size for any-size graphs) with its
max absolute error, its max relative error (max abs error / max |reference|) and the worst item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeae.errors import BundleError, ExportError, NonFiniteError, ParityError, ShapeMismatchError
from edgeae.runtime.session import make_session

Reference = Callable[[np.ndarray], np.ndarray]


@dataclass
class OutputCheck:
    output: str
    batch: int
    size: tuple[int, ...]  # the input's shape without the batch axis
    max_abs_error: float
    max_rel_error: float
    worst_item: int

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "batch": self.batch, "size": list(self.size),
                "max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "worst_item": self.worst_item}


@dataclass
class GraphCheck:
    role: str
    failures: list[str] = field(default_factory=list)
    max_abs_error: float = 0.0
    tolerance: float = 0.0  # atol * scale
    batches: list[int] = field(default_factory=list)
    file: str = ""
    precision: str = "fp32"
    rtol: float = 0.0
    max_rel_error: float = 0.0
    results: list[OutputCheck] = field(default_factory=list)
    kinds: list[type[ExportError]] = field(default_factory=list)  # the error type of each failure

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, message: str, kind: type[ExportError] = ParityError) -> None:
        self.failures.append(message)
        self.kinds.append(kind)

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "tolerance": self.tolerance, "rtol": self.rtol, "batches": self.batches,
                "checks": [r.to_dict() for r in self.results]}

    def __str__(self) -> str:
        parts = [f"batch {r.batch}" + (f" at {'x'.join(map(str, r.size[1:]))}" if len(r.size) == 3 else "")
                 + f": abs {r.max_abs_error:.2g} rel {r.max_rel_error:.2g}" for r in self.results]
        verdict = "OK" if self.ok else "FAILED"
        return f"{self.file:22s} {verdict:6s} " + " | ".join(parts) if parts else f"{self.file:22s} {verdict}"


def raise_failures(checks: list[GraphCheck], message: str = "export verification failed") -> None:
    """One typed ExportError for every failure: the failures' own type when they share one."""
    failures = [f for c in checks for f in c.failures]
    if not failures:
        return
    kinds = {k for c in checks for k in c.kinds}
    cls = kinds.pop() if len(kinds) == 1 else ExportError
    raise cls(message, failures)


def check_graph(spec: Any, path: Path, reference: Reference, batches: list[np.ndarray], scale: float = 1.0,
                compare_values: bool = True, file_label: str | None = None, precision: str = "fp32",
                extra_outputs: tuple[str, ...] = ()) -> GraphCheck:
    """Run `path` in onnxruntime on each batch and compare with `reference` (PyTorch, or a numpy reference);
    never raises, collects failures. `spec`: a GraphSpec (role, names, atol, rtol). The graph's outputs must
    be exactly the spec's output then `extra_outputs`; the values checked are the first output's."""
    label = file_label or spec.file
    rtol = float(getattr(spec, "rtol", 0.0))
    result = GraphCheck(spec.role, tolerance=spec.atol * scale, batches=[len(b) for b in batches], file=label,
                        precision=precision, rtol=rtol)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        result.fail(f"{label}: onnx checker: {str(exc).splitlines()[0]}", ExportError)
    try:
        sess = make_session(path)
    except BundleError as exc:
        result.fail(f"{label}: {exc}", ExportError)
        return result
    ins, outs = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    want = [spec.output_name, *extra_outputs]
    if ins != [spec.input_name] or outs != want:
        result.fail(f"{label}: names {ins} -> {outs}, expected [{spec.input_name!r}] -> {want}", ExportError)
        return result
    for x in batches:
        at = f"batch {len(x)}" + (f" at {x.shape[2]}x{x.shape[3]}" if x.ndim == 4 else "")
        try:
            got = sess.run(None, {spec.input_name: x})[0]
        except Exception as exc:  # onnxruntime's own error classes
            result.fail(f"{label}: onnxruntime fails at {at}: {(str(exc).splitlines() or ['?'])[0][:300]}",
                        ExportError)
            continue
        ref = reference(x)
        if got.shape != ref.shape:
            result.fail(f"{label}: {at} output {spec.output_name!r} has shape {got.shape}, the reference "
                        f"gives {ref.shape}", ShapeMismatchError)
            continue
        if not np.isfinite(got).all():
            item = int(np.nonzero(~np.isfinite(got.reshape(len(got), -1)).all(axis=1))[0][0])
            result.fail(f"{label}: {at} output {spec.output_name!r} holds NaN or infinity (item {item}); "
                        "check the model for divisions by zero, log/sqrt of negatives or overflow", NonFiniteError)
            continue
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64)).reshape(len(x), -1)
        if not diff.size:
            continue
        err = float(diff.max())
        peak = float(np.abs(ref).max())
        rel = err / peak if peak > 0 else (0.0 if err == 0 else float("inf"))
        bound = result.tolerance + rtol * np.abs(ref.astype(np.float64)).reshape(len(x), -1)
        excess = (diff - bound).max(axis=1)
        worst = int(np.argmax(excess)) if compare_values else int(np.argmax(diff.max(axis=1)))
        result.results.append(OutputCheck(spec.output_name, len(x), tuple(x.shape[1:]), err, rel, worst))
        result.max_abs_error = max(result.max_abs_error, err)
        result.max_rel_error = max(result.max_rel_error, rel)
        if compare_values and not excess.max() <= 0:
            tol = f"{result.tolerance:.3g}" + (f" + {rtol:g} x |reference|" if rtol else "")
            result.fail(f"{label}: {at} output {spec.output_name!r} max abs error {err:.3g} (item {worst}, "
                        f"relative {rel:.3g}) exceeds tolerance {tol}; the graph computes something else than "
                        "PyTorch (check in-place or custom ops), or raise atol/rtol if that error is acceptable")
    return result
