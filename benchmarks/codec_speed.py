"""Codec encoder at 768x512 (W x H) RGB, one thread: fp32 vs int8 latency, and what int8 costs in PSNR.

The run's weights are rebuilt at in_shape (3, 512, 768) (the codec is fully convolutional), the encoder is
exported with the exporter's own graph code and quantised with its int8 path (QDQ, U8S8 per-channel,
calibrated on the 12 training photographs resized to 768x512). PSNR is end to end on the two held-out
photographs (coffee, chelsea, resized to 768x512): encoder -> round -> fp32 decoder, with the fp32 and the
int8 encoder. Latency: median of batch-1 calls on one onnxruntime thread (edgeae.bundling.int8).

    .venv/bin/python benchmarks/codec_speed.py runs/codec/photos-rgb-l0.01 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

H, W = 512, 768


def photos(split: str) -> np.ndarray:
    from PIL import Image

    from edgeae.train.data import load_photo, photo_names

    out = []
    for name in photo_names(split):
        im = Image.fromarray(load_photo(name, "rgb")).resize((W, H), Image.Resampling.BICUBIC)
        out.append(np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(out)


def main() -> int:
    from edgeae.bundling import graphs
    from edgeae.bundling.core import latent_grid, latent_model
    from edgeae.bundling.int8 import median_latency_us, quantize_graph
    from edgeae.bundling.spec import graph_specs
    from edgeae.profiling.host import cpu_model
    from edgeae.runtime.devices import Int8Settings
    from edgeae.runtime.session import make_session
    from edgeae.train.models import build_model, make_config
    from edgeae.train.rundir import load_run

    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep-fp32", default="",
                    help="Comma-separated: first,last compute node of the encoder left in fp32 (default: none).")
    ap.add_argument("--no-latent-grid", action="store_true",
                    help="Calibrate the encoder output's int8 range instead of putting it on the latent grid.")
    ap.add_argument("--repeats", type=int, default=7, help="Timing repeats (median).")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = load_run(args.run)
    cfg = {**run.config["model"]["config"], "in_shape": (3, H, W)}
    model = build_model("codec", make_config("codec", **cfg)).eval()
    model.load_state_dict(run.model.state_dict(), strict=True)
    train, val = photos("train"), photos("val")
    spec = graph_specs()["encoder"]
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "encoder.onnx", Path(tmp) / "encoder.int8.onnx"
        graphs.save(graphs.export_graph(model.encoder, spec, torch.from_numpy(val[:1])), fp32)
        keep = [k for k in args.keep_fp32.split(",") if k]
        y_shape = graphs.torch_run(model.encoder, val[:1]).shape
        grid = None if args.no_latent_grid else latent_grid(latent_model(model, np.zeros(y_shape, np.float32), 8)[0])
        kept = quantize_graph(fp32, int8, spec.input_name, train, Int8Settings(), keep_fp32=keep,
                              output_grid=(spec.output_name, *grid) if grid else None)
        psnrs = {}
        for label, path in (("fp32", fp32), ("int8", int8)):
            sess = make_session(path, threads=1)
            y = np.concatenate([sess.run(None, {spec.input_name: v[None]})[0] for v in val])
            with torch.no_grad():
                rec = model.decoder(torch.round(torch.from_numpy(y))).numpy()
            ref, got = np.rint(val * 255), np.rint(rec * 255)
            mse = ((ref - got) ** 2).reshape(len(val), -1).mean(1)
            psnrs[label] = float((10 * np.log10(255.0**2 / mse)).mean())
            res[f"latency_ms_{label}"] = median_latency_us(path, val[:1], repeats=args.repeats) / 1000
            res[f"psnr_{label}"] = psnrs[label]
            with torch.no_grad():
                lik = model.prior.likelihood(torch.round(torch.from_numpy(y)))
            res[f"model_bpp_{label}"] = float(-torch.log2(lik).sum() / (len(val) * H * W))
        res["int8_speedup"] = res["latency_ms_fp32"] / res["latency_ms_int8"]
        res["int8_psnr_drop_db"] = psnrs["fp32"] - psnrs["int8"]
        res["bytes_fp32"], res["bytes_int8"] = fp32.stat().st_size, int8.stat().st_size
    res["cpu"] = platform.machine() + " " + cpu_model()
    res["run"] = str(args.run)
    res["int8_recipe"] = (f"U8S8 per-channel QDQ, fp32 nodes: {', '.join(kept) or 'none'}, encoder output on "
                          + (f"the latent grid (scale {grid[0]:g}, zero point {grid[1]})" if grid else "a calibrated range"))
    for k, v in res.items():
        print(f"{k:22s} {v:.4g}" if isinstance(v, float) else f"{k:22s} {v}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
