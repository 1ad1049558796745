"""Bring your own model: foreign PyTorch autoencoders (not edgeae's zoo) through `edgeae.export` with int8.

Two models written here, trained briefly on synthetic blob images (28x28 gray, 400 images, seed 0) so the
figures mean something: a conv autoencoder with encode/decode methods (strided convs, nearest upsampling), and
a CompressAI-style codec (strided 5x5 convs + GDN, transposed convs + inverse GDN) exported any-size. Prints,
per model: export wall time (fp32 + int8, with verification), max parity error vs PyTorch, PSNR as deployed
(quantised latent) fp32 vs int8 per graph, int8 size ratio and batch-1 one-thread latency; and a round trip
of 32 images through the torch-free runtime (bytes per image, PSNR against the originals).

    python benchmarks/bench_byo_export.py [--steps 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgeae
from edgeae.errors import ExportError
from edgeae.evaluate.metrics import mean_psnr, psnr
from edgeae.runtime import Decoder, Encoder


def blobs(n: int, size: int = 28, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = rng.uniform(2, size - 2, (n, 2, 1, 1))
    r = rng.uniform(6, 60, (n, 1, 1))
    return (255 * np.exp(-((yy - c[:, 0]) ** 2 + (xx - c[:, 1]) ** 2) / r)).astype(np.uint8)


class ConvAE(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 8, 3, stride=2, padding=1))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(8, width, 3, padding=1), nn.ReLU(),
                                nn.Upsample(scale_factor=2), nn.Conv2d(width, 1, 3, padding=1), nn.Sigmoid())

    def encode(self, x):
        return self.down(x)

    def decode(self, z):
        return self.up(z)

    def forward(self, x):
        return self.decode(self.encode(x))


class GDN(nn.Module):
    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels) + 0.01)

    def forward(self, x):
        norm = torch.sqrt(nn.functional.conv2d(x * x, self.gamma.abs()[:, :, None, None], self.beta.abs() + 1e-6))
        return x * norm if self.inverse else x / norm


class GDNCodec(nn.Module):
    def __init__(self, n: int = 32, m: int = 8) -> None:
        super().__init__()
        self.g_a = nn.Sequential(nn.Conv2d(1, n, 5, stride=2, padding=2), GDN(n), nn.Conv2d(n, m, 5, stride=2, padding=2))
        self.g_s = nn.Sequential(nn.ConvTranspose2d(m, n, 5, stride=2, padding=2, output_padding=1), GDN(n, True),
                                 nn.ConvTranspose2d(n, 1, 5, stride=2, padding=2, output_padding=1))

    def forward(self, x):
        return self.g_s(self.g_a(x))


def train(model: nn.Module, images: np.ndarray, steps: int) -> None:
    torch.manual_seed(0)
    x = torch.from_numpy(images[:, None] / 255.0).float()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        b = x[torch.randint(0, len(x), (32,))]
        loss = nn.functional.mse_loss(model(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def report(name: str, res, seconds: float, images: np.ndarray) -> None:
    q, g = res.quality, res.int8["graphs"]
    err = max(c.max_abs_error for c in res.checks if c.precision == "fp32")
    print(f"\n{name}: export {seconds:.1f} s (fp32 + int8, all checks), max fp32 parity error {err:.2g}")
    print(f"  PSNR as deployed: fp32 {q['psnr_fp32_quantized_latent']:.2f} dB, both int8 {q['psnr_onnx_int8']:.2f} dB")
    for role, e in g.items():
        speed = f"{e['latency_us_fp32']:.0f} -> {e['latency_us_int8']:.0f} us ({e['int8_speedup']:.2f}x)" \
            if "latency_us_fp32" in e else "not measured"
        print(f"  int8 {role:8s} {-e['psnr_drop_db']:+.3f} dB vs fp32, size x{e['size_ratio']:.2f}, batch 1: {speed}")
    enc, dec = Encoder(res.path), Decoder(res.path)
    payloads = enc.encode_each(images)
    rec = np.concatenate([dec.decode(p) for p in payloads])
    print(f"  runtime round trip of {len(images)} images: {np.mean([len(p) for p in payloads]):.1f} bytes/image, "
          f"PSNR {mean_psnr(psnr(rec, images, batch=True)):.2f} dB vs the originals")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300, help="training steps per model (batch 32)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    images, held_out = blobs(400), blobs(32, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        for name, make, kwargs in (
            ("conv autoencoder (encode/decode methods)", ConvAE, {"encode": "encode", "decode": "decode"}),
            ("CompressAI-style GDN codec, any size", GDNCodec, {"encode": "g_a", "decode": "g_s"}),
        ):
            torch.manual_seed(0)
            model = make()
            train(model, images, a.steps)
            dynamic = "any size" in name
            spec = edgeae.InputSpec(channels=1, height=28, width=28, dynamic_size=dynamic)
            t = time.perf_counter()
            try:
                res = edgeae.export(model=model, out=Path(tmp) / name.split()[0], calibration=images, int8=True,
                                    input=spec, **kwargs)
            except ExportError as exc:  # the int8 budget (0.5 dB) is a real verdict: show it, then the figures
                print(f"\n{name}: refused at the default int8 limit: {exc}")
                t = time.perf_counter()
                res = edgeae.export(model=model, out=Path(tmp) / name.split()[0], calibration=images, int8=True,
                                    input=spec, max_int8_drop_db=3.0, **kwargs)
            report(name, res, time.perf_counter() - t, held_out)


if __name__ == "__main__":
    main()
