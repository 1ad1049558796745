"""The learned codec family: training, the exported entropy tables, sizes, and the export/runtime round trip."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgeae.train.models import build_model, make_config


def _codec(c=1, h=16, w=16, **opts):
    opts = {"channels": 16, "latent_channels": 8, "downsamplings": 2, **opts}
    return build_model("codec", make_config("codec", in_shape=(c, h, w), **opts))


def _images(n, c, h, w, seed=0):
    """Smooth random images (blurred noise): learnable structure, not white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h // 4, w // 4, generator=g)
    return torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def _train(model, x, steps, lr=3e-3):
    opt = model.configure_optimizer(lr)
    losses = []
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        loss = model.loss(model(x), x).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_registered_with_the_contract_defaults():
    m = build_model("codec", in_shape=(1, 28, 28))
    assert m.family == "codec" and m.config.loss == "mse"
    assert m.latent_shape == (m.config.latent_channels, 7, 7)
    out = m(torch.rand(2, 1, 28, 28))
    assert set(out.extras) == {"likelihoods"} and out.extras["likelihoods"].shape == out.latent.shape
    lo = m.loss(out, torch.rand(2, 1, 28, 28))
    assert set(lo.terms) == {"bpp", "distortion"}


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 16, 16), (1, 28, 28), (3, 8, 24), (1, 32, 64)])
def test_gray_and_rgb_at_several_sizes(shape):
    c, h, w = shape
    m = _codec(c, h, w).eval()
    x = torch.rand(3, c, h, w)
    with torch.no_grad():
        y = m.encoder(x)
        out = m(x)
    assert y.shape == (3, 8, h // 4, w // 4)
    assert out.x_hat.shape == x.shape and 0 <= float(out.x_hat.min()) and float(out.x_hat.max()) <= 1
    with torch.no_grad():
        assert torch.equal(out.x_hat, m.decoder(torch.round(y)))  # eval: hard rounding, decoder = g_s


def test_sizes_not_divisible_by_the_stride_are_refused():
    with pytest.raises(ValueError, match="not divisible by its total stride 4"):
        _codec(1, 30, 28)
    m = _codec(1, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        m(torch.rand(1, 1, 18, 16))


def test_same_weights_at_another_input_size():
    small = _codec(3, 16, 16)
    big = _codec(3, 32, 48)
    big.load_state_dict(small.state_dict(), strict=True)
    x = torch.rand(1, 3, 32, 48)
    small.eval(), big.eval()
    assert torch.equal(small.encoder(x), big.encoder(x))


def test_training_decreases_the_rate_distortion_loss():
    x = _images(16, 1, 16, 16)
    m = _codec(lmbda=0.01)
    losses = _train(m, x, 60)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


@pytest.mark.parametrize("family", ["codec", "hyperprior"])
def test_rate_ste_trains_the_rate_of_the_rounded_symbols(family):
    # rate_ste: the training rate is the rate of round(y), the symbols the coder codes: eval's y rate, no
    # noise, with gradients to the encoder through the straight-through rounding
    opts = {"channels": 16, "latent_channels": 8, "downsamplings": 2}
    if family == "hyperprior":
        opts = {**opts, "hyper_channels": 8, "hyper_latent_channels": 4}
    torch.manual_seed(0)
    m = build_model(family, make_config(family, in_shape=(3, 64, 64), rate_ste=True, **opts))
    x = _images(2, 3, 64, 64)
    m.train()
    a, b = m(x), m(x)
    assert torch.equal(a.extras["likelihoods"], b.extras["likelihoods"])
    m.eval()
    with torch.no_grad():
        ref = m(x).extras["likelihoods"]
    torch.testing.assert_close(a.extras["likelihoods"], ref)
    m.train()
    m.zero_grad()
    (-torch.log2(m(x).extras["likelihoods"]).sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())
    _train(m, x, 3)  # and it trains
    off = build_model(family, make_config(family, in_shape=(3, 64, 64), **opts))
    off.train()
    assert not torch.equal(off(x).extras["likelihoods"], off(x).extras["likelihoods"])  # the default: noise


def test_lmbda_trades_rate_for_distortion():
    x = _images(16, 1, 16, 16)
    res = {}
    for lmbda in (0.001, 0.1):
        torch.manual_seed(0)
        m = _codec(lmbda=lmbda)
        _train(m, x, 150)
        m.eval()
        with torch.no_grad():
            res[lmbda] = m.loss(m(x), x).terms
    assert res[0.001]["bpp"] < res[0.1]["bpp"]
    assert res[0.001]["distortion"] > res[0.1]["distortion"]


def _table_bits(tables, q):
    """Cross-entropy (bits) of integer latents y_hat under the exported tables, with the runtime's clipping."""
    off = np.asarray(tables["offset"], np.float64)[None, :, None, None]
    s = np.clip(np.rint(q - off), 0, tables["levels"] - 1).astype(np.int64)
    f = np.asarray(tables["frequencies"], np.float64)
    c = np.arange(f.shape[0])[None, :, None, None]
    return float(-np.log2(f[c, s] / 2 ** tables["precision"]).sum())


@pytest.mark.parametrize("c", [1, 3])
def test_entropy_tables_are_valid_and_match_the_model_rate(c):
    x = _images(32, c, 16, 16, seed=1)
    m = _codec(c, lmbda=0.02)
    _train(m, x, 150)
    m.eval()
    t = m.entropy_tables(precision=16)
    ch = m.config.latent_channels
    assert len(t["offset"]) == len(t["step"]) == ch and t["step"] == [1] * ch
    assert all(float(o).is_integer() for o in t["offset"])
    f = np.asarray(t["frequencies"])
    assert f.shape == (ch, t["levels"]) and f.dtype.kind == "i"
    assert (f >= 1).all() and (f.sum(axis=1) == 2**16).all()
    assert t["levels"] < 256  # a trained prior is tight: small tables
    with torch.no_grad():
        out = m(x)
        model_bits = float(-torch.log2(out.extras["likelihoods"]).sum())
        y_hat = torch.round(out.latent).numpy().astype(np.float64)
    table_bits = _table_bits(t, y_hat)
    # Integer tables cost a little (minimum frequency 1, 16-bit rounding): within 3% + a few bits.
    assert abs(table_bits - model_bits) <= 0.03 * model_bits + 8, (table_bits, model_bits)
    # Symbols stay inside the support (the tails hold < 1e-9 of the mass each).
    off = np.asarray(t["offset"])[None, :, None, None]
    assert ((y_hat - off) >= 0).all() and ((y_hat - off) <= t["levels"] - 1).all()


def test_exported_tables_are_the_prior_refit_to_the_calibration_latents():
    """edgeae_entropy keeps the prior's support and refits its rows to the rounded calibration latents: on
    those latents they cost fewer bits than the prior's own rows."""
    x = _images(32, 1, 16, 16, seed=2)
    m = _codec(1, lmbda=0.02)
    _train(m, x, 60)
    m.eval()
    with torch.no_grad():
        y = m.encoder(x).numpy()
    own = m.entropy_tables(precision=16)
    section = m.edgeae_entropy(y, 16)
    refit = {**own, "frequencies": section.entropy["frequencies"]}
    assert section.quantization["offset"] == [float(v) for v in own["offset"]]
    f = np.asarray(refit["frequencies"])
    assert f.shape == np.asarray(own["frequencies"]).shape and (f.sum(axis=1) == 2**16).all() and (f >= 1).all()
    y_hat = np.round(y).astype(np.float64)
    assert _table_bits(refit, y_hat) < _table_bits(own, y_hat)


def test_entropy_tables_at_other_precisions():
    m = _codec()
    for p in (12, 16, 20):
        t = m.entropy_tables(precision=p)
        f = np.asarray(t["frequencies"])
        assert (f >= 1).all() and (f.sum(axis=1) == 2**p).all()


@pytest.mark.slow
def test_codec_trains_through_the_trainer_and_writes_a_run(tmp_path):
    from edgeae.train.trainer import TrainConfig, train

    res = train("codec", "digits", tmp_path / "run", {"lmbda": 0.02, "channels": 16, "latent_channels": 8},
                TrainConfig(epochs=3, batch_size=32, progress=False))
    hist = res.metrics["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    final = res.metrics["final"]
    assert {"bpp", "distortion", "psnr", "mse"} <= set(final)
    assert final["mse"] == pytest.approx(final["distortion"], rel=1e-4)  # no term collides with the trainer's


@pytest.mark.slow
def test_tiny_codec_exports_and_decodes_through_the_runtime(make_run, tmp_path):
    build = pytest.importorskip("edgeae.bundling.build")
    from edgeae.runtime.bundle import Bundle
    from edgeae.runtime.codec import Decoder, Encoder
    from edgeae.runtime.manifest import Manifest  # noqa: F401

    run = make_run("codec", lmbda=0.05, channels=16, latent_channels=8, downsamplings=2)
    out = tmp_path / "bundle"
    res = build.export_run(run, build.ExportOptions(out=out, int8=False, measure_speed=False))
    latent = res.manifest["latent"]
    assert latent["shape"] == [8, 2, 2]
    assert latent["quantization"]["step"] == [1.0] * 8
    from edgeae.train.data import load_dataset

    x = load_dataset("digits").val[:20]
    enc, dec = Encoder(Bundle.open(out)), Decoder(Bundle.open(out))
    payload = enc.encode(x)
    q = enc.symbols(x)
    np.testing.assert_array_equal(dec.symbols(payload), q)
    rec = dec.decode(payload, as_float=True)
    assert rec.shape == x.shape
    # The runtime's reconstruction is the model's eval-mode reconstruction (rounding = the runtime's quantiser).
    from edgeae.train.rundir import load_run

    model = load_run(run).model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).x_hat.numpy()
    assert np.abs(rec - ref).max() < 1e-3


def test_latent_grid_exists_only_for_whole_step_offsets():
    from edgeae.bundling.build import latent_grid

    def lat(offset, step, levels=40):
        return {"quantization": {"levels": levels, "offset": offset, "step": step}}

    assert latent_grid(lat([-20.0, -3.0], [1.0, 1.0])) == (1.0, 20)  # -20 lands on uint8 0
    assert latent_grid(lat([5.0, 7.0], [1.0, 1.0])) == (1.0, 0)
    assert latent_grid(lat([-20.0, -3.0], [1.0, 1.0]), "int8") == (1.0, -108)
    assert latent_grid(lat([-20.0, -3.0], [1.0, 0.5])) is None  # per-channel steps
    assert latent_grid(lat([-20.5, -3.0], [1.0, 1.0])) is None  # off-grid offset
    assert latent_grid(lat([-200.0, 100.0], [1.0, 1.0])) is None  # spans more than 256 steps


@pytest.mark.slow
def test_int8_codec_encoder_outputs_the_latent_grid_itself(make_run, tmp_path):
    """The int8 encoder's output is quantised on the latent's integer grid: its values are whole numbers,
    so rounding them (the runtime's quantiser) adds nothing to what int8 already decided."""
    import onnxruntime as ort

    build = pytest.importorskip("edgeae.bundling.build")
    run = make_run("codec", lmbda=0.05, channels=16, latent_channels=8, downsamplings=2)
    out = tmp_path / "b"
    res = build.export_run(run, build.ExportOptions(out=out, int8=True, measure_speed=False,
                                                    int8_keep_fp32={"decoder": ("last",)}))
    g = res.manifest["int8"]["graphs"]
    assert g["encoder"]["output_on_latent_grid"] and not g["decoder"]["output_on_latent_grid"]
    assert g["encoder"]["kept_fp32"] == [] and len(g["decoder"]["kept_fp32"]) == 1
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    sess = ort.InferenceSession(str(out / "encoder.int8.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_array_equal(y, np.round(y))
    # The decoder's last Conv really stayed fp32: its weight is a float initializer, not a DequantizeLinear.
    model = onnx.load(str(out / "decoder.int8.onnx"))
    node = next(n for n in model.graph.node if n.name == g["decoder"]["kept_fp32"][0])
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert producers.get(node.input[1]) != "DequantizeLinear"
    assert node.input[1] in {i.name for i in model.graph.initializer}
