"""Any image size, the entropy-model layer and the hyperprior's conditional coder with escapes.

Hand-built fully convolutional bundles (onnx.helper graphs with dynamic H and W, manifests written through the
runtime's own dataclasses) for the runtime's own logic; a real `codec` model trained on digits for the end to end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgeae.errors import BundleError, CorruptStream, InputError, PayloadError
from edgeae.runtime import Decoder, Encoder
from edgeae.runtime import payload as wire
from edgeae.runtime.entropy_models.conditional import (
    MAX_VALUE,
    ConditionalTables,
    EscapeReader,
    write_escapes,
)
from edgeae.runtime.fingerprint import fingerprint, graph_digest, tables_digest
from edgeae.runtime.manifest import (
    EntropySpec,
    FileEntry,
    GraphEntry,
    InputSpec,
    LatentSpec,
    Manifest,
    Quantization,
    TableFamily,
)

SIZES = [(33, 47), (64, 64), (8, 8), (17, 100), (1, 1), (40, 24)]  # odd, square, tiny, non-square, one pixel

# --- hand-built bundles ----------------------------------------------------------------------------------


def _model(nodes, inits, inputs, outputs):
    import onnx
    from onnx import helper, numpy_helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                          [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
                          [numpy_helper.from_array(np.asarray(v), name) for name, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _upsample2(name: str, out: str) -> list:
    """Nearest x2 upsampling of an (N, C, h, w) tensor of any dtype: Unsqueeze, Expand, Reshape."""
    from onnx import helper

    return [helper.make_node("Shape", [name], [f"{out}_s"]),
            helper.make_node("Mul", [f"{out}_s", "two2"], [f"{out}_s2"]),
            helper.make_node("Unsqueeze", [name, "ax35"], [f"{out}_u"]),
            helper.make_node("Expand", [f"{out}_u", "rep"], [f"{out}_e"]),
            helper.make_node("Reshape", [f"{out}_e", f"{out}_s2"], [out])]


UP_INITS = {"two2": np.array([1, 1, 2, 2], np.int64), "ax35": np.array([3, 5], np.int64),
            "rep": np.array([1, 1, 1, 2, 1, 2], np.int64)}


def _conv_graphs(c: int, k: int, gain: float, seed: int):
    """encoder: AveragePool 2x2 -> Conv 1x1 (x gain); decoder: Conv 1x1 -> nearest x2 -> Sigmoid. Stride 2."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    rng = np.random.default_rng(seed)
    enc = _model([helper.make_node("AveragePool", ["image"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("Conv", ["p", "we", "be"], ["latent"])],
                 {"we": (gain * rng.normal(size=(k, c, 1, 1))).astype(np.float32),
                  "be": rng.normal(size=(k,)).astype(np.float32)},
                 [("image", f, ["N", c, "H", "W"])], [("latent", f, ["N", k, "h", "w"])])
    dec = _model([helper.make_node("Conv", ["latent", "wd", "bd"], ["m"]), *_upsample2("m", "r"),
                  helper.make_node("Sigmoid", ["r"], ["image"])],
                 {"wd": (rng.normal(size=(c, k, 1, 1)) / gain).astype(np.float32), "bd": np.zeros(c, np.float32),
                  **UP_INITS},
                 [("latent", f, ["N", k, "h", "w"])], [("image", f, ["N", c, "H", "W"])])
    return enc, dec


def _hyper_graphs(k: int, tables: int):
    """hyper_encoder: AveragePool 2x2 / 4 (float); hyper_decoder: int32 z -> Clip(|z|, 0, K-1) upsampled x2."""
    from onnx import TensorProto, helper

    f, i32 = TensorProto.FLOAT, TensorProto.INT32
    he = _model([helper.make_node("AveragePool", ["y"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("Mul", ["p", "quarter"], ["z"])],
                {"quarter": np.array(0.25, np.float32)}, [("y", f, ["N", k, "h", "w"])],
                [("z", f, ["N", k, "hz", "wz"])])
    hd = _model([helper.make_node("Abs", ["z"], ["a"]),
                 helper.make_node("Clip", ["a", "lo", "hi"], ["c"]), *_upsample2("c", "index")],
                {"lo": np.array(0, np.int32), "hi": np.array(tables - 1, np.int32), **UP_INITS},
                [("z", i32, ["N", k, "hz", "wz"])], [("index", i32, ["N", k, "h", "w"])])
    return he, hd


def integer_rows(probs: np.ndarray, precision: int = 16) -> list[list[int]]:
    """Probability rows -> ints >= 1 summing to 2**precision (largest remainders)."""
    total = 1 << precision
    out = []
    for p in probs:
        p = p / p.sum()
        scaled = p * (total - len(p))
        row = 1 + np.floor(scaled).astype(np.int64)
        order = np.argsort(-(scaled - np.floor(scaled)), kind="stable")
        row[order[: total - int(row.sum())]] += 1
        out.append(row.tolist())
    return out


def laplace_tables(scales, half: int, precision: int = 16) -> tuple[list[int], list[list[int]]]:
    """One table per scale over -half..half, plus the escape (mass 1e-4)."""
    v = np.arange(-half, half + 1)
    probs = [np.append(np.exp(-np.abs(v) / s), 1e-4 * np.exp(-np.abs(v) / s).sum()) for s in scales]
    return [-half] * len(scales), integer_rows(np.array(probs), precision)


def write_bundle(root: Path, graphs: dict[str, bytes], manifest_args: dict) -> Path:
    root.mkdir(parents=True)
    files, entries = {}, {}
    io = {"encoder": ("image", "latent"), "decoder": ("latent", "image"), "hyper_encoder": ("y", "z"),
          "hyper_decoder": ("z", "index")}
    for role, data in graphs.items():
        (root / f"{role}.onnx").write_bytes(data)
        files[f"{role}.onnx"] = FileEntry(hashlib.sha256(data).hexdigest(), len(data))
        entries[role] = GraphEntry(f"{role}.onnx", *io[role], 17)
    m = Manifest(name=root.name, graphs=entries, fingerprint="0" * 64, files=files, model={"family": "handmade"},
                 **manifest_args)
    d = m.to_dict()  # the runtime recomputes the fingerprint from the graphs and tables (runtime/fingerprint.py)
    digests = {role: graph_digest(data) for role, data in graphs.items()}
    extra = {role: v for role, v in digests.items() if role not in ("encoder", "decoder")}
    m = dataclasses.replace(m, fingerprint=fingerprint(digests["encoder"], digests["decoder"],
                                                       tables_digest(d["latent"], d["entropy"]),
                                                       *(v for _, v in sorted(extra.items()))))
    (root / "manifest.json").write_text(json.dumps(m.to_dict()))
    return root


def factorized_bundle(root: Path, c: int = 1, k: int = 4, multiple: int = 2, seed: int = 0) -> Path:
    enc, dec = _conv_graphs(c, k, 1.0, seed)
    levels = 256
    rng = np.random.default_rng(seed)
    return write_bundle(root, {"encoder": enc, "decoder": dec}, {
        "input": InputSpec((c, 8, 8), "L" if c == 1 else "RGB", 1 / 255, 0.0, size_multiple=multiple),
        "latent": LatentSpec((k, 4, 4), 1, Quantization(8, levels, tuple([-4.0] * k), tuple([8 / 255] * k)),
                             stride=2),
        "entropy": EntropySpec("range", 16, tuple(map(tuple, integer_rows(rng.random((k, levels)) + 0.1)))),
    })


def hyper_bundle(root: Path, k: int = 3, gain: float = 40.0, tables: int = 8, half: int = 6,
                 multiple: int = 4) -> Path:
    enc, dec = _conv_graphs(1, k, gain, 1)
    he, hd = _hyper_graphs(k, tables)
    z_off, z_rows = laplace_tables([4.0] * k, 10)
    y_off, y_rows = laplace_tables(np.geomspace(0.5, 30, tables), half)
    return write_bundle(root, {"encoder": enc, "decoder": dec, "hyper_encoder": he, "hyper_decoder": hd}, {
        "input": InputSpec((1, 8, 8), "L", 1 / 255, 0.0, size_multiple=multiple),
        "latent": LatentSpec((k, 4, 4), 1, Quantization(8, 256, (0.0,) * k, (1.0,) * k), stride=2),
        "entropy": EntropySpec("range", 16, (), model="hyperprior",
                               z=TableFamily(tuple(z_off), tuple(map(tuple, z_rows)), stride=2),
                               y=TableFamily(tuple(y_off), tuple(map(tuple, y_rows)),
                                             scales=tuple(np.geomspace(0.5, 30, tables).tolist()))),
    })


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("anysize")
    return {"factorized": factorized_bundle(root / "fact"), "rgb": factorized_bundle(root / "rgb", c=3, multiple=8),
            "hyperprior": hyper_bundle(root / "hyper")}


def _image(h: int, w: int, c: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000 * h + w)
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _pad(img: np.ndarray, multiple: int) -> np.ndarray:
    h, w = img.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    return np.pad(img, ((0, ph), (0, pw)) + ((0, 0),) * (img.ndim - 2), mode="edge")


# --- any size ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["factorized", "rgb", "hyperprior"])
def test_every_size_equals_encoding_the_padded_image_and_cropping(bundles, kind):
    b = bundles[kind]
    enc, dec = Encoder(b), Decoder(b)
    c = 3 if kind == "rgb" else 1
    m = enc.size_multiple
    for h, w in SIZES:
        img = _image(h, w, c)
        payload = enc.encode(img)
        assert wire.parse(payload).header.sizes == ((h, w),)
        out = dec.decode(payload)
        assert out.shape == (1, *img.shape) and out.dtype == np.uint8
        padded = _pad(img, m)
        ref_payload = enc.encode(padded)
        ref = dec.decode(ref_payload)[0]
        np.testing.assert_array_equal(out[0], ref[:h, :w])
        # the same coded parts: only the announced size differs
        assert wire.parse(payload).items[0].parts == wire.parse(ref_payload).items[0].parts
        np.testing.assert_array_equal(dec.latents(payload), dec.latents(ref_payload))


@pytest.mark.parametrize("kind", ["factorized", "hyperprior"])
def test_a_batch_of_mixed_sizes_keeps_order_and_equals_single_payloads(bundles, kind):
    enc, dec = Encoder(bundles[kind]), Decoder(bundles[kind])
    images = [_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES + SIZES[:2])]
    batch = enc.encode(images)
    p = wire.parse(batch)
    assert p.header.sizes == tuple(im.shape for im in images)
    singles = enc.encode_each(images)
    assert [wire.parse(s).items[0] for s in singles] == list(p.items)  # items are independent
    out = dec.decode(batch)
    assert isinstance(out, list) and len(out) == len(images)
    for o, s, im in zip(out, singles, images, strict=True):
        assert o.shape == im.shape
        np.testing.assert_array_equal(o, dec.decode(s)[0])
    latents, sizes = dec.items(batch)
    assert sizes == [im.shape for im in images]
    rendered = dec.render(latents, sizes)
    for a, b in zip(rendered, out, strict=True):
        np.testing.assert_array_equal(a, b)
    # one size only: arrays, as for fixed-size bundles
    same = np.stack([_image(33, 47, seed=i) for i in range(3)])
    assert dec.decode(enc.encode(same)).shape == (3, 33, 47)
    assert enc.encode(list(same)) == enc.encode(same)


def test_one_bundle_takes_a_thumbnail_and_a_full_hd_frame(bundles):
    enc, dec = Encoder(bundles["rgb"]), Decoder(bundles["rgb"])
    thumb, frame = _image(64, 64, 3), _image(1080, 1920, 3)
    out = dec.decode(enc.encode([thumb, frame]))
    assert [o.shape for o in out] == [thumb.shape, frame.shape]
    assert wire.describe(enc.encode(frame))["image_sizes"] == ["1080x1920"]


def test_image_files_of_any_size(bundles, tmp_path):
    from PIL import Image

    enc, dec = Encoder(bundles["factorized"]), Decoder(bundles["factorized"])
    img = _image(33, 47)
    Image.fromarray(img).save(tmp_path / "a.png")
    np.testing.assert_array_equal(dec.decode(enc.encode(tmp_path / "a.png")), dec.decode(enc.encode(img)))
    np.testing.assert_array_equal(dec.decode(enc.encode([tmp_path / "a.png", img]))[1], dec.decode(enc.encode(img))[0])


def test_sizes_over_the_limits_are_refused_before_the_graph_runs(bundles):
    enc = Encoder(bundles["factorized"])
    with pytest.raises(InputError, match="exceeds the format's limits"):
        enc.encode(np.zeros((1, 8192, 8192), np.uint8))
    with pytest.raises(InputError, match="any size"):
        enc.encode(np.zeros((1, 4, 4, 3), np.uint8))  # colour images for a gray bundle


def test_a_fixed_size_bundle_keeps_its_clear_error(tmp_path):
    b = factorized_bundle(tmp_path / "fixed", multiple=0)
    enc, dec = Encoder(b), Decoder(b)
    with pytest.raises(InputError, match=r"takes 8x8.*never resizes"):
        enc.encode(_image(9, 9))
    body = enc.entropy.encode_symbols(np.zeros((1, 4, 4, 4), np.int32))[0]
    with pytest.raises(CorruptStream, match="takes only 8x8"):
        dec.decode(wire.pack(dec.fingerprint, [wire.Item(16, 16, (body,))], bits=8))
    assert dec.decode(enc.encode(_image(8, 8))).shape == (1, 8, 8)


def test_a_payload_announcing_more_work_than_the_limits_is_refused(bundles):
    dec = Decoder(bundles["factorized"])
    items = [wire.Item(4096, 4096, (b"\x00" * 4,))] * 4  # 4 x 2**24 pixels -> 4 x 2**24 latent symbols
    with pytest.raises(CorruptStream, match="more padded pixels or latent symbols"):
        dec.decode(wire.pack(dec.fingerprint, items, bits=8))
    # 65,536 one-pixel items pad to 4x4 each on a multiple-4 bundle: the padded pixels count, not the announced
    hyper = Decoder(bundles["hyperprior"])
    tiny = [wire.Item(1, 1, (b"\x00" * 4, b"\x00" * 4, b""))] * wire.MAX_ITEMS
    payload = wire.pack(hyper.fingerprint, tiny, bits=8, model=wire.MODEL_HYPERPRIOR)
    assert hyper.parse(payload).header.pixels == wire.MAX_ITEMS  # 16 x that padded: still within 2**26
    # well-formed forged parts: a range coder reads most words as some symbols, but zero words are not what the
    # encoder writes for them (bodies are canonical), so the decode stops with CorruptStream: bounded, no crash
    small = wire.pack(hyper.fingerprint, tiny[:64], bits=8, model=wire.MODEL_HYPERPRIOR)
    with pytest.raises(CorruptStream, match="not the encoding of the symbols"):
        hyper.decode(small)


# --- conditional coding with escapes --------------------------------------------------------------------------


def _tables(k: int = 5, half: int = 3) -> ConditionalTables:
    offsets, rows = laplace_tables(np.geomspace(0.3, 10, k), half)
    return ConditionalTables(offsets, rows, 16)


def test_conditional_coder_round_trips_any_int32_value_through_escapes():
    t = _tables()
    rng = np.random.default_rng(0)
    extreme = np.array([MAX_VALUE, -MAX_VALUE, 0, 3, 4, -3, -4, 1 << 20, -(1 << 27), 127, -128], np.int64)
    streams, originals = [], []
    for n in (3000, 20000, 1):  # one lane, several lanes, a single symbol
        values = np.concatenate([rng.laplace(0, 2, n).round().astype(np.int64), extreme])
        index = rng.integers(0, len(t), len(values))
        order = t.order(index)
        streams.append((values[order], index[order]))
        originals.append((values, index, order))
    bodies, escaped = t.encode(streams)
    assert all(len(e) >= len(extreme) - 3 for e in escaped)  # out-of-range values escape
    readers = [EscapeReader(write_escapes([e])) for e in escaped]
    back = t.decode(bodies, [s[1] for s in streams], readers, ["a", "b", "c"])
    for (values, _, order), b, r in zip(originals, back, readers, strict=True):
        restored = np.empty_like(values)
        restored[order] = b
        np.testing.assert_array_equal(restored, values)
        r.finish()


def test_escape_part_is_parsed_strictly():
    t = _tables()
    values = np.array([100, -100, 1], np.int64)
    index = np.zeros(3, np.int64)
    (body,), (esc,) = t.encode([(values, index)])
    part = write_escapes([esc])
    assert len(esc) == 2 and len(part) == 4  # zigzag 200 and 199: two bytes each

    def decode(escapes: bytes) -> EscapeReader:
        reader = EscapeReader(escapes)
        t.decode([body], [index], [reader], ["y"])
        return reader

    with pytest.raises(CorruptStream, match="ends inside a varint"):
        EscapeReader(part[:-1])
    with pytest.raises(CorruptStream, match="non-canonical"):
        EscapeReader(b"\x80\x00")
    with pytest.raises(CorruptStream, match="outside int32"):
        EscapeReader(b"\xff\xff\xff\xff\x1f")
    with pytest.raises(CorruptStream, match="fewer values"):
        decode(part[:2])
    with pytest.raises(CorruptStream, match="no stream escapes"):
        decode(part + b"\x05").finish()
    with pytest.raises(CorruptStream, match="inside its table's range"):  # an escape must not code an in-range value
        decode(write_escapes([np.array([0, 100])]))
    decode(part).finish()


def test_hyperprior_round_trips_extreme_latents_exactly(bundles):
    enc, dec = Encoder(bundles["hyperprior"]), Decoder(bundles["hyperprior"])
    model = enc.entropy
    rng = np.random.default_rng(1)
    y = rng.laplace(0, 3, (2, 3, 8, 12)).astype(np.float32)
    y[0, 0, 0, :4] = [1e9, -1e9, 2.0**31 - 128, -(2.0**31 - 128)]  # float32-representable extremes
    y[1, 2, 3, 5] = np.nan  # NaN codes as 0
    parts = model.encode(y)
    assert all(len(p[2]) > 0 for p in parts[:1])  # item 0 escaped
    back = dec.entropy.decode(parts, (3, 8, 12))
    expect = np.nan_to_num(np.rint(y), nan=0.0)
    np.testing.assert_array_equal(back, expect)


def test_corrupted_coded_parts_give_corrupt_stream_never_a_hang(bundles):
    enc, dec = Encoder(bundles["hyperprior"]), Decoder(bundles["hyperprior"])
    item = enc.items(_image(33, 47))[0]
    z, y, esc = item.parts
    rng = np.random.default_rng(0)
    bad = [(z[:-4], y, esc), (z, y[:-4], esc), (z + z, y, esc), (z, y + b"\x00" * 4, esc), (z, y, esc + b"\x01"),
           (z[:-1], y, esc), (bytes(len(z)), y, esc)]
    for _ in range(40):
        k = int(rng.integers(0, 2))
        part = bytearray(item.parts[k])
        part[int(rng.integers(0, len(part)))] ^= int(rng.integers(1, 256))
        bad.append(tuple(bytes(part) if j == k else p for j, p in enumerate(item.parts)))
    raised = 0
    for parts in bad:
        payload = wire.pack(dec.fingerprint, [wire.Item(33, 47, parts)], bits=enc.bits, model=enc.model_id)
        try:
            dec.decode(payload)
        except CorruptStream:
            raised += 1
        except PayloadError as exc:  # pragma: no cover - would be a wrong error class
            raise AssertionError(f"expected CorruptStream, got {type(exc).__name__}") from exc
    # a flipped bit inside a range-coded body can decode to other valid symbols (the payload CRC catches damage
    # in transit); every structural damage above is refused
    assert raised >= 7


def test_hyperprior_payload_layout(bundles):
    enc = Encoder(bundles["hyperprior"])
    p = wire.parse(enc.encode(_image(64, 64)))
    assert p.header.model == wire.MODEL_HYPERPRIOR and len(p.items[0].parts) == 3
    assert wire.describe(enc.encode(_image(64, 64)))["entropy_model"] == "hyperprior"
    with pytest.raises(InputError, match="no single symbol array"):
        enc.symbols(_image(8, 8))
    with pytest.raises(InputError, match="no single symbol array"):
        Decoder(bundles["hyperprior"]).symbols(enc.encode(_image(8, 8)))
    fact = Encoder(bundles["factorized"])
    with pytest.raises(InputError, match="several sizes"):
        Decoder(bundles["factorized"]).symbols(fact.encode([_image(8, 8), _image(9, 9)]))


def test_a_hyper_decoder_giving_bad_indices_is_a_bundle_error(tmp_path):
    b = hyper_bundle(tmp_path / "h", tables=8)
    enc = Encoder(b)
    model = enc.entropy
    model.y = _tables(k=2)  # the graph gives indices up to 7: more tables than this
    with pytest.raises(BundleError, match="indices outside 0..1"):
        enc.encode(_image(16, 16))


# --- inspect ---------------------------------------------------------------------------------------------------


def test_inspect_shows_graphs_entropy_model_tables_and_sizes(bundles, tmp_path):
    from click.testing import CliRunner

    from edgeae.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["inspect", str(bundles["hyperprior"])])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "encoder encoder.onnx" in out and "hyper_encoder hyper_encoder.onnx" in out and "hyper_decoder" in out
    assert "hyperprior, range coder" in out and "z 3 tables" in out and "y 8 tables indexed by the hyper-decoder" in out
    assert "any HxW, 1 channel(s) (padded to a multiple of 4; latent stride 2" in out
    res = runner.invoke(main, ["inspect", str(bundles["rgb"])])
    assert "factorized, range coder: 4 tables (one per channel) x 256 entries" in res.output
    fixed = factorized_bundle(tmp_path / "fixed", multiple=0)
    assert "fixed 8x8 only" in runner.invoke(main, ["inspect", str(fixed)]).output
    payload = tmp_path / "p.eae"
    payload.write_bytes(Encoder(bundles["hyperprior"]).encode(_image(33, 47)))
    res = runner.invoke(main, ["inspect", str(payload)])
    assert res.exit_code == 0 and "hyperprior" in res.output and "33x47" in res.output


@pytest.mark.parametrize("kind", ["factorized", "hyperprior"])
def test_numpy_and_constriction_coders_write_the_same_payloads(bundles, kind, monkeypatch):
    pytest.importorskip("constriction")
    images = [_image(120, 200, seed=1), _image(33, 47, seed=2)]  # the first needs several lanes
    payloads = {}
    for backend in ("numpy", "constriction"):
        monkeypatch.setenv("EDGEAE_CODER", backend)
        enc = Encoder(bundles[kind])
        assert enc.entropy.describe()
        payloads[backend] = enc.encode(images)
        dec = Decoder(bundles[kind])
        out = dec.decode(payloads["numpy"])
        np.testing.assert_array_equal(out[0], Decoder(bundles[kind]).decode(enc.encode(images[0]))[0])
    assert payloads["numpy"] == payloads["constriction"]



def test_encoders_and_decoders_are_thread_safe_across_sizes(bundles):
    from concurrent.futures import ThreadPoolExecutor

    enc, dec = Encoder(bundles["hyperprior"]), Decoder(bundles["hyperprior"])
    images = [_image(8 + 3 * i, 60 - 2 * i, seed=i) for i in range(24)]
    expect = [enc.encode(im) for im in images]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(enc.encode, images))
        decoded = list(pool.map(dec.decode, got))
    assert got == expect
    for im, out, p in zip(images, decoded, expect, strict=True):
        assert out.shape == (1, *im.shape)
        np.testing.assert_array_equal(out, dec.decode(p))


# --- a real fully convolutional model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec_bundle(make_run, tmp_path_factory):
    """The learned `codec` family on digits (the run tests/test_codec_model.py trains: shared through the
    make_run cache), exported any-size (stride 4), fp32 + int8."""
    build = pytest.importorskip("edgeae.bundling.build")
    run = make_run("codec", lmbda=0.05, channels=16, latent_channels=8, downsamplings=2)
    out = tmp_path_factory.mktemp("codec") / "bundle"
    build.export_run(run, build.ExportOptions(out=out, int8=True, calibration_samples=32, measure_speed=False))
    return out


@pytest.mark.slow
def test_a_real_codec_bundle_codes_every_size_like_its_padded_image(codec_bundle):
    enc, dec = Encoder(codec_bundle), Decoder(codec_bundle)
    assert enc.any_size and enc.size_multiple == 4 and enc.stride == 4
    sizes = [(33, 47), (8, 8), (64, 64), (21, 90), (5, 3), (120, 77)]
    images = [_image(h, w, seed=3) for h, w in sizes]
    for img in images:
        h, w = img.shape
        out = dec.decode(enc.encode(img))[0]
        ref = dec.decode(enc.encode(_pad(img, 4)))[0]
        np.testing.assert_array_equal(out, ref[:h, :w])
    batch = dec.decode(enc.encode(images))
    assert [b.shape for b in batch] == sizes
    # int8 encoder payloads decode on the fp32 decoder (the same tables), at any size too
    enc8 = Encoder(codec_bundle, "int8")
    for img in images[:2]:
        assert dec.decode(enc8.encode(img))[0].shape == img.shape


@pytest.mark.parametrize(("edit", "field"), [
    (lambda e: e.pop("z"), "entropy.z is missing"),
    (lambda e: e["z"].pop("stride"), "entropy.z.stride is missing"),
    (lambda e: e["y"]["tables"][2].__setitem__("frequencies", [1 << 16]), r"entropy.y.tables\[2\].frequencies needs"),
    (lambda e: e["y"]["tables"][0]["frequencies"].__setitem__(0, 0), r"entropy.y.tables\[0\].frequencies\[0\] must"),
    (lambda e: e["z"]["tables"][1]["frequencies"].append(1), r"entropy.z.tables\[1\].frequencies must sum"),
    (lambda e: e["y"]["tables"][0].__setitem__("offset", 1.5), r"entropy.y.tables\[0\].offset must be an integer"),
    (lambda e: e["y"].__setitem__("means", "no"), "entropy.y.means must be true or false"),
    (lambda e: e["y"]["scales"].pop(), "entropy.y.scales must have one scale per 1 table"),
    (lambda e: e["y"].__setitem__("mean_phases", 2), "entropy.y.mean_phases needs means: true"),
    (lambda e: e["y"].update(means=True, mean_phases=3), "entropy.y.tables must hold a table per scale and mean phase"),
    (lambda e: e["y"].update(means=True, mean_phases=0), "entropy.y.mean_phases must be"),
    (lambda e: e["y"].__setitem__("tables", []), "entropy.y.tables must hold 1 to"),
    (lambda e: e.__setitem__("model", "gmm"), "entropy.model must be one of"),
])
def test_invalid_hyperprior_sections_name_the_field(bundles, tmp_path, edit, field):
    import shutil

    from edgeae.runtime import Bundle

    b = tmp_path / "h"
    shutil.copytree(bundles["hyperprior"], b)
    m = json.loads((b / "manifest.json").read_text())
    edit(m["entropy"])
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=field):
        Bundle.open(b)


def test_hyperprior_manifest_round_trips_exactly(bundles):
    from edgeae.runtime.manifest import load_manifest

    raw = json.loads((bundles["hyperprior"] / "manifest.json").read_text())
    m = load_manifest(bundles["hyperprior"])
    assert m.to_dict() == raw and m.entropy.model == "hyperprior" and len(m.entropy.y.offsets) == 8


def test_decode_verify_needs_an_entropy_model_with_an_integer_graph(bundles, tmp_path):
    from click.testing import CliRunner

    from edgeae.cli import main

    payload = tmp_path / "p.eae"
    payload.write_bytes(Encoder(bundles["factorized"]).encode(_image(8, 8)))
    res = CliRunner().invoke(main, ["decode", str(payload), "--bundle", str(bundles["factorized"]), "--out",
                                    str(tmp_path / "o"), "--verify"])
    assert res.exit_code != 0 and "no integer graph to verify" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["decode", str(payload), "--bundle", str(bundles["factorized"]), "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
