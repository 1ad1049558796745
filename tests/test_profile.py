"""`edgeae profile`: every figure in the JSON and consistent; real operators; settings reach the workers."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeae.cli import main
from edgeae.profiling import ProfileSettings, Timing, profile_bundle
from edgeae.profiling.engine import synthetic_images

GOOD_PROFILE = (Path(__file__).resolve().parents[1] / "devices" / "raspberry-pi-4.toml").read_text()
MEASUREMENT_KEYS = {"engine", "part", "precision", "threads", "batch", "cold_create_ms", "cold_first_run_ms",
                    "latency", "per_image_ms", "throughput_ips", "noisy", "peak_rss_mb", "base_rss_mb",
                    "model_bytes", "bytes_per_image", "session", "affinity", "ops", "verdict", "samples_ms", "label"}
LATENCY_KEYS = {"runs", "min", "mean", "p50", "p90", "p95", "p99", "max", "std", "cv", "cv_trimmed"}


def _one_line_error(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "Traceback" not in res.output, res.output
    assert lines[0].startswith("Error:")
    return lines[0]


@pytest.fixture(scope="module")
def cli_json(tiny_bundle, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("profile") / "profile.json"
    # 10 worker processes: the 4 parts x 2 precisions, JPEG's encode and decode (batch sizes, WebP: below)
    res = CliRunner().invoke(main, ["profile", str(tiny_bundle), "--part", "all", "--precision", "fp32,int8",
                                    "--threads", "1", "--batch", "4", "--runs", "5", "--warmup", "1",
                                    "--baseline", "jpeg", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "onnxruntime fp32" in res.output and "jpeg q75" in res.output
    return json.loads(out.read_text())


def test_the_json_has_every_figure_and_they_agree(cli_json, tiny_bundle):
    d = cli_json
    assert d["schema"] == "edgeae.profile" and d["device"] is None
    for key in ("cpu_model", "architecture", "logical_cores", "usable_cores", "onnxruntime", "python", "numpy"):
        assert d["host"][key], key
    assert d["bundle"]["input_shape"] == json.loads((tiny_bundle / "manifest.json").read_text())["input"]["shape"]
    seen = {(m["engine"], m["part"], m["precision"], m["batch"]) for m in d["measurements"]}
    for part, engine in (("encoder", "onnxruntime"), ("decoder", "onnxruntime"), ("encode", "edgeae"),
                         ("decode", "edgeae")):
        for precision in ("fp32", "int8"):
            assert (engine, part, precision, 4) in seen
    assert {("jpeg", "encode", "q75", 4), ("jpeg", "decode", "q75", 4)} <= seen
    for m in d["measurements"]:
        assert set(m) == MEASUREMENT_KEYS and set(m["latency"]) == LATENCY_KEYS
        t = m["latency"]
        assert t["runs"] == 5 == len(m["samples_ms"])
        assert 0 < t["min"] <= t["p50"] <= t["p90"] <= t["p95"] <= t["p99"] <= t["max"]
        assert t["min"] <= t["mean"] <= t["max"]
        assert math.isclose(m["throughput_ips"], m["batch"] / (t["mean"] / 1e3), rel_tol=1e-9)
        assert math.isclose(m["per_image_ms"], t["mean"] / m["batch"], rel_tol=1e-9)
        assert math.isclose(min(m["samples_ms"]), t["min"]) and math.isclose(max(m["samples_ms"]), t["max"])
        assert m["cold_create_ms"] >= 0 and m["cold_first_run_ms"] > 0
        assert 0 < m["base_rss_mb"] <= m["peak_rss_mb"]
        if m["engine"] in ("onnxruntime", "edgeae"):
            file = f"{'encoder' if m['part'].startswith('encode') else 'decoder'}" \
                   f"{'.int8' if m['precision'] == 'int8' else ''}.onnx"
            assert m["model_bytes"] == (tiny_bundle / file).stat().st_size
            assert m["session"]["intra_op_threads"] == 1
        if m["part"] == "encode":
            assert m["bytes_per_image"] > 0
    subjects = {(c["part"], c["subject"]) for c in d["comparisons"]}
    assert ("encoder", "onnxruntime int8") in subjects and ("encode", "jpeg q75") in subjects


def test_encode_payload_size_is_the_real_payload(cli_json, tiny_bundle):
    from edgeae.runtime.codec import Encoder
    from edgeae.runtime.images import to_uint8

    shape = tuple(cli_json["bundle"]["input_shape"])
    payload = Encoder(tiny_bundle).encode(to_uint8(synthetic_images(shape, 4)))
    m = next(m for m in cli_json["measurements"]
             if (m["engine"], m["part"], m["precision"], m["batch"]) == ("edgeae", "encode", "fp32", 4))
    assert m["bytes_per_image"] == len(payload) / 4


def _optimized_graph(path: Path, tmp_path: Path):
    """The graph onnxruntime really executes, at the optimisation level the shipped profiles use ("all")."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / f"{path.stem}.opt.onnx")
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(so.optimized_model_filepath)


