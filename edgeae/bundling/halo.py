"""How far a graph's outputs see: the halo that lets the runtime run it on overlapping tiles, exactly.

A fully convolutional graph's output cell depends on a window of input cells. Propagated through the graph
per spatial axis, in input cells: each tensor has a scale S (input cells per tensor cell: 1 for the input,
16 after four stride-2 convolutions, 1/16 after four DepthToSpace(2)) and extents L, R (tensor cell i,
anchored at input cell i*S, depends on input cells [i*S - L, i*S + R] at most):

    Conv (kernel k, dilation d, stride s, begin pad p):  L += p*S,   R += ((k-1)*d - p)*S,   S *= s
    ConvTranspose (same, stride s):                      S /= s,   L += ((k-1)*d - p)*S,   R += p*S
    DepthToSpace (block b):                              S /= b,   L += (b-1)*S
    pointwise ops (Relu, Add, Clip, QuantizeLinear...):  max of their spatial inputs (which share one S)

The halo is ceil(max(L, R)) input cells: a tile that reads `halo` more cells on each side of its core gives
the core's outputs exactly as the whole input would (zero padding inside the graph only reaches the cells the
halo covers). Any other operator (Reshape, Resize, pooling, MatMul, a spatial constant...) can mix far cells,
so the graph gets no halo and runs whole. The runtime (edgeae.runtime.tiles) never guesses: it tiles only a
graph whose manifest entry carries `halo`, which only this analysis writes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import onnx
from onnx import helper

from edgeae.runtime.manifest import MAX_HALO  # a larger halo: the graph is effectively global

# Operators that map each cell to the same cell (or combine cells at one position of same-scale tensors):
# elementwise maths, activations, casts, per-tensor/per-channel (de)quantisation, channel concatenation.
POINTWISE = frozenset({
    "Abs", "Add", "Cast", "Ceil", "Clip", "DequantizeLinear", "Div", "Elu", "Erf", "Exp", "Floor", "Gelu",
    "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Log", "Max", "Min", "Mul", "Neg", "Pow", "PRelu",
    "QuantizeLinear", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Softplus", "Sqrt", "Sub", "Tanh",
})


@dataclass(frozen=True)
class _Cone:
    """A spatial tensor's geometry on one axis pair: scale and extents (H, W), in graph input cells."""

    scale: tuple[Fraction, Fraction]
    left: tuple[Fraction, Fraction]
    right: tuple[Fraction, Fraction]


def graph_halo(model: onnx.ModelProto, scale: Fraction | int | None = None) -> int | None:
    """The halo (graph input cells) of an NCHW graph with one input, or None where it is not provably local.
    `scale`: the output's expected input cells per output cell (16 for a stride-16 encoder, 1/16 for its
    decoder); a graph whose output scale differs gets None too."""
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    inputs = [i.name for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) != 1:
        return None
    one, zero = Fraction(1), Fraction(0)
    cones: dict[str, _Cone] = {inputs[0]: _Cone((one, one), (zero, zero), (zero, zero))}
    # tensors that hold no position: initializers, Constants and what is computed from them alone, with their
    # dims where known (None: unknown, which a pointwise op refuses)
    fixed: dict[str, list[int] | None] = {n: list(t.dims) for n, t in consts.items()}
    for node in g.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            fixed[node.output[0]] = None if value is None else list(value.dims)
            continue
        if not any(i in cones for i in node.input):
            dims = [fixed.get(i) for i in node.input if i]
            known = node.op_type in POINTWISE and all(d is not None for d in dims)
            for out in node.output:
                fixed[out] = max(dims, key=len) if known and dims else None  # type: ignore[arg-type,return-value]
            continue
        cone = _step(node, cones, fixed)
        if cone is None:
            return None
        for out in node.output:
            cones[out] = cone
    out = cones.get(g.output[0].name)
    if out is None or (scale is not None and out.scale != (Fraction(scale),) * 2):
        return None
    halo = math.ceil(max(Fraction(0), *out.left, *out.right))
    return halo if halo <= MAX_HALO else None


def _step(node: onnx.NodeProto, cones: dict[str, _Cone], fixed: dict[str, list[int] | None]) -> _Cone | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    spatial = [cones[i] for i in node.input if i in cones]
    if op in POINTWISE or (op == "Concat" and attrs.get("axis") == 1):
        others = [fixed.get(i) for i in node.input if i and i not in cones]
        per_axis = op in ("QuantizeLinear", "DequantizeLinear") and attrs.get("axis", 1) in (1, -3)
        if len({c.scale for c in spatial}) != 1 or not all(_broadcasts(d, per_axis) for d in others):
            return None
        return _Cone(spatial[0].scale, _max(c.left for c in spatial), _max(c.right for c in spatial))
    if len(spatial) != 1 or node.input[0] not in cones:  # the data input alone may carry position
        return None
    c = spatial[0]
    if op == "DepthToSpace":
        b = int(attrs.get("blocksize", 0))
        if b < 1:
            return None
        s = (c.scale[0] / b, c.scale[1] / b)
        return _Cone(s, (c.left[0] + (b - 1) * s[0], c.left[1] + (b - 1) * s[1]), c.right)
    if op not in ("Conv", "ConvTranspose") or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
            or "output_shape" in attrs:  # padding worked out from a size: not a fixed geometry
        return None
    kernel = attrs.get("kernel_shape") or _kernel(node.input[1] if len(node.input) > 1 else "", fixed)
    if kernel is None or len(kernel) != 2:
        return None
    strides = attrs.get("strides", [1, 1])
    dil = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    scale, left, right = [], [], []
    for ax in range(2):
        span, p, s = (kernel[ax] - 1) * dil[ax], pads[ax], strides[ax]
        if op == "Conv":
            left.append(c.left[ax] + p * c.scale[ax])
            right.append(c.right[ax] + (span - p) * c.scale[ax])
            scale.append(c.scale[ax] * s)
        else:
            sc = c.scale[ax] / s
            left.append(c.left[ax] + (span - p) * sc)
            right.append(c.right[ax] + p * sc)
            scale.append(sc)
    return _Cone((scale[0], scale[1]), (left[0], left[1]), (right[0], right[1]))


def _max(values: Iterable[tuple[Fraction, Fraction]]) -> tuple[Fraction, Fraction]:
    vals = list(values)
    return max(v[0] for v in vals), max(v[1] for v in vals)


def _broadcasts(dims: list[int] | None, per_axis: bool = False) -> bool:
    """A position-free operand that cannot carry position either: its last two axes (NCHW broadcasting aligns
    from the right) are 1 -- a scalar, or a per-channel (C, 1, 1); a (de)quantisation's 1-D per-channel
    parameters with `per_axis`. Unknown dims: no."""
    if dims is None:
        return False
    if per_axis and len(dims) == 1:
        return True
    return all(d == 1 for d in dims[-2:])


def _kernel(weight: str, fixed: dict[str, list[int] | None]) -> list[int] | None:
    """A convolution's kernel from its weight's dims (O, I, kH, kW), through any DequantizeLinear."""
    dims = fixed.get(weight)
    return dims[2:] if dims is not None and len(dims) == 4 else None
