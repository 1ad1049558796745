"""Bundles a decode server can trust: the fingerprint recomputed from the graphs and tables at open, sessions
built from the verified bytes, and one typed line for every malformed manifest (bounded JSON)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae.cli import main
from edgeae.errors import BundleError, InputError, RunDirError
from edgeae.fsutil import parse_json_bounded, read_json_bounded
from edgeae.runtime import Bundle, Decoder, Encoder
from edgeae.runtime.fingerprint import graph_digest, graph_metadata


def _copy(src, tmp_path, name="b"):
    out = tmp_path / name
    shutil.copytree(src, out)
    return out


def _edit_manifest(bundle, edit):
    p = bundle / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


def _reseal(bundle, name):
    """What an attacker who can write the folder does: fix the file's sha256 and size in the manifest."""
    data = (bundle / name).read_bytes()

    def edit(m):
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _edit_manifest(bundle, edit)


def _restamp(bundle, name, fingerprint):
    """Forge a graph's metadata: write `fingerprint` into it, and reseal its sha256."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(bundle / name))
    for prop in model.metadata_props:
        if prop.key == "edgeae.fingerprint":
            prop.value = fingerprint
    onnx.save(model, str(bundle / name))
    _reseal(bundle, name)


def test_fingerprint_is_recomputed_from_the_real_graphs(tiny_bundle):
    b = Bundle.open(tiny_bundle)
    assert b.bound_by == "graphs" and set(b.digests) == {"encoder", "decoder", "encoder.int8", "decoder.int8"}
    meta = graph_metadata((tiny_bundle / "decoder.onnx").read_bytes())
    assert meta["edgeae.fingerprint"] == b.fingerprint


def test_swapped_int8_decoder_is_refused_like_an_fp32_one(tiny_bundle, make_bundle, tmp_path):
    pytest.importorskip("onnx")
    b = _copy(tiny_bundle, tmp_path)
    shutil.copy(make_bundle("conv", int8=True, seed=1) / "decoder.int8.onnx", b / "decoder.int8.onnx")
    _reseal(b, "decoder.int8.onnx")
    with pytest.raises(BundleError, match="not the int8 decoder graph this bundle was exported with"):
        Bundle.open(b)
    swapped = graph_digest((b / "decoder.int8.onnx").read_bytes())
    _edit_manifest(b, lambda m: m["graphs"]["decoder"].__setitem__("int8_digest", swapped))  # forge the record
    with pytest.raises(BundleError, match="decoder.int8.onnx was exported for bundle"):
        Bundle.open(b)
    _restamp(b, "decoder.int8.onnx", Bundle.open(tiny_bundle).fingerprint)  # and its metadata: the recomputed
    with pytest.raises(BundleError, match="give fingerprint .* manifest says"):
        Bundle.open(b)
    # dropping the int8 record to get around it changes the fingerprint too
    c = _copy(tiny_bundle, tmp_path, "c")
    _edit_manifest(c, lambda m: m["graphs"]["decoder"].pop("int8_digest"))
    with pytest.raises(BundleError, match="give fingerprint .* manifest says"):
        Bundle.open(c)


def test_bundles_exported_before_int8_joined_the_fingerprint_still_open(tiny_bundle, tmp_path):
    pytest.importorskip("onnx")
    from edgeae.runtime.fingerprint import fingerprint, tables_digest

    b = _copy(tiny_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    old = fingerprint(m["graphs"]["encoder"]["digest"], m["graphs"]["decoder"]["digest"],
                      tables_digest(m["latent"], m["entropy"]))
    for g in m["graphs"].values():
        g.pop("int8_digest", None)
    m["fingerprint"] = old
    (b / "manifest.json").write_text(json.dumps(m))
    for name in ("encoder.onnx", "decoder.onnx", "encoder.int8.onnx", "decoder.int8.onnx"):
        _restamp(b, name, old)
    opened = Bundle.open(b)
    assert opened.fingerprint == old and opened.bound_by == "graphs"
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    assert Decoder(b, "int8").decode(Encoder(b, "int8").encode(images)).shape == (2, 8, 8)


def test_swapped_decoder_with_resealed_sha256_is_refused(tiny_bundle, other_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path)
    shutil.copy(other_bundle / "decoder.onnx", b / "decoder.onnx")
    _reseal(b, "decoder.onnx")
    with pytest.raises(BundleError, match="not the decoder graph this bundle was exported with"):
        Bundle.open(b)
    swapped = graph_digest((b / "decoder.onnx").read_bytes())
    _edit_manifest(b, lambda m: m["graphs"]["decoder"].__setitem__("digest", swapped))  # forge the record too
    with pytest.raises(BundleError, match="decoder.onnx was exported for bundle"):
        Bundle.open(b)
    _restamp(b, "decoder.onnx", Bundle.open(tiny_bundle).fingerprint)  # and its metadata: only the recomputed
    with pytest.raises(BundleError, match="give fingerprint .* manifest says"):
        Bundle.open(b)
    # the same for the tables: one frequency moved between two symbols keeps the sums valid
    c = _copy(tiny_bundle, tmp_path, "c")

    def edit(m):
        row = m["entropy"]["frequencies"][0]
        row[0] -= 1
        row[1] += 1
    _edit_manifest(c, edit)
    with pytest.raises(BundleError, match="give fingerprint"):
        Bundle.open(c)


def test_file_swapped_after_open_is_refused_not_run(tiny_bundle, other_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path)
    opened = Bundle.open(b)
    shutil.copy(other_bundle / "decoder.onnx", b / "decoder.onnx")  # swapped between open and first use
    with pytest.raises(BundleError, match="decoder.onnx does not match its sha256"):
        Decoder(opened)
    _reseal(b, "decoder.onnx")  # even with the manifest rewritten under it, the verified digest decides
    with pytest.raises(BundleError, match="does not match"):
        opened.graph_bytes("decoder")
    assert graph_digest((tiny_bundle / "decoder.onnx").read_bytes()) == opened.digests["decoder"]


def test_decoder_only_bundle_is_bound_by_recorded_digest_or_metadata(tiny_bundle, other_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path)
    (b / "encoder.onnx").unlink()
    (b / "encoder.int8.onnx").unlink()
    assert Bundle.open(b, partial=True).bound_by == "graphs"  # the export recorded every graph's digest

    def older_export(m):
        for role in ("encoder", "decoder"):
            m["graphs"][role].pop("digest", None)
    _edit_manifest(b, older_export)
    part = Bundle.open(b, partial=True)
    assert part.bound_by == "metadata"  # an export that recorded no graph digests: the graphs' metadata
    from edgeae.serve.http import DecodeService, ServeConfig

    with pytest.raises(BundleError, match="cannot be recomputed.*--allow-unbound"):  # a server refuses it
        DecodeService(ServeConfig(bundle=str(b)))
    assert DecodeService(ServeConfig(bundle=str(b), allow_unbound=True)).engine.fingerprint == part.fingerprint
    enc_digest = graph_digest((tiny_bundle / "encoder.onnx").read_bytes())

    def record(m):
        for role in ("encoder", "decoder"):
            m["graphs"][role]["digest"] = graph_digest((tiny_bundle / f"{role}.onnx").read_bytes())
    _edit_manifest(b, record)
    part = Bundle.open(b, partial=True)
    assert part.bound_by == "graphs" and part.manifest.graphs["encoder"].digest == enc_digest
    payload = Encoder(tiny_bundle).encode(np.zeros((2, 8, 8), np.uint8))
    assert np.array_equal(Decoder(part).decode(payload), Decoder(tiny_bundle).decode(payload))
    shutil.copy(other_bundle / "decoder.onnx", b / "decoder.onnx")
    _reseal(b, "decoder.onnx")
    with pytest.raises(BundleError, match="not the decoder graph this bundle was exported with"):
        Bundle.open(b, partial=True)


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "nests deeper than 64"),
    ('{"schema": ' + "7" * 5000 + "}", "number of 5000 characters"),
    ('{"a": NaN}', "contains NaN"),
    ('{"a": ', "not valid JSON"),
])
def test_malformed_manifest_json_is_one_typed_line(tiny_bundle, tmp_path, text, message):
    b = _copy(tiny_bundle, tmp_path)
    (b / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=message):
        Bundle.open(b)
    res = CliRunner().invoke(main, ["inspect", str(b)])
    assert res.exit_code != 0 and message.split()[0] in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("size", [2 ** 63, 2 ** 40 - 1, 10])
def test_absurd_file_sizes_are_typed_errors(tiny_bundle, tmp_path, size):
    # found by tests/test_fuzz.py (hypothesis): files[...].bytes = 2**63 made Bundle.open raise OverflowError
    b = _copy(tiny_bundle, tmp_path)
    _edit_manifest(b, lambda m: m["files"]["decoder.onnx"].__setitem__("bytes", size))
    with pytest.raises(BundleError, match="files|does not match"):
        Bundle.open(b)


def test_absurd_latent_shape_is_refused_at_open(tiny_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path)
    _edit_manifest(b, lambda m: m["latent"].__setitem__("shape", [8, 2 ** 24, 2 ** 24]))
    with pytest.raises(BundleError, match="latent.shape has .* symbols per image"):
        Bundle.open(b)


def test_one_bounded_json_reader_for_every_edgeae_file(tmp_path):
    p = tmp_path / "x.json"
    data = {"a": [1, 2.5, ']]]\\"[[' + "[" * 100], "b": {}}  # brackets inside strings do not nest
    p.write_text(json.dumps(data))
    assert read_json_bounded(p, 1000, InputError) == data
    with pytest.raises(RunDirError, match="larger than 10 bytes; re-run"):
        read_json_bounded(p, 10, RunDirError, hint="re-run")
    with pytest.raises(InputError, match="not found"):
        read_json_bounded(tmp_path / "nope.json", 10, InputError)
    assert parse_json_bounded("[" * 64 + "]" * 64, "x", InputError) is not None
    for bad in (b"\xff\xfe", "[" * 65 + "]" * 65, "[1e" + "9" * 200 + "]", "[Infinity]"):
        with pytest.raises(InputError):
            parse_json_bounded(bad, "x", InputError)
