"""The entropy-model protocol: how a model brings its own latent quantisation, entropy tables and extra graphs.

By default `edgeae.export` calibrates the latent itself: per-channel min/max to 2**latent_bits uniform levels,
and per-channel histograms as range-coder tables. A model with a learned entropy model (the `codec` family's
factorized prior, a hyperprior) supplies these instead by having a method

    def edgeae_entropy(self, latents: np.ndarray, precision: int) -> EntropySection

on the model given to `edgeae.export(model=...)` (or on any object passed as `entropy=`). `latents` are the
exported fp32 encoder graph's outputs on the calibration data (N, *latent_shape); `precision` is the bits of
the integer tables (rows sum to 2**precision). docs/EXPORT.md describes the contract; the exporter verifies
what comes back (the runtime's manifest validator, extra graphs run against their reference) and a failure
is an ExportError naming the field.

Torch-free: the types below only describe data; the exporter does the tracing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

ENTROPY_METHOD = "edgeae_entropy"
RESERVED_ROLES = ("encoder", "decoder")
_ROLE = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass
class ExtraGraph:
    """One more graph of the bundle, listed in `manifest.graphs[role]`, hashed, fingerprinted and verified.

    Give exactly one of
    - `module`: a torch.nn.Module the exporter traces (dynamic batch axis) and checks against PyTorch on
      `example` at batch 1 and the whole example, within atol + rtol * |reference| (default 1e-4, 1e-3);
    - `onnx_model`: an onnx.ModelProto built by the provider (e.g. an integer-only graph), which the exporter
      runs in onnxruntime on `example` and compares with `reference(example)` (default: exactly).
    """

    role: str  # graphs key and file stem: "hyper_decoder" -> hyper_decoder.onnx
    input_name: str
    output_name: str
    example: np.ndarray  # verification input, batch axis first (several items)
    module: Any = None
    onnx_model: Any = None
    reference: Callable[[np.ndarray], np.ndarray] | None = None
    atol: float | None = None  # default: 1e-4 for a traced module, 0 (exact) for an onnx_model
    rtol: float | None = None  # default: 1e-3 for a traced module, 0 for an onnx_model
    dynamic_axes: dict[str, dict[int, str]] | None = None  # traced modules; default: axis 0 of both is "batch"
    extra_outputs: tuple[str, ...] = ()  # onnx_model graphs: outputs after output_name (checked by the provider)

    @property
    def tolerance(self) -> tuple[float, float]:
        """(atol, rtol) of the verification, defaults filled in."""
        traced = self.module is not None
        return (self.atol if self.atol is not None else (1e-4 if traced else 0.0),
                self.rtol if self.rtol is not None else (1e-3 if traced else 0.0))

    @property
    def file(self) -> str:
        return f"{self.role}.onnx"

    def validate(self) -> None:
        if not _ROLE.fullmatch(self.role) or self.role in RESERVED_ROLES:
            raise ValueError(f"extra graph role {self.role!r} must be lower_snake_case and not encoder/decoder")
        if (self.module is None) == (self.onnx_model is None):
            raise ValueError(f"extra graph {self.role!r}: give exactly one of module= or onnx_model=")
        if self.onnx_model is not None and self.reference is None:
            raise ValueError(f"extra graph {self.role!r}: an onnx_model needs reference= to be verified against")
        if not isinstance(self.example, np.ndarray) or self.example.ndim < 1 or not len(self.example):
            raise ValueError(f"extra graph {self.role!r}: example must be a non-empty array with a batch axis")


@dataclass
class EntropySection:
    """What `edgeae_entropy` returns.

    quantization: the manifest's `latent.quantization` ({"bits", "levels", "offset": [C], "step": [C]}):
                  symbol q = clip(round((y - offset[c]) / step[c]), 0, levels - 1).
    entropy:      the manifest's `entropy` section, e.g. {"coder": "range", "precision": P,
                  "frequencies": [[levels ints >= 1 summing to 2**P] per channel]}; another coder's section
                  is fine once the runtime's manifest validator and entropy layer know it.
    graphs:       extra graphs the runtime needs for this entropy model (e.g. a hyperprior's hyper_decoder).
    model:        free-form facts recorded as manifest["model"]["entropy_model"] (name, parameters).
    size_multiple: any-size bundles: the input size multiple this entropy model needs (a hyperprior: latent
                  stride x hyper-latent stride); the bundle's input.size_multiple becomes the least common
                  multiple of this and the latent stride. 0: no constraint of its own.
    """

    quantization: dict[str, Any]
    entropy: dict[str, Any]
    graphs: list[ExtraGraph] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    size_multiple: int = 0

    @classmethod
    def from_any(cls, obj: Any) -> EntropySection:
        """An EntropySection, or a dict with the same keys."""
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, dict) and {"quantization", "entropy"} <= set(obj):
            return cls(obj["quantization"], obj["entropy"], list(obj.get("graphs", [])), dict(obj.get("model", {})),
                       int(obj.get("size_multiple", 0)))
        raise TypeError(f"{ENTROPY_METHOD} must return an EntropySection (or a dict with quantization and "
                        f"entropy), got {type(obj).__name__}")


@runtime_checkable
class EntropyModel(Protocol):
    def edgeae_entropy(self, latents: np.ndarray, precision: int) -> EntropySection: ...


def find_entropy_model(*candidates: Any) -> EntropyModel | None:
    """The first candidate that implements the protocol (the model, then its encoder), or None."""
    for obj in candidates:
        if obj is not None and callable(getattr(obj, ENTROPY_METHOD, None)):
            return obj
    return None
