"""Bring your own model: foreign autoencoders (written here, not in edgeae's zoo) through `edgeae.export`,
then a real round trip on the torch-free runtime (Encoder -> payload bytes -> Decoder) with parity asserted;
the CLI with a .py factory and safetensors weights; each export error by type and message.

Models are tiny and mostly untrained: parity (ONNX and the runtime vs PyTorch) does not need a good model.
The int8 test trains its conv model for a few seconds so the dB delta it records means something.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import edgeae
from edgeae.errors import (
    CalibrationError,
    ExportError,
    NonFiniteError,
    ParityError,
    ShapeMismatchError,
    TraceError,
    UnsupportedOperatorError,
)
from edgeae.runtime import Bundle, Decoder, Encoder
from edgeae.runtime.quantize import Quantizer

torch.manual_seed(0)


def blobs(n: int, h: int = 28, w: int = 28, channels: int = 1, seed: int = 0) -> np.ndarray:
    """uint8 images of soft Gaussian blobs, (N, H, W) gray or (N, H, W, C) colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(channels):
        c = rng.uniform(2, min(h, w) - 2, (n, 2, 1, 1))
        r = rng.uniform(6, 30, (n, 1, 1))
        out.append(255 * np.exp(-((yy - c[:, 0]) ** 2 + (xx - c[:, 1]) ** 2) / r))
    a = np.stack(out, -1).astype(np.uint8)
    return a[..., 0] if channels == 1 else a


def round_trip(bundle, x, encoder, decoder, to_graph, from_graph, atol=2e-4):
    """Runtime encode -> bytes -> decode, against PyTorch on the same symbols: returns the decoded output."""
    enc, dec = Encoder(bundle), Decoder(bundle)
    payload = enc.encode(x)
    assert isinstance(payload, bytes) and len(payload) > 0
    q = dec.symbols(payload)
    np.testing.assert_array_equal(q, enc.symbols(x))  # entropy coding is lossless
    graph_in = enc.preprocess(x)
    np.testing.assert_allclose(graph_in, to_graph(x), atol=1e-5)  # the manifest's normalisation, applied
    with torch.no_grad():
        z = encoder(torch.from_numpy(graph_in)).numpy()
    np.testing.assert_allclose(enc.latents(graph_in), z, atol=1e-4 * max(1.0, np.abs(z).max()))
    y_hat = Quantizer(dec.manifest.latent).dequantize(q)
    with torch.no_grad():
        ref = from_graph(decoder(torch.from_numpy(y_hat)).numpy())
    out = dec.decode(payload, as_float=True)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=atol)
    return out


def pixels01(y):
    return np.clip(y, 0.0, 1.0)


def unit(x):
    """uint8 (N, H, W) gray -> float (N, 1, H, W) in [0, 1]."""
    return (x.astype(np.float32) / 255)[:, None]


# --- the six foreign models -----------------------------------------------------------------------------


def test_plain_sequential_mlp_on_flattened_28x28(tmp_path):
    encoder = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 12))
    decoder = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 784), nn.Sigmoid())
    images = blobs(40)
    res = edgeae.export(encoder=encoder, decoder=decoder, out=tmp_path / "mlp", calibration=images,
                        input=edgeae.InputSpec(channels=1, height=28, width=28), measure_speed=False)
    m = res.manifest
    assert m["latent"]["shape"] == [12] and m["input"]["shape"] == [1, 28, 28]
    assert any("flat" in a for a in m["model"]["adapters"])  # both ends wrapped with a reshape
    out = round_trip(tmp_path / "mlp", images[:5], lambda t: encoder(t.flatten(1)),
                     lambda z: decoder(z).reshape(-1, 1, 28, 28), unit, pixels01)
    assert out.shape == (5, 1, 28, 28)
    assert Decoder(tmp_path / "mlp").decode(Encoder(tmp_path / "mlp").encode(images[:2])).shape == (2, 28, 28)
    assert [c.batches for c in res.checks] == [[1, 7], [1, 7]] and all(c.ok for c in res.checks)


