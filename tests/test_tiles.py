"""Tiled graph runs: the exporter's halo proof, the tile plan, and tiled == whole on real bundles.

Hand-built onnx.helper graphs check the halo analysis (edgeae.bundling.halo) against the receptive field worked
out by hand and against graphs it must refuse; the shipped photo zoo and a real exported `codec` bundle check
that tiled encodes and decodes give what one whole run gives, fp32 and int8.
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import numpy as np
import pytest

from edgeae.errors import BundleError, InputError
from edgeae.runtime import Decoder, Encoder
from edgeae.runtime.tiles import plan

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeae.bundling.halo import graph_halo  # noqa: E402


def _graph(nodes, inits, out_channels=4):
    """The graph from x to the last node's output."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, [1, out_channels, None, None])
    init = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], init),
                             opset_imports=[helper.make_opsetid("", 17)])


def _conv(i, o, name, k=5, s=2, cin=3, cout=4, pad=None):
    p = k // 2 if pad is None else pad
    node = helper.make_node("Conv", [i, f"{name}.w", f"{name}.b"], [o], kernel_shape=[k, k], strides=[s, s],
                            pads=[p, p, p, p])
    return node, {f"{name}.w": np.zeros((cout, cin, k, k)), f"{name}.b": np.zeros(cout)}


def _encoder_like(extra=()):
    a, wa = _conv("x", "a", "c1")
    r = helper.make_node("Relu", ["a"], ["r"])
    b, wb = _conv("r", "b", "c2", cin=4)
    nodes, inits = [a, r, b], {**wa, **wb}
    for node, init in extra:
        nodes.append(node)
        inits.update(init)
    return _graph(nodes, inits)


def test_halo_of_strided_convolutions_is_their_receptive_field():
    # two 5x5 stride-2 convs, pad 2: each output depends on input [4i - 6, 4i + 6]
    assert graph_halo(_encoder_like(), Fraction(4)) == 6
    assert graph_halo(_encoder_like(), Fraction(2)) is None  # the output is not where the manifest says


def test_halo_of_a_pixel_shuffle_decoder():
    # conv3x3 at scale 1, DepthToSpace(2), conv3x3 at 1/2, DepthToSpace(2): L = 1 + 1/2 + 1/2 + 1/4 = 2.25
    a, wa = _conv("x", "a", "c1", k=3, s=1, cout=16)
    d1 = helper.make_node("DepthToSpace", ["a"], ["d"], blocksize=2, mode="CRD")
    b, wb = _conv("d", "b", "c2", k=3, s=1, cin=4, cout=16)
    d2 = helper.make_node("DepthToSpace", ["b"], ["y"], blocksize=2, mode="CRD")
    model = _graph([a, d1, b, d2], {**wa, **wb})
    assert graph_halo(model, Fraction(1, 4)) == 3


@pytest.mark.parametrize("kind", ["pool", "resize", "spatial-constant", "reshape"])
def test_graphs_that_mix_far_cells_get_no_halo(kind):
    if kind == "pool":
        extra = [(helper.make_node("GlobalAveragePool", ["b"], ["y"]), {})]
    elif kind == "resize":
        extra = [(helper.make_node("Resize", ["b", "", "sc"], ["y"]), {"sc": np.array([1, 1, 2, 2])})]
    elif kind == "spatial-constant":  # a fixed (1, 1, 8, 8) map added to the latent: position-dependent
        extra = [(helper.make_node("Add", ["b", "pos"], ["y"]), {"pos": np.zeros((1, 1, 8, 8))})]
    else:
        extra = [(helper.make_node("Reshape", ["b", "shape"], ["y"]), {"shape": np.array([1, 4, -1, 1])})]
    model = _encoder_like(extra)
    assert graph_halo(model, None) is None


