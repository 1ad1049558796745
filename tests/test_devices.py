"""Device profiles: shipped TOMLs validate, bad ones fail in one line naming the field; settings reach sessions."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from edgeae.cli import main
from edgeae.errors import DeviceProfileError
from edgeae.runtime import devices
from edgeae.runtime.devices import list_profiles, load_profile
from edgeae.runtime.session import applied_settings, make_session

SHIPPED = {"x86-server", "x86-laptop", "raspberry-pi-4", "raspberry-pi-zero-2", "jetson-nano-cpu", "generic-arm64"}
GOOD = (Path(__file__).resolve().parents[1] / "devices" / "raspberry-pi-4.toml").read_text()


def test_every_shipped_profile_loads_and_the_required_ones_exist():
    profiles = {p.name: p for p in list_profiles()}
    assert SHIPPED <= set(profiles)
    assert profiles["raspberry-pi-zero-2"].cpu.ram_mb == 512
    assert profiles["raspberry-pi-4"].cpu.model == "Cortex-A72" and profiles["raspberry-pi-4"].cpu.cores == 4
    for p in profiles.values():
        assert p.description and p.budget.memory_mb <= p.cpu.ram_mb
        assert p.session.intra_op_threads <= p.cpu.cores


def test_int8_presets_follow_onnxruntime_cpu_guidance():
    for p in list_profiles():
        if p.cpu.architecture == "aarch64":  # S8S8 QDQ; no saturation on ARM, so no reduce_range
            assert (p.int8.activation_type, p.int8.weight_type, p.int8.reduce_range) == ("int8", "int8", False)
        if p.name != "x86-server":  # edge devices never spin: it burns battery and starves other work
            assert p.session.allow_spinning is False
    laptop, server = load_profile("x86-laptop").int8, load_profile("x86-server").int8
    assert laptop.weight_type == "int8" and laptop.per_channel and laptop.reduce_range  # no VNNI assumed
    assert server.weight_type == "int8" and not server.reduce_range  # VNNI: U8S8 does not saturate


def test_by_name_and_by_path_are_the_same_profile(tmp_path):
    by_name = load_profile("raspberry-pi-4")
    assert load_profile(by_name.path) == by_name and load_profile(str(by_name.path)) == by_name
    copy = tmp_path / "my-board.toml"
    copy.write_text(GOOD)
    mine = load_profile(copy)
    assert mine.name == "my-board" and mine.session == by_name.session


def test_the_export_int8_preset_reads_the_profile():
    from edgeae.runtime.devices import Int8Settings

    preset = Int8Settings.from_any(load_profile("x86-laptop").int8)
    assert (preset.activation_type, preset.weight_type, preset.per_channel, preset.reduce_range) == \
        ("uint8", "int8", True, True)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DeviceProfileError, match="unknown device 'pi-5'; known: .*raspberry-pi-4"):
        load_profile("pi-5")
    with pytest.raises(DeviceProfileError, match="not found"):
        load_profile("nowhere/board.toml")


BAD = [
    ("threads = 4\n" + GOOD, "unknown key 'threads'"),
    (GOOD.replace("[budget]", "[budget]\nwatts = 5"), "unknown key 'budget.watts'"),
    (GOOD.replace("intra_op_threads = 4", "intra_op_threads = \"four\""), "session.intra_op_threads must be an integer"),
    (GOOD.replace("intra_op_threads = 4", "intra_op_threads = true"), "session.intra_op_threads must be an integer"),
    (GOOD.replace("intra_op_threads = 4", "intra_op_threads = 0"), "session.intra_op_threads must be between 1"),
    (GOOD.replace("intra_op_threads = 4", "intra_op_threads = 8"), "session.intra_op_threads = 8 exceeds cpu.cores"),
    (GOOD.replace("allow_spinning = false", "allow_spinning = 0"), "session.allow_spinning must be true or false"),
    (GOOD.replace('"all"', '"max"'), "session.graph_optimization_level must be one of"),
    (GOOD.replace('activation_type = "int8"', 'activation_type = "int4"'), "int8.activation_type must be one of"),
    (GOOD.replace("latency_ms = 50.0", "latency_ms = -1"), "budget.latency_ms must be >= "),
    (GOOD.replace('"sequential"', '"parallel"'), "'parallel' needs session.inter_op_threads >= 2"),
    (GOOD.replace("memory_mb = 512", "memory_mb = 4096"), "budget.memory_mb = 4096 exceeds cpu.ram_mb"),
    (GOOD.replace("ram_mb = 2048\n", ""), "missing key 'cpu.ram_mb'"),
    (GOOD.split("[budget]")[0], "missing table [budget]"),
    (GOOD.replace('architecture = "aarch64"', "architecture = aarch64"), "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_profile_is_a_one_line_error_naming_field_and_file(tmp_path, text, message):
    path = tmp_path / "bad-board.toml"
    path.write_text(text)
    with pytest.raises(DeviceProfileError) as info:
        load_profile(path)
    text_of = str(info.value)
    assert message in text_of and str(path) in text_of and "\n" not in text_of


def test_cli_devices_lists_and_rejects_a_bad_file_in_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["devices"])
    assert res.exit_code == 0, res.output
    for name in SHIPPED:
        assert name in res.output
    res = runner.invoke(main, ["devices", "raspberry-pi-zero-2"])
    assert res.exit_code == 0 and "Cortex-A53" in res.output and "S8S8" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("cores = 4", "cores = 4.5"))
    res = runner.invoke(main, ["devices", str(bad)])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and "Traceback" not in res.output
    assert lines[0].startswith("Error:") and "cpu.cores must be an integer" in lines[0] and str(bad) in lines[0]


def test_profiles_are_found_in_an_installed_wheel_layout(tmp_path, monkeypatch):
    # A wheel has edgeae/_devices (pyproject force-includes devices/ there) and no pyproject.toml beside it.
    package = tmp_path / "site-packages" / "edgeae"
    (package / "_devices").mkdir(parents=True)
    (package / "_devices" / "wheel-board.toml").write_text(GOOD)
    (tmp_path / "site-packages" / "devices").mkdir()
    (tmp_path / "site-packages" / "devices" / "stray.toml").write_text(GOOD)  # someone else's folder
    monkeypatch.setattr(devices, "_PACKAGE", package)
    assert [p.name for p in list_profiles()] == ["wheel-board"]
    assert load_profile("wheel-board").path == package / "_devices" / "wheel-board.toml"


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [x], [y])
    path = tmp_path_factory.mktemp("graph") / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_profile_settings_reach_the_session(tiny_graph, tmp_path):
    s = applied_settings(make_session(tiny_graph, load_profile("raspberry-pi-zero-2")))
    assert (s["intra_op_threads"], s["inter_op_threads"], s["allow_spinning"]) == (4, 1, False)
    assert s["graph_optimization_level"] == "all" and s["providers"] == ["CPUExecutionProvider"]
    assert applied_settings(make_session(tiny_graph, "x86-server"))["allow_spinning"] is True  # by name too
    custom = tmp_path / "basic.toml"
    custom.write_text(GOOD.replace('"all"', '"basic"').replace('"sequential"', '"parallel"')
                      .replace("inter_op_threads = 1", "inter_op_threads = 2"))
    s = applied_settings(make_session(tiny_graph, load_profile(custom)))
    assert (s["graph_optimization_level"], s["execution_mode"], s["inter_op_threads"]) == ("basic", "parallel", 2)


def test_explicit_threads_override_the_profile(tiny_graph):
    s = applied_settings(make_session(tiny_graph, load_profile("raspberry-pi-4"), threads=2))
    assert s["intra_op_threads"] == 2 and s["allow_spinning"] is False  # the rest of the profile still applies
    s = applied_settings(make_session(tiny_graph.read_bytes(), threads=1))
    assert (s["intra_op_threads"], s["inter_op_threads"]) == (1, 1)


def test_bad_threads_and_missing_graphs_are_typed_errors(tiny_graph, tmp_path):
    from edgeae.errors import BundleError, InputError

    with pytest.raises(InputError, match="threads must be a positive integer"):
        make_session(tiny_graph, threads=0)
    with pytest.raises(BundleError, match="cannot load"):
        make_session(tmp_path / "missing.onnx")
