"""One bundle, several qualities: a `hyperprior-vr` exported as ONE bundle (shared graphs, per-quality gains and
z tables in the manifest), the quality in the payload (version 3), chosen per Encoder, by zoo name or CLI."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_hyperprior_bundle import _smooth_images, train_tiny  # tests/ is on sys.path (pytest, rootdir)

from edgeae.cli import main
from edgeae.errors import CorruptStream, InputError
from edgeae.runtime import Decoder, Encoder
from edgeae.runtime import payload as wire

LMBDAS = (0.005, 0.02, 0.08)
_MODEL: dict = {}


@pytest.fixture(scope="module")
def vr_bundle(tmp_path_factory):
    """A tiny three-quality hyperprior-vr (y at /4, z at /16) trained a few dozen steps, exported with int8."""
    import edgeae
    from edgeae.train.models import build_model

    torch.manual_seed(0)
    model = train_tiny(build_model("hyperprior-vr", in_shape=(3, 32, 32), channels=12, latent_channels=8,
                                   downsamplings=2, hyper_channels=8, hyper_latent_channels=4, lmbdas=LMBDAS))
    out = tmp_path_factory.mktemp("vr") / "bundle"
    edgeae.export(model=model, out=out, input=edgeae.InputSpec(channels=3, height=32, width=32, dynamic_size=True),
                  calibration=_smooth_images(48, 32, 32, seed=1), validation=_smooth_images(8, 32, 32, seed=2),
                  int8=True, max_int8_drop_db=20.0, measure_speed=False, name="tiny-vr")
    _MODEL["model"] = model
    return out


def _images(n: int = 3, h: int = 32, w: int = 32) -> np.ndarray:
    return np.round(_smooth_images(n, h, w, seed=7).transpose(0, 2, 3, 1) * 255).astype(np.uint8)


def test_one_bundle_holds_every_quality(vr_bundle):
    m = json.loads((vr_bundle / "manifest.json").read_text())
    e = m["entropy"]
    assert [q["lmbda"] for q in e["qualities"]] == list(LMBDAS) and e["default_quality"] == 2
    assert "tables" not in e["z"] and all(len(q["gain"]) == 8 and len(q["z"]["tables"]) == 4 for q in e["qualities"])
    assert set(m["graphs"]) == {"encoder", "decoder", "hyper_encoder", "hyper_decoder"}  # one set, shared
    gains = [np.mean(q["gain"]) for q in e["qualities"]]
    assert gains == sorted(gains)  # finer steps for higher lambdas
    assert m["model"]["entropy_model"]["qualities"] == 3


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_each_quality_codes_round_y_times_its_gain(vr_bundle, precision):
    """Decoded latents are round(y * gain) / gain of the encoder's own y: rate rises and error falls with quality,
    and the decoder learns the quality from the payload alone."""
    dec = Decoder(vr_bundle)
    x = _images()
    sizes, errors = [], []
    for q in (1, 2, 3):
        enc = Encoder(vr_bundle, precision, quality=q)
        payload = enc.encode(x)
        h = wire.parse_header(payload)
        assert (h.version, h.quality) == (3, q)
        y = enc.latents(enc.preprocess(x))
        gain = np.asarray(dec.manifest.entropy.qualities[q - 1].gain, np.float32).reshape(1, -1, 1, 1)
        got = dec.latents(payload)
        np.testing.assert_allclose(got, np.rint(y * gain) / gain, rtol=0, atol=1e-5)
        sizes.append(len(payload))
        errors.append(float(np.abs(dec.decode(payload).astype(float) - x).mean()))
    assert sizes[0] < sizes[1] < sizes[2]
    assert errors[0] > errors[2]


def test_pipeline_matches_the_torch_model_at_each_quality(vr_bundle):
    model = _MODEL["model"]
    x = _images(2)
    for q in (1, 3):
        enc, dec = Encoder(vr_bundle, quality=q), Decoder(vr_bundle)
        got = dec.decode(enc.encode(x), as_float=True)
        with torch.no_grad(), model.at_quality(q - 1):
            t = torch.from_numpy(enc.preprocess(x))
            g = model.gain().view(1, -1, 1, 1)
            want = model.decoder.inner(torch.round(model.encoder.inner(t) * g) / g).clamp(0, 1).numpy()
        assert np.abs(np.asarray(got) - want).max() < 2e-3


def test_any_size_at_every_quality(vr_bundle):
    dec = Decoder(vr_bundle)
    imgs = [_images(1, h, w)[0] for h, w in [(32, 32), (33, 47), (16, 80), (17, 17), (64, 48)]]
    for q in (1, 3):
        out = dec.decode(Encoder(vr_bundle, quality=q).encode(imgs))
        assert [o.shape for o in out] == [i.shape for i in imgs]


def test_default_quality_and_bad_qualities(vr_bundle, make_bundle):
    assert Encoder(vr_bundle).quality == 2
    for bad in (0, 4, True):
        with pytest.raises(InputError, match="not one of this bundle's operating points 1..3"):
            Encoder(vr_bundle, quality=bad)
    plain = make_bundle("codec", channels=8, latent_channels=4)
    with pytest.raises(InputError, match="has one quality"):
        Encoder(plain, quality=1)


def _requality(payload: bytes, quality: int) -> bytes:
    """The payload with its quality byte replaced and the CRC recomputed (a forged but well-framed payload)."""
    h = wire.parse_header(payload)
    at = 3
    while payload[at] & 0x80:  # the header_length varint
        at += 1
    at += 1 + wire.FINGERPRINT_BYTES + 2  # then fingerprint, coder_bits, model: the quality byte
    body = bytearray(payload[:-4])
    assert body[at] == h.quality
    body[at] = quality
    return bytes(body) + zlib.crc32(body).to_bytes(4, "little")


def test_a_payload_quality_outside_the_bundle_is_corrupt(vr_bundle):
    dec = Decoder(vr_bundle)
    payload = Encoder(vr_bundle, quality=1).encode(_images(1))
    assert wire.parse_header(_requality(payload, 3)).quality == 3
    try:  # another valid point's tables: another image, or a stream they cannot read; never a crash
        dec.decode(_requality(payload, 3))
    except CorruptStream:
        pass
    with pytest.raises(CorruptStream, match="quality 9 contradicts"):
        dec.decode(_requality(payload, 9))
    with pytest.raises(CorruptStream, match="quality is 0"):
        wire.parse(_requality(payload, 0))


def test_payload_v3_round_trips_and_v2_stays_v2():
    item = wire.Item(8, 8, (b"\0" * 4, b"\0" * 4, b""))
    p3 = wire.pack(b"\1" * 8, [item], bits=8, model=wire.MODEL_HYPERPRIOR, quality=5)
    p2 = wire.pack(b"\1" * 8, [item], bits=8, model=wire.MODEL_HYPERPRIOR)
    assert p3[2] == 3 and p2[2] == 2 and len(p3) == len(p2) + 1
    assert wire.parse(p3).header.quality == 5 and wire.parse(p2).header.quality == 0
    assert wire.describe(p3)["quality"] == 5 and "quality" not in wire.describe(p2)
    with pytest.raises(ValueError, match="quality 256"):
        wire.Packer(b"\1" * 8, bits=8, quality=256)


def test_zoo_names_pick_a_point_of_one_shared_bundle(vr_bundle, tmp_path, monkeypatch):
    import shutil

    from edgeae import zoo

    root = tmp_path / "zoo"
    shutil.copytree(vr_bundle, root / "tiny")
    index = {"schema": "edgeae.zoo", "version": 1, "models": {"tiny": {"family": "hyperprior", "qualities": {
        str(k): {"bundle": "tiny", "point": k, "lmbda": lm} for k, lm in enumerate(LMBDAS, 1)}}}}
    (root / "index.json").write_text(json.dumps(index))
    monkeypatch.setattr(zoo, "ZOO_DIR", root)
    assert zoo.locate("tiny:3") == (root / "tiny", 3)
    enc = Encoder("tiny:3")
    payload = enc.encode(_images(1))
    assert enc.quality == 3 and wire.parse_header(payload).quality == 3
    assert Encoder("tiny:3", quality=1).quality == 1  # an explicit quality wins
    assert np.asarray(Decoder("tiny:1").decode(payload)).shape == (1, 32, 32, 3)


def test_cli_encode_quality_and_inspect(vr_bundle, tmp_path):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(_images(1)[0]).save(img)
    r = CliRunner().invoke(main, ["encode", str(img), "--bundle", str(vr_bundle), "--out", str(tmp_path / "p"),
                                  "--quality", "3"])
    assert r.exit_code == 0, r.output
    payload = (tmp_path / "p" / "a.eae").read_bytes()
    assert wire.parse_header(payload).quality == 3
    r = CliRunner().invoke(main, ["encode", str(img), "--bundle", str(vr_bundle), "--out", str(tmp_path / "q"),
                                  "--quality", "7"])
    assert r.exit_code != 0 and "operating points 1..3" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["inspect", str(vr_bundle)])
    assert r.exit_code == 0 and "3 qualities sharing every graph" in r.output, r.output
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "p" / "a.eae"), "--bundle", str(vr_bundle),
                                  "--out", str(tmp_path / "d"), "--verify"])
    assert r.exit_code == 0, r.output


def test_the_decode_server_decodes_every_quality_of_one_bundle(vr_bundle):
    """A real HTTP server on the multi-quality bundle: payloads of different qualities in one batch window come
    back as the library decodes them (the server learns each payload's quality from its header)."""
    import concurrent.futures as cf
    import io

    from PIL import Image

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from edgeae.serve.app import ServeConfig, create_app
    from edgeae.serve.testing import ThreadServer

    dec = Decoder(vr_bundle)
    x = _images(1)
    payloads = [Encoder(vr_bundle, quality=q).encode(x) for q in (1, 2, 3, 1, 3)]
    app = create_app(ServeConfig(bundle=str(vr_bundle), max_batch=8, max_wait_ms=50))
    with ThreadServer(app) as s, cf.ThreadPoolExecutor(5) as ex:
        rs = list(ex.map(lambda p: httpx.post(s.base + "/v1/decode", content=p, timeout=30,
                                              headers={"content-type": "application/octet-stream"}), payloads))
    assert [r.status_code for r in rs] == [200] * 5
    for r, p in zip(rs, payloads, strict=True):
        assert np.array_equal(np.array(Image.open(io.BytesIO(r.content))), dec.decode(p)[0])
    got = [np.array(Image.open(io.BytesIO(r.content))) for r in rs]
    assert not np.array_equal(got[0], got[2])  # quality 1 and 3 decode differently


@pytest.mark.parametrize("edit, message", [
    (lambda e: e["z"].update(tables=e["qualities"][0]["z"]["tables"]), "keeps z's tables in each quality"),
    (lambda e: e.update(default_quality=4), "entropy.default_quality"),
    (lambda e: e["qualities"][1].update(gain=[1.0] * 7), r"entropy.qualities\[1\].gain"),
    (lambda e: e["qualities"][2]["gain"].__setitem__(0, 0.0), r"entropy.qualities\[2\].gain\[0\]"),
    (lambda e: e["qualities"][0]["z"]["tables"].pop(), "as many z tables"),
    (lambda e: e.update(qualities=e["qualities"][:1]), "2 to 64 operating points"),
    (lambda e: e["qualities"][0].pop("lmbda"), "lmbda"),
])
def test_a_bad_qualities_section_is_one_typed_line(vr_bundle, edit, message):
    from edgeae.errors import BundleError
    from edgeae.runtime.manifest import Manifest

    m = json.loads((vr_bundle / "manifest.json").read_text())
    edit(m["entropy"])
    with pytest.raises(BundleError, match=message):
        Manifest.from_dict(m)
