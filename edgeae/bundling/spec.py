"""Export specs as data, one per graph: names, dynamic axes, opset, tolerance (like optimum's OnnxConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field

MANIFEST_VERSION = 1
DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(13, 22)  # what the TorchScript exporter and onnxruntime's quantiser both handle


@dataclass(frozen=True)
class GraphSpec:
    role: str  # "encoder", "decoder", or an entropy model's extra graph (docs/EXPORT.md)
    file: str
    input_name: str
    output_name: str
    opset: int = DEFAULT_OPSET
    # fp32 parity with PyTorch, element-wise: |onnx - torch| <= atol * scale + rtol * |torch|, where scale is 1
    # for images and the latent's dynamic range for the encoder (latents are not on an image scale).
    atol: float = 1e-4
    rtol: float = 0.0
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def int8_file(self) -> str:
        return self.file.replace(".onnx", ".int8.onnx")


def graph_specs(opset: int = DEFAULT_OPSET, *, tensor: bool = False, dynamic_size: bool = False,
                atol: float = 1e-4, rtol: float = 0.0) -> dict[str, GraphSpec]:
    """Encoder and decoder specs. Batch is always dynamic; `dynamic_size`: H and W too (fully convolutional
    image models, NCHW input and (N, C, h, w) latent). Tensor inputs are named `input` / `reconstruction`."""
    x_in, x_out = ("input", "reconstruction") if tensor else ("image", "image")
    image = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    latent = {0: "batch", 2: "latent_height", 3: "latent_width"} if dynamic_size else {0: "batch"}
    return {
        "encoder": GraphSpec("encoder", "encoder.onnx", x_in, "latent", opset, atol, rtol,
                             dynamic_axes={x_in: image, "latent": latent}),
        "decoder": GraphSpec("decoder", "decoder.onnx", "latent", x_out, opset, atol, rtol,
                             dynamic_axes={"latent": latent, x_out: image}),
    }
