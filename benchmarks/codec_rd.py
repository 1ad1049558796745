"""Rate-distortion of trained `codec` runs, measured on real payloads, next to JPEG and WebP.

For each run: export it (fp32 graphs, the model's learned entropy tables), encode every validation image
into its own payload with edgeae.runtime (header included), decode, and report mean bytes/image, bpp and
mean per-image PSNR on uint8 pixels. JPEG and WebP (Pillow) are measured on the same images over their
quality ladders; BD-rate (Bjontegaard: cubic fit of log-rate against PSNR, integrated over the overlapping
PSNR range) of the codec curve against each.

    .venv/bin/python benchmarks/codec_rd.py runs/codec/mnist-l0.003 runs/codec/mnist-l0.01 ... [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def psnr_u8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(err, 1e-10))


def to_hwc_u8(x: np.ndarray) -> np.ndarray:
    u = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    return u[:, 0] if u.shape[1] == 1 else u.transpose(0, 2, 3, 1)


def pillow_curve(images: np.ndarray, fmt: str, qualities) -> list[dict]:
    from PIL import Image

    out = []
    for q in qualities:
        sizes, rec = [], []
        for im in images:
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format=fmt, quality=int(q))
            sizes.append(buf.tell())
            buf.seek(0)
            with Image.open(buf) as r:
                rec.append(np.asarray(r.convert("L" if im.ndim == 2 else "RGB")))
        out.append({"quality": q, "bytes": float(np.mean(sizes)), "psnr": float(psnr_u8(np.stack(rec), images).mean())})
    return out


def bd_rate(anchor: list[dict], test: list[dict]) -> float | None:
    """% rate change of `test` vs `anchor` at equal PSNR (edgeae.evaluate.bdrate, VCEG-M33's cubic fit, as
    this benchmark's first figures were; None: no overlapping PSNR range)."""
    from edgeae.evaluate.bdrate import bd_rate as bd

    r = bd([a["bytes"] for a in anchor], [a["psnr"] for a in anchor], [t["bytes"] for t in test],
           [t["psnr"] for t in test], method="cubic")
    return r.percent


def codec_point(run: Path, tmp: Path, input_size=None) -> dict:
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.runtime.bundle import Bundle
    from edgeae.runtime.codec import Decoder, Encoder
    from edgeae.train.data import DataSpec, load_dataset
    from edgeae.train.rundir import load_run

    loaded = load_run(run)
    out = tmp / run.name
    res = export_run(run, ExportOptions(out=out, measure_speed=False, force=True))
    data = load_dataset(DataSpec.from_dict(loaded.config["data"]))
    x = data.val
    enc, dec = Encoder(Bundle.open(out)), Decoder(Bundle.open(out))
    payloads = enc.encode_each(x)
    rec = np.concatenate([dec.decode(p, as_float=True) for p in payloads])
    ref, got = to_hwc_u8(x), to_hwc_u8(rec)
    n_bytes = np.array([len(p) for p in payloads], np.float64)
    pixels = x.shape[2] * x.shape[3]
    metrics = json.loads((run / "metrics.json").read_text())["final"]
    return {"run": run.name, "lmbda": loaded.config["model"]["config"]["lmbda"], "images": len(x),
            "bytes": float(n_bytes.mean()), "bpp": float(n_bytes.mean() * 8 / pixels),
            "model_bpp": metrics["bpp"], "psnr": float(psnr_u8(got, ref).mean()),
            "levels": res.manifest["latent"]["quantization"]["levels"], "image_shape": list(x.shape[1:])}, ref


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    points, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            p, ref = codec_point(run, Path(tmp))
            points.append(p)
            print(f"{p['run']:28s} lmbda {p['lmbda']:<7g} {p['bytes']:8.1f} B/img  {p['bpp']:.3f} bpp "
                  f"(model {p['model_bpp']:.3f})  PSNR {p['psnr']:.2f} dB  levels {p['levels']}", flush=True)
    jpeg = pillow_curve(ref, "JPEG", [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95])
    webp = pillow_curve(ref, "WEBP", [0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95])
    for name, curve in (("JPEG", jpeg), ("WebP", webp)):
        print(name + ": " + "  ".join(f"q{r['quality']}: {r['bytes']:.0f} B {r['psnr']:.1f} dB" for r in curve))
    bd = {"jpeg": bd_rate(jpeg, points), "webp": bd_rate(webp, points)}
    for k, v in bd.items():
        print(f"BD-rate vs {k}: " + ("no overlapping PSNR range" if v is None else f"{v:+.1f}%"))
    if args.json:
        args.json.write_text(json.dumps({"codec": points, "jpeg": jpeg, "webp": webp, "bd_rate": bd}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
