"""What a synthesis costs before it is trained: the photo zoo's decoder graph beside g_s variants of the same
N=128 / M=192 shape with fresh weights (IGDN instead of ReLU, a tapered width, transposed convolutions), exported to ONNX and timed on
onnxruntime, 1 thread, a 768x512 image's latent (192 x 32 x 48), medians of --repeat runs side by side. Issue
15's decode target is <= 50x WebP's decode (~2.4 ms on this host: ~120 ms in all, entropy decoding ~16 ms).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synthesis_speed.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch


def main() -> None:
    from edgeae.train.models.codec import _Synthesis
    from edgeae.zoo import locate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    y = np.random.default_rng(0).normal(size=(1, 192, 32, 48)).astype(np.float32)
    graphs = {"zoo decoder (photo, ReLU)": (locate("photo:3")[0] / "decoder.onnx").read_bytes()}
    params = {}
    tapers = [(), (128, 64, 64), (128, 64, 32)]
    variants = [(igdn, widths, "depth_to_space") for igdn in (False, True) for widths in tapers]
    variants += [(True, (), "transposed"), (True, (128, 64, 32), "transposed")]  # Balle's g_s (IGDN, 5x5 stride 2)
    for igdn, widths, upsample in variants:
        m = _Synthesis(192, 128, 3, 4, igdn=igdn, widths=widths, upsample=upsample).eval()
        f = io.BytesIO()
        torch.onnx.export(m, (torch.zeros(1, 192, 32, 48),), f, input_names=["latent"], output_names=["image"],
                          opset_version=17, dynamo=False)
        taper = f", {'/'.join(map(str, widths))}" if widths else ""
        name = f"g_s {'IGDN' if igdn else 'ReLU'}{taper}{', transposed' if upsample != 'depth_to_space' else ''}"
        graphs[name], params[name] = f.getvalue(), sum(p.numel() for p in m.parameters())
    sessions = {k: ort.InferenceSession(v, so) for k, v in graphs.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(a.repeat):  # interleaved: every variant sees the same host load
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"latent": y})
            times[k].append((time.perf_counter() - t) * 1000)
    base = statistics.median(times["zoo decoder (photo, ReLU)"])
    print(f"{'synthesis':36} {'ms':>7} {'x zoo':>6} {'params M':>8}")
    for k, v in times.items():
        p = params.get(k)
        print(f"{k:36} {statistics.median(v):7.1f} {statistics.median(v) / base:6.2f} "
              f"{'' if p is None else f'{p / 1e6:.2f}':>8}")


if __name__ == "__main__":
    main()
