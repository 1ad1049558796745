"""Hyperprior bundles: the integer hyper-decoder (parameters, ONNX graph) and the integer entropy tables.

* `integerize(model)`: the trained, quantisation-aware h_s of a `hyperprior` model -> IntHyperDecoder (int8
  weights, int64 fixed-point multipliers and offsets; see edgeae/runtime/inthyper.py for the arithmetic).
* `build_graph(params)`: -> `hyper_decoder.onnx`, integer ops only: Clip/Add/Cast on int32 z, then per layer
  a convolution (uint8 x uint8 w + 128 -> int32, zero padding = the input zero point) as im2col + MatMulInteger
  (`_conv_integer`), Cast int64, Mul, Add, Clip, a right shift by `shift` (BitShift on uint64), Cast uint8
  (or int32 for the index), DepthToSpace on uint8. No float tensor exists in it.
* `z_tables(model)` / `y_tables(scales)`: per-table integer frequencies (>= 1, summing to 2^precision) with
  a trailing escape entry, in the manifest layout of edgeae/runtime/entropy_models (anysize).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeae.runtime.inthyper import INT64_HEADROOM, META_KEY, IntHyperDecoder, IntLayer
from edgeae.train.models.hyperprior import Z_MAX, Z_MIN

SHIFT = 30  # fixed point: 2^30 = 1.0
INPUT, OUTPUT, MEAN = "z", "index", "mean"
TAIL_MASS = 1e-6  # probability per side left to the escape symbol


# --- integerisation ---


def mean_layout(model: Any) -> tuple[int, int]:
    """(mean range R, mean phases P) of a model's h_s: (0, 1) without means."""
    if not getattr(model.config, "means", False):
        return 0, 1
    return int(model.config.mean_range), int(model.config.mean_phases)


def integerize(model: Any, shift: int = SHIFT) -> IntHyperDecoder:
    """The model's h_s as integer layers. Mirrors its fake quantisation: per-channel symmetric int8 weights,
    uint8 activations on [0, range], index = clip(floor(t + 1/2), 0, K - 1)."""
    import torch

    h_s = model.h_s
    convs = [*h_s.convs, h_s.last]
    act_scales = [a.scale() for a in h_s.acts]
    s_in = 1.0  # z values are integers
    layers: list[IntLayer] = []
    k_levels = int(model.config.scale_levels)
    mean_range, phases = mean_layout(model)
    m = int(model.config.latent_channels)
    with torch.no_grad():
        for i, conv in enumerate(convs):
            last = i == len(convs) - 1
            w = conv.weight.detach().double().numpy()
            s_w = conv.weight_scale().double().numpy()
            w_int = np.clip(np.round(w / s_w[:, None, None, None]), -127, 127).astype(np.int8)
            b = conv.bias.detach().double().numpy()
            s_out = 1.0 if last else act_scales[i]
            gain = np.ones(len(b))
            offset = np.full(len(b), 0.5)  # floor(v + 1/2) = round half up
            if last and mean_range:  # the mean head's output is (mean + R) * P, clipped to [0, 2RP]
                gain[m:] = phases
                offset[m:] += mean_range * phases
            mult = np.round(s_in * s_w * gain / s_out * 2.0**shift).astype(np.int64)
            bias = np.round((b * gain / s_out + offset) * 2.0**shift).astype(np.int64)
            zero_point = -Z_MIN if i == 0 else 0
            layers.append(IntLayer(w_int, mult, bias, k_levels - 1 if last else 255, 1 if last else 2, zero_point))
            s_in = s_out
    params = IntHyperDecoder(tuple(layers), shift, Z_MIN, Z_MAX, k_levels, mean_range, phases)
    arrays = {f"{k}{i}": v for i, la in enumerate(layers) for k, v in (("w", la.weight), ("m", la.mult), ("b", la.bias))}
    return IntHyperDecoder.from_parts(params.layout(), arrays, "integerised hyper-decoder")  # validates bounds


# --- the ONNX graph ---


