"""The zoo: pretrained bundles by name (MODEL:QUALITY) from the package, built from a variable-rate run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae import zoo
from edgeae.cli import main
from edgeae.errors import BundleError


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A two-quality codec-vr trained briefly on 8x8 digits, baked, exported (fp32 + int8), measured and
    indexed into a temporary zoo folder."""
    from PIL import Image

    from edgeae.train.data import load_dataset
    from edgeae.train.trainer import TrainConfig, train
    from edgeae.zoo.build import build

    root = tmp_path_factory.mktemp("zoo")
    run = train("codec-vr", "digits", root / "run", {"channels": 8, "latent_channels": 4, "lmbdas": [0.005, 0.05]},
                TrainConfig(epochs=1, batch_size=64, lr=3e-3, progress=False, threads=1)).path
    val = root / "val"
    val.mkdir()
    for i, img in enumerate(load_dataset("digits").val[:6]):
        Image.fromarray(np.round(img[0] * 255).astype(np.uint8)).save(val / f"{i}.png")
    return build(run, "tiny", val, zoo_dir=root / "zoo", description="test",
                 max_int8_drop_db=5.0), root  # 1 epoch on 8x8 digits: int8 is not the point here


@pytest.mark.slow
def test_build_writes_an_index_with_measured_points(tiny_zoo):
    entry, root = tiny_zoo
    assert sorted(entry["qualities"]) == ["1", "2"]
    q1, q2 = entry["qualities"]["1"], entry["qualities"]["2"]
    assert q1["bpp"] > 0 and q1["lmbda"] == 0.005 and q2["lmbda"] == 0.05
    assert np.isfinite(q1["psnr_int8"]) and np.isfinite(q2["psnr_int8"])
    assert entry["family"] == "codec" and entry["trained_as"] == "codec-vr"
    assert entry["training"]["steps"] > 0 and entry["training"]["devices"][0]["device"] == "cpu"
    assert {"jpeg", "webp"} <= set(entry["bd_rate"])
    index = json.loads((root / "zoo" / "index.json").read_text())
    assert index["schema"] == "edgeae.zoo" and "tiny" in index["models"]
    for k in ("1", "2"):
        files = {p.name for p in (root / "zoo" / f"tiny-q{k}").iterdir()}
        assert {"manifest.json", "encoder.onnx", "decoder.onnx", "encoder.int8.onnx"} <= files
        assert "decoder.int8.onnx" not in files  # the zoo ships int8 encoders only


@pytest.mark.slow
def test_names_resolve_to_bundles_and_encode_by_name(tiny_zoo, monkeypatch, tmp_path):
    from edgeae.runtime.codec import Decoder, Encoder

    _, root = tiny_zoo
    monkeypatch.setattr(zoo, "ZOO_DIR", root / "zoo")
    assert zoo.is_name("tiny:1") and not zoo.is_name("tiny") and not zoo.is_name("../x:1")
    assert zoo.resolve("tiny:2") == root / "zoo" / "tiny-q2"
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    enc, dec = Encoder("tiny:1", "int8"), Decoder("tiny:1")
    assert np.asarray(dec.decode(enc.encode(x))).shape == (2, 8, 8)
    with pytest.raises(BundleError, match="no quality 7; choose one of 1, 2"):
        Encoder("tiny:7")
    with pytest.raises(BundleError, match="unknown pretrained model 'nope'.*models --pretrained"):
        Encoder("nope:1")
    # A path that exists wins over a name.
    (tmp_path / "tiny:1").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not zoo.is_name("tiny:1")


