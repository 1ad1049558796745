"""benchmarks/runpack.py: runs trained on the GPU machine come back through the device tool's 8 files, and are
the same runs here: loadable, resumable, the same weights (float16 only when asked)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _runpack():
    spec = importlib.util.spec_from_file_location("runpack", ROOT / "benchmarks" / "runpack.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / "weights.safetensors"))


def test_pack_and_unpack_give_back_the_same_runs_resumable_and_loadable(tmp_path, make_run):
    from edgeae.train.rundir import load_run
    from edgeae.train.trainer import resume

    rp = _runpack()
    runs = [shutil.copytree(make_run("conv"), tmp_path / "src" / "a"),
            shutil.copytree(make_run("dense", latent=8), tmp_path / "src" / "b")]
    r = rp.pack(tmp_path / "pack", runs)
    files = sorted(p.name for p in (tmp_path / "pack").iterdir())
    assert files == ["runs-0.safetensors", "runs.json"] and r["runs"] == 2
    made = rp.unpack(tmp_path / "pack", tmp_path / "back")
    assert [p.name for p in made] == ["a", "b"]
    for src, back in zip(runs, made, strict=True):
        w0, w1 = _weights(src), _weights(back)
        assert w0.keys() == w1.keys() and all(np.array_equal(w0[k], w1[k]) for k in w0)
        assert load_run(back).config == load_run(src).config
        assert (back / "checkpoint" / "model.safetensors").is_file()
    longer = resume(made[0], epochs=4)  # a slim checkpoint: resumes without Adam's moments
    assert [h["epoch"] for h in longer.metrics["history"]][-1] == 4


def test_half_rounds_to_float16_and_limits_are_refused_before_writing(tmp_path, make_run, monkeypatch):
    rp = _runpack()
    run = shutil.copytree(make_run("conv"), tmp_path / "src" / "a")
    rp.pack(tmp_path / "half", [run], half=True)
    back = rp.unpack(tmp_path / "half", tmp_path / "back")[0]
    w0, w1 = _weights(run), _weights(back)
    k = max(w0, key=lambda n: w0[n].size)
    assert w1[k].dtype == np.float32 and np.array_equal(w1[k], w0[k].astype(np.float16).astype(np.float32))
    with pytest.raises(SystemExit, match="unpack somewhere else"):
        rp.unpack(tmp_path / "half", tmp_path / "back")
    monkeypatch.setattr(rp, "MAX_TOTAL", 1000)
    with pytest.raises(SystemExit, match="pack fewer runs or add --half"):
        rp.pack(tmp_path / "over", [run])
    assert not (tmp_path / "over").exists()
    with pytest.raises(SystemExit, match="not a run directory"):
        rp.pack(tmp_path / "x", [tmp_path])
