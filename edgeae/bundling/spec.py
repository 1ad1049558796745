"""Export specs as data, one per graph: names, dynamic axes, opset, tolerance (like optimum's OnnxConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field

MANIFEST_VERSION = 1
DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(13, 22)  # what the TorchScript exporter and onnxruntime's quantiser both handle


@dataclass(frozen=True)
class GraphSpec:
    role: str  # "encoder" or "decoder"
    file: str
    input_name: str
    output_name: str
    opset: int = DEFAULT_OPSET
    # fp32 parity with PyTorch: max |onnx - torch| <= atol * scale, where scale is 1 for images in [0, 1]
    # and the latent's dynamic range for the encoder (latents are not on an image scale).
    atol: float = 1e-4
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def int8_file(self) -> str:
        return self.file.replace(".onnx", ".int8.onnx")


def graph_specs(opset: int = DEFAULT_OPSET) -> dict[str, GraphSpec]:
    batch = {0: "batch"}
    return {
        "encoder": GraphSpec("encoder", "encoder.onnx", "image", "latent", opset,
                             dynamic_axes={"image": batch, "latent": batch}),
        "decoder": GraphSpec("decoder", "decoder.onnx", "latent", "image", opset,
                             dynamic_axes={"latent": batch, "image": batch}),
    }
