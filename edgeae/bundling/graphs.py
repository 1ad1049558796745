"""PyTorch module -> ONNX file per GraphSpec, plus the fingerprint and metadata that tie graphs to a bundle."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch

from edgeae.bundling.spec import SUPPORTED_OPSETS, GraphSpec
from edgeae.errors import TraceError, UnsupportedOperatorError
from edgeae.runtime.fingerprint import fingerprint, tables_digest  # noqa: F401 (one definition, shared with the runtime)
from edgeae.runtime.fingerprint import graph_digest as runtime_graph_digest


def export_graph(module: torch.nn.Module, spec: GraphSpec, example: torch.Tensor) -> onnx.ModelProto:
    """Trace `module` on `example` and return the ONNX model (not yet written).

    TraceError: the forward fails, or branches on tensor values (a trace would keep one branch only);
    UnsupportedOperatorError: an operator the opset cannot express."""
    buf = io.BytesIO()
    module.eval()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), _quiet():
        # The TorchScript exporter is deprecated in favour of dynamo, but it is 400x faster here and
        # exports these plain Conv/Linear/Resize graphs at any opset from 13 up.
        warnings.simplefilter("always")
        try:
            # The TorchScript exporter (dynamo=False) writes to file-like objects; torch's stub lists paths only.
            torch.onnx.export(
                module, (example,), buf, input_names=[spec.input_name], output_names=[spec.output_name],  # type: ignore[arg-type]
                dynamic_axes=spec.dynamic_axes, opset_version=spec.opset, dynamo=False,
            )
        except torch.onnx.errors.UnsupportedOperatorError as exc:
            raise UnsupportedOperatorError(
                f"the {spec.role} uses an operator ONNX opset {spec.opset} cannot express: {_first(exc)}; export "
                f"with another opset (--opset, {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}) or replace "
                "the operator") from None
        except Exception as exc:  # tracing runs the user's forward: anything can come out of it
            raise TraceError(f"tracing the {spec.role} on a {tuple(example.shape)} input failed: "
                             f"{type(exc).__name__}: {_first(exc)}; make its forward run on that input") from None
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning) and "Python boolean" in str(w.message):
            raise TraceError(f"the {spec.role} branches on tensor values ({Path(w.filename).name}:{w.lineno}), "
                             "so a traced graph would keep one branch for every input; write the branch with "
                             "tensor ops (torch.where, masks) or decide it outside forward")
    return onnx.load_model_from_string(buf.getvalue())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence stdout/stderr at the file-descriptor level: on failure the exporter's C++ side prints the whole
    TorchScript graph, which must not reach a CLI user (the typed error says what matters)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def graph_digest(model: onnx.ModelProto) -> str:
    """sha256 of the model as exported, without edgeae's metadata (so the fingerprint can go in): the runtime's
    own digest (edgeae.runtime.fingerprint) of the bytes as `save` writes them."""
    return runtime_graph_digest(model.SerializeToString(deterministic=True))


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, value


def save(model: onnx.ModelProto, path: Path) -> None:
    # Everything in one file: a bundle never references external data.
    onnx.save_model(model, str(path), save_as_external_data=False)


def torch_run(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
