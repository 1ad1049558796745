"""Is the curve's ceiling the synthesis, the analysis, or the rate training? A CPU probe on a trained codec run.

benchmarks/transform_cap.py showed the shipped photo codec's transforms cap at 28.63 dB even with every latent
exact (g_s(y), no rounding), where WebP reaches 34 dB. This probe trains part of the run with pure MSE and no
rate term for a few hundred steps on random crops of the training folder, and prints the held-out PSNR of the
unrounded reconstruction g_s(g_a(x)) as it goes:

    --train decoder  g_s alone, g_a frozen: how far a better-trained synthesis lifts the ceiling on these y
    --train both     g_a and g_s: how far the autoencoder itself goes once the rate stops pulling on y
    --scratch        (with --train both) the same architecture from fresh weights: what it reaches alone

If a few hundred CPU steps lift the ceiling by a dB or more, the transforms were held back by the training
(rate pressure, steps), not by their size; if not, the architecture is the ceiling.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/synthesis_probe.py runs/gpu/bvrA --train decoder --steps 600
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    from edgeae.train.data import _at_least, _centre_crop, read_image_folder
    from edgeae.train.rundir import load_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--train", choices=["decoder", "both"], default="decoder")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/photos/train"))
    ap.add_argument("--val", type=Path, default=Path("../shared/data/photos/val"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--quality", type=int, default=0, help="operating point whose gain scales y (0: the last)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scratch", action="store_true",
                    help="re-initialise g_a and g_s first (the architecture alone, without the run's weights)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    model = load_run(a.run).model
    if a.scratch:
        for m in (*model.encoder.modules(), *model.decoder.modules()):
            if hasattr(m, "reset_parameters") and m is not model.encoder and m is not model.decoder:
                m.reset_parameters()
    points = model.operating_points() if hasattr(model, "operating_points") else 1
    q = (a.quality or points) - 1
    scope = model.at_quality(q) if points > 1 else contextlib.nullcontext()
    train = [np.ascontiguousarray(v.transpose(2, 0, 1)) for v in read_image_folder(a.data, "RGB", min_side=a.crop)]
    val_imgs = read_image_folder(a.val, "RGB")
    val = torch.from_numpy(np.stack([_centre_crop(_at_least(v, 256), 256) for v in val_imgs]).astype(np.float32)
                           / 255.0)
    params = list(model.decoder.parameters()) + (list(model.encoder.parameters()) if a.train == "both" else [])
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=a.lr)

    def batch() -> torch.Tensor:
        out = []
        for i in rng.integers(0, len(train), a.batch):
            img = train[i]
            t, lo = rng.integers(0, img.shape[1] - a.crop + 1), rng.integers(0, img.shape[2] - a.crop + 1)
            crop = img[:, t:t + a.crop, lo:lo + a.crop]
            out.append(crop[:, :, ::-1] if rng.random() < 0.5 else crop)
        return torch.from_numpy(np.ascontiguousarray(np.stack(out)).astype(np.float32) / 255.0)

    def held_out() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            y = model.encoder(val)
            res = []
            for rec in (model.decoder(y), model.decoder(torch.round(y))):
                res.append(float((10 * torch.log10(1 / ((rec - val) ** 2).mean(dim=(1, 2, 3)))).mean()))
        return res[0], res[1]

    with scope:
        print(f"{a.run}: train {a.train} with MSE only, q{q + 1}, {len(train)} images, {a.batch}x{a.crop}^2 crops, "
              f"lr {a.lr}; held out: {len(val)} centre crops 256^2")
        print(f"{'step':>5} {'unrounded dB':>12} {'rounded dB':>10} {'train dB':>8} {'s/step':>6}")
        u, r = held_out()
        print(f"{0:>5} {u:>12.2f} {r:>10.2f} {'':>8} {'':>6}", flush=True)
        start, losses = time.perf_counter(), []
        for step in range(1, a.steps + 1):
            model.train()
            if a.train == "decoder":
                model.encoder.eval()
            x = batch()
            with torch.no_grad() if a.train == "decoder" else contextlib.nullcontext():
                y = model.encoder(x)
            loss = F.mse_loss(model.decoder(y), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if step % a.every == 0:
                u, r = held_out()
                tr = float(10 * np.log10(1 / np.mean(losses)))
                losses = []
                print(f"{step:>5} {u:>12.2f} {r:>10.2f} {tr:>8.2f} {(time.perf_counter() - start) / step:>6.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
