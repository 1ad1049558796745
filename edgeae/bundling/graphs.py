"""PyTorch module -> ONNX file per GraphSpec, plus the fingerprint and metadata that tie graphs to a bundle."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from edgeae.bundling.spec import GraphSpec
from edgeae.runtime.fingerprint import fingerprint, tables_digest  # noqa: F401 (one definition, shared with the runtime)


def export_graph(module: torch.nn.Module, spec: GraphSpec, example: torch.Tensor) -> onnx.ModelProto:
    """Trace `module` on `example` and return the ONNX model (not yet written)."""
    buf = io.BytesIO()
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of dynamo, but it is 400x faster here and
        # exports these plain Conv/Linear/Resize graphs at any opset from 13 up.
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False) writes to file-like objects; torch's stub lists paths only.
        torch.onnx.export(
            module, (example,), buf, input_names=[spec.input_name], output_names=[spec.output_name],  # type: ignore[arg-type]
            dynamic_axes=spec.dynamic_axes, opset_version=spec.opset, dynamo=False,
        )
    return onnx.load_model_from_string(buf.getvalue())


def graph_digest(model: onnx.ModelProto) -> str:
    """sha256 of the model as exported, before edgeae's metadata is added (so the fingerprint can go in)."""
    clean = onnx.ModelProto()
    clean.CopyFrom(model)
    del clean.metadata_props[:]
    return hashlib.sha256(clean.SerializeToString(deterministic=True)).hexdigest()


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