class ConvWithMethods(nn.Module):
    """Exposes encode/decode methods only (no encoder/decoder attributes)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 8, 3, stride=2, padding=1))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, width, 3, padding=1), nn.ReLU(),
                                nn.Upsample(scale_factor=2), nn.Conv2d(width, 1, 3, padding=1), nn.Sigmoid())

    def encode(self, x):
        return self.down(x)

    def decode(self, z):
        return self.up(z)

    def forward(self, x):
        return self.decode(self.encode(x))


def test_conv_autoencoder_with_encode_decode_methods_any_size(tmp_path):
    model = ConvWithMethods()
    images = blobs(30)
    res = edgeae.export(model=model, encode="encode", decode="decode", out=tmp_path / "conv",
                        input=edgeae.InputSpec(channels=1, height=28, width=28, dynamic_size=True),
                        calibration=images, measure_speed=False)
    m = res.manifest
    assert m["latent"]["shape"] == [8, 7, 7] and m["latent"]["stride"] == 4 and m["input"]["size_multiple"] == 4
    assert m["model"]["encoder"].endswith("ConvWithMethods.encode")
    round_trip(tmp_path / "conv", images[:4], model.encode, model.decode, unit, pixels01)
    # The graphs really take another size (what the any-size runtime relies on), checked at export too.
    assert [len(c.batches) for c in res.checks] == [3, 3]
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(tmp_path / "conv" / "encoder.onnx")).graph.input[0]
            .type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    x = np.random.default_rng(0).random((2, 1, 36, 20), dtype=np.float32)
    from edgeae.runtime.session import make_session

    z = make_session(tmp_path / "conv" / "encoder.onnx").run(None, {"image": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(z, model.encode(torch.from_numpy(x)).numpy(), atol=1e-5)
    # Through the runtime at a size that is not a multiple of 4: padded, coded, decoded, cropped back.
    odd = blobs(2, 30, 22)
    enc, dec = Encoder(tmp_path / "conv"), Decoder(tmp_path / "conv")
    out = dec.decode(enc.encode(odd), as_float=True)
    assert out.shape == (2, 1, 30, 22)
    y_hat = Quantizer(dec.manifest.latent).dequantize(enc.symbols(odd))
    assert y_hat.shape == (2, 8, 8, 6)
    with torch.no_grad():
        ref = model.decode(torch.from_numpy(y_hat)).numpy()[:, :, :30, :22]
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=2e-4)
    # Found by default too: no encoder/decoder attributes, so the encode/decode methods.
    res2 = edgeae.export(model=model, out=tmp_path / "conv2", calibration=images, measure_speed=False,
                         input=edgeae.InputSpec(channels=1, height=28, width=28))
    assert res2.manifest["latent"]["shape"] == [8, 7, 7] and "size_multiple" not in res2.manifest["input"]


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.mu, self.logvar = nn.Linear(32, 6), nn.Linear(32, 6)
        self.dec = nn.Sequential(nn.Linear(6, 64), nn.Sigmoid(), nn.Unflatten(1, (1, 8, 8)))

    def encode(self, x):
        h = self.trunk(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        return self.dec(z)

    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decode(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))


def test_vae_returning_mu_logvar_exports_only_the_mean_path(tmp_path):
    model = VAE()
    images = blobs(30, 8, 8)
    spec = edgeae.InputSpec(channels=1, height=8, width=8)
    with pytest.raises(ShapeMismatchError, match=r"returns 2 outputs .* pass latent_output="):
        edgeae.export(model=model, out=tmp_path / "v0", input=spec, calibration=images)
    res = edgeae.export(model=model, latent_output=0, out=tmp_path / "vae", input=spec, calibration=images,
                        measure_speed=False)
    graph = onnx.load(str(tmp_path / "vae" / "encoder.onnx")).graph
    assert len(graph.output) == 1
    gemm_weights = {i for n in graph.node if n.op_type == "Gemm" for i in n.input}
    assert not any("logvar" in name for name in gemm_weights) and len([n for n in graph.node if n.op_type == "Gemm"]) == 2
    assert res.manifest["latent"]["shape"] == [6]
    round_trip(tmp_path / "vae", images[:6], lambda t: model.encode(t)[0], model.decode, unit, pixels01)


class RGBNet(nn.Module):
    def __init__(self, sigmoid: bool) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(4, 3, 3, padding=1),
                                     *([nn.Sigmoid()] if sigmoid else []))


def test_mean_std_normalised_model_decodes_to_correct_pixels(tmp_path):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = RGBNet(sigmoid=False)
    images = blobs(24, 16, 16, channels=3)  # (N, H, W, 3) uint8
    res = edgeae.export(model=model, out=tmp_path / "norm", calibration=images, measure_speed=False,
                        input=edgeae.InputSpec(channels=3, height=16, width=16, mean=mean, std=std))
    inp = res.manifest["input"]
    np.testing.assert_allclose(inp["scale"], [1 / (255 * s) for s in std])
    np.testing.assert_allclose(inp["offset"], [-m / s for m, s in zip(mean, std, strict=True)])
    m, s = np.array(mean, np.float32)[:, None, None], np.array(std, np.float32)[:, None, None]

    def to_graph(x):
        return (x.transpose(0, 3, 1, 2).astype(np.float32) / 255 - m) / s

    def from_graph(y):  # the model speaks normalised tensors: back to pixels, then clipped
        return np.clip(y * s + m, 0, 1)

    out = round_trip(tmp_path / "norm", images[:4], model.encoder, model.decoder, to_graph, from_graph)
    # Without the inverse the output would be far off: the test can fail.
    with torch.no_grad():
        raw = model.decoder(model.encoder(torch.from_numpy(to_graph(images[:4])))).numpy()
    assert np.abs(np.clip(raw, 0, 1) - out).max() > 0.05
    u8 = Decoder(tmp_path / "norm").decode(Encoder(tmp_path / "norm").encode(images[:4]))
    assert u8.shape == (4, 16, 16, 3) and u8.dtype == np.uint8


def test_non_sigmoid_decoder_on_minus_one_one_is_clipped(tmp_path):
    model = RGBNet(sigmoid=False)
    with torch.no_grad():
        model.decoder[1].bias += 1.5  # push outputs past 1 so clipping is exercised
    images = blobs(24, 16, 16, channels=3, seed=1)
    res = edgeae.export(model=model, out=tmp_path / "clip", calibration=images, measure_speed=False,
                        input=edgeae.InputSpec(channels=3, height=16, width=16, range=(-1, 1)))
    assert res.manifest["input"]["scale"] == pytest.approx(2 / 255) and res.manifest["input"]["offset"] == -1.0

    def to_graph(x):
        return x.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1

    with torch.no_grad():
        raw = model.decoder(model.encoder(torch.from_numpy(to_graph(images[:4])))).numpy()
    assert raw.max() > 1.0  # really outside the model's range
    out = round_trip(tmp_path / "clip", images[:4], model.encoder, model.decoder, to_graph,
                     lambda y: np.clip((y + 1) / 2, 0, 1))
    assert out.min() >= 0.0 and out.max() == 1.0
    u8 = Decoder(tmp_path / "clip").decode(Encoder(tmp_path / "clip").encode(images[:4]))
    assert u8.max() == 255


class GDN(nn.Module):
    """Generalized divisive normalisation (Ballé et al. 2016), CompressAI's parametrisation without the
    reparameterised bounds: y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2); inverse: multiply."""

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels) + 0.01)

    def forward(self, x):
        norm = nn.functional.conv2d(x * x, self.gamma[:, :, None, None], self.beta)
        norm = torch.sqrt(norm)
        return x * norm if self.inverse else x / norm


class CompressAIStyle(nn.Module):
    """bmshj2018-factorized's shape: g_a = strided 5x5 convs + GDN, g_s = transposed convs + inverse GDN;
    integer rounding with its own entropy tables through the edgeae_entropy protocol."""

    def __init__(self, n: int = 8, m: int = 6) -> None:
        super().__init__()
        self.g_a = nn.Sequential(nn.Conv2d(1, n, 5, stride=2, padding=2), GDN(n), nn.Conv2d(n, m, 5, stride=2, padding=2))
        self.g_s = nn.Sequential(nn.ConvTranspose2d(m, n, 5, stride=2, padding=2, output_padding=1), GDN(n, True),
                                 nn.ConvTranspose2d(n, 1, 5, stride=2, padding=2, output_padding=1))
        with torch.no_grad():
            self.g_a[-1].weight *= 8  # latents spanning several integers, like a trained codec's

    def edgeae_entropy(self, latents, precision):
        from edgeae.bundling.calibrate import histogram_tables
        from edgeae.bundling.protocol import EntropySection

        r = np.round(latents)
        lo = r.min(axis=(0, 2, 3))
        levels = int((r.max(axis=(0, 2, 3)) - lo).max()) + 1
        symbols = (r - lo[None, :, None, None]).astype(np.int64)
        return EntropySection(quantization={"bits": int(np.ceil(np.log2(max(levels, 2)))), "levels": levels,
                                            "offset": lo.tolist(), "step": [1.0] * len(lo)},
                              entropy=histogram_tables(symbols, levels, precision=precision),
                              model={"name": "integer rounding + histogram (test)"},
                              size_multiple=8)  # as if it downsampled the latent once more (a hyperprior's z)


def test_compressai_style_codec_with_gdn_and_its_own_entropy_model(tmp_path):
    model = CompressAIStyle()
    images = blobs(24, 16, 16)
    res = edgeae.export(model=model, encode="g_a", decode="g_s", out=tmp_path / "gdn", calibration=images,
                        input=edgeae.InputSpec(channels=1, height=16, width=16, dynamic_size=True),
                        measure_speed=False)
    m = res.manifest
    assert m["latent"]["quantization"]["step"] == [1.0] * 6 and m["latent"]["stride"] == 4
    assert m["input"]["size_multiple"] == 8  # lcm(latent stride 4, the entropy model's 8)
    assert res.checks[0].results[-1].size == (1, 24, 32)  # the any-size check ran at the reference + 8, + 16
    assert all(float(v).is_integer() for v in m["latent"]["quantization"]["offset"])
    assert m["model"]["entropy_model"]["name"].startswith("integer rounding")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "gdn" / "decoder.onnx")).graph.node}
    assert {"ConvTranspose", "Sqrt"} <= ops
    out = round_trip(tmp_path / "gdn", images[:4], model.g_a, model.g_s, unit, pixels01)
    # The runtime's symbols are the rounded latents themselves (step 1, integer offsets).
    enc = Encoder(tmp_path / "gdn")
    with torch.no_grad():
        y = model.g_a(torch.from_numpy(unit(images[:4]))).numpy()
    offset = np.array(m["latent"]["quantization"]["offset"])[None, :, None, None]
    q = np.clip(np.round(y) - offset, 0, m["latent"]["quantization"]["levels"] - 1)
    assert np.mean(enc.symbols(images[:4]) == q) > 0.99
    assert out.shape == (4, 1, 16, 16)


class SensorAE(nn.Module):
    """A 1-D conv autoencoder on 6-channel sensor windows of 64 samples (raw, standardised floats)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(6, 8, 5, stride=2, padding=2), nn.ReLU(), nn.Conv1d(8, 4, 5, stride=2, padding=2))
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(),
                                     nn.Upsample(scale_factor=2), nn.Conv1d(8, 6, 5, padding=2))