def test_pointwise_ops_with_per_channel_constants_keep_the_halo():
    extra = [(helper.make_node("Mul", ["b", "g"], ["m"]), {"g": np.ones((1, 4, 1, 1))}),
             (helper.make_node("Clip", ["m", "lo", "hi"], ["y"]), {"lo": np.array(0.0), "hi": np.array(1.0)})]
    assert graph_halo(_encoder_like(extra), Fraction(4)) == 6


@pytest.mark.parametrize(("h", "w", "unit", "halo", "cells"), [
    (1088, 1920, 16, 30, 1 << 19), (68, 120, 1, 3, 2048), (64, 64, 16, 30, 100), (512, 768, 16, 30, 1 << 19),
    (16, 4096, 16, 2, 1 << 12),
])
def test_a_plan_partitions_the_image_into_aligned_bounded_tiles(h, w, unit, halo, cells):
    tiles = plan(h, w, unit, halo, cells)
    cover = np.zeros((h, w), np.int32)
    for t in tiles:
        top, bottom, left, right = t.core
        r0, r1, c0, c1 = t.read
        cover[top:bottom, left:right] += 1
        assert 0 <= r0 <= top < bottom <= r1 <= h and 0 <= c0 <= left < right <= c1 <= w
        assert all(v % unit == 0 for v in (*t.core, *t.read[::2]))  # reads start on the latent grid
        if h * w > cells:  # the halo is read wherever the image goes on
            assert top - r0 >= min(halo, top) and r1 - bottom >= min(halo, h - bottom)
    assert (cover == 1).all()
    reads = [(t.read[1] - t.read[0]) * (t.read[3] - t.read[2]) for t in tiles]
    if (h, w, cells) == (512, 768, 1 << 19):
        assert len(tiles) == 1
    elif unit * unit <= cells and (h, w) != (64, 64):
        assert max(reads) <= cells


def _photo(h: int, w: int) -> np.ndarray:
    skimage = pytest.importorskip("skimage.data")
    return np.tile(skimage.astronaut(), (3, 3, 1))[:h, :w]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_photo_zoo_encodes_and_decodes_on_tiles_as_whole(precision):
    img = _photo(300, 460)  # 304 x 464 padded: 6 tiles at 40k pixels, cores of several sizes
    tiled = Encoder("photo:3", precision, threads=1, tile_pixels=40_000)
    whole = Encoder("photo:3", precision, threads=1, tile_pixels=0)
    x = tiled.pad(tiled.preprocess(img))
    yt, yw = tiled.latents(x), whole.latents(x)
    assert yt.shape == yw.shape == (1, 192, 19, 29)
    np.testing.assert_allclose(yt, yw, rtol=0, atol=1e-3)
    data = whole.encode(img)
    dt = Decoder("photo:3", threads=1, tile_pixels=40_000).decode(data, as_float=True)
    dw = Decoder("photo:3", threads=1, tile_pixels=0).decode(data, as_float=True)
    assert dt.shape == (1, 3, 300, 460)
    np.testing.assert_allclose(dt, dw, rtol=0, atol=1e-4)


def test_a_bundle_without_a_halo_runs_whole(tmp_path):
    from edgeae.zoo import locate

    bundle, _ = locate("photo:3")
    copy = tmp_path / "photo"
    shutil.copytree(bundle, copy)
    m = json.loads((copy / "manifest.json").read_text())
    for role in ("encoder", "decoder"):
        m["graphs"][role].pop("halo")
    (copy / "manifest.json").write_text(json.dumps(m))
    enc = Encoder(copy, threads=1, tile_pixels=40_000, quality=3)
    assert enc.graph.halo is None
    calls = []
    run = enc.graph.main
    enc.graph.main = lambda x: calls.append(x.shape) or run(x)  # type: ignore[method-assign]
    enc.latents(enc.pad(enc.preprocess(_photo(300, 460))))
    assert calls == [(1, 3, 304, 464)]


def test_a_tile_budget_below_one_latent_cell_still_tiles_and_decodes_right():
    data = Encoder("photo:3", threads=1).encode(_photo(40, 60))
    whole = Decoder("photo:3", threads=1, tile_pixels=0).decode(data, as_float=True)
    tiny = Decoder("photo:3", threads=1, tile_pixels=100)  # < 16 x 16: one latent cell per tile core
    np.testing.assert_allclose(tiny.decode(data, as_float=True), whole, rtol=0, atol=1e-4)