def build_graph(params: IntHyperDecoder, opset: int = 17, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The integer hyper-decoder as an ONNX model: int32 z (N, Cz, h, w) -> int32 index (N, M, 4h, 4w)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    zp0 = params.layers[0].zero_point
    nodes.append(helper.make_node("Clip", [INPUT, const("z_min", np.array(params.z_min, np.int32)),
                                           const("z_max", np.array(params.z_max, np.int32))], ["z_clip"]))
    nodes.append(helper.make_node("Add", ["z_clip", const("z_zero_point32", np.array(zp0, np.int32))], ["z_shift"]))
    nodes.append(helper.make_node("Cast", ["z_shift"], ["x0"], to=TensorProto.UINT8))
    x = "x0"
    zero64 = const("zero64", np.array(0, np.int64))
    shift = const("shift", np.array(params.shift, np.uint64))

    def requantize(v: str, hi: int, to: int, out: str) -> list[onnx.NodeProto]:
        """clip(floor(v / 2^shift), 0, hi) -> `to`: v clipped to [0, (hi + 1) * 2^shift - 1] first, so that the
        floor is a right shift of a non-negative number (BitShift on uint64: int64 Div is 20x slower, and
        truncates toward zero, which the clip makes irrelevant)."""
        top = min(((hi + 1) << params.shift) - 1, np.iinfo(np.int64).max)
        return [helper.make_node("Clip", [v, zero64, const(f"{out}_top", np.array(top, np.int64))], [f"{out}_c"]),
                helper.make_node("Cast", [f"{out}_c"], [f"{out}_u"], to=TensorProto.UINT64),
                helper.make_node("BitShift", [f"{out}_u", shift], [f"{out}_q"], direction="RIGHT"),
                helper.make_node("Cast", [f"{out}_q"], [out], to=to)]
    for i, layer in enumerate(params.layers):
        last = i == len(params.layers) - 1
        # The weights travel as uint8 w + 128 with zero point 128: the same integers, but onnxruntime's x86 GEMM
        # for uint8 x int8 sums pairs of products in int16 where there is no VNNI (AVX2), and saturates there
        # (249 of 576 indices wrong on an AMD EPYC, 2026-12-04); its uint8 x uint8 kernel widens first: exact.
        w = const(f"w{i}", (layer.weight.astype(np.int16) + W_ZERO_POINT).astype(np.uint8))
        xzp = const(f"x_zero_point{i}", np.array(layer.zero_point, np.uint8))
        nodes += _conv_integer(i, x, w, xzp, layer.weight.shape, const)
        nodes.append(helper.make_node("Cast", [f"acc{i}"], [f"acc64_{i}"], to=TensorProto.INT64))
        c = len(layer.mult)
        nodes.append(helper.make_node("Mul", [f"acc64_{i}", const(f"m{i}", layer.mult.reshape(1, c, 1, 1))],
                                      [f"scaled{i}"]))
        nodes.append(helper.make_node("Add", [f"scaled{i}", const(f"b{i}", layer.bias.reshape(1, c, 1, 1))],
                                      [f"fixed{i}"]))
        if last and params.mean_range:  # channels [0, M): index; [M, 2M): (mean + R) * P
            m, r = params.out_channels, params.mean_bound
            axis = const("axis1", np.array([1], np.int64))
            nodes.append(helper.make_node("Slice", [f"fixed{i}", const("s0", np.array([0], np.int64)),
                                                    const("s1", np.array([m], np.int64)), axis], [f"fi{i}"]))
            nodes.append(helper.make_node("Slice", [f"fixed{i}", "s1", const("s2", np.array([2 * m], np.int64)),
                                                    axis], [f"fm{i}"]))
            nodes += requantize(f"fm{i}", 2 * r, TensorProto.INT32, "mean_shifted")
            nodes.append(helper.make_node("Sub", ["mean_shifted", const("mean_range", np.array(r, np.int32))], [MEAN]))
            fixed = f"fi{i}"
        else:
            fixed = f"fixed{i}"
        if last:
            if layer.up > 1:
                raise ValueError("the last integer layer cannot upsample (DepthToSpace on int32 is unsupported)")
            nodes += requantize(fixed, layer.hi, TensorProto.INT32, OUTPUT)
        else:
            nodes += requantize(fixed, layer.hi, TensorProto.UINT8, f"a{i}")
            x = f"a{i}"
            if layer.up > 1:
                nodes.append(helper.make_node("DepthToSpace", [x], [f"up{i}"], blocksize=layer.up, mode="CRD"))
                x = f"up{i}"
    cz, m, f = params.in_channels, params.out_channels, params.upsampling
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.INT32, ["N", m, f"{f}h", f"{f}w"])]
    if params.mean_range:
        outputs.append(helper.make_tensor_value_info(MEAN, TensorProto.INT32, ["N", m, f"{f}h", f"{f}w"]))
    graph = helper.make_graph(nodes, "edgeae_integer_hyper_decoder",
                              [helper.make_tensor_value_info(INPUT, TensorProto.INT32, ["N", cz, "h", "w"])],
                              outputs, inits)
    what = "scale index and mean" if params.mean_range else "scale index"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="edgeae", doc_string=f"integer-only hyper-decoder: z -> {what}")
    model.ir_version = min(model.ir_version, 9)
    for key, value in {META_KEY: json.dumps(params.layout(), sort_keys=True), **(metadata or {})}.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model, full_check=True)
    assert_integer_only(model)
    return model