def test_sensor_windows_are_tensors_not_images(tmp_path):
    rng = np.random.default_rng(0)
    t = np.linspace(0, 8 * np.pi, 64)
    mean, std = np.array([0, 5, -3, 100, 0, 1.0]), np.array([1, 2, 0.5, 20, 3, 1.0])
    windows = (np.sin(t + rng.uniform(0, 6, (40, 6, 1))) * std[:, None] + mean[:, None]).astype(np.float32)
    model = SensorAE()
    res = edgeae.export(model=model, out=tmp_path / "imu", calibration=windows, measure_speed=False,
                        input=edgeae.InputSpec(shape=(6, 64), mean=mean.tolist(), std=std.tolist()))
    inp = res.manifest["input"]
    assert inp["kind"] == "tensor" and inp["layout"] == "NCL" and "channel_order" not in inp
    assert res.manifest["quality"]["metric"] == "snr" and "snr_onnx_fp32" in res.manifest["quality"]
    assert res.manifest["graphs"]["encoder"]["input"] == "input"
    s, m = std.astype(np.float32)[:, None], mean.astype(np.float32)[:, None]
    out = round_trip(tmp_path / "imu", windows[:5], model.encoder, model.decoder, lambda x: (x - m) / s,
                     lambda y: y * s + m, atol=2e-3)
    assert out.shape == (5, 6, 64) and out.dtype == np.float32
    # The same on a runtime where torch cannot be imported at all.
    np.save(tmp_path / "w.npy", windows[:3])
    code = f"""
        import sys; sys.modules["torch"] = None
        import numpy as np
        from edgeae.runtime import Decoder, Encoder
        x = np.load({str(tmp_path / "w.npy")!r})
        y = Decoder({str(tmp_path / "imu")!r}).decode(Encoder({str(tmp_path / "imu")!r}).encode(x))
        print(y.shape, y.dtype, float(np.abs(y - x).mean()) < 50)
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(3,", "6,", "64)", "float32", "True"]
    with pytest.raises(CalibrationError, match=r"calibration tensors have shape \(6, 32\)"):
        edgeae.export(model=model, out=tmp_path / "bad", calibration=windows[:, :, :32],
                      input=edgeae.InputSpec(shape=(6, 64)))


# --- int8 of a foreign conv model, with its dB delta in the manifest ----------------------------------


@pytest.mark.slow
def test_int8_export_of_a_trained_foreign_conv_model_records_its_db_delta(tmp_path):
    torch.manual_seed(0)
    model = ConvWithMethods(width=32)
    images = blobs(200)
    x = torch.from_numpy(unit(images))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        batch = x[torch.randint(0, len(x), (32,))]
        loss = nn.functional.mse_loss(model(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    res = edgeae.export(model=model, out=tmp_path / "q", calibration=images, int8=True, calibration_samples=64,
                        input=edgeae.InputSpec(channels=1, height=28, width=28))
    m = json.loads((tmp_path / "q" / "manifest.json").read_text())
    q, g = m["quality"], m["int8"]["graphs"]
    assert q["psnr_fp32_quantized_latent"] > 20  # it learned something, so the delta is meaningful
    for role in ("encoder", "decoder"):
        assert abs(g[role]["psnr_drop_db"]) <= m["int8"]["max_drop_db"]
        assert g[role]["bytes_int8"] < g[role]["bytes_fp32"] and "int8_faster" in g[role]
    assert res.int8_verdicts["encoder"]["delta_db"] == pytest.approx(-g["encoder"]["psnr_drop_db"])
    text = str(res)
    assert "int8" in text and "dB vs fp32" in text and "encoder.int8.onnx" in text
    enc, dec = Encoder(tmp_path / "q", "int8"), Decoder(tmp_path / "q", "int8")
    assert dec.decode(enc.encode(images[:3])).shape == (3, 28, 28)


# --- the entropy protocol's extra graphs ------------------------------------------------------------------


class WithSideGraphs(ConvWithMethods):
    """Brings an entropy model with two extra graphs: a traced module and a hand-built integer ONNX graph."""

    def edgeae_entropy(self, latents, precision):
        from onnx import TensorProto, helper

        from edgeae.bundling.calibrate import calibrate_quantization, histogram_tables
        from edgeae.bundling.protocol import EntropySection, ExtraGraph
        from edgeae.runtime.manifest import LatentSpec, Quantization
        from edgeae.runtime.quantize import Quantizer as Q

        quant = calibrate_quantization(latents, 4)
        spec = LatentSpec(latents.shape[1:], 1, Quantization(4, 16, tuple(quant["offset"]), tuple(quant["step"])))
        symbols = Q(spec).quantize(latents)
        node = helper.make_node("Add", ["symbols", "one"], ["index"])
        graph = helper.make_graph([node], "side", [helper.make_tensor_value_info("symbols", TensorProto.INT64, ["n", 8])],
                                  [helper.make_tensor_value_info("index", TensorProto.INT64, ["n", 8])],
                                  [helper.make_tensor("one", TensorProto.INT64, [], [1])])
        integer = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        example = np.arange(24, dtype=np.int64).reshape(3, 8)
        return EntropySection(
            quantization=quant, entropy=histogram_tables(symbols, 16, precision=precision),
            graphs=[ExtraGraph("side_index", "symbols", "index", example, onnx_model=integer,
                               reference=lambda s: s + 1),
                    ExtraGraph("side_net", "z", "scales", np.random.default_rng(0).random((4, 8), dtype=np.float32),
                               module=nn.Sequential(nn.Linear(8, 8), nn.Softplus()))])


def test_entropy_protocol_extra_graphs_are_listed_hashed_fingerprinted_and_verified(tmp_path):
    images = blobs(20)
    spec = edgeae.InputSpec(channels=1, height=28, width=28)
    model = WithSideGraphs()
    res = edgeae.export(model=model, out=tmp_path / "side", calibration=images, input=spec, measure_speed=False)
    m = res.manifest
    assert set(m["graphs"]) == {"encoder", "decoder", "side_index", "side_net"}
    assert m["graphs"]["side_index"].items() >= {"file": "side_index.onnx", "input": "symbols", "output": "index",
                                                 "opset": 17, "int8_file": None}.items()
    b = Bundle.open(tmp_path / "side")  # every file checked against its sha256
    for role in ("side_index", "side_net"):
        path = b.graph_path(role)
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert meta["edgeae.fingerprint"] == m["fingerprint"] and meta["edgeae.role"] == role
    assert {c.role for c in res.checks} >= {"side_index", "side_net"}
    # The same model without extra graphs has another fingerprint: the extras are part of the identity.
    plain = edgeae.export(model=ConvWithMethods(), out=tmp_path / "plain", calibration=images, input=spec,
                          measure_speed=False)
    assert plain.manifest["fingerprint"] != m["fingerprint"]
    round_trip(tmp_path / "side", images[:2], model.encode, model.decode, unit, pixels01)

    class WrongReference(WithSideGraphs):
        def edgeae_entropy(self, latents, precision):
            section = super().edgeae_entropy(latents, precision)
            section.graphs[0].reference = lambda s: s + 2
            return section

    with pytest.raises(ParityError, match=r"side_index.onnx: batch 3 output 'index' max abs error 1 \(item 0"):
        edgeae.export(model=WrongReference(), out=tmp_path / "wrong", calibration=images, input=spec)
    assert not (tmp_path / "wrong").exists()


# --- errors: type and message ------------------------------------------------------------------------------


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2, 1, 3, padding=1))

    def forward(self, x):
        return self.decoder(self.encoder(x))


class IfPositive(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)

    def forward(self, x):
        if x.mean() > 0.5:  # data-dependent control flow
            return self.conv(x) * 2
        return self.conv(x)


class ItemScale(nn.Module):
    """Reads a value out of the tensor: the trace freezes it as a constant, so ONNX differs on other inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x) / (float(x.mean()) + 0.01)


