"""A hyperprior bundle end to end: export (integer hyper_decoder), any-size payloads fp32 and int8, --verify,
and corrupted hyper-latents that must give CorruptStream (never a hang or a crash)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeae.errors import CorruptStream
from edgeae.runtime import Decoder, Encoder
from edgeae.runtime import payload as wire
from edgeae.runtime.inthyper import IntHyperDecoder


def _smooth_images(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Smooth RGB images (low-frequency sinusoids + a little noise), float (n, 3, h, w) in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        for c in range(3):
            f = rng.uniform(1, 4, 2)
            ph = rng.uniform(0, 6.3, 2)
            out[i, c] = 0.5 + 0.35 * np.sin(6.3 * f[0] * yy + ph[0]) * np.cos(6.3 * f[1] * xx + ph[1])
    return np.clip(out + 0.02 * rng.standard_normal(out.shape), 0, 1).astype(np.float32)


def train_tiny(model, steps: int = 60):
    """A few dozen Adam steps on smooth 32x32 images, batch 8; the model back in eval mode."""
    data = torch.from_numpy(_smooth_images(64, 32, 32, seed=0))
    opt = model.configure_optimizer(3e-3)
    model.train()
    for step in range(steps):
        x = data[(step * 8) % 64 : (step * 8) % 64 + 8]
        loss = model.loss(model(x), x).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _train_and_export(out, means: bool, size_multiple: int | None = None):
    """A tiny hyperprior (y at /4, z at /16) trained for a few dozen steps, exported with int8; the bundle pads
    images to `size_multiple` (default: y's stride 4, z then covers y edge-padded by the runtime)."""
    import edgeae
    from edgeae.train.models import build_model

    torch.manual_seed(0)
    model = train_tiny(build_model("hyperprior", in_shape=(3, 32, 32), channels=12, latent_channels=8,
                                   downsamplings=2, hyper_channels=8, hyper_latent_channels=4, lmbda=0.02,
                                   means=means))
    _MODEL[out] = model
    edgeae.export(model=model, out=out, input=edgeae.InputSpec(channels=3, height=32, width=32, dynamic_size=True,
                                                               size_multiple=size_multiple),
                  calibration=_smooth_images(48, 32, 32, seed=1), validation=_smooth_images(8, 32, 32, seed=2),
                  int8=True, max_int8_drop_db=20.0, measure_speed=False, name="tiny-hyperprior")
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return _train_and_export(tmp_path_factory.mktemp("hyper") / "bundle", means=False)


@pytest.fixture(scope="module")
def mean_bundle(tmp_path_factory):
    """The same with mean-scale: the hyper-decoder also gives a mean per y symbol, in 1/8 steps; padded to whole
    z positions (16), as bundles exported before 2026-12-02 were."""
    return _train_and_export(tmp_path_factory.mktemp("hyper") / "mean-bundle", means=True, size_multiple=16)


_MODEL: dict = {}  # bundle -> the fixture's PyTorch model, the reference of the fp32 pipeline
SIZES = [(32, 32), (33, 47), (16, 80), (64, 48), (17, 17)]


def _uint8(img: np.ndarray) -> np.ndarray:
    return np.round(img.transpose(1, 2, 0) * 255).astype(np.uint8)


def test_manifest_lists_the_integer_hyper_decoder(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["entropy"]["model"] == "hyperprior" and m["input"]["size_multiple"] == 4  # y's stride, not z's
    assert set(m["graphs"]) == {"encoder", "decoder", "hyper_encoder", "hyper_decoder"}
    assert m["entropy"]["z"]["stride"] == 4 and len(m["entropy"]["y"]["tables"]) == 64
    params = IntHyperDecoder.load(bundle / m["graphs"]["hyper_decoder"]["file"])
    assert params.in_channels == 4 and params.out_channels == 8


def test_int8_encoder_keeps_its_first_and_last_layers_fp32_unless_told_otherwise(bundle):
    """The hyperprior's default `--int8-keep-fp32 encoder:first,last`: int8 error just before y's rounding costs
    ~9% of the bytes on real photos, and an int8 first conv (0..255 pixels x full-range weights) saturates
    onnxruntime's int16 pair sums on x86 without VNNI (-2.6 dB); a role given explicitly replaces it,
    `ROLE:none` quantising every node."""
    import onnx

    from edgeae.bundling.core import _keep_fp32
    from edgeae.cli.bundle import _keep

    graphs = json.loads((bundle / "manifest.json").read_text())["int8"]["graphs"]
    kept = graphs["encoder"]["kept_fp32"]
    assert len(kept) == 2 and graphs["decoder"]["kept_fp32"] == []
    int8 = onnx.load(str(bundle / json.loads((bundle / "manifest.json").read_text())["graphs"]["encoder"]["int8_file"]))
    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    floats = {t.name for t in int8.graph.initializer}
    assert kept == [convs[0].name, convs[-1].name] and convs[0].input[1] in floats and convs[-1].input[1] in floats
    model = _MODEL[bundle]
    assert _keep_fp32(model, None) == {"encoder": ("first", "last")}
    assert _keep_fp32(model, _keep(("encoder:none",))) == {"encoder": ()}
    assert _keep_fp32(model, _keep(("decoder:first",))) == {"encoder": ("first", "last"), "decoder": ("first",)}
    assert _keep_fp32(object(), None) == {}


def _torch_reconstruction(bundle, img: np.ndarray) -> np.ndarray:
    """What the fp32 pipeline must give: pad (edge) to the bundle's multiple, g_s(round(g_a(x))), crop, to uint8."""
    h, w = img.shape[:2]
    m = json.loads((bundle / "manifest.json").read_text())["input"]["size_multiple"]
    x = np.pad(img, ((0, -h % m), (0, -w % m), (0, 0)), mode="edge").transpose(2, 0, 1)[None] / 255.0
    with torch.no_grad():
        model = _MODEL[bundle]
        r = model.decoder(torch.round(model.encoder(torch.from_numpy(x.astype(np.float32))))).numpy()
    return np.clip(np.round(r[0].transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)[:h, :w]


@pytest.mark.parametrize("means", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_payloads_of_several_sizes_decode(request, precision, means):
    bundle = request.getfixturevalue("mean_bundle" if means else "bundle")
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["entropy"]["y"]["means"] is means
    assert m["entropy"]["y"].get("mean_phases", 1) == (8 if means else 1)  # means in 1/8 steps by default
    enc = Encoder(bundle, precision=precision, threads=1)
    dec = Decoder(bundle, threads=1, verify=True)
    images = [_uint8(_smooth_images(1, h, w, seed=10 + i)[0]) for i, (h, w) in enumerate(SIZES)]
    data = enc.encode(images)
    out = dec.decode(data)
    assert [o.shape for o in out] == [im.shape for im in images]
    for im, rec in zip(images, out, strict=True):
        diff = np.abs(rec.astype(int) - _torch_reconstruction(bundle, im).astype(int))
        if precision == "fp32":  # the real pipeline is PyTorch's up to float rounding at a few latent ties
            assert (diff <= 1).mean() > 0.99
        else:  # int8 encoder: latents move by a step here and there
            assert diff.mean() < 4
    # Each image alone gives the same reconstruction as in the mixed batch (grouping does not leak).
    for im, rec in zip(images[:2], out[:2], strict=True):
        assert np.array_equal(np.asarray(dec.decode(enc.encode(im)))[0], rec)


def test_only_y_own_symbols_are_coded_when_z_needs_more(bundle):
    """33x47 pads to 36x48 (y's stride 4): y is 9x12, z covers it edge-padded to 12x12 (3x3 z positions);
    the payload holds 9x12 y symbols and equals the payload of the image edge-padded to 36x48, cropped."""
    enc, dec = Encoder(bundle, threads=1), Decoder(bundle, threads=1)
    img = _uint8(_smooth_images(1, 33, 47, seed=4)[0])
    y = np.asarray(dec.latents(enc.encode(img)))
    assert y.shape[1:] == (8, 9, 12)
    padded = np.pad(img, ((0, 3), (0, 1), (0, 0)), mode="edge")
    assert enc.items(padded)[0].parts == enc.items(img)[0].parts
    assert np.array_equal(np.asarray(dec.decode(enc.encode(padded)))[0][:33, :47], np.asarray(dec.decode(enc.encode(img)))[0])


def _items(bundle):
    enc = Encoder(bundle, threads=1)
    dec = Decoder(bundle, threads=1)
    img = _uint8(_smooth_images(1, 48, 48, seed=3)[0])
    items = enc.items(img)
    return enc, dec, img, items[0]


def _repack(enc, item, parts):
    return enc.pack([wire.Item(item.height, item.width, tuple(parts))])


def test_corrupted_hyper_latent_is_corrupt_stream(bundle):
    enc, dec, img, item = _items(bundle)
    z, y, esc = item.parts
    assert np.asarray(dec.decode(_repack(enc, item, [z, y, esc])))[0].shape == img.shape
    rng = np.random.default_rng(0)
    bad_z = ([z[:-4]] if len(z) > 4 else []) + [  # truncated (a one-word z has nothing to cut)
        bytes(rng.integers(0, 256, len(z), dtype=np.uint8)),  # garbage of the same length
        z + bytes(rng.integers(0, 256, 64, dtype=np.uint8))]  # trailing garbage
    for k, bz in enumerate(bad_z):
        if bz == z:
            continue
        with pytest.raises(CorruptStream):
            dec.decode(_repack(enc, item, [bz, y, esc]))
            pytest.fail(f"corruption {k} of the z part decoded without error")
    # A zero word appended is the one a range decoder reads past the end anyway: refused, or the same image.
    reference = np.asarray(dec.decode(_repack(enc, item, [z, y, esc])))
    try:
        padded = np.asarray(dec.decode(_repack(enc, item, [z + bytes(4), y, esc])))
    except CorruptStream:
        pass
    else:
        assert np.array_equal(padded, reference)


def test_fuzzed_hyper_latents_never_hang_or_crash(bundle):
    """Random z parts (valid framing, valid CRC): either CorruptStream or an image of the right shape."""
    enc, dec, img, item = _items(bundle)
    _, y, esc = item.parts
    rng = np.random.default_rng(1)
    outcomes = {"corrupt": 0, "decoded": 0}
    for _ in range(40):
        bz = bytes(rng.integers(0, 256, int(rng.integers(4, 64)) // 4 * 4, dtype=np.uint8))
        try:
            out = np.asarray(dec.decode(_repack(enc, item, [bz, y, esc])))
        except CorruptStream:
            outcomes["corrupt"] += 1
        else:
            assert out[0].shape == img.shape
            outcomes["decoded"] += 1
    assert outcomes["corrupt"] > 0
