"""`edgeae doctor`: the install check a device runs, torch-free, with the bundle shipped in the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeae.errors import SelfTestFailed
from edgeae.runtime import doctor

# Setting sys.modules[name] = None makes every `import name` raise ImportError, as if not installed.
BLOCK = "import sys\nfor _m in {mods!r}: sys.modules[_m] = None\n"
RUN_CLI = """
import atexit
atexit.register(lambda: print("imported:", sorted(m for m in ("torch", "onnx", "sklearn") if sys.modules.get(m))))
from edgeae.cli import main
main({args!r}, prog_name="edgeae")
"""


def _doctor(*args: str, block: tuple[str, ...] = ("torch",), env: dict | None = None):
    code = BLOCK.format(mods=list(block)) + textwrap.dedent(RUN_CLI.format(args=["doctor", *args]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def _rows(out: str) -> dict[str, str]:
    return {line[:14].strip(): line[14:] for line in out.splitlines() if line[:1].strip()}


def test_doctor_passes_torch_free_with_the_built_in_bundle():
    res = _doctor()
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(res.stdout)
    import onnxruntime

    assert "CPUExecutionProvider" in rows["onnxruntime"] and onnxruntime.__version__ in rows["onnxruntime"]
    assert rows["numpy"] == np.__version__
    assert rows["entropy coder"] == doctor.coder_backend()
    assert rows["decode ref"] == "payloads from x86_64 (v2 165 B, v1 166 B): symbols identical"
    assert "same symbols" in rows["round trip"]
    assert rows["self-test"].startswith("passed")
    assert "imported: []" in res.stdout  # no torch, onnx or scikit-learn behind the runtime


def test_doctor_without_constriction_uses_the_numpy_coder():
    pytest.importorskip("edgeae.runtime.rangecoder")
    res = _doctor(block=("torch", "constriction"))
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(res.stdout)
    assert rows["entropy coder"] == "numpy"
    assert "symbols identical" in rows["decode ref"] and rows["self-test"].startswith("passed")


def test_doctor_with_a_bundle_of_ones_own(tiny_bundle):
    res = _doctor("--bundle", str(tiny_bundle))
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(res.stdout)
    assert str(tiny_bundle) in rows["bundle"] and "decode ref" not in rows
    assert rows["round trip"].startswith("4 images") and rows["self-test"].startswith("passed")


def test_a_tampered_bundle_fails_with_one_line(tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(doctor.SELFTEST / "bundle", bad)
    graph = bad / "encoder.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\x00")
    res = _doctor("--bundle", str(bad))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "self-test: cannot open the bundle" in lines[0] and "sha256" in lines[0]
    assert "Traceback" not in res.stderr
    assert _doctor("--bundle", str(tmp_path / "nope")).returncode == 1


def _copy_selftest(tmp_path, monkeypatch):
    where = tmp_path / "_selftest"
    shutil.copytree(doctor.SELFTEST, where)
    monkeypatch.setattr(doctor, "SELFTEST", where)
    return where


def test_a_reference_payload_read_wrong_fails(tmp_path, monkeypatch):
    where = _copy_selftest(tmp_path, monkeypatch)
    symbols = np.load(where / "symbols.npy")
    symbols.flat[7] ^= 1  # as if this machine's decoder had read one symbol wrong
    np.save(where / "symbols.npy", symbols)
    with pytest.raises(SelfTestFailed, match="1 wrong symbol"):
        doctor.self_test()


def test_decoded_images_far_from_the_reference_fail(tmp_path, monkeypatch):
    where = _copy_selftest(tmp_path, monkeypatch)
    decoded = np.load(where / "decoded.npy").astype(np.int16)
    decoded[3, 4, 4] = (decoded[3, 4, 4] + 128) % 256
    np.save(where / "decoded.npy", decoded.astype(np.uint8))
    with pytest.raises(SelfTestFailed, match="levels from x86_64"):
        doctor.self_test()


def test_the_built_in_reference_is_consistent():
    """The shipped files agree with each other and with the shipped bundle (re-run make_selftest.py if not)."""
    rows = dict(doctor.self_test())
    assert rows["encode"] == "symbols identical to x86_64's; payload byte-identical" and rows["decode"] == "images identical to x86_64's"
    images = np.load(doctor.SELFTEST / "images.npy")
    assert images.dtype == np.uint8 and images.shape == (16, 8, 8) and images.std() > 20  # real digits


def test_a_broken_coder_setting_fails_before_the_self_test():
    pytest.importorskip("edgeae.runtime.rangecoder")
    res = _doctor(env={**os.environ, "EDGEAE_CODER": "nonsense"})
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "entropy coder" in res.stderr and "nonsense" in res.stderr


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EDGEAE_ARM64_TESTS") != "1",
                    reason="emulated arm64: run `bash benchmarks/arm64/build.sh`, then set EDGEAE_ARM64_TESTS=1")
def test_doctor_on_the_emulated_arm64_install():
    """The CI-sized smoke of benchmarks/arm64: the wheel installed there (no constriction) passes its doctor."""
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(["bash", "-c", f"source {root}/benchmarks/arm64/env.sh && arm_edgeae doctor"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(res.stdout)
    assert "(aarch64, 64bit)" in rows["platform"] and rows["entropy coder"] == "numpy"
    assert "symbols identical" in rows["decode ref"] and rows["self-test"].startswith("passed")