class FoldDecoder(nn.Module):
    def forward(self, z):  # (N, 2, 14, 14) -> patches -> (N, 1, 28, 28) through aten::col2im (opset 18+)
        cols = z.reshape(len(z), 2, 196)[:, :1].expand(-1, 4, -1).reshape(len(z), 4, 196)
        return nn.functional.fold(cols, (28, 28), 2, stride=2)


def _spec():
    return edgeae.InputSpec(channels=1, height=28, width=28)


def test_each_export_error_is_typed_with_a_one_line_message_and_leaves_nothing(tmp_path):
    images = blobs(12)
    base = Branchy()
    cases = [
        (TraceError, r"the encoder branches on tensor values \(test_byo_export.py:\d+\)",
         {"encoder": IfPositive(), "decoder": base.decoder}),
        (UnsupportedOperatorError, r"the decoder uses an operator ONNX opset 17 cannot express: .*col2im.*\(--opset, 13\.\.21\)",
         {"encoder": base.encoder, "decoder": FoldDecoder()}),
        (ParityError, r"encoder.onnx: batch \d at 28x28 output 'latent' max abs error [0-9.e-]+ \(item \d+, relative",
         {"encoder": ItemScale(), "decoder": base.decoder}),
        (ShapeMismatchError, r"the decoder gives \(2, 1, 27, 27\) .* input is \(2, 1, 28, 28\)",
         {"encoder": base.encoder, "decoder": nn.Sequential(base.decoder, nn.Conv2d(1, 1, 2))}),
        (NonFiniteError, r"latent \(PyTorch\) on validation data holds NaN or infinity \(item 0",
         {"encoder": nn.Sequential(base.encoder, nn.Hardtanh(-1, -0.5), _Log()), "decoder": base.decoder}),
        (TraceError, r"the encoder fails on a \(2, 1, 28, 28\) float32 batch: RuntimeError",
         {"encoder": nn.Linear(10, 2), "decoder": base.decoder}),
    ]
    for i, (cls, pattern, modules) in enumerate(cases):
        out = tmp_path / f"b{i}"
        with pytest.raises(cls, match=pattern) as err:
            edgeae.export(**modules, out=out, input=_spec(), calibration=images, measure_speed=False)
        assert "\n" not in str(err.value) and isinstance(err.value, ExportError)
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folders left either
    with pytest.raises(CalibrationError, match=r"calibration images have shape \(1, 16, 16\) but the model takes"):
        edgeae.export(model=base, out=tmp_path / "c", input=_spec(), calibration=unit(blobs(4, 16, 16)))
    with pytest.raises(CalibrationError, match=r"float images must be in \[0, 1\], got values in \[0.0, 2"):
        edgeae.export(model=base, out=tmp_path / "c", input=_spec(), calibration=unit(images) * 255)
    with pytest.raises(CalibrationError, match="holds no image files"):
        edgeae.export(model=base, out=tmp_path / "c", input=_spec(), calibration=tmp_path)
    fixed = nn.Sequential(nn.Conv2d(2, 1, 3, padding=1), nn.Upsample(size=(28, 28)))
    with pytest.raises(ShapeMismatchError, match=r"dynamic_size: at 30x32 the decoder gives \(1, 28, 28\)"):
        edgeae.export(encoder=base.encoder, decoder=fixed, out=tmp_path / "c", calibration=images,
                      input=edgeae.InputSpec(channels=1, height=28, width=28, dynamic_size=True))
    dense = nn.Sequential(nn.Flatten(), nn.Linear(784, 4))
    with pytest.raises(ShapeMismatchError, match=r"dynamic_size needs a \(C, H/s, W/s\) latent"):
        edgeae.export(encoder=dense, decoder=nn.Sequential(nn.Linear(4, 784), nn.Unflatten(1, (1, 28, 28))),
                      out=tmp_path / "c", calibration=images,
                      input=edgeae.InputSpec(channels=1, height=28, width=28, dynamic_size=True))
    with pytest.raises(ExportError, match="opset 7 is not supported"):
        edgeae.export(model=base, out=tmp_path / "c", input=_spec(), calibration=images, opset=7)
    assert not (tmp_path / "c").exists()