def test_tile_pixels_must_be_a_count():
    for bad in (-1, 1.5, True, "big"):
        with pytest.raises(InputError, match="tile_pixels must be"):
            Encoder("photo:3", tile_pixels=bad)


def test_the_cli_takes_a_tile_budget_and_gives_the_same_bytes_and_images(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from edgeae.cli import main

    Image.fromarray(_photo(150, 230)).save(tmp_path / "a.png")
    outs = {}
    for t in ("0", "5000"):
        enc = CliRunner().invoke(main, ["encode", str(tmp_path / "a.png"), "--bundle", "photo:1", "--threads", "1",
                                        "--tile-pixels", t, "--out", str(tmp_path / f"p{t}")])
        assert enc.exit_code == 0, enc.output
        dec = CliRunner().invoke(main, ["decode", str(tmp_path / f"p{t}"), "--bundle", "photo:1", "--threads", "1",
                                        "--tile-pixels", t, "--out", str(tmp_path / f"d{t}")])
        assert dec.exit_code == 0, dec.output
        outs[t] = ((tmp_path / f"p{t}" / "a.eae").read_bytes(), np.asarray(Image.open(tmp_path / f"d{t}" / "a.png")))
    assert outs["0"][0] == outs["5000"][0]
    np.testing.assert_array_equal(outs["0"][1], outs["5000"][1])
    bad = CliRunner().invoke(main, ["encode", str(tmp_path / "a.png"), "--bundle", "photo:1", "--tile-pixels", "-5",
                                    "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "tile-pixels" in bad.output


@pytest.mark.parametrize("halo", [-1, 5000, "3", 2.5])
def test_the_manifest_refuses_a_bad_halo(tmp_path, halo):
    from edgeae.runtime.manifest import Manifest
    from edgeae.zoo import locate

    bundle, _ = locate("photo:3")
    m = json.loads((bundle / "manifest.json").read_text())
    m["graphs"]["encoder"]["halo"] = halo
    with pytest.raises(BundleError, match="graphs.encoder.halo"):
        Manifest.from_dict(m)


@pytest.mark.slow
def test_an_exported_codec_bundle_is_proven_local_and_tiles_exactly(make_run, tmp_path):
    build = pytest.importorskip("edgeae.bundling.build")
    run = make_run("codec", lmbda=0.05, channels=16, latent_channels=8, downsamplings=2)
    out = tmp_path / "bundle"
    build.export_run(run, build.ExportOptions(out=out, int8=True, calibration_samples=32, measure_speed=False))
    graphs = json.loads((out / "manifest.json").read_text())["graphs"]
    assert graphs["encoder"]["halo"] > 0 and graphs["decoder"]["halo"] > 0
    img = np.random.default_rng(0).integers(0, 256, (90, 130), dtype=np.uint8)
    for precision in ("fp32", "int8"):
        y = [Encoder(out, precision, tile_pixels=t).latents(Encoder(out).pad(Encoder(out).preprocess(img)))
             for t in (0, 900)]
        np.testing.assert_allclose(y[0], y[1], rtol=0, atol=1e-4)
    data = Encoder(out).encode(img)
    a, b = (Decoder(out, tile_pixels=t).decode(data, as_float=True) for t in (0, 900))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def _random(model, seed=0):
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(rng.normal(0, 0.3, numpy_helper.to_array(t).shape).astype(np.float32),
                                           t.name))
    return model


def _upsampler(kind):
    """Two x2 upsampling stages, 3 -> 4 -> 4 channels: transposed convolutions or conv + DepthToSpace."""
    nodes, inits, cur, cin = [], {}, "x", 3
    for i in range(2):
        if kind == "convtranspose":
            nodes.append(helper.make_node("ConvTranspose", [cur, f"t{i}.w", f"t{i}.b"], [f"u{i}"],
                                          kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1]))
            inits.update({f"t{i}.w": np.zeros((cin, 4, 4, 4)), f"t{i}.b": np.zeros(4)})
        else:
            node, w = _conv(cur, f"c{i}", f"c{i}", k=3, s=1, cin=cin, cout=16)
            nodes += [node, helper.make_node("DepthToSpace", [f"c{i}"], [f"u{i}"], blocksize=2, mode="CRD")]
            inits.update(w)
        nodes.append(helper.make_node("Relu", [f"u{i}"], [f"r{i}"]))
        cur, cin = f"r{i}", 4
    return _random(_graph(nodes, inits))


@pytest.mark.parametrize("kind", ["convtranspose", "depthtospace"])
def test_the_halo_is_enough_and_no_halo_is_not(kind):
    """Random weights, onnxruntime: tiles with the analysed halo equal the whole run; tiles without one do not.
    (The bound is safe, not always tight: it may read a cell more than an aligned tile needs.)"""
    from edgeae.runtime.session import make_session
    from edgeae.runtime.tiles import run_tiled

    model = _upsampler(kind)
    halo = graph_halo(model, Fraction(1, 4))
    assert halo is not None and halo >= 1
    sess = make_session(model.SerializeToString())

    def run(x):
        return sess.run(None, {"x": x})[0]

    x = np.random.default_rng(1).normal(size=(1, 3, 24, 30)).astype(np.float32)
    whole = run(x)
    tiled = run_tiled(run, x, plan(24, 30, 1, halo, 120), Fraction(4))
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    short = run_tiled(run, x, plan(24, 30, 1, 0, 120), Fraction(4))
    assert np.abs(short - whole).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(("gdn", "widths", "upsample"), [("synthesis", (), "depth_to_space"),
                                                       ("both", (16, 8), "depth_to_space"),
                                                       ("both", (), "transposed")])
def test_a_gdn_codec_exports_local_graphs_that_tile_exactly(make_run, tmp_path, gdn, widths, upsample):
    """GDN / IGDN (Mul, a 1x1 Conv, Sqrt, Div) are local: the halo survives them, fp32 and int8; a tapered
    synthesis (N, N/2 channels) and Balle's transposed convolutions too."""
    build = pytest.importorskip("edgeae.bundling.build")
    run = make_run("codec", epochs=1, lmbda=0.05, channels=16, latent_channels=8, downsamplings=3, gdn=gdn,
                   synthesis_widths=widths, upsample=upsample)
    out = tmp_path / "bundle"
    build.export_run(run, build.ExportOptions(out=out, int8=True, calibration_samples=32, measure_speed=False))
    graphs = json.loads((out / "manifest.json").read_text())["graphs"]
    assert graphs["encoder"]["halo"] > 0 and graphs["decoder"]["halo"] > 0
    ops = {n.op_type for n in onnx.load(str(out / "decoder.onnx")).graph.node}
    up = "ConvTranspose" if upsample == "transposed" else "DepthToSpace"
    assert {"Sqrt", "Conv", up} <= ops  # IGDN and the upsampler really are in the exported synthesis
    weights = {tuple(t.dims) for t in onnx.load(str(out / "decoder.onnx")).graph.initializer}
    if upsample == "depth_to_space":
        assert ((8 * 4, 16, 3, 3) in weights) == bool(widths)  # the second stage at 8 channels (x4: DepthToSpace)
    img = np.random.default_rng(1).integers(0, 256, (70, 110), dtype=np.uint8)
    whole, tiled = Encoder(out, tile_pixels=0), Encoder(out, tile_pixels=600)
    x = whole.pad(whole.preprocess(img))
    np.testing.assert_allclose(tiled.latents(x), whole.latents(x), rtol=0, atol=1e-4)
    data = whole.encode(img)
    a, b = (Decoder(out, tile_pixels=t).decode(data, as_float=True) for t in (0, 600))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
