"""The hyperprior family and its integer hyper-decoder: onnxruntime == numpy int64 reference, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from edgeae.bundling import hyper
from edgeae.errors import BundleError
from edgeae.runtime.inthyper import IntHyperDecoder, IntLayer, read_onnx_params
from edgeae.train.models import build_model

K = 64
OPT_LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def random_params(seed: int = 0, cz: int = 4, nh: int = 6, m: int = 5, shift: int = 30,
                  mean_range: int = 0, mean_phases: int = 1) -> IntHyperDecoder:
    """A hand-built integer hyper-decoder whose multipliers spread activations over [0, 255] and indices over
    [0, K-1], with both clips active (so a wrong rounding, clip or layout changes the output); with
    `mean_range` R, the last layer's other m outputs spread means over [-RP, RP] (units of 1/P) and past both
    clips."""
    rng = np.random.default_rng(seed)
    layers = []
    cin, zp = cz, 128
    last_out = 2 * m if mean_range else m
    for i, (cout, hi, up) in enumerate(((4 * nh, 255, 2), (4 * nh, 255, 2), (last_out, K - 1, 1))):
        w = rng.integers(-127, 128, size=(cout, cin, 3, 3)).astype(np.int8)
        # acc ~ 127 * 40 * sqrt(9 cin) at random inputs; map a few of those to the output range.
        target = (hi + 1) / (127.0 * (40 if i == 0 else 100) * np.sqrt(9 * cin))
        mult = np.round(target * rng.uniform(0.5, 2.0, cout) * 2.0**shift).astype(np.int64)
        bias = np.round(rng.uniform(-0.3, 0.7, cout) * hi * 2.0**shift).astype(np.int64)
        if i == 2 and mean_range:  # the mean head: values around RP (= mean 0) spreading past 0 and 2RP
            bound = mean_range * mean_phases
            mult[m:] = np.round(mult[m:] * 2 * bound / K).astype(np.int64)
            bias[m:] = np.round(rng.uniform(0.5, 1.5, m) * bound * 2.0**shift).astype(np.int64)
        layers.append(IntLayer(w, mult, bias, hi, up, zp))
        cin, zp = cout // (up * up), 0
    return IntHyperDecoder(tuple(layers), shift, -128, 127, K, mean_range, mean_phases)


@pytest.fixture(scope="module")
def params() -> IntHyperDecoder:
    return random_params()


@pytest.fixture(scope="module")
def graph_bytes(params) -> bytes:
    return hyper.build_graph(params).SerializeToString()


def _session(data: bytes, threads: int, level) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = level
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _z_tensors(count: int, cz: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        n, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 5)), int(rng.integers(1, 6))
        spread = (2, 8, 40, 300)[i % 4]  # small latents, typical, large, and beyond the clip range
        out.append(rng.integers(-spread, spread + 1, size=(n, cz, h, w)).astype(np.int32))
    return out


def test_onnxruntime_equals_numpy_reference_bit_for_bit(params, graph_bytes):
    zs = _z_tensors(1000, params.in_channels)
    refs = [params(z) for z in zs]
    seen = np.zeros(K, bool)
    for r in refs:
        seen[np.unique(r)] = True
    # The test data reaches both ends of the index range and most of the middle: a test that can fail.
    assert seen[0] and seen[K - 1] and seen.sum() > K // 2
    for threads in (1, 2):
        for name, level in OPT_LEVELS.items():
            sess = _session(graph_bytes, threads, level)
            for i, (z, ref) in enumerate(zip(zs, refs, strict=True)):
                out = sess.run(None, {"z": z})[0]
                assert out.dtype == np.int32 and out.shape == ref.shape
                if not np.array_equal(out, ref):
                    bad = int((out != ref).sum())
                    pytest.fail(f"tensor {i} ({z.shape}), {threads} threads, {name}: {bad} indices differ")


@pytest.mark.parametrize("phases", [1, 8])
def test_mean_scale_graph_equals_the_reference_bit_for_bit(phases):
    params = random_params(seed=5, mean_range=20, mean_phases=phases)
    data = hyper.build_graph(params).SerializeToString()
    zs = _z_tensors(300, params.in_channels, seed=11)
    refs = [params.decode(z) for z in zs]
    means = np.concatenate([m.ravel() for _, m in refs])
    bound = 20 * phases  # means in 1/P steps
    assert means.min() == -bound and means.max() == bound and len(np.unique(means)) > 30  # both clips, the middle
    for threads in (1, 2):
        for name, level in OPT_LEVELS.items():
            sess = _session(data, threads, level)
            for i, (z, (index, mean)) in enumerate(zip(zs, refs, strict=True)):
                out_index, out_mean = sess.run(["index", "mean"], {"z": z})
                assert out_mean.dtype == np.int32 and out_mean.shape == index.shape
                if not (np.array_equal(out_index, index) and np.array_equal(out_mean, mean)):
                    pytest.fail(f"tensor {i} ({z.shape}), {threads} threads, {name}: index or mean differs")
    loaded = IntHyperDecoder.from_onnx(data)  # the layout travels in the graph
    assert loaded.mean_range == 20 and loaded.mean_phases == phases and loaded.out_channels == 5
    assert params.layout()["format"] == (3 if phases > 1 else 2)  # a format-2 runtime must refuse 1/P means
    arrays = {f"{k}{i}": v for i, la in enumerate(params.layers) for k, v in (("w", la.weight), ("m", la.mult),
                                                                              ("b", la.bias))}
    for fmt in {1, 2, 3} - {params.layout()["format"]}:  # a layout whose format disagrees with its means: refused
        with pytest.raises(BundleError, match="malformed layout"):
            IntHyperDecoder.from_parts({**params.layout(), "format": fmt}, arrays)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.decode(zs[0]), refs[0], strict=True))
    hyper.assert_integer_only(hyper.build_graph(params))
    from edgeae.runtime.inthyper import verify

    verify(params, zs[0], *refs[0][:1], mean=refs[0][1])
    wrong = refs[0][1].copy()
    wrong.flat[0] += 1
    with pytest.raises(BundleError, match="means differ from the integer reference on 1 of"):
        verify(params, zs[0], refs[0][0], mean=wrong)


def test_reference_reads_its_parameters_from_the_graph_itself(params, graph_bytes):
    loaded = IntHyperDecoder.from_onnx(graph_bytes)
    z = _z_tensors(4, params.in_channels, seed=7)
    for t in z:
        assert np.array_equal(loaded(t), params(t))
    arrays, meta = read_onnx_params(graph_bytes)
    ref = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load_model_from_string(graph_bytes).graph.initializer}
    assert set(arrays) == set(ref) and all(np.array_equal(arrays[k], ref[k]) for k in ref)
    assert hyper.META_KEY in meta
    with pytest.raises(BundleError, match="cannot read"):
        IntHyperDecoder.from_onnx(graph_bytes[: len(graph_bytes) // 2])


def test_weights_travel_as_uint8_plus_128_and_int8_weight_graphs_still_read(params, graph_bytes):
    """uint8 x uint8 MatMulInteger (exact on x86 without VNNI, where u8 x s8 pair sums saturate in int16):
    the stored weights are w + 128 with zero point 128; graphs exported with int8 weights read the same."""
    import json

    arrays, meta = read_onnx_params(graph_bytes)
    for i, layer in enumerate(params.layers):
        assert arrays[f"w{i}"].dtype == np.uint8 and int(arrays[f"w_zero_point{i}"]) == 128
        assert np.array_equal(arrays[f"w{i}"].astype(np.int16) - 128, layer.weight)
    layout = json.loads(meta[hyper.META_KEY])
    old = {k: v for k, v in arrays.items() if not k.startswith("w_zero_point")}
    old.update({f"w{i}": layer.weight.astype(np.int8) for i, layer in enumerate(params.layers)})
    z = _z_tensors(3, params.in_channels, seed=11)
    for t in z:
        assert np.array_equal(IntHyperDecoder.from_parts(layout, old)(t), params(t))
    no_zp = {k: v for k, v in arrays.items() if k != "w_zero_point0"}
    with pytest.raises(BundleError, match="zero point 128"):
        IntHyperDecoder.from_parts(layout, no_zp)


CONV_OPS = {"Pad", "Slice", "Concat", "Transpose", "Reshape", "MatMulInteger"}  # bundling.hyper._conv_integer


def test_graph_is_integer_only(params):
    model = hyper.build_graph(params)
    ops = {n.op_type for n in model.graph.node}
    assert ops <= {"Clip", "Add", "Cast", "Mul", "BitShift", "DepthToSpace", *CONV_OPS}
    mean_ops = {n.op_type for n in hyper.build_graph(random_params(mean_range=8)).graph.node}
    assert mean_ops <= {"Clip", "Add", "Sub", "Slice", "Cast", "Mul", "BitShift", "DepthToSpace", *CONV_OPS}
    hyper.assert_integer_only(model)
    # The check bites: one float cast on the path is refused.
    model.graph.node.append(helper.make_node("Cast", ["index"], ["index_f"], to=TensorProto.FLOAT))
    model.graph.output.append(helper.make_tensor_value_info("index_f", TensorProto.FLOAT, None))
    with pytest.raises(ValueError, match="floating point"):
        hyper.assert_integer_only(model)


def test_overflowing_parameters_are_refused(params):
    big = [IntLayer(la.weight, la.mult * (1 << 20), la.bias, la.hi, la.up, la.zero_point) for la in params.layers]
    arrays = {f"{k}{i}": v for i, la in enumerate(big) for k, v in (("w", la.weight), ("m", la.mult), ("b", la.bias))}
    with pytest.raises(BundleError, match="overflow"):
        IntHyperDecoder.from_parts(params.layout(), arrays)


def _tiny_model(seed: int = 0, **options):
    torch.manual_seed(seed)
    model = build_model("hyperprior", in_shape=(3, 64, 64), channels=8, latent_channels=6, downsamplings=2,
                        hyper_channels=8, hyper_latent_channels=4, lmbda=0.01, **options)
    with torch.no_grad():  # spread the index (and the means, which start at zero) over their range, as training does
        if options.get("means"):
            torch.nn.init.kaiming_uniform_(model.h_s.last.weight[6:], a=5**0.5)
        model.h_s.last.weight.mul_(40.0)
    return model


@pytest.mark.parametrize(("means", "phases"), [(False, 1), (True, 1), (True, 8)])
def test_integerized_model_matches_its_fake_quantised_float_path(means, phases):
    model = _tiny_model(means=means, mean_range=30, mean_phases=phases)
    model.train()
    rng = np.random.default_rng(0)
    zs = [torch.from_numpy(rng.integers(-6, 7, size=(4, 4, 3, 3)).astype(np.float32)) for _ in range(20)]
    for z in zs:  # the activation-range observers learn their ranges
        model.h_s(z)
    model.eval()
    params = hyper.integerize(model)
    sess = _session(hyper.build_graph(params).SerializeToString(), 1, OPT_LEVELS["all"])
    diffs, total, values = 0, 0, set()
    mean_values: set = set()
    for z in zs:
        with torch.no_grad():
            ref_t, ref_mean = model.scale_index_and_mean(z)
        ref = ref_t.numpy().astype(np.int64)
        outs = sess.run(None, {"z": z.numpy().astype(np.int32)})
        out = outs[0]
        assert np.array_equal(out, params(z.numpy().astype(np.int32)))
        assert np.abs(out - ref).max() <= 1  # fixed-point rounding moves an index by at most one step
        diffs, total = diffs + int((out != ref).sum()), total + out.size
        values |= set(np.unique(out).tolist())
        if means:
            assert len(outs) == 2 and np.array_equal(outs[1], params.decode(z.numpy().astype(np.int32))[1])
            # P = 1: the model's mean is already rounded; P > 1: it is continuous, the graph's is in 1/P steps
            mean = np.floor(ref_mean.numpy().astype(np.float64) * phases + 0.5).astype(np.int64)
            assert np.abs(outs[1] - mean).max() <= 1 and (outs[1] != mean).mean() < 0.01
            mean_values |= set(np.unique(outs[1]).tolist())
        else:
            assert len(outs) == 1 and ref_mean is None
    assert len(values) > 10
    assert diffs / total < 0.01
    assert not means or len(mean_values) > 5


def test_mean_scale_starts_from_a_scale_only_model():
    scale_only = _tiny_model(seed=1)
    scale_only.eval()
    mean_scale = _tiny_model(seed=2, means=True)
    mean_scale.load_base_state(scale_only.state_dict())  # what `edgeae train --init RUN` calls
    mean_scale.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = scale_only(x), mean_scale(x)
        index, mean = mean_scale.scale_index_and_mean(torch.round(mean_scale.hyper_encoder(mean_scale.encoder(x))))
    assert torch.equal(a.extras["likelihoods"], b.extras["likelihoods"]) and torch.equal(a.x_hat, b.x_hat)
    assert mean is not None and not mean.any()
    signed = _tiny_model(seed=2, means=True, hyper_signed=True).eval()
    y = torch.randn(1, 6, 8, 8)
    with torch.no_grad():  # h_a sees the signs (for the means) only when asked to
        assert not torch.equal(signed.hyper_encoder(y), signed.hyper_encoder(-y))
        assert torch.equal(mean_scale.hyper_encoder(y), mean_scale.hyper_encoder(-y))
    with pytest.raises(RuntimeError):  # anything else must fit exactly
        mean_scale.load_base_state({k: v for k, v in scale_only.state_dict().items() if "prior" not in k})


@pytest.mark.parametrize("z_noise", [False, True])
def test_h_s_sees_rounded_or_noisy_z_in_training_and_rounded_z_in_eval(z_noise):
    model = _tiny_model(z_noise=z_noise)
    seen = []
    model.h_s.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    x = torch.rand(2, 3, 64, 64)
    model.train()
    model(x)
    model.eval()
    with torch.no_grad():
        model(x)
    integral = [bool(torch.equal(t, torch.round(t))) for t in seen]
    assert integral == [not z_noise, True]


def test_entropy_tables_are_integer_with_escape():
    model = _tiny_model()
    model.eval()
    section = hyper.entropy_section(model, precision=16)
    assert section["model"] == "hyperprior" and len(section["y"]["tables"]) == K
    for t in section["y"]["tables"] + section["z"]["tables"]:
        f = t["frequencies"]
        assert sum(f) == 1 << 16 and min(f) >= 1 and len(f) >= 2
    widths = [len(t["frequencies"]) for t in section["y"]["tables"]]
    assert widths == sorted(widths) and widths[0] < widths[-1]  # wider tables for larger scales
    # A small scale puts most mass on 0; the escape entry (last) is rare.
    t0 = section["y"]["tables"][0]
    assert t0["frequencies"][-t0["offset"]] > 0.9 * (1 << 16)
    assert t0["frequencies"][-1] < 16


def test_refit_rows_follow_the_counts_and_keep_unseen_rows():
    from edgeae.bundling.calibrate import REFIT_PSEUDO_COUNTS, refit_rows, table_counts

    rows = [[16384] * 4, [30000, 30000, 5536]]
    counts = table_counts(np.array([0, 0, 0, 0, 0, 0]), np.array([1, 1, 1, 1, -5, 9]), np.array([4, 3]))
    assert [c.tolist() for c in counts] == [[0, 4, 0, 2], [0, 0, 0]]  # -5 and 9 are escapes: the last entry
    many = table_counts(np.zeros(10_000, np.int64), np.ones(10_000, np.int64), np.array([4, 3]))
    new = refit_rows(rows, many)
    assert new[1] == rows[1]  # unseen: the model's row exactly
    assert sum(new[0]) == 1 << 16 and min(new[0]) >= 1
    want = (10_000 + REFIT_PSEUDO_COUNTS / 4) / (10_000 + REFIT_PSEUDO_COUNTS)
    assert abs(new[0][1] / (1 << 16) - want) < 1e-3
    with pytest.raises(ValueError, match="refit counts"):
        refit_rows(rows, [np.zeros(3), np.zeros(3)])


@pytest.mark.parametrize(("means", "phases"), [(False, 1), (True, 8)])
def test_exported_tables_are_refit_to_the_calibration_symbols(means, phases):
    """entropy_for refits the y tables to the calibration latents: on those latents, coded with the runtime's
    table choice (graph index, tables_and_base), the refit tables cost fewer bits than the model's Gaussians;
    and z's tables (z channel c in z table c) cost fewer bits than the factorized prior's."""
    from edgeae.runtime.entropy_models.hyperprior import tables_and_base
    from edgeae.runtime.session import make_session

    model = _tiny_model(means=means, **({"mean_range": 30, "mean_phases": phases} if means else {}))
    model.train()
    rng = np.random.default_rng(0)
    for _ in range(20):  # the activation-range observers learn their ranges
        model.h_s(torch.from_numpy(rng.integers(-6, 7, size=(4, 4, 4, 4)).astype(np.float32)))
    model.eval()
    with torch.no_grad():
        latents = (model.encoder(torch.rand(12, 3, 64, 64)) * 3).numpy()
    section = hyper.entropy_for(model, latents, 16)
    refit, gauss = section.entropy["y"]["tables"], hyper.entropy_section(model, 16)["y"]["tables"]
    assert len(refit) == len(gauss) and refit != gauss
    assert all(r["offset"] == g["offset"] and len(r["frequencies"]) == len(g["frequencies"])
               for r, g in zip(refit, gauss, strict=True))
    graph = next(g for g in section.graphs if g.role == "hyper_decoder").onnx_model
    with torch.no_grad():
        z = torch.round(model.hyper_encoder(torch.from_numpy(latents))).numpy().astype(np.int32)
    out = make_session(graph.SerializeToString(), threads=1).run(None, {"z": z})
    table, base = tables_and_base(out[0], out[1] if means else None, phases)
    sym = np.clip(np.round(latents), -128, 127).astype(np.int64) - (0 if base is None else base)

    def bits(tables, table, sym):
        total = 0.0
        for t, v in zip(table.ravel(), sym.ravel(), strict=True):
            f, off = tables[t]["frequencies"], tables[t]["offset"]
            k = v - off if 0 <= v - off < len(f) - 1 else len(f) - 1
            total -= math.log2(f[k] / (1 << 16))
        return total

    assert bits(refit, table, sym) < bits(gauss, table, sym)
    z_refit, z_prior = section.entropy["z"]["tables"], hyper.entropy_section(model, 16)["z"]["tables"]
    assert z_refit != z_prior and [t["offset"] for t in z_refit] == [t["offset"] for t in z_prior]
    channel = np.broadcast_to(np.arange(z.shape[1]).reshape(1, -1, 1, 1), z.shape)
    assert bits(z_refit, channel, z.astype(np.int64)) < bits(z_prior, channel, z.astype(np.int64))


def test_mean_phase_tables_centre_each_gaussian_on_its_phase():
    model = _tiny_model(means=True, mean_phases=4)
    section = hyper.entropy_section(model, precision=16)
    y = section["y"]
    assert y["mean_phases"] == 4 and len(y["tables"]) == 4 * len(y["scales"]) == 4 * K
    k = int(np.argmin(np.abs(np.asarray(y["scales"]) - 0.6)))  # a scale at which the phase matters
    for phase in range(4):
        t = y["tables"][4 * k + phase]
        f = np.asarray(t["frequencies"][:-1], np.float64)  # without the escape
        values = t["offset"] + np.arange(len(f))
        assert abs(float((f * values).sum() / f.sum()) - phase / 4) < 0.02  # the table's mean is its phase
        assert t["frequencies"][-1] < 16
    # the runtime's split of a mean in 1/P steps: floor for the value's base, the rest picks the table
    from edgeae.runtime.entropy_models.hyperprior import tables_and_base

    table, base = tables_and_base(np.array([[3, 3, 0, 5]]), np.array([[-3, 8, 7, -8]]), 8)
    assert base is not None and base.tolist() == [[-1, 1, 0, -1]] and table.tolist() == [[29, 24, 7, 40]]
    table, base = tables_and_base(np.array([2, 9]), None, 8)
    assert base is None and table.tolist() == [2, 9]  # scale-only: the scale index is the table


@pytest.mark.parametrize("means", [False, True])
def test_family_trains_and_reports_both_rates(means):
    from edgeae.train.data import Dataset, DataSpec
    from edgeae.train.trainer import TrainConfig, fit

    model = _tiny_model(means=means)
    rng = np.random.default_rng(0)
    base = rng.random((1, 3, 64, 64)).astype(np.float32)
    train = np.clip(base + 0.05 * rng.standard_normal((16, 3, 64, 64)), 0, 1).astype(np.float32)
    data = Dataset(spec=DataSpec(), train=train, val=train[:4])
    result = fit(model, data, TrainConfig(epochs=3, batch_size=8, lr=2e-3, progress=False))
    hist = result["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    final = result["final"]
    assert final["bpp_z"] > 0 and final["bpp_y"] > 0 and abs(final["bpp"] - final["bpp_y"] - final["bpp_z"]) < 1e-4
    assert model.stride == 16 and model.summary()["hyper_latent_shape"] == [4, 4, 4]
    with pytest.raises(ValueError, match="divisible by its total stride 16"):
        model(torch.zeros(1, 3, 40, 40))


def test_verify_flags_a_single_differing_index(params):
    from edgeae.runtime.inthyper import verify

    z = _z_tensors(1, params.in_channels, seed=3)[0]
    index = params(z)
    verify(params, z, index)
    index = index.copy()
    index.flat[0] = (index.flat[0] + 1) % K
    with pytest.raises(BundleError, match="differ from the integer reference on 1 of"):
        verify(params, z, index)


def test_activation_quantiser_passes_no_gradient_where_its_grid_saturates():
    from edgeae.train.models.hyperprior import ActQuant

    act = ActQuant(momentum=0.0)  # the range stays at the first batch's maximum
    act.train()
    act(torch.tensor([2.0]))
    a = torch.tensor([0.5, 1.9, 2.5, 40.0], requires_grad=True)
    out = act(a)
    out.sum().backward()
    assert torch.equal(out[2:], torch.full((2,), 2.0))  # saturated at the range
    assert a.grad is not None and a.grad.tolist() == [1.0, 1.0, 0.0, 0.0]
