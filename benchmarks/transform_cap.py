"""What caps a codec's curve: the rate, or the transforms? Per quality of a trained codec run, the PSNR of
g_s(round(y)) (what the codec sends) beside g_s(y) (no rounding at all, every latent exact) on centre crops of a
folder. When the two meet at the top qualities, more bits cannot buy quality: the transforms cap it.

    python benchmarks/transform_cap.py runs/gpu/bvrA [--val ../shared/data/photos/val] [--crop 256]

Session 14 (docs/MODELS.md), checkpoints/bvr-s14's run: rounded 26.18 .. 28.52 dB, unrounded 28.63 dB at every
quality, where WebP reaches 34.2 dB at 1.38 bpp.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from edgeae.train.data import _at_least, _centre_crop, read_image_folder
    from edgeae.train.rundir import load_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--val", type=Path, default=Path("../shared/data/photos/val"))
    ap.add_argument("--crop", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = load_run(a.run).model.eval()
    images = read_image_folder(a.val, "RGB")
    x = torch.from_numpy(np.stack([_centre_crop(_at_least(v, a.crop), a.crop) for v in images]).astype(np.float32)
                         / 255.0)

    def psnr(rec: torch.Tensor) -> float:
        return float((10 * torch.log10(1 / ((rec - x) ** 2).mean(dim=(1, 2, 3)))).mean())

    points = model.operating_points() if hasattr(model, "operating_points") else 1
    print(f"{a.run}: {len(x)} crops of {a.crop}x{a.crop} from {a.val}")
    print(f"{'quality':>7} {'rounded dB':>10} {'unrounded dB':>12} {'max |y|':>8}")
    with torch.no_grad():
        for q in range(points):
            with model.at_quality(q) if points > 1 else contextlib.nullcontext():
                y = model.encoder(x)
                print(f"{q + 1:>7} {psnr(model.decoder(torch.round(y))):>10.2f} {psnr(model.decoder(y)):>12.2f} "
                      f"{float(y.abs().max()):>8.1f}")


if __name__ == "__main__":
    main()
