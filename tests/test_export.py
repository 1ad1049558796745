"""Export: parity per family, dynamic batch, int8 tolerance, fingerprint, manifest, failure leaves nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeae.bundling import graphs
from edgeae.bundling.build import ExportOptions, export_run
from edgeae.errors import ExportError, RunDirError
from edgeae.runtime.bundle import sha256_file
from edgeae.train.rundir import load_run

FAMILIES = ["dense", "conv", "vae", "sparse"]


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_graphs_match_pytorch_at_batch_1_and_many(make_run, make_bundle, family):
    bundle = make_bundle(family, int8=True)
    model = load_run(make_run(family)).model
    m = json.loads((bundle / "manifest.json").read_text())
    for n in (1, 5):
        x = np.random.default_rng(n).random((n, *m["input"]["shape"]), dtype=np.float32)
        z = _session(bundle / "encoder.onnx").run(None, {"image": x})[0]
        y = _session(bundle / "decoder.onnx").run(None, {"latent": z})[0]
        with torch.no_grad():
            z_ref = model.encoder(torch.from_numpy(x)).numpy()
            y_ref = model.decoder(torch.from_numpy(z_ref)).numpy()
        assert z.shape == (n, *m["latent"]["shape"])
        assert np.abs(z - z_ref).max() <= 1e-4 * max(1.0, np.abs(z_ref).max())
        assert np.abs(y - y_ref).max() <= 1e-4
    # int8 stays within the stated PSNR budget, and its measured quality is in the manifest.
    for role, g in m["int8"]["graphs"].items():
        assert g["psnr_drop_db"] <= m["int8"]["max_drop_db"], role
        assert g["bytes_int8"] < g["bytes_fp32"]


def test_vae_encoder_graph_outputs_the_mean_without_sampling(make_bundle, make_run):
    bundle = make_bundle("vae")
    ops = {n.op_type for n in onnx.load(str(bundle / "encoder.onnx")).graph.node}
    assert not ops & {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Exp"}
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    z = _session(bundle / "encoder.onnx").run(None, {"image": x})[0]
    with torch.no_grad():
        mean, _ = load_run(make_run("vae")).model.encoder.posterior(torch.from_numpy(x))
    np.testing.assert_allclose(z, mean.numpy(), atol=1e-5)


def test_manifest_is_complete_and_matches_files(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["schema"] == "edgeae.bundle" and m["version"] == 1
    q = m["latent"]["quantization"]
    c = m["latent"]["shape"][0]
    assert len(q["offset"]) == len(q["step"]) == len(m["entropy"]["frequencies"]) == c
    freqs = np.array(m["entropy"]["frequencies"])
    assert freqs.shape == (c, q["levels"]) and (freqs >= 1).all()
    assert (freqs.sum(1) == 2 ** m["entropy"]["precision"]).all()
    for name, f in m["files"].items():
        assert sha256_file(tiny_bundle / name) == f["sha256"]
        meta = {p.key: p.value for p in onnx.load(str(tiny_bundle / name)).metadata_props}
        assert meta["edgeae.fingerprint"] == m["fingerprint"]
        assert meta["edgeae.manifest_version"] == "1"
    assert {"psnr_torch", "psnr_onnx_fp32", "psnr_onnx_int8", "psnr_fp32_quantized_latent"} <= set(m["quality"])


def test_fingerprint_changes_with_any_graph_or_table():
    enc, dec, tab = "aa" * 32, "bb" * 32, "cc" * 32
    base = graphs.fingerprint(enc, dec, tab)
    assert base != graphs.fingerprint("ab" * 32, dec, tab)
    assert base != graphs.fingerprint(enc, "ab" * 32, tab)
    latent = {"shape": [2], "quantization": {"offset": [0.0, 0.0]}}
    t1 = graphs.tables_digest(latent, {"frequencies": [[1, 2]]})
    assert t1 != graphs.tables_digest(latent, {"frequencies": [[2, 1]]})
    assert base != graphs.fingerprint(enc, dec, t1)


def test_fingerprints_differ_between_differently_trained_bundles(tiny_bundle, other_bundle):
    a = json.loads((tiny_bundle / "manifest.json").read_text())["fingerprint"]
    b = json.loads((other_bundle / "manifest.json").read_text())["fingerprint"]
    assert a != b


def test_tampered_export_raises_typed_error_and_leaves_no_bundle(make_run, tmp_path, monkeypatch):
    real = graphs.export_graph

    def tampered(module, spec, example):
        model = real(module, spec, example)
        if spec.role == "decoder":  # flip a weight after tracing: the graph no longer matches PyTorch
            init = model.graph.initializer[0]
            arr = onnx.numpy_helper.to_array(init).copy()
            arr += 0.5
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        return model

    monkeypatch.setattr(graphs, "export_graph", tampered)
    out = tmp_path / "bundle"
    with pytest.raises(ExportError) as err:
        export_run(make_run("conv"), ExportOptions(out=out, measure_speed=False))
    assert "decoder.onnx" in str(err.value) and "exceeds tolerance" in str(err.value)
    assert err.value.failures
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_int8_drop_over_threshold_is_refused_naming_the_graph(make_run, tmp_path):
    out = tmp_path / "b"
    with pytest.raises(ExportError, match=r"int8 (encoder|decoder) loses -?[0-9.]+ dB"):
        export_run(make_run("conv"), ExportOptions(out=out, int8=True, max_int8_drop_db=-100.0,
                                                   calibration_samples=16, measure_speed=False))
    assert not out.exists()


def test_incomplete_run_dir_and_mismatched_weights_are_one_line_errors(make_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(make_run("conv"), run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["config"]["channels"] = [4, 4]
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match="do not match config.json"):
        export_run(run, ExportOptions(out=tmp_path / "b"))
    (run / "weights.safetensors").unlink()
    with pytest.raises(RunDirError, match=r"has a checkpoint \(step \d+\) but no final weights.safetensors: finish"):
        export_run(run, ExportOptions(out=tmp_path / "b"))
    shutil.rmtree(run / "checkpoint")
    with pytest.raises(RunDirError, match="missing weights.safetensors"):
        export_run(run, ExportOptions(out=tmp_path / "b"))


def test_unsupported_opset_and_bad_calibration_data(make_run, tmp_path):
    with pytest.raises(ExportError, match="opset 7 is not supported"):
        export_run(make_run("conv"), ExportOptions(out=tmp_path / "b", opset=7))
    bad = tmp_path / "calib.npy"
    np.save(bad, np.zeros((4, 1, 5, 5), np.float32))
    with pytest.raises(ExportError, match="calibration images have shape"):
        export_run(make_run("conv"), ExportOptions(out=tmp_path / "b", calibration_data=bad))


def test_fully_convolutional_model_exports_at_another_input_size(make_run, tmp_path):
    from edgeae.train.data import DataSpec
    from edgeae.train.trainer import TrainConfig, train

    spec = DataSpec(name="photos", patch=16)
    run = train("conv", spec, tmp_path / "run", {"downsample": "stride"}, TrainConfig(max_steps=3, progress=False)).path
    res = export_run(run, ExportOptions(out=tmp_path / "b", input_size=(32, 48), measure_speed=False))
    assert res.manifest["input"]["shape"] == [1, 32, 48]
    assert res.manifest["latent"]["shape"][1:] == [8, 12]
    # Larger than any held-out photograph can be cut into: whole photographs, resized, calibrate and verify.
    res = export_run(run, ExportOptions(out=tmp_path / "big", input_size=(512, 768), measure_speed=False))
    assert res.manifest["input"]["shape"] == [1, 512, 768] and res.manifest["quality"]["images"] == 2
    with pytest.raises(ExportError, match="does not fit"):  # dense layers are tied to one size
        export_run(make_run("dense"), ExportOptions(out=tmp_path / "c", input_size=(16, 16)))


def test_device_profile_int8_preset_is_used_and_recorded(make_run, tmp_path):
    res = export_run(make_run("dense"), ExportOptions(out=tmp_path / "b", int8=True, device="raspberry-pi-4",
                                                      calibration_samples=32, measure_speed=False))
    preset = res.manifest["int8"]["preset"]
    assert preset["name"] == "raspberry-pi-4" and preset["activation_type"] == "int8"
    kinds = {i.data_type for i in onnx.load(str(tmp_path / "b" / "encoder.int8.onnx")).graph.initializer}
    assert onnx.TensorProto.INT8 in kinds and onnx.TensorProto.UINT8 not in kinds
