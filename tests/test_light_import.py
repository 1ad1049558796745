"""The edge runtime needs no torch: import it, and run a full encode -> decode, with torch made unimportable.

Like click's own test_imports.py, each check runs in a fresh interpreter so nothing the test session
already imported can hide a dependency.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

# Setting sys.modules["torch"] = None makes every `import torch` raise ImportError, as if not installed.
BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"


def _run(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_importing_the_runtime_and_the_cli_does_not_import_torch():
    out = _run("""
        import sys
        import edgeae.runtime
        from edgeae.runtime import Bundle, Decoder, Encoder, load_manifest
        import edgeae.runtime.codec, edgeae.runtime.payload, edgeae.runtime.images
        import edgeae.cli
        print(sorted(m for m in ("torch", "onnx", "safetensors", "sklearn") if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_full_round_trip_with_torch_unimportable(tiny_bundle, tmp_path):
    out = _run(BLOCK_TORCH + f"""
import numpy as np
from edgeae.runtime import Decoder, Encoder
from edgeae.runtime.payload import describe
x = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
enc, dec = Encoder({str(tiny_bundle)!r}), Decoder({str(tiny_bundle)!r})
payload = enc.encode(x)
out = dec.decode(payload)
assert out.shape == x.shape and out.dtype == np.uint8
assert (dec.symbols(payload) == enc.symbols(x)).all()
assert Decoder({str(tiny_bundle)!r}, "int8").decode(Encoder({str(tiny_bundle)!r}, "int8").encode(x)).shape == x.shape
print(describe(payload)["items"], "torch" in sys.modules and sys.modules["torch"] is not None)
""")
    assert out.split() == ["5", "False"]


def test_cli_encode_decode_with_torch_unimportable(tiny_bundle, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    _run(BLOCK_TORCH + f"""
from edgeae.cli import main
for args in (["encode", {str(tmp_path / "a.png")!r}, "--out", {str(tmp_path / "e")!r}],
             ["decode", {str(tmp_path / "e" / "a.eae")!r}, "--out", {str(tmp_path / "d")!r}]):
    try:
        main(args + ["--bundle", {str(tiny_bundle)!r}])
    except SystemExit as exc:
        assert exc.code == 0, exc.code
""")
    assert (tmp_path / "d" / "a.png").is_file()