def test_per_op_lists_the_real_operators_of_the_graph(tiny_bundle, tmp_path):
    report = profile_bundle(tiny_bundle, ProfileSettings(parts=("encoder", "decoder"), precisions=("fp32", "int8"),
                                                         threads=(1,), runs=5, warmup=1, per_op=True))
    for m in report.measurements:
        graph = tiny_bundle / f"{m.part}{'.int8' if m.precision == 'int8' else ''}.onnx"
        optimized = _optimized_graph(graph, tmp_path)
        types = {n.op_type for n in optimized.graph.node}
        names = {n.name for n in optimized.graph.node}
        assert m.ops, m.label
        assert {op.op_type for op in m.ops} <= types
        assert all(name in names for op in m.ops for name in op.examples)
        assert sum(op.share for op in m.ops) <= 1 + 1e-9 and all(op.ms_per_run > 0 for op in m.ops)
    fp32_ops = {op.op_type for m in report.measurements if m.precision == "fp32" for op in m.ops}
    int8_ops = {op.op_type for m in report.measurements if m.precision == "int8" for op in m.ops}
    assert "Conv" in fp32_ops and "QLinearConv" in int8_ops
    assert "top operators" in report.table()


def test_device_settings_and_explicit_threads_reach_the_worker_sessions(tiny_bundle, tmp_path):
    one_core = tmp_path / "one-core.toml"  # one core: every host can pin it, so affinity is really applied
    one_core.write_text(GOOD_PROFILE.replace("cores = 4", "cores = 1").replace("threads = 4", "threads = 1"))
    settings = ProfileSettings(parts=("encoder", "encode"), precisions=("fp32",), device=str(one_core), runs=5)
    report = profile_bundle(tiny_bundle, settings)
    assert report.device["name"] == "one-core" and "not on the device" in report.device["label"]
    for m in report.measurements:
        assert m.session["intra_op_threads"] == 1 and m.session["allow_spinning"] is False
        assert m.affinity is not None and len(m.affinity) == 1
        v = m.verdict
        assert v.latency_budget_ms == 50.0 and v.memory_budget_mb == 512
        assert v.latency_ok == (m.latency.p90 / m.batch <= 50.0)
        assert v.memory_ok == (m.peak_rss_mb <= 512)
    report = profile_bundle(tiny_bundle, ProfileSettings(parts=("encoder",), precisions=("fp32",),
                                                         device="raspberry-pi-zero-2", threads=(2,), runs=5))
    (m,) = report.measurements
    assert m.threads == 2 and m.session["intra_op_threads"] == 2 and m.session["allow_spinning"] is False
    report = profile_bundle(tiny_bundle, ProfileSettings(parts=("decoder",), precisions=("fp32",),
                                                         device="raspberry-pi-zero-2", runs=5))
    assert [m.session["intra_op_threads"] for m in report.measurements] == [4]  # the device's threads


def test_cli_device_verdict_is_labelled_honestly(tiny_bundle):
    res = CliRunner().invoke(main, ["profile", str(tiny_bundle), "--part", "encoder", "--precision", "fp32",
                                    "--device", "raspberry-pi-4", "--threads", "1", "--runs", "5"])
    assert res.exit_code == 0, res.output
    assert "measured on this host with the device's settings, not on the device" in res.output
    assert "budget" in res.output


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux-only")
def test_peak_rss_is_the_workers_own_not_inherited_from_the_caller(tiny_bundle):
    # getrusage's ru_maxrss survives execve: a worker of a 400 MB parent would claim 400 MB. VmHWM does not.
    ballast = np.ones(400 << 17)  # 400 MiB of float64, touched
    report = profile_bundle(tiny_bundle, ProfileSettings(parts=("encoder",), precisions=("fp32",), runs=5))
    assert ballast.sum() > 0
    (m,) = report.measurements
    assert m.peak_rss_mb < 300, m.peak_rss_mb


