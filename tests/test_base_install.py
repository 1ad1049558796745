"""The base install (`pip install edgeae`, no extras): every command either works or says in one line which
extra to install; never a traceback. Simulated in a fresh interpreter where every optional dependency is
unimportable (sys.modules[name] = None makes `import name` raise ModuleNotFoundError, as if not installed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from edgeae.cli import EXTRA_OF_MODULE, main

try:
    import tomllib
except ImportError:  # Python 3.10: the tomli backport, a base dependency there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BLOCK = f"import sys\nfor _m in {sorted(EXTRA_OF_MODULE)!r}: sys.modules[_m] = None\n"

# Every command of the CLI, with arguments that get it past option parsing to its real work, and what the
# base install must do with it: "ok" (exit 0), "clean" (exit 0 or a one-line error that names no extra) or
# the extra its one-line error must name.
# A new command must be added here (test_every_command_is_covered says so).


def _commands(tmp: Path, bundle: Path) -> dict[str, tuple[list[str], str]]:
    img, npy = tmp / "img" / "a.png", tmp / "run"
    b = str(bundle)
    return {
        "train": (["train", "--epochs", "1", "--out", str(tmp / "r")], "train"),
        "models": (["models"], "train"),
        "export": (["export", str(npy), "--out", str(tmp / "x")], "train"),
        "demo": (["demo", "--out", str(tmp / "demo"), "--bundle", str(tmp / "demo-bundle")], "train"),
        "eval": (["eval", b, "--dataset", "digits", "--limit", "4"], "train"),
        "inspect": (["inspect", b], "ok"),
        "encode": (["encode", "--bundle", b, str(img), "--out", str(tmp / "e")], "ok"),
        "decode": (["decode", "--bundle", b, str(tmp / "e" / "a.eae"), "--out", str(tmp / "d")], "ok"),
        "devices": (["devices"], "ok"),
        "profile": (["profile", b, "--part", "encoder", "--precision", "fp32", "--runs", "1", "--warmup", "0"],
                    "ok"),
        "score": (["score", b, str(img)], "ok"),
        "serve": (["serve", "--bundle", b], "server"),
        "upload": (["upload", "--spool", str(tmp / "spool"), "--send", "http://127.0.0.1:9"], "ok"),
        "triton": (["triton", b, "--out", str(tmp / "triton")], "ok"),
        "doctor": (["doctor"], "ok"),
        "keys": (["keys", "add", str(tmp / "keys.json"), "cam-1"], "ok"),
        "store": (["store", "count", str(tmp / "img")], "clean"),  # not a store: a one-line error, no extra needed
    }


RUNNER = BLOCK + textwrap.dedent("""
    import json
    from click.testing import CliRunner
    from edgeae.cli import main
    out = []
    for name, args in json.loads(sys.argv[1]):
        r = CliRunner().invoke(main, args)
        out.append({"name": name, "code": r.exit_code, "output": r.output,
                    "exception": None if r.exception is None else type(r.exception).__name__})
    print(json.dumps(out))
""")


def test_every_command_is_covered(tmp_path):
    missing = set(main.commands) - set(_commands(tmp_path, tmp_path))
    assert not missing, f"add {sorted(missing)} to _commands in tests/test_base_install.py"


def test_the_extras_table_matches_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    dists = {extra: {re.split(r"[<>=\[; ]", d, maxsplit=1)[0].lower() for d in deps} for extra, deps in extras.items()}
    import_name = {"scikit-learn": "sklearn", "scikit-image": "skimage"}
    for extra in ("train", "server", "ray"):
        for dist in dists[extra]:
            assert EXTRA_OF_MODULE.get(import_name.get(dist, dist)) == extra, (dist, extra)


def test_each_command_works_or_names_its_extra(tiny_bundle, tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img" / "a.png")
    (tmp_path / "run").mkdir()
    commands = _commands(tmp_path, tiny_bundle)
    res = subprocess.run([sys.executable, "-c", RUNNER, json.dumps([(n, a) for n, (a, _) in commands.items()])],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for r in json.loads(res.stdout):
        expect = commands[r["name"]][1]
        where = f"{r['name']}: {r['output']}"
        assert "Traceback" not in r["output"] and r["exception"] in (None, "SystemExit"), where
        if expect == "ok" or (expect == "clean" and r["code"] == 0):
            assert r["code"] == 0, where
            continue
        lines = [line for line in r["output"].splitlines() if line.strip()]
        assert r["code"] != 0 and len(lines) == 1 and lines[0].startswith("Error:"), where
        if expect == "clean":
            assert "edgeae[" not in lines[0], where
        else:
            assert f"edgeae[{expect}]" in lines[0], where


def test_the_real_entry_point_prints_one_line_to_stderr(tmp_path):
    code = BLOCK + "from edgeae.cli import main\nmain()\n"
    res = subprocess.run([sys.executable, "-c", code, "train", "--epochs", "1", "--out", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "Error: this command needs torch, which is not installed; install it with pip install 'edgeae[train]'"]
    assert not (tmp_path / "r").exists()


def test_a_broken_import_inside_edgeae_is_not_disguised_as_a_missing_extra():
    from edgeae.cli import missing_extra

    assert missing_extra(ModuleNotFoundError("No module named 'edgeae.nope'", name="edgeae.nope")) is None
    assert missing_extra(ImportError("cannot import name 'x' from 'torch'", name="torch")) is None
    assert "edgeae[server]" in (missing_extra(ModuleNotFoundError("x", name="uvicorn.main")) or "")
