"""Rebuild the tiny bundle and reference that `edgeae doctor` self-tests with (edgeae/runtime/_selftest/).

    PYTHONPATH=. .venv/bin/python benchmarks/arm64/make_selftest.py   # needs the train extra (torch); ~20 s
    ... make_selftest.py --keep-bundle   # only re-encode the references with the shipped bundle (torch-free)

A real bundle made by our trainer and exporter: the conv family on scikit-learn's 8x8 digits, 4-bit latent
(small tables, ~20 KB in all), fp32 only. Next to it, made here with the x86-64 runtime:
    images.npy     16 held-out digits, uint8 (16, 8, 8)
    reference.eae  one payload holding all 16, as encoded on this machine (the runtime's current wire format)
    reference-v1.eae  the same in wire format v1 (kept from before v2: devices must still read it)
    symbols.npy    its latent symbols, uint8 (16, *latent)
    decoded.npy    the decoded images, uint8 (16, 8, 8)
    reference.json where and with what they were made
A device's doctor then checks that it reads the same symbols out of reference.eae, computes the same symbols
from images.npy, and decodes the same images: the cross-machine contract, on the device itself.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

DEST = Path(__file__).resolve().parents[2] / "edgeae" / "runtime" / "_selftest"
SAMPLES = 16


def main() -> None:
    bundle = DEST / "bundle"
    keep = "--keep-bundle" in sys.argv[1:]
    if not keep:
        _make_bundle(bundle)
    _encode(bundle, np.load(DEST / "images.npy") if keep else _digits())


def _make_bundle(bundle: Path) -> None:
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.train.trainer import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        run = train("conv", "digits", Path(tmp) / "selftest-digits", {"loss": "bce", "channels": (8, 4)},
                    TrainConfig(epochs=60, batch_size=32, lr=3e-3, progress=False), overwrite=True).path
        staged = Path(tmp) / "bundle"
        export_run(run, ExportOptions(out=staged, latent_bits=4, force=True, measure_speed=False))
        if bundle.exists():
            shutil.rmtree(bundle)
        DEST.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, bundle)
    (DEST / "reference-v1.eae").unlink(missing_ok=True)  # made with the old bundle: no longer decodable


def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.rint(load_digits().images[-SAMPLES:] / 16.0 * 255.0).astype(np.uint8)


def _encode(bundle: Path, images: np.ndarray) -> None:
    import onnxruntime

    import edgeae
    from edgeae.runtime import Decoder, Encoder
    from edgeae.runtime.doctor import coder_backend

    enc, dec = Encoder(bundle, threads=1), Decoder(bundle, threads=1)
    payload = enc.encode(images)
    symbols = dec.symbols(payload)
    if not np.array_equal(symbols, enc.symbols(images)):
        sys.exit("the payload does not decode to the encoder's symbols on this machine; not writing a reference")
    np.save(DEST / "images.npy", images)
    np.save(DEST / "symbols.npy", symbols.astype(np.uint8))
    np.save(DEST / "decoded.npy", np.asarray(dec.decode(payload)))
    (DEST / "reference.eae").write_bytes(payload)
    (DEST / "reference.json").write_text(json.dumps({
        "machine": platform.machine(), "platform": platform.platform(), "edgeae": edgeae.__version__,
        "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "coder": coder_backend(),
        "images": SAMPLES, "payload_bytes": len(payload),
    }, indent=2) + "\n")
    total = sum(f.stat().st_size for f in DEST.rglob("*") if f.is_file())
    print(f"wrote {DEST} ({total / 1024:.1f} KiB): {SAMPLES} digits -> {len(payload)} B payload")


if __name__ == "__main__":
    main()