def test_torch_baseline_runs_when_the_run_directory_is_known_and_says_why_not_otherwise(tiny_bundle, tmp_path):
    settings = ProfileSettings(parts=("encoder", "decoder"), precisions=("fp32",), runs=5, baselines=("torch",))
    report = profile_bundle(tiny_bundle, settings)
    torch_parts = {m.part for m in report.measurements if m.engine == "torch"}
    assert torch_parts == {"encoder", "decoder"} and not report.skipped
    assert any(c["subject"] == "torch eager" for c in report.comparisons())

    orphan = tmp_path / "orphan"
    shutil.copytree(tiny_bundle, orphan)
    manifest = json.loads((orphan / "manifest.json").read_text())
    manifest["source"] = {"run_dir": str(tmp_path / "deleted-run")}
    (orphan / "manifest.json").write_text(json.dumps(manifest))
    report = profile_bundle(orphan, settings)
    assert not any(m.engine == "torch" for m in report.measurements)
    (skip,) = report.skipped
    assert "deleted-run" in skip.reason and f"skipped {skip.what}" in report.table()


def test_given_images_are_used(tiny_bundle, tmp_path):
    from PIL import Image

    shape = json.loads((tiny_bundle / "manifest.json").read_text())["input"]["shape"]
    arr = (synthetic_images(tuple(shape), 3, seed=5)[:, 0] * 255).round().astype(np.uint8)
    np.save(tmp_path / "imgs.npy", arr)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, a in enumerate(arr):
        Image.fromarray(a).save(folder / f"{i}.png")
    for source, baselines in ((tmp_path / "imgs.npy", ()), (folder, ("webp",))):
        report = profile_bundle(tiny_bundle, ProfileSettings(parts=("encoder", "decode"), precisions=("fp32",),
                                                             batches=(5,), runs=5, images=source,
                                                             baselines=baselines))
        assert report.settings["images"] == f"3 images from {source}, repeated to fill a batch of 5"
    assert {(m.engine, m.part, m.batch) for m in report.measurements} == {
        ("onnxruntime", "encoder", 5), ("edgeae", "decode", 5), ("webp", "encode", 5), ("webp", "decode", 5)}
    assert all(m.bytes_per_image > 0 for m in report.measurements if m.part == "encode")


def test_a_worker_past_its_timeout_is_stopped_with_a_one_line_error(tiny_bundle):
    line = _one_line_error(CliRunner().invoke(main, ["profile", str(tiny_bundle), "--part", "encoder",
                                                     "--precision", "fp32", "--timeout", "0.001"]))
    assert "took longer than 0.001 s and was stopped" in line


@pytest.mark.parametrize(("args", "message"), [
    (["--runs", "5", "--seconds", "1"], "not both"),
    (["--part", "encoderz"], "unknown part 'encoderz'"),
    (["--baseline", "png"], "unknown baseline 'png'"),
    (["--batch", "0"], "batch values must be positive"),
    (["--device", "pi-9"], "unknown device 'pi-9'"),
])
def test_bad_options_are_one_line_errors(tiny_bundle, args, message):
    assert message in _one_line_error(CliRunner().invoke(main, ["profile", str(tiny_bundle), *args]))


def test_int8_on_an_fp32_bundle_and_a_bad_device_file_are_one_line_errors(other_bundle, tmp_path):
    line = _one_line_error(CliRunner().invoke(main, ["profile", str(other_bundle), "--precision", "int8"]))
    assert "no int8" in line
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD_PROFILE.replace("latency_ms = 50.0", 'latency_ms = "fast"'))
    line = _one_line_error(CliRunner().invoke(main, ["profile", str(other_bundle), "--device", str(bad)]))
    assert "budget.latency_ms must be a number" in line and str(bad) in line


def test_timing_statistics():
    t = Timing.from_seconds([0.001 * v for v in range(1, 101)])
    assert (t.min, t.max, t.runs) == (1.0, 100.0, 100)
    assert math.isclose(t.mean, 50.5) and math.isclose(t.p50, 50.5) and math.isclose(t.p90, 90.1)
    assert math.isclose(t.cv, t.std / t.mean) and t.cv_trimmed < t.cv


def test_profiling_imports_without_torch():
    code = "import sys, edgeae.profiling, edgeae.runtime.devices, edgeae.runtime.session; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