class _Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


def test_calibration_from_a_folder_of_images_an_iterable_and_a_tensor(tmp_path):
    from PIL import Image

    images = blobs(16)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:02d}.png")
    Image.fromarray(np.stack([images[0]] * 3, -1)).save(folder / "zz-rgb.png")
    model = Branchy()
    with pytest.raises(CalibrationError, match="zz-rgb.png is a colour image .* takes gray"):
        edgeae.export(model=model, out=tmp_path / "a", input=_spec(), calibration=folder)
    (folder / "zz-rgb.png").unlink()
    results = [edgeae.export(model=model, out=tmp_path / name, input=_spec(), calibration=data, measure_speed=False)
               for name, data in (("folder", folder), ("array", images),
                                  ("loader", [(torch.from_numpy(unit(images[i:i + 4])), 0) for i in range(0, 16, 4)]))]
    # The same images in three forms calibrate the same latent (float input differs from uint8 by an ulp).
    for r in results[1:]:
        for key in ("offset", "step"):
            np.testing.assert_allclose(r.manifest["latent"]["quantization"][key],
                                       results[0].manifest["latent"]["quantization"][key], rtol=1e-5)


# --- the CLI: a .py factory, safetensors weights, errors as one line ---------------------------------------

FACTORY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(4, 1, 3, padding=1), nn.Sigmoid())


