"""The torch-free runtime: manifest, bundle checks, image input, Encoder/Decoder round trips, CLI encode/decode.

Two kinds of bundles: tiny hand-built ONNX graphs (fast, any channel count or latent kind, built here with
onnx.helper and a manifest written through the runtime's own dataclasses) and real exported models from
tests/conftest.py (`tiny_bundle`, `other_bundle`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae.bundling.calibrate import calibrate_quantization, histogram_tables
from edgeae.cli import main
from edgeae.errors import (
    BundleError,
    CorruptStream,
    FingerprintMismatch,
    InputError,
    PayloadError,
)
from edgeae.runtime import Bundle, Decoder, Encoder, Manifest, load_manifest
from edgeae.runtime import payload as wire
from edgeae.runtime.fingerprint import fingerprint, graph_digest, tables_digest
from edgeae.runtime.images import to_uint8
from edgeae.runtime.manifest import (
    EntropySpec,
    FileEntry,
    GraphEntry,
    InputSpec,
    LatentSpec,
    Quantization,
)

# --- hand-built bundles ----------------------------------------------------------------------------------


def _graphs(c: int, h: int, w: int, dense: bool, seed: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    k = 4  # latent channels (conv) / 4 * 4 features (dense)

    def model(nodes, inits, inp, out, in_shape, out_shape):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["N", *in_shape])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", *out_shape])],
                              [numpy_helper.from_array(np.asarray(v, np.float32 if v.dtype.kind == "f" else v.dtype),
                                                       name) for name, v in inits.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m.SerializeToString()

    if dense:
        feats = c * h * w
        enc = model([helper.make_node("Flatten", ["image"], ["f"], axis=1),
                     helper.make_node("MatMul", ["f", "we"], ["latent"])],
                    {"we": rng.normal(size=(feats, 4 * k)) / np.sqrt(feats)}, "image", "latent", [c, h, w], [4 * k])
        dec = model([helper.make_node("MatMul", ["latent", "wd"], ["m"]),
                     helper.make_node("Sigmoid", ["m"], ["s"]),
                     helper.make_node("Reshape", ["s", "shape"], ["image"])],
                    {"wd": rng.normal(size=(4 * k, feats)), "shape": np.array([-1, c, h, w], np.int64)},
                    "latent", "image", [4 * k], [c, h, w])
        return enc, dec, (4 * k,)
    enc = model([helper.make_node("AveragePool", ["image"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("Conv", ["p", "we", "be"], ["latent"])],
                {"we": rng.normal(size=(k, c, 1, 1)), "be": rng.normal(size=(k,))},
                "image", "latent", [c, h, w], [k, h // 2, w // 2])
    dec = model([helper.make_node("Conv", ["latent", "wd", "bd"], ["m"]),
                 helper.make_node("Resize", ["m", "", "scales"], ["r"], mode="nearest"),
                 helper.make_node("Sigmoid", ["r"], ["image"])],
                {"wd": rng.normal(size=(c, k, 1, 1)), "bd": np.zeros(c), "scales": np.array([1, 1, 2, 2], np.float32)},
                "latent", "image", [k, h // 2, w // 2], [c, h, w])
    return enc, dec, (k, h // 2, w // 2)


def build_bundle(root: Path, channels: int = 1, size: int = 8, dense: bool = False, seed: int = 0) -> Path:
    """Two graphs + a manifest written through Manifest.to_dict(), calibrated like the exporter does."""
    import onnxruntime as ort

    root.mkdir(parents=True)
    enc, dec, latent_shape = _graphs(channels, size, size, dense, seed)
    (root / "encoder.onnx").write_bytes(enc)
    (root / "decoder.onnx").write_bytes(dec)
    sess = ort.InferenceSession(enc, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).random((256, channels, size, size), dtype=np.float32)
    y = sess.run(None, {"image": x})[0]
    quant = calibrate_quantization(y, 8)
    offset, step = np.asarray(quant["offset"], np.float32), np.asarray(quant["step"], np.float32)
    view = [1, -1] + [1] * (y.ndim - 2)
    q = np.clip(np.round((y - offset.reshape(view)) / step.reshape(view)), 0, 255).astype(np.int32)
    tables = histogram_tables(q, 256)
    files = {n: FileEntry(hashlib.sha256((root / n).read_bytes()).hexdigest(), (root / n).stat().st_size)
             for n in ("decoder.onnx", "encoder.onnx")}
    manifest = Manifest(
        name=root.name,
        input=InputSpec(shape=(channels, size, size), channel_order="L" if channels == 1 else "RGB",
                        scale=1 / 255, offset=0.0),
        graphs={"encoder": GraphEntry("encoder.onnx", "image", "latent", 17),
                "decoder": GraphEntry("decoder.onnx", "latent", "image", 17)},
        latent=LatentSpec(latent_shape, 1, Quantization(8, 256, tuple(quant["offset"]), tuple(quant["step"]))),
        entropy=EntropySpec("range", tables["precision"], tuple(tuple(r) for r in tables["frequencies"])),
        fingerprint="0" * 64,
        files=files,
        model={"family": "handmade"},
    )
    d = manifest.to_dict()  # the runtime recomputes the fingerprint from the graphs and tables: follow it
    manifest = dataclasses.replace(manifest, fingerprint=fingerprint(graph_digest(enc), graph_digest(dec),
                                                                     tables_digest(d["latent"], d["entropy"])))
    (root / "manifest.json").write_text(json.dumps(manifest.to_dict()))
    return root


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    root = tmp_path_factory.mktemp("handmade")
    cache: dict = {}

    def factory(channels: int = 1, dense: bool = False, seed: int = 0, size: int = 8) -> Path:
        key = (channels, dense, seed, size)
        if key not in cache:
            cache[key] = build_bundle(root / f"c{channels}-{'dense' if dense else 'conv'}-s{seed}-{size}",
                                      channels, size, dense, seed)
        return cache[key]

    return factory


def _copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / bundle.name
    shutil.copytree(bundle, out)
    return out


def _edit_manifest(bundle: Path, edit) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    edit(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def _digits(n: int, size: int = 8, channels: int = 1, seed: int = 0) -> np.ndarray:
    shape = (n, size, size) if channels == 1 else (n, size, size, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- manifest ------------------------------------------------------------------------------------------


def test_exported_manifest_round_trips_through_the_dataclasses(tiny_bundle):
    raw = json.loads((tiny_bundle / "manifest.json").read_text())
    m = load_manifest(tiny_bundle)
    assert m.to_dict() == raw and list(m.to_dict()) == list(raw)
    assert m.latent.channels == len(m.entropy.frequencies) and m.graphs["encoder"].int8_file


@pytest.mark.parametrize(("edit", "field"), [
    (lambda m: m.pop("latent"), "latent is missing"),
    (lambda m: m["latent"]["quantization"]["step"].__setitem__(2, 0.0), r"latent.quantization.step\[2\] must be > 0"),
    (lambda m: m["latent"]["quantization"]["offset"].pop(), r"latent.quantization.offset must have"),
    (lambda m: m["entropy"]["frequencies"][1].__setitem__(0, 0), r"entropy.frequencies\[1\]\[0\] must be an integer >= 1"),
    (lambda m: m["entropy"]["frequencies"][0].__setitem__(0, 5), r"entropy.frequencies\[0\] must sum to"),
    (lambda m: m["input"].__setitem__("channel_order", "RGB"), "input.channel_order is 'RGB' but"),
    (lambda m: m["input"].__setitem__("shape", [1, 8]), "input.shape must have 3"),
    (lambda m: m["graphs"]["decoder"].__setitem__("file", "other.onnx"), "graphs.decoder.file names 'other.onnx'"),
    (lambda m: m["latent"].__setitem__("channel_axis", 4), "latent.channel_axis must be in 1..3"),
    (lambda m: m.__setitem__("fingerprint", "abc"), "fingerprint must be a sha256"),
    (lambda m: m["latent"]["quantization"].__setitem__("levels", True), "levels must be an integer"),
    (lambda m: m.__setitem__("schema", "other"), "schema must be"),
])
def test_invalid_manifest_names_the_field(handmade, tmp_path, edit, field):
    b = _copy(handmade(), tmp_path)
    _edit_manifest(b, edit)
    with pytest.raises(BundleError, match=field):
        Bundle.open(b)


def test_newer_manifest_version_and_non_json_are_one_line_errors(handmade, tmp_path):
    b = _copy(handmade(), tmp_path)
    _edit_manifest(b, lambda m: m.__setitem__("version", 2))
    with pytest.raises(BundleError, match="manifest version 2 is not supported"):
        load_manifest(b)
    (b / "manifest.json").write_text("{nope")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_manifest(b)
    with pytest.raises(BundleError, match="not found"):
        load_manifest(tmp_path / "nowhere")


def test_unknown_top_level_fields_survive_a_round_trip(handmade, tmp_path):
    b = _copy(handmade(), tmp_path)
    _edit_manifest(b, lambda m: m.__setitem__("future", {"x": 1}))
    assert load_manifest(b).to_dict()["future"] == {"x": 1}


# --- bundle --------------------------------------------------------------------------------------------


def test_tampered_or_missing_files_are_refused_with_a_fix(handmade, tmp_path):
    b = _copy(handmade(), tmp_path)
    data = bytearray((b / "decoder.onnx").read_bytes())
    data[-1] ^= 1
    (b / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="decoder.onnx does not match its sha256.*re-export"):
        Bundle.open(b)
    (b / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match="decoder.onnx is listed in manifest.json but missing"):
        Bundle.open(b)
    # A device may ship only the encoder side: partial bundles open, and refuse only the missing graph.
    part = Bundle.open(b, partial=True)
    assert part.graph_path("encoder").name == "encoder.onnx"
    with pytest.raises(BundleError, match="does not include decoder.onnx"):
        part.graph_path("decoder")
    Encoder(b)
    with pytest.raises(BundleError, match="does not include decoder.onnx"):
        Decoder(b)
    with pytest.raises(BundleError, match="no int8 encoder graph"):
        part.graph_path("encoder", "int8")


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "sub/../../x.onnx", "C:\\x.onnx"])
def test_files_outside_the_bundle_are_refused(handmade, tmp_path, name):
    b = _copy(handmade(), tmp_path)
    _edit_manifest(b, lambda m: m["files"].__setitem__(name, {"sha256": "0" * 64, "bytes": 1}))
    with pytest.raises(BundleError, match="not a plain relative name"):
        Bundle.open(b)


def test_symlink_out_of_the_bundle_is_refused(handmade, tmp_path):
    b = _copy(handmade(), tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.move(b / "decoder.onnx", outside)
    (b / "decoder.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="link to outside the bundle"):
        Bundle.open(b)


# --- images --------------------------------------------------------------------------------------------


def test_every_accepted_input_form_gives_the_same_graph_input(handmade, tmp_path):
    from PIL import Image

    enc = Encoder(handmade())
    x = _digits(3)
    ref = enc.preprocess(x)
    assert ref.dtype == np.float32 and ref.shape == (3, 1, 8, 8) and ref.flags.c_contiguous
    np.testing.assert_allclose(ref[:, 0], x / 255, atol=1e-7)
    paths = []
    for i, img in enumerate(x):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    forms = [x[:, :, :, None], x[:, None], [img for img in x], [Image.fromarray(i) for i in x], paths,
             [str(p) for p in paths], x.astype(np.float64) / 255, (x / 255).astype(np.float32)[:, None]]
    for form in forms:
        np.testing.assert_allclose(enc.preprocess(form), ref, atol=1e-7)
    np.testing.assert_array_equal(enc.preprocess(x[0]), ref[:1])
    np.testing.assert_array_equal(enc.preprocess(paths[0]), ref[:1])
    rgb_file = tmp_path / "rgb.png"
    Image.fromarray(np.stack([x[0]] * 3, -1)).save(rgb_file)  # refused like an RGB array, unless asked to convert
    with pytest.raises(InputError, match="is a colour image .* takes gray"):
        enc.preprocess(rgb_file)
    np.testing.assert_array_equal(Encoder(handmade(), convert=True).preprocess(rgb_file), ref[:1])


def test_rgb_bundles_take_hwc_and_chw(handmade):
    enc = Encoder(handmade(channels=3))
    x = _digits(2, channels=3)
    ref = enc.preprocess(x)
    assert ref.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(enc.preprocess(x.transpose(0, 3, 1, 2)), ref)
    np.testing.assert_array_equal(enc.preprocess(x[1]), ref[1:])
    np.testing.assert_array_equal(enc.preprocess(x[1].transpose(2, 0, 1)), ref[1:])
    with pytest.raises(InputError, match=r"\(H, W, C\) = \(8, 8, 3\)"):
        enc.preprocess(x[..., 0])


@pytest.mark.parametrize(("bad", "message"), [
    (np.zeros((9, 9), np.uint8), r"shape \(9, 9\) does not fit .*8x8 L images.*never resizes"),
    (np.zeros((2, 3, 8, 8), np.uint8), r"shape \(2, 3, 8, 8\) does not fit"),
    (np.zeros((8, 8), np.int16), "uint8 .* or float"),
    (np.full((8, 8), 1.5), r"float images must be in \[0, 1\]"),
    (np.full((8, 8), np.nan), r"float images must be in \[0, 1\]"),
    (np.zeros((0, 8, 8), np.uint8), "no images"),
    ([], "no images"),
    (42, "cannot use int"),
])
def test_unusable_input_is_an_input_error_that_says_what_fits(handmade, bad, message):
    with pytest.raises(InputError, match=message):
        Encoder(handmade()).preprocess(bad)


def test_image_files_of_the_wrong_size_or_unreadable(handmade, tmp_path):
    from PIL import Image

    enc = Encoder(handmade())
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "big.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"10x12 \(HxW\) but this bundle takes 8x8"):
        enc.preprocess(tmp_path / "big.png")
    with pytest.raises(InputError, match="cannot read image"):
        enc.preprocess(tmp_path / "junk.png")
    with pytest.raises(InputError, match="does not exist"):
        enc.preprocess(tmp_path / "none.png")


# --- codec ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [{"channels": 1}, {"channels": 3}, {"dense": True}])
def test_each_step_composes_to_the_round_trip(handmade, kind):
    b = handmade(**kind)
    enc, dec = Encoder(b), Decoder(Bundle.open(b))
    x = _digits(5, channels=kind.get("channels", 1))
    payload = enc.encode(x)
    q = enc.entropy.quantize(enc.latents(enc.preprocess(x)))
    np.testing.assert_array_equal(dec.symbols(payload), q)
    np.testing.assert_array_equal(dec.latents(payload), dec.entropy.dequantize(q))
    expect = dec.reconstruct(dec.entropy.dequantize(q))
    np.testing.assert_array_equal(dec.decode(payload, as_float=True), expect)
    out = dec.decode(payload)
    assert out.dtype == np.uint8 and out.shape == x.shape
    np.testing.assert_array_equal(out, dec.from_symbols(q))
    np.testing.assert_array_equal(out, to_uint8(expect))


def test_to_uint8_rounds_clips_and_puts_channels_last():
    x = np.array([[[[0.0, 0.5 / 255], [0.6 / 255, 1.2]]], [[[-0.1, 1.0], [0.25, 0.75]]]], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [[[0, 0], [1, 255]], [[0, 255], [64, 191]]])
    rgb = np.random.default_rng(0).random((2, 3, 4, 5), dtype=np.float32)
    assert to_uint8(rgb).shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(to_uint8(rgb)[1, 2, 3], np.rint(rgb[1, :, 2, 3] * 255))


def test_batch_payload_holds_the_same_bodies_as_single_payloads(handmade):
    enc = Encoder(handmade())
    x = _digits(6)
    batch = wire.parse(enc.encode(x))
    singles = [wire.parse(p) for p in enc.encode_each(x)]
    assert list(batch.bodies) == [s.bodies[0] for s in singles]
    assert all(s.header.items == 1 for s in singles)
    dec = Decoder(handmade())
    np.testing.assert_array_equal(np.concatenate([dec.decode(p) for p in enc.encode_each(x)]), dec.decode(enc.encode(x)))


def test_batch_over_the_format_limit_is_refused_before_the_graph_runs(handmade):
    enc = Encoder(handmade())
    with pytest.raises(InputError, match="exceed one payload's 65536; use encode_each"):
        enc.encode(np.zeros((wire.MAX_ITEMS + 1, 8, 8), np.uint8))


def test_real_exported_model_round_trip_and_int8(tiny_bundle):
    x = _digits(4)
    enc, dec = Encoder(tiny_bundle), Decoder(tiny_bundle)
    payload = enc.encode(x)
    out = dec.decode(payload)
    assert out.shape == (4, 8, 8) and out.dtype == np.uint8
    np.testing.assert_array_equal(dec.symbols(payload), enc.symbols(x))
    # int8 graphs share the bundle's fingerprint and tables: their payloads decode on either precision
    p8 = Encoder(tiny_bundle, "int8").encode(x)
    assert Decoder(tiny_bundle, "int8").decode(p8).shape == out.shape
    assert dec.decode(p8).shape == out.shape


def test_payload_from_another_bundle_is_refused(tiny_bundle, other_bundle, handmade):
    payload = Encoder(tiny_bundle).encode(_digits(2))
    with pytest.raises(FingerprintMismatch, match="decode it with the bundle that encoded it"):
        Decoder(other_bundle).decode(payload)
    with pytest.raises(FingerprintMismatch):
        Decoder(handmade()).decode(payload)


def test_header_that_contradicts_its_bundle_is_corrupt(handmade):
    dec = Decoder(handmade())
    body = Encoder(handmade()).entropy.encode_symbols(np.zeros((1, 4, 4, 4), np.int32))[0]
    good = wire.Item(8, 8, (body,))
    for kwargs, item in (({"bits": 7}, good), ({"bits": 8, "model": wire.MODEL_HYPERPRIOR}, wire.Item(8, 8, (body, body, b""))),
                         ({"bits": 8}, wire.Item(8, 9, (body,)))):
        with pytest.raises(CorruptStream, match="contradicts its bundle|takes only 8x8"):
            dec.decode(wire.pack(dec.fingerprint, [item], **kwargs))
    for shape, bits in (((4, 4, 5), 8), ((4, 4, 4), 7)):  # version 1 headers too
        with pytest.raises(CorruptStream, match="contradicts its bundle"):
            dec.decode(wire.pack_v1(dec.fingerprint, shape, [body], bits=bits))


def test_symbols_are_integer_exact_across_thread_settings(tiny_bundle):
    x = _digits(64, seed=3)
    encoders = [Encoder(tiny_bundle, threads=t) for t in (1, 2)]
    payloads = [e.encode(x) for e in encoders]
    assert payloads[0] == payloads[1]
    q = encoders[0].symbols(x)
    for t in (1, 2):
        dec = Decoder(tiny_bundle, threads=t)
        np.testing.assert_array_equal(dec.symbols(payloads[0]), q)


def test_no_damaged_payload_ever_decodes(tiny_bundle):
    enc, dec = Encoder(tiny_bundle), Decoder(tiny_bundle)
    for payload in (enc.encode(_digits(1)), enc.encode(_digits(3, seed=1))):
        for k in range(len(payload)):
            with pytest.raises(PayloadError):
                dec.decode(payload[:k])
        for i in range(len(payload)):
            for mask in (0x01, 0x10, 0x80, 0xFF):
                bad = bytearray(payload)
                bad[i] ^= mask
                with pytest.raises(PayloadError):
                    dec.decode(bytes(bad))


def test_graph_that_does_not_match_its_manifest_is_a_bundle_error(handmade, tmp_path):
    b = _copy(handmade(), tmp_path)
    _edit_manifest(b, lambda m: m["graphs"]["encoder"].__setitem__("input", "pixels"))
    with pytest.raises(BundleError, match="manifest names 'pixels'"):
        Encoder(b)


# --- CLI -----------------------------------------------------------------------------------------------


def test_cli_encode_decode_skips_bad_files_and_fails_at_the_end(tiny_bundle, tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    x = _digits(3)
    for i in range(2):
        Image.fromarray(x[i]).save(src / f"d{i}.png")
    Image.fromarray(x[2]).save(src / "sub" / "d.2.png")
    (src / "broken.png").write_bytes(b"junk")
    runner = CliRunner()
    res = runner.invoke(main, ["encode", str(src), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "enc")])
    assert res.exit_code == 1, res.output
    assert "broken.png" in res.output and "1 input(s) could not be processed" in res.output
    assert "bits per pixel" in res.output and "bpp" in res.output
    made = sorted(p.relative_to(tmp_path / "enc").as_posix() for p in (tmp_path / "enc").rglob("*.eae"))
    assert made == ["d0.eae", "d1.eae", "sub/d.2.eae"]
    (tmp_path / "enc" / "zz-bad.eae").write_bytes(b"\xea\xae\x01junk")
    res = runner.invoke(main, ["decode", str(tmp_path / "enc"), "--bundle", str(tiny_bundle), "--out",
                               str(tmp_path / "dec")])
    assert res.exit_code == 1 and "zz-bad.eae" in res.output
    dec = Decoder(tiny_bundle)
    for name in ("d0", "d1", "sub/d.2"):
        png = np.asarray(Image.open(tmp_path / "dec" / f"{name}.png"))
        np.testing.assert_array_equal(png, dec.decode((tmp_path / "enc" / f"{name}.eae").read_bytes())[0])
    assert not list((tmp_path / "dec").rglob(".*"))  # atomic writes leave no temporary files


def test_cli_batch_payload_decodes_to_numbered_pngs(tiny_bundle, tmp_path):
    from PIL import Image

    for i, img in enumerate(_digits(3)):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    runner = CliRunner()
    files = [str(tmp_path / f"{i}.png") for i in range(3)]
    res = runner.invoke(main, ["encode", *files, "--bundle", str(tiny_bundle), "--out", str(tmp_path / "e"), "--batch"])
    assert res.exit_code == 0, res.output
    assert wire.describe((tmp_path / "e" / "batch.eae").read_bytes())["items"] == 3
    res = runner.invoke(main, ["decode", str(tmp_path / "e" / "batch.eae"), "--bundle", str(tiny_bundle),
                               "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [f"batch-000{i}.png" for i in range(3)]


def test_cli_wrong_bundle_is_a_per_file_error(tiny_bundle, other_bundle, tmp_path):
    payload = tmp_path / "a.eae"
    payload.write_bytes(Encoder(tiny_bundle).encode(_digits(1)))
    res = CliRunner().invoke(main, ["decode", str(payload), "--bundle", str(other_bundle), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "fingerprint_mismatch" in res.output and "Traceback" not in res.output


# --- compatibility --------------------------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "data" / "v1"


def test_golden_v1_payload_still_decodes_to_the_same_images():
    dec = Decoder(GOLDEN / "bundle")
    data = (GOLDEN / "batch3.eae").read_bytes()
    symbols = np.load(GOLDEN / "batch3.symbols.npy")
    np.testing.assert_array_equal(dec.symbols(data), symbols)
    np.testing.assert_array_equal(dec.decode(data), np.load(GOLDEN / "batch3.images.npy"))
    # today's encoder writes version 2 around the very same bodies (the factorized bitstream did not change)
    enc = Encoder(GOLDEN / "bundle")
    v2 = enc.encode(np.random.default_rng(7).integers(0, 256, (3, 8, 8), dtype=np.uint8))
    assert v2[2] == 2 and wire.parse(v2).bodies == wire.parse(data).bodies
    np.testing.assert_array_equal(dec.decode(v2), dec.decode(data))
    assert len(v2) == len(data) - 1  # v2: model byte + one shared H, W instead of the 4-byte latent shape


def test_the_device_side_runs_without_onnxruntime_s_memory_arena(tiny_bundle):
    from edgeae.runtime.session import applied_settings

    enc, dec = Encoder(tiny_bundle), Decoder(tiny_bundle)
    assert applied_settings(enc.graph.session)["memory_arena"] is False  # peak memory on the device
    assert applied_settings(dec.graph.session)["memory_arena"] is True  # throughput on the server
    images = np.random.default_rng(0).integers(0, 256, (3, *enc.manifest.input.shape[1:]), dtype=np.uint8)
    assert dec.decode(enc.encode(images)).shape[0] == 3