@pytest.mark.slow
def test_models_pretrained_lists_every_quality(tiny_zoo, monkeypatch):
    _, root = tiny_zoo
    monkeypatch.setattr(zoo, "ZOO_DIR", root / "zoo")
    res = CliRunner().invoke(main, ["models", "--pretrained"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:4] == ["name", "family", "lambda", "bpp"]
    assert any(line.startswith("tiny:1 ") for line in lines) and any(line.startswith("tiny:2 ") for line in lines)
    rows = json.loads(CliRunner().invoke(main, ["models", "--pretrained", "--json"]).output)
    assert [r["name"] for r in rows] == ["tiny:1", "tiny:2"] and all(r["psnr"] > 0 for r in rows)


@pytest.mark.slow
def test_encode_cli_takes_a_name(tiny_zoo, monkeypatch, tmp_path):
    from PIL import Image

    _, root = tiny_zoo
    monkeypatch.setattr(zoo, "ZOO_DIR", root / "zoo")
    img = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(img)
    res = CliRunner().invoke(main, ["encode", str(img), "--bundle", "tiny:2", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert [p.stat().st_size > 0 for p in (tmp_path / "out").iterdir()] == [True]


def test_a_bad_index_is_a_clear_error(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        zoo.resolve("x:1", root=tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"schema": "edgeae.zoo", "models": {
        "x": {"qualities": {"1": {"bundle": "../../etc"}}}}}))
    with pytest.raises(BundleError, match="not a plain folder name"):
        zoo.resolve("x:1", root=tmp_path)
    assert zoo.pretrained(root=tmp_path / "none") == []


def test_the_shipped_index_resolves(monkeypatch):
    """Whatever the package ships: every listed quality is a bundle that opens (sha256-checked)."""
    from edgeae.runtime.bundle import Bundle

    for row in zoo.pretrained():
        assert Bundle.open(row["name"]).manifest is not None


@pytest.mark.slow
def test_compare_at_budget_keeps_jpeg_and_webp_within_the_bundles_bytes(tiny_zoo, tmp_path):
    from edgeae.zoo.compare import fit_budget

    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    q, data, rec = fit_budget(img, "webp", 2000)
    assert len(data) <= 2000 and rec.shape == img.shape and 0 <= q <= 100
    q0, data0, _ = fit_budget(img, "jpeg", 10)  # nothing fits: the smallest file
    assert q0 == 0 and len(data0) > 10


def test_the_zoo_and_models_pretrained_need_no_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import edgeae.zoo, edgeae.zoo.compare\n"
            "from click.testing import CliRunner\n"
            "from edgeae.cli import main\n"
            "res = CliRunner().invoke(main, ['models', '--pretrained'])\n"
            "assert res.exit_code == 0, res.output\n"
            "print(sorted(m for m in ('torch', 'onnx', 'safetensors') if m in sys.modules and sys.modules[m]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_model_cards_render_from_the_index(tiny_zoo, tmp_path):
    from edgeae.zoo.card import BEGIN, END, update

    _, root = tiny_zoo
    md = tmp_path / "MODELS.md"
    md.write_text(f"# Models\n\n{BEGIN}\nold\n{END}\n\ntail\n")
    body = update(md, zoo_dir=root / "zoo")
    text = md.read_text()
    assert "old" not in text and text.endswith("tail\n") and "`tiny:1`" in body and "BD-rate vs WEBP" in body
    assert "Training data" in body and "steps" in body


@pytest.mark.slow
def test_build_from_one_plain_run_per_quality(tmp_path):
    """Separately trained runs (one lambda each) ship as one model, ordered by lambda, each quality with
    its own training record; the card says so."""
    from PIL import Image

    from edgeae.train.data import load_dataset
    from edgeae.train.trainer import TrainConfig, train
    from edgeae.zoo.build import build
    from edgeae.zoo.card import BEGIN, END, update

    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, progress=False, threads=1)
    runs = {lmbda: train("codec", "digits", tmp_path / f"run{lmbda}",
                         {"channels": 8, "latent_channels": 4, "lmbda": lmbda}, cfg).path for lmbda in (0.05, 0.005)}
    val = tmp_path / "val"
    val.mkdir()
    for i, img in enumerate(load_dataset("digits").val[:4]):
        Image.fromarray(np.round(img[0] * 255).astype(np.uint8)).save(val / f"{i}.png")
    entry = build([runs[0.05], runs[0.005]], "sep", val, zoo_dir=tmp_path / "zoo", max_int8_drop_db=5.0)
    q = entry["qualities"]
    assert [q["1"]["lmbda"], q["2"]["lmbda"]] == [0.005, 0.05] and q["1"]["vr_index"] is None
    assert q["1"]["training"]["run"] == "run0.005" and q["2"]["training"]["steps"] > 0
    assert entry["family"] == entry["trained_as"] == "codec" and entry["training"]["runs"] == 2
    md = tmp_path / "MODELS.md"
    md.write_text(f"{BEGIN}\n{END}\n")
    body = update(md, zoo_dir=tmp_path / "zoo")
    assert "one model per operating point" in body and "`sep:2` (`run0.05`)" in body
    with pytest.raises(SystemExit, match="plain runs of one family"):
        build([runs[0.05], _vr_copy(runs[0.005], tmp_path)], "x", val, zoo_dir=tmp_path / "z2")
    (runs[0.05] / "weights.safetensors").unlink()
    with pytest.raises(SystemExit, match="has not finished training"):
        build([runs[0.05], runs[0.005]], "x", val, zoo_dir=tmp_path / "z3")


def _vr_copy(run, tmp_path):
    """A copy of `run` whose config says it is a variable-rate run (a mix build must refuse)."""
    import shutil

    out = tmp_path / "vr-copy"
    shutil.copytree(run, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["model"]["family"] = "codec-vr"
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_card_names_a_mean_scale_hyperprior():
    from edgeae.zoo.card import render

    cfg = {"channels": 64, "latent_channels": 128, "downsamplings": 4, "hyper_channels": 64,
           "hyper_latent_channels": 32, "scale_levels": 64, "means": True, "mean_phases": 8, "mean_range": 127,
           "hyper_signed": True}
    entry = {"family": "hyperprior", "trained_as": "hyperprior", "qualities": {"1": {"lmbda": 0.0035}},
             "training": {"model": {"config": cfg}, "steps": 8000}}
    arch = next(line for line in render("photo", entry).splitlines() if line.startswith("**Architecture.**"))
    assert "integer hyper-decoder, mean-scale (means in 1/8 steps within +-127, h_a on y)" in arch
    assert "mean-scale" not in render("photo", {**entry, "training": {"model": {"config": {**cfg, "means": False}}}})


def test_card_says_when_only_a_narrowed_synthesis_was_trained():
    from edgeae.zoo.card import render

    cfg = {"channels": 128, "latent_channels": 192, "downsamplings": 4, "synthesis_only": True,
           "synthesis_widths": [128, 64, 64]}
    init = {"run": "/x/bvrA", "family": "hyperprior-vr", "total_steps": 43014}
    entry = {"family": "hyperprior", "trained_as": "hyperprior-vr", "qualities": {"1": {"lmbda": 0.0035}},
             "training": {"model": {"config": cfg}, "steps": 20000, "init": init, "train": {"batch_size": 8}}}
    card = render("photo", entry)
    assert "g_s 128/64/64 channels after its upsamplings (N=128 before them)" in card
    assert "**Training.** g_s alone (`synthesis_only`): 20000 steps" in card
    assert "g_a, the entropy model and the gains are that run's, unchanged" in card
    assert "have seen" not in card  # the transforms did not all train for init + own steps
    plain = render("photo", {**entry, "training": {**entry["training"], "model": {"config": {"channels": 128}}}})
    assert "g_s alone" not in plain and "have seen 63014 steps" in plain


@pytest.mark.slow
def test_a_hyperprior_vr_run_ships_as_one_shared_bundle(tmp_path, monkeypatch):
    """`build` of a hyperprior-vr run: one bundle folder, index qualities naming their point in it, each point
    measured through its own payloads; names pick the point."""
    from PIL import Image

    from edgeae.runtime.codec import Encoder
    from edgeae.runtime.payload import parse_header
    from edgeae.train.trainer import TrainConfig, train
    from edgeae.zoo.build import build

    rng = np.random.default_rng(0)
    run = train("hyperprior-vr", "photos", tmp_path / "run",
                {"channels": 8, "latent_channels": 4, "downsamplings": 2, "hyper_channels": 4,
                 "hyper_latent_channels": 2, "lmbdas": [0.005, 0.05]},
                TrainConfig(epochs=1, batch_size=16, lr=3e-3, progress=False, threads=1)).path
    val = tmp_path / "val"
    val.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8)).save(val / f"{i}.png")
    entry = build(run, "hp", val, zoo_dir=tmp_path / "zoo", description="test", max_int8_drop_db=20.0)
    assert sorted(p.name for p in (tmp_path / "zoo").iterdir()) == ["hp", "index.json"]
    q1, q2 = entry["qualities"]["1"], entry["qualities"]["2"]
    assert (q1["bundle"], q1["point"], q2["bundle"], q2["point"]) == ("hp", 1, "hp", 2)
    assert q1["bpp"] < q2["bpp"] and np.isfinite(q2["psnr_int8"])
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    payload = Encoder("hp:2").encode(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert parse_header(payload).quality == 2
    # --checkpoint: the run's checkpoint as a loadable finished run (what the shared bundle is exported from)
    import torch

    from edgeae.train.rundir import load_run
    from edgeae.zoo.build import snapshot_run

    snap = load_run(snapshot_run(run, tmp_path / "snap"))
    for k, v in load_run(run).model.state_dict().items():
        assert torch.equal(v, snap.model.state_dict()[k]), k
