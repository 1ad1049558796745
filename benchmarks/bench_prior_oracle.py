"""How much could a scale hyperprior save on a trained codec's latents? Oracle bounds, no side information paid.

For each run (a `codec` run, or any run whose model has `encoder` and a factorized `prior` of y), on whole
photographs at their own size (cropped down to a multiple of 8 latents), it prints bits per pixel of round(y)
under:
  * the run's own factorized prior (what its payloads pay, headers aside); for a hyperprior run, its own y
    under its h_s's scales (and means), float, plus z under z's prior;
  * the best zero-mean discretised Gaussian per channel (one scale per channel: a hyperprior whose z says nothing);
  * the best Gaussian scale of the hyperprior's 64-entry table chosen freely per channel and per BxB block of
    latents, B = 8, 4, 2, 1: an oracle hyperprior whose side information is free. B = 4 is the resolution of z
    (the hyper-latent is y downsampled 4x), so a real scale hyperprior lands near or above that row once z is paid
    for (its h_s may vary the scale inside a block, which is what the B = 2 and 1 rows bound).

This is what told session 3 of 2026-12-01 that training only a hyperprior on the factorized codec's frozen
transforms cannot reach issue 14's -15%: on the 19 photos/val images, `c_lo` (lambda 0.0035, 7,000 steps) pays
0.2685 bpp factorized, one Gaussian per channel +13.0%, the B = 4 oracle -3.6% (B = 2: -13.1%, B = 1: -31.2%);
`c_hi` (0.013): 0.6006, +12.0%, -4.7% (-14.8%, -34.3%). The transforms have to learn latents the Gaussian fits.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_prior_oracle.py runs/c_lo runs/c_hi
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_hyperprior import load_images  # noqa: E402


def oracle_rates(run_dir: str, images: list[tuple[str, np.ndarray]], blocks: tuple[int, ...] = (8, 4, 2, 1),
                 levels: int = 64, scale_min: float = 0.11, scale_max: float = 64.0) -> dict:
    import torch

    from edgeae.train.models.hyperprior import gaussian_likelihood, scale_table
    from edgeae.train.rundir import load_run

    model = load_run(run_dir).model.eval()
    scales = torch.from_numpy(scale_table(levels, scale_min, scale_max).astype(np.float32))
    stride = 8 * 2 ** int(model.config.downsamplings)  # whole 8x8 blocks of latents (y's stride, not z's)
    hyper = hasattr(model, "hyper_encoder")  # a hyperprior run: its own y (h_s's scales, float) and z
    bits = {"own": 0.0, **({"z": 0.0} if hyper else {}), "per_channel": 0.0, **{f"block_{b}": 0.0 for b in blocks}}
    pixels = 0
    channel_cost = None
    with torch.no_grad():
        for _, img in images:
            h, w = img.shape[0] // stride * stride, img.shape[1] // stride * stride
            x = torch.from_numpy(img[:h, :w].transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
            r = torch.round(model.encoder(x))[0]
            pixels += h * w
            if hyper:
                z_hat = torch.round(model.hyper_encoder(r[None]))
                index, mean = model.scale_index_and_mean(z_hat, integer_like=False)
                y_lik = gaussian_likelihood(r[None] if mean is None else r[None] - mean, model.scales_from_index(index))
                bits["own"] += float(-torch.log2(y_lik).sum())
                bits["z"] += float(-torch.log2(model.prior.likelihood(z_hat)).sum())
            else:
                bits["own"] += float(-torch.log2(model.prior.likelihood(r[None])).sum())
            m, hy, wy = r.shape
            cost = torch.stack([-torch.log2(gaussian_likelihood(r, s.expand_as(r))) for s in scales])  # (K, M, h, w)
            per_channel = cost.sum(dim=(2, 3))
            channel_cost = per_channel if channel_cost is None else channel_cost + per_channel
            for b in blocks:
                blocked = cost.reshape(len(scales), m, hy // b, b, wy // b, b).sum(dim=(3, 5))
                bits[f"block_{b}"] += float(blocked.min(dim=0).values.sum())
    assert channel_cost is not None
    bits["per_channel"] = float(channel_cost.min(dim=0).values.sum())  # one scale per channel over all images
    return {"run": run_dir, "pixels": pixels, **{k: v / pixels for k, v in bits.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="codec run directories (a hyperprior run: its own y and z bits "
                    "against the oracle rows on its own latents)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "photos" / "val"))
    a = ap.parse_args()
    images = load_images(Path(a.data))
    print(f"{len(images)} photographs from {a.data}; bpp of round(y), no headers, no side information")
    for run in a.runs:
        r = oracle_rates(run, images)
        f = r["own"]
        if "z" in r:  # the oracle rows are then relative to the hyperprior's own y (z apart)
            print(f"{Path(run).name}: the hyperprior's own y {f:.4f} + z {r['z']:.4f}")
        else:
            print(f"{Path(run).name}: factorized {f:.4f}")
        for key in [k for k in r if k.startswith(("per_channel", "block_"))]:
            print(f"  {key:12s} {r[key]:.4f}  ({(r[key] / f - 1) * 100:+.1f}% vs {'its own y' if 'z' in r else 'factorized'})")


if __name__ == "__main__":
    main()