def make():
    return Net()


def broken():
    raise RuntimeError("needs a config file")


class Sensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv1d(3, 2, 4, stride=4)
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv1d(2, 3, 3, padding=1))


def sensor():
    return Sensor()


class Gauss(nn.Module):
    def __init__(self):
        super().__init__()
        self.mu, self.logvar, self.out = nn.Linear(256, 4), nn.Linear(256, 4), nn.Linear(4, 256)

    def encode(self, x):
        return self.mu(x.flatten(1)), self.logvar(x.flatten(1))

    def decode(self, z):
        return torch.sigmoid(self.out(z)).reshape(-1, 1, 16, 16)


def vae():
    return Gauss()
'''


def test_cli_exports_a_py_factory_with_safetensors_weights(tmp_path):
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from edgeae.cli import main

    (tmp_path / "mymodel.py").write_text(FACTORY)
    sys.path.insert(0, str(tmp_path))
    try:
        import mymodel  # noqa: F401 - the same class the CLI will build, to make weights for it
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(3)
    trained = sys.modules["mymodel"].make()
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    torch.save(trained, tmp_path / "pickled.pt")  # a whole pickled model: refused, never unpickled
    np.save(tmp_path / "calib.npy", blobs(20, 16, 16))
    runner = CliRunner()
    args = ["export", "--model", f"{tmp_path / 'mymodel.py'}:make", "--input-shape", "1,16,16",
            "--calibration-data", str(tmp_path / "calib.npy"), "--no-speed"]
    res = runner.invoke(main, [*args, "--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "decoder.onnx" in res.output and "OK" in res.output
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["source"]["model"].endswith("mymodel.py:make") and len(m["source"]["weights_sha256"]) == 64
    # The trained weights are what was exported: the runtime reproduces the trained model, not a fresh one.
    x = blobs(3, 16, 16)
    round_trip(tmp_path / "b", x, trained.encoder, trained.decoder, unit, pixels01)
    res = runner.invoke(main, [*args, "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "pt"),
                               "--int8-roles", "encoder", "--calibration-samples", "8"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "pt" / "manifest.json").read_text())["graphs"]["decoder"]["int8_file"] is None
    pt = json.loads((tmp_path / "pt" / "manifest.json").read_text())  # same weights, same fp32 graphs
    assert [pt["graphs"][r]["digest"] for r in ("encoder", "decoder")] == \
        [m["graphs"][r]["digest"] for r in ("encoder", "decoder")]
    assert pt["fingerprint"] != m["fingerprint"]  # the int8 encoder is part of the fingerprint
    bad = {
        "pickled": ([*args, "--weights", str(tmp_path / "pickled.pt")], "is not a plain state_dict"),
        "factory": ([*args[:2], f"{tmp_path / 'mymodel.py'}:broken", *args[3:]],
                    r"the factory .*:broken raised RuntimeError: needs a config file \(mymodel.py:\d+\)"),
        "missing": ([*args[:2], f"{tmp_path / 'mymodel.py'}:nope", *args[3:]], "has no 'nope'; callables there: "),
        "weights": ([*args, "--weights", str(tmp_path / "calib.npy")], "use .safetensors"),
        "shape": ([*args[:4], "1,28,28", *args[5:]], "calibration images have shape"),
    }
    for name, (argv, pattern) in bad.items():
        res = runner.invoke(main, [*argv, "--out", str(tmp_path / name)])
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error:"), (name, res.output)
        assert __import__("re").search(pattern, lines[0]), (name, lines[0])
        assert not (tmp_path / name).exists()
    res = runner.invoke(main, ["export", str(tmp_path), "--model", "x.py:f"])
    assert res.exit_code == 2 and "not both" in res.output
    # A VAE's (mu, logvar) by method names and --latent-output; a sensor model's tensors with mean/std.
    vae = ["export", "--model", f"{tmp_path / 'mymodel.py'}:vae", "--encoder-attr", "encode", "--decoder-attr",
           "decode", "--input-shape", "1,16,16", "--calibration-data", str(tmp_path / "calib.npy"), "--no-speed"]
    res = runner.invoke(main, [*vae, "--out", str(tmp_path / "v1")])
    assert res.exit_code == 1 and "returns 2 outputs" in res.output and not (tmp_path / "v1").exists()
    res = runner.invoke(main, [*vae, "--latent-output", "0", "--out", str(tmp_path / "v2")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "v2" / "manifest.json").read_text())["latent"]["shape"] == [4]
    np.save(tmp_path / "windows.npy", np.random.default_rng(0).normal(1, 2, (16, 3, 32)).astype(np.float32))
    res = runner.invoke(main, ["export", "--model", f"{tmp_path / 'mymodel.py'}:sensor", "--input-shape", "3,32",
                               "--mean", "1,1,1", "--std", "2,2,2", "--calibration-data", str(tmp_path / "windows.npy"),
                               "--out", str(tmp_path / "s"), "--no-speed"])
    assert res.exit_code == 0, res.output
    inp = json.loads((tmp_path / "s" / "manifest.json").read_text())["input"]
    assert inp["kind"] == "tensor" and inp["shape"] == [3, 32] and inp["scale"] == 0.5 and inp["offset"] == -0.5


def test_cli_error_from_a_real_process_has_no_traceback(tmp_path):
    (tmp_path / "m.py").write_text(FACTORY)
    np.save(tmp_path / "c.npy", blobs(8, 16, 16))
    cli = "import sys; from edgeae.cli import main; main(sys.argv[1:], prog_name='edgeae')"
    done = subprocess.run([sys.executable, "-c", cli, "export", "--model", f"{tmp_path / 'm.py'}:broken",
                           "--input-shape", "1,16,16", "--calibration-data", str(tmp_path / "c.npy"),
                           "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().startswith("Error: the factory") and not (tmp_path / "b").exists()


def test_export_docs_example_runs(tmp_path, monkeypatch):
    """docs/EXPORT.md's copy-paste example, as written (the two python blocks of "In one minute")."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "EXPORT.md").read_text()
    section = text.split("## In one minute", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], "EXPORT.md", "exec"), scope)  # noqa: S102 - our own documentation
    exec(compile(blocks[1], "EXPORT.md", "exec"), scope)  # noqa: S102
    assert scope["restored"].shape == (4, 28, 28) and (tmp_path / "export" / "tiny-ae" / "manifest.json").exists()
    assert scope["result"].manifest["int8"] is not None


def test_an_rgb_file_to_a_gray_bundle_is_refused_unless_converted(tmp_path):
    """Issue 17.3: a colour file given to a gray bundle behaves like a colour array (refused), and the reverse;
    --convert (Encoder(convert=True)) asks for Pillow's conversion instead."""
    from click.testing import CliRunner
    from PIL import Image

    from edgeae.cli import main
    from edgeae.errors import InputError

    gray = blobs(12, 16, 16)
    edgeae.export(model=Branchy(), out=tmp_path / "g", calibration=gray, measure_speed=False,
                  input=edgeae.InputSpec(channels=1, height=16, width=16))
    Image.fromarray(np.stack([gray[0]] * 3, -1)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="is a colour image"):
        Encoder(tmp_path / "g").encode(tmp_path / "rgb.png")
    assert Encoder(tmp_path / "g", convert=True).encode(tmp_path / "rgb.png") == Encoder(tmp_path / "g").encode(gray[:1])
    runner = CliRunner()
    res = runner.invoke(main, ["encode", str(tmp_path / "rgb.png"), "--bundle", str(tmp_path / "g"), "--out",
                               str(tmp_path / "e")])
    assert res.exit_code == 1 and "is a colour image (mode RGB) but this bundle takes gray" in res.output
    res = runner.invoke(main, ["encode", str(tmp_path / "rgb.png"), "--bundle", str(tmp_path / "g"), "--out",
                               str(tmp_path / "e"), "--convert"])
    assert res.exit_code == 0, res.output
    rgb = RGBNet(sigmoid=True)
    edgeae.export(model=rgb, out=tmp_path / "c", calibration=blobs(12, 16, 16, channels=3), measure_speed=False,
                  input=edgeae.InputSpec(channels=3, height=16, width=16))
    Image.fromarray(gray[0]).save(tmp_path / "gray.png")
    with pytest.raises(InputError, match=r"is a gray image \(mode L\) but this bundle takes colour"):
        Encoder(tmp_path / "c").preprocess(tmp_path / "gray.png")
    assert Encoder(tmp_path / "c", convert=True).preprocess(tmp_path / "gray.png").shape == (1, 3, 16, 16)


def test_int8_for_the_encoder_only(tmp_path):
    """int8="encoder": an int8 encoder (the device side) with the fp32 decoder only; the runtime pairs them."""
    images = blobs(16)
    res = edgeae.export(model=Branchy(), out=tmp_path / "e8", calibration=images, int8="encoder",
                        input=_spec(), measure_speed=False, calibration_samples=8)
    m = res.manifest
    assert m["graphs"]["encoder"]["int8_file"] == "encoder.int8.onnx" and m["graphs"]["decoder"]["int8_file"] is None
    assert set(m["int8"]["graphs"]) == {"encoder"} and "psnr_onnx_int8" in m["quality"]
    assert sorted(p.name for p in (tmp_path / "e8").glob("*.onnx")) == ["decoder.onnx", "encoder.int8.onnx",
                                                                         "encoder.onnx"]
    payload = Encoder(tmp_path / "e8", "int8").encode(images[:3])
    assert Decoder(tmp_path / "e8").decode(payload).shape == (3, 28, 28)
    with pytest.raises(ExportError, match="int8 takes True/False or the roles encoder / decoder, got 'middle'"):
        edgeae.export(model=Branchy(), out=tmp_path / "x", calibration=images, int8=("middle",), input=_spec())