W_ZERO_POINT = 128  # the integer hyper-decoder's weights: uint8 = int8 weight + 128 (see build_graph)


def _conv_integer(i: int, x: str, w: str, zp: str, shape: tuple[int, ...], const: Any) -> list[onnx.NodeProto]:
    """A stride-1 'same' k x k ConvInteger(x, w - 128, zp) -> acc{i} (int32 N, O, H, W), written as im2col + one
    MatMulInteger: Pad with the zero point (= real 0), the k*k shifted windows concatenated on the channels
    (order ky, kx, c), NHWC, times w as a (k*k*C, O) matrix. The same integers as ConvInteger (an exact int32
    sum of the same products), but onnxruntime's ConvInteger kernel is a plain loop while MatMulInteger runs
    its int8 GEMM: 32 ms vs 0.18 ms for the 64->128-channel layer at 32x48 on one thread here (2026-12-02)."""
    o, c, k = shape[0], shape[1], shape[-1]
    p = k // 2
    big = np.iinfo(np.int64).max
    nodes = [helper.make_node("Pad", [x, const(f"pads{i}", np.array([0, 0, p, p, 0, 0, p, p], np.int64)), zp],
                              [f"xpad{i}"], mode="constant", name=f"conv{i}_pad")]
    windows = []
    for ky in range(k):
        for kx in range(k):
            ends = [ky - (k - 1) or big, kx - (k - 1) or big]  # the window ends k-1-ky rows before the end
            name = f"win{i}_{ky}{kx}"
            nodes.append(helper.make_node("Slice", [f"xpad{i}", const(f"{name}_s", np.array([ky, kx], np.int64)),
                                                    const(f"{name}_e", np.array(ends, np.int64)),
                                                    const(f"{name}_a", np.array([2, 3], np.int64))], [name]))
            windows.append(name)
    nodes += [
        helper.make_node("Concat", windows, [f"cols{i}"], axis=1),
        helper.make_node("Transpose", [f"cols{i}"], [f"cols_nhwc{i}"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", [w], [f"w_kkco{i}"], perm=[2, 3, 1, 0]),  # constant-folded by onnxruntime
        helper.make_node("Reshape", [f"w_kkco{i}", const(f"w_shape{i}", np.array([k * k * c, o], np.int64))],
                         [f"w_mat{i}"]),
        helper.make_node("MatMulInteger", [f"cols_nhwc{i}", f"w_mat{i}", zp,
                                           const(f"w_zero_point{i}", np.array(W_ZERO_POINT, np.uint8))],
                         [f"acc_nhwc{i}"], name=f"conv{i}"),
        helper.make_node("Transpose", [f"acc_nhwc{i}"], [f"acc{i}"], perm=[0, 3, 1, 2]),
    ]
    return nodes


FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def assert_integer_only(model: onnx.ModelProto) -> None:
    """Raise if any tensor of the graph (input, output, initializer, inferred value, Cast target) is float."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type in FLOAT_TYPES:
            raise ValueError(f"hyper-decoder tensor {vi.name!r} is floating point")
    for t in g.initializer:
        if t.data_type in FLOAT_TYPES:
            raise ValueError(f"hyper-decoder initializer {t.name!r} is floating point")
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and a.i in FLOAT_TYPES:
                raise ValueError(f"hyper-decoder node {n.name or n.op_type!r} casts to floating point")


# --- integer entropy tables with an escape entry ---


def _integer_row(probs: np.ndarray, precision: int) -> list[int]:
    from edgeae.bundling.calibrate import frequencies_from_probabilities

    return [int(v) for v in frequencies_from_probabilities(probs[None, :], precision)[0]]


def y_tables(scales: np.ndarray, precision: int = 16, tail_mass: float = TAIL_MASS,
             phases: int = 1) -> list[dict[str, Any]]:
    """Table k * P + p (P = `phases`): the Gaussian of scale[k] centred at p / P, discretised on the integers
    -R .. R (+1 when p > 0; R from the tail mass), then the escape entry with the mass outside."""
    from scipy.special import ndtr, ndtri

    out = []
    factor = -float(ndtri(tail_mass))
    max_levels = (1 << precision) // 4
    for s in np.asarray(scales, np.float64):
        r = max(1, int(math.ceil(factor * s - 0.5)))
        r = min(r, (max_levels - 3) // 2)
        for phase in range(phases):
            mu = phase / phases
            v = np.arange(-r, r + (2 if phase else 1), dtype=np.float64)
            p = ndtr((v + 0.5 - mu) / s) - ndtr((v - 0.5 - mu) / s)
            esc = float(ndtr((v[0] - 0.5 - mu) / s)) + float(ndtr(-(v[-1] + 0.5 - mu) / s))
            out.append({"offset": -r, "frequencies": _integer_row(np.append(p, esc), precision)})
    return out


def z_tables(model: Any, precision: int = 16, tail_mass: float = TAIL_MASS) -> list[dict[str, Any]]:
    """One table per z channel from the factorized prior: the support [lo, hi] leaves < tail_mass per side,
    whose mass goes to the escape entry."""
    import torch

    lo, hi = model.support(tail_mass)
    base, top = int(lo.min()), int(hi.max())
    grid = torch.arange(base, top + 2, dtype=torch.float32)
    cdf = model.prior.cdf_at(grid - 0.5).numpy()  # cdf[c, j] = P(z_hat < grid[j])
    out = []
    for c in range(len(lo)):
        i0, i1 = int(lo[c]) - base, int(hi[c]) - base + 1
        p = np.maximum(np.diff(cdf[c, i0 : i1 + 1]), 0.0)
        esc = max(float(cdf[c, i0]) + float(1.0 - cdf[c, i1]), 0.0)
        out.append({"offset": int(lo[c]), "frequencies": _integer_row(np.append(p, esc), precision)})
    return out


def entropy_section(model: Any, precision: int = 16, owner: Any = None) -> dict[str, Any]:
    """The manifest `entropy` section of a hyperprior bundle (layout agreed with anysize, NOTES.md 13:14).
    `model` gives the z tables, `owner` (default: the model) the scale table and means."""
    owner = owner or model
    scales = owner.scales_np
    mean_range, phases = mean_layout(owner)
    return {"model": "hyperprior", "coder": "range", "precision": precision,
            "z": {"stride": 4, "tables": z_tables(model, precision)},
            "y": {"scales": [float(s) for s in scales], "means": mean_range > 0,
                  "tables": y_tables(scales, precision, phases=phases), **({"mean_phases": phases} if phases > 1 else {})}}


def bound_check(params: IntHyperDecoder) -> int:
    """Worst-case |acc * m + b| over the layers (must be < 2^62; from_arrays enforces it)."""
    worst = max(layer.acc_bound * int(np.abs(layer.mult).max()) + int(np.abs(layer.bias).max())
                for layer in params.layers)
    assert worst < INT64_HEADROOM
    return worst


# --- the export protocol (edgeae/bundling/protocol.py): what a hyperprior model supplies ---


def y_quantization(channels: int) -> dict[str, Any]:
    """y symbols are round(y) (escape beyond the tables); the quantisation grid [-128, 127] (step 1) is the
    int8 encoder's output grid, so its uint8 output with zero point 128 is exactly round(y)."""
    return {"bits": 8, "levels": 256, "offset": [float(Z_MIN)] * channels, "step": [1.0] * channels}


def check_means(graph: onnx.ModelProto, params: IntHyperDecoder, z: np.ndarray) -> None:
    """onnxruntime's means of the built graph == the int64 reference's on `z`, or ExportError."""
    from edgeae.errors import ExportError
    from edgeae.runtime.session import make_session

    sess = make_session(graph.SerializeToString(), threads=1)
    got = sess.run([MEAN], {INPUT: np.ascontiguousarray(z, np.int32)})[0]
    want = params.decode(z)[1]
    if want is None or got.shape != want.shape or not np.array_equal(got, want):
        raise ExportError("the integer hyper-decoder graph's means differ from the integer reference; report it")


def _graphs_and_facts(model: Any, y: np.ndarray) -> tuple[Any, onnx.ModelProto, list[Any], dict[str, Any]]:
    """(integer h_s, its graph, the two extra graphs checked on the float latents `y`, the manifest facts)."""
    import torch

    from edgeae.bundling.protocol import ExtraGraph

    params = integerize(model)
    y = np.ascontiguousarray(y[:16], np.float32)
    with torch.no_grad():
        z = torch.round(model.hyper_encoder(torch.from_numpy(y))).numpy().astype(np.int32)
    hyper_axes = {"y": {0: "batch", 2: "latent_height", 3: "latent_width"},
                  "z": {0: "batch", 2: "hyper_height", 3: "hyper_width"}}
    graph = build_graph(params)
    if params.mean_range:  # the exporter checks the index output against the reference; the means here
        check_means(graph, params, z)
    graphs = [
        ExtraGraph("hyper_encoder", "y", "z", example=y, module=model.hyper_encoder, atol=1e-4, rtol=1e-4,
                   dynamic_axes=hyper_axes),
        ExtraGraph("hyper_decoder", INPUT, OUTPUT, example=z, onnx_model=graph, reference=params,
                   extra_outputs=(MEAN,) if params.mean_range else ()),
    ]
    facts = {"name": "hyperprior", "scale_levels": int(model.config.scale_levels),
             "scale_min": float(model.config.scale_min), "scale_max": float(model.config.scale_max),
             "hyper_latent_channels": int(model.config.hyper_latent_channels),
             "hyper_stride": 4, "integer_hyper_decoder": params.layout() | {"layers": len(params.layers)}}
    return params, graph, graphs, facts


def entropy_for(model: Any, latents: np.ndarray, precision: int) -> Any:
    """`Hyperprior.edgeae_entropy`: quantisation, entropy tables and the two extra graphs."""
    from edgeae.bundling.protocol import EntropySection

    model.eval()
    params, graph, graphs, facts = _graphs_and_facts(model, latents)
    entropy = entropy_section(model, precision)
    entropy["y"]["tables"], (entropy["z"]["tables"],) = refit_tables(
        model, graph, entropy["y"]["tables"], [entropy["z"]["tables"]], [latents], phases=params.mean_phases,
        precision=precision)
    facts["y_tables"] = facts["z_tables"] = f"refit to {len(latents)} calibration latents (bundling.calibrate.refit_rows)"
    return EntropySection(quantization=y_quantization(int(model.config.latent_channels)),
                          entropy=entropy, graphs=graphs, model=facts)


class _Point:
    """One operating point of a variable-rate hyperprior, as `z_tables` reads a model: that quality's z prior."""

    def __init__(self, model: Any, q: int) -> None:
        self.model, self.q, self.prior = model, q, model.priors[q]

    def support(self, tail_mass: float) -> tuple[np.ndarray, np.ndarray]:
        from edgeae.train.models.codec import Codec

        with self.model.at_quality(self.q):
            return Codec.support(self.model, tail_mass)  # the variable-rate class refuses a single support


def entropy_for_qualities(model: Any, latents: np.ndarray, precision: int) -> Any:
    """`edgeae_entropy` of a variable-rate hyperprior (`hyperprior-vr`): ONE bundle for every operating point.

    The encoder graph gives the unscaled latent y; quality q codes round(y * gain_q) with its own z tables, the
    hyper_encoder (h_a) and the integer hyper_decoder (h_s) are shared, and so are y's scale tables (refit to
    the symbols of every quality together); the decoder graph gets the decoded values / gain_q. The manifest's
    latent quantisation is the default quality's grid (step 1 / gain), which the exporter's quality check uses."""
    import torch

    from edgeae.bundling.protocol import EntropySection

    model.eval()
    gains = [torch.exp(g).detach().numpy().astype(np.float32) for g in model.log_gains]
    default = int(model.quality)
    scaled = [np.ascontiguousarray(latents * g.reshape(1, -1, 1, 1), np.float32) for g in gains]
    params, graph, graphs, facts = _graphs_and_facts(model, scaled[default])
    entropy = entropy_section(_Point(model, default), precision, model)
    z_rows = [z_tables(_Point(model, q), precision) for q in range(len(gains))]
    entropy["y"]["tables"], z_rows = refit_tables(model, graph, entropy["y"]["tables"], z_rows, scaled,
                                                   phases=params.mean_phases, precision=precision)
    entropy["z"] = {"stride": entropy["z"]["stride"]}
    entropy["qualities"] = [{"lmbda": float(lm), "gain": [float(v) for v in g], "z": {"tables": rows}}
                            for lm, g, rows in zip(model.lmbdas, gains, z_rows, strict=True)]
    entropy["default_quality"] = default + 1
    facts.update(qualities=len(gains), lmbdas=[float(v) for v in model.lmbdas], default_quality=default + 1,
                 y_tables=f"refit to {len(latents)} calibration latents at every quality",
                 z_tables=f"per quality, refit to {len(latents)} calibration latents")
    g = gains[default].astype(np.float64)
    quant = {"bits": 8, "levels": 256, "offset": [float(Z_MIN / v) for v in g], "step": [float(1.0 / v) for v in g]}
    return EntropySection(quantization=quant, entropy=entropy, graphs=graphs, model=facts)


def refit_tables(model: Any, graph: onnx.ModelProto, y_tables: list[dict[str, Any]],
                 z_tables: list[list[dict[str, Any]]], latents: list[np.ndarray], phases: int, precision: int,
                 batch: int = 32) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """The y and z tables refit (calibrate.refit_rows) to the symbols of the calibration latents, each counted
    in the table the runtime codes it with: z channel c's values in z table c (z = round(h_a(y))), y's in the
    table of the integer hyper-decoder graph's index (and mean) of that z, then `tables_and_base` as in
    entropy_models/hyperprior.py; escapes count in the escape entry. The factorized codec's tables are refit
    the same way (codec.py), so neither family is compared with tables the other does not get.

    One z table set and one latent array per operating point (a multi-quality bundle: the latents scaled by
    each quality's gain); y's tables are shared, counted over all of them."""
    import torch

    from edgeae.bundling.calibrate import refit_rows, table_counts
    from edgeae.runtime.entropy_models.hyperprior import tables_and_base
    from edgeae.runtime.session import make_session

    def layout(tables: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        lengths = np.array([len(t["frequencies"]) for t in tables], np.int64)
        return np.array([t["offset"] for t in tables], np.int64), lengths, [np.zeros(n, np.int64) for n in lengths]

    def count(counts: list[np.ndarray], table: np.ndarray, value: np.ndarray, lengths: np.ndarray) -> None:
        for k, c in enumerate(table_counts(table, value, lengths)):
            counts[k] += c

    sess = make_session(graph.SerializeToString(), threads=1)
    y_off, y_len, y_counts = layout(y_tables)
    z_counts = []
    for tables, lat in zip(z_tables, latents, strict=True):
        z_off, z_len, counts = layout(tables)
        z_counts.append(counts)
        for i in range(0, len(lat), batch):
            y = np.ascontiguousarray(lat[i:i + batch], np.float32)
            with torch.no_grad():
                z = torch.round(model.hyper_encoder(torch.from_numpy(y))).numpy().astype(np.int32)
            channel = np.broadcast_to(np.arange(z.shape[1]).reshape(1, -1, 1, 1), z.shape)
            count(counts, channel, z.astype(np.int64) - z_off[channel], z_len)
            out = sess.run(None, {INPUT: z})
            table, base = tables_and_base(out[0], out[1] if len(out) > 1 else None, phases)
            sym = np.clip(np.round(y), Z_MIN, Z_MAX).astype(np.int64) - (0 if base is None else base)
            count(y_counts, table, sym - y_off[table], y_len)

    def refit(tables: list[dict[str, Any]], counts: list[np.ndarray]) -> list[dict[str, Any]]:
        rows = refit_rows([t["frequencies"] for t in tables], counts, precision)
        return [{"offset": t["offset"], "frequencies": r} for t, r in zip(tables, rows, strict=True)]

    return refit(y_tables, y_counts), [refit(t, c) for t, c in zip(z_tables, z_counts, strict=True)]
