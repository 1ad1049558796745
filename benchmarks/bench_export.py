"""Benchmark: export the seed-003 conv AE trained on shared MNIST and compare fp32 vs int8 graphs.

For encoder and decoder: file size, PSNR on the 2,000 validation images, and batch-1 / batch-64 latency
medians on one thread (onnxruntime), next to PyTorch eager latency of the same modules, all in one run.

    .venv/bin/python benchmarks/bench_train_mnist.py --out runs/mnist-conv     # once
    .venv/bin/python benchmarks/bench_export.py runs/mnist-conv [--out export/mnist-conv]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from edgeae.bundling.build import ExportOptions, export_run
from edgeae.bundling.int8 import median_latency_us
from edgeae.evaluate.metrics import mean_psnr
from edgeae.evaluate.metrics import psnr as psnr_per_image
from edgeae.runtime.session import make_session
from edgeae.train.data import DataSpec, load_dataset
from edgeae.train.rundir import load_run


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean PSNR (dB) of float [0, 1] image batches, with edgeae.evaluate's one PSNR."""
    return mean_psnr(psnr_per_image(np.clip(a, 0, 1) * 255.0, b * 255.0, batch=True))


def eager_us(module: torch.nn.Module, x: np.ndarray, repeats: int = 7) -> float:
    t = torch.from_numpy(x)
    with torch.no_grad():
        for _ in range(5):
            module(t)
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.01:
            module(t)
            calls += 1
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                module(t)
            times.append((time.perf_counter() - t0) / calls)
    return float(np.median(times) * 1e6)


def run_all(path: Path, x: np.ndarray) -> np.ndarray:
    s = make_session(path, threads=1)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 256]})[0] for i in range(0, len(x), 256)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("export/mnist-conv"))
    a = p.parse_args()
    torch.set_num_threads(1)
    run = load_run(a.run_dir)
    res = export_run(a.run_dir, ExportOptions(out=a.out, int8=True, force=True))
    val = load_dataset(DataSpec.from_dict(run.config["data"])).val
    b = res.path
    y32 = run_all(b / "encoder.onnx", val)
    rec = {
        ("encoder", "fp32"): run_all(b / "decoder.onnx", y32),
        ("encoder", "int8"): run_all(b / "decoder.onnx", run_all(b / "encoder.int8.onnx", val)),
        ("decoder", "fp32"): run_all(b / "decoder.onnx", y32),
        ("decoder", "int8"): run_all(b / "decoder.int8.onnx", y32),
    }
    inputs = {"encoder": val, "decoder": y32}
    modules = {"encoder": run.model.encoder, "decoder": run.model.decoder}
    print(f"bundle {b}; validation = last {len(val)} MNIST test images; 1 thread; medians of 7 repeats")
    print("PSNR column: whole pipeline with only that graph swapped (the other graph fp32), latent not quantised")
    head = f"{'graph':8} {'precision':9} {'KiB':>7} {'PSNR dB':>8} {'b1 us':>8} {'b64 us':>9} {'b64 us/img':>10}"
    print(head)
    print("-" * len(head))
    for role in ("encoder", "decoder"):
        for prec, f in (("fp32", f"{role}.onnx"), ("int8", f"{role}.int8.onnx")):
            x = inputs[role]
            t1, t64 = median_latency_us(b / f, x[:1]), median_latency_us(b / f, x[:64])
            print(f"{role:8} {prec:9} {(b / f).stat().st_size / 1024:>7.1f} {psnr(rec[(role, prec)], val):>8.2f} "
                  f"{t1:>8.1f} {t64:>9.1f} {t64 / 64:>10.2f}")
        x = inputs[role]
        t1, t64 = eager_us(modules[role], x[:1]), eager_us(modules[role], x[:64])
        print(f"{role:8} {'torch':9} {'':>7} {'':>8} {t1:>8.1f} {t64:>9.1f} {t64 / 64:>10.2f}")
    q = res.manifest["quality"]
    print(f"manifest (first 512 validation images), full pipeline PSNR: fp32 {q['psnr_onnx_fp32']:.2f} dB, int8 {q['psnr_onnx_int8']:.2f} dB, "
          f"fp32 + 8-bit latent {q['psnr_fp32_quantized_latent']:.2f} dB")


if __name__ == "__main__":
    main()
