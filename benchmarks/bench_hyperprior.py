"""Hyperprior vs factorized codec on whole photographs, through real payloads; float vs integer hyper-decoder; speed.

The latest figure is session 13's five-point comparison at Balle et al.'s sizes (N=128, M=192): -21.4% over
25.45-27.00 dB, each pair left out in turn -19.6% to -25.3% (commands: docs/HYPERPRIOR.md, "Session 13"; with
`--anchors`, +10.2% vs JPEG and +73.6% vs WebP). Before it, session 11's five-point comparison at 64/128 (-8.7% over 25.27-26.89 dB; three points of it alone
give -14.1%, which one run 0.1 dB above its partner decides): its commands are in docs/HYPERPRIOR.md,
"Session 11" (this script or benchmarks/bench_encoder_search.py --mu "" --z-passes 0 measure it the same way).
A fresh gpu_pairs.sh comparison now trains those five lambdas. Session 12 asked one pair at Balle et al.'s
sizes first (benchmarks/bench_pair.py: -19.9% at lambda 0.013 against -5.9% at 64/128).

Session 8's three-point figures (docs/HYPERPRIOR.md: the factorized codec and the scale-only hyperprior,
each 5,000 steps on from the 30,500-step pairs of checkpoints/pairs-s8, images padded to y's stride; slim
checkpoints in checkpoints/pairs-s9, whose README says how to finish and export them; -14.1% BD-rate):

    LR=1e-4 STEPS=5000 INIT=checkpoints/pairs-s8 SEED=2 OUT=runs/p4 bash benchmarks/gpu_pairs.sh
    for r in runs/p4/*_0.0*; do edgeae export $r --int8 --out runs/p4-bundles/$(basename $r) --force; done
    OMP_NUM_THREADS=1 python benchmarks/bench_hyperprior.py \
        --hyper runs/p4-bundles/h_0.0035,runs/p4-bundles/h_0.007,runs/p4-bundles/h_0.013 \
        --codec runs/p4-bundles/c_0.0035,runs/p4-bundles/c_0.007,runs/p4-bundles/c_0.013

Session 7's figures (-13.0%, images padded to z's stride 64 by the bundles of then; -13.8% when the same
checkpoints are exported now): checkpoints/pairs-s8 itself, made by

    LR=1e-4 STEPS=8000 INIT=checkpoints/pairs-s7 SEED=1 OUT=runs/p3 bash benchmarks/gpu_pairs.sh
    STEPS=11000 OUT=runs/p3 bash benchmarks/gpu_pairs.sh

The mean-scale variant of session 7 (-10.8% after the first 8,000 steps): add HYPER_SET="--set qat=false
--set means=true --set hyper_signed=true" to session 7's first command.

Session 6's figures (-9.1%, scale-only hyperprior): the runs of checkpoints/pairs-s7 themselves, each finished
with `edgeae train --resume RUN --max-steps 19500` and exported and measured the same way.

Session 5's figures: the same after `STEPS=11500 OUT=runs/pairs bash benchmarks/gpu_pairs.sh` (all six at once on
2 cores; its checkpoints, checkpoints/pairs-s6, are in git history at 07598a6).

Session 3's recipe (each family trained the same way for the same 7,000 fp32 steps, one thread each):

    T="--dataset images --data ../shared/data/photos/train --val-data ../shared/data/photos/val --color rgb \
       --crop 320 --crops-per-image 1 --val-crop 256 --channels 64 --latent 128 --set downsamplings=4 \
       --batch-size 2 --lr 4e-4 --lr-decay cosine --epochs 100000 --max-steps 7000 --threads 1"
    for L in lo:0.0035 mid:0.007 hi:0.013; do
      edgeae train --model codec $T --lmbda ${L#*:} --out runs/c_${L%:*}
      edgeae train --model hyperprior $T --set qat=false --lmbda ${L#*:} --out runs/hq_${L%:*}
    done
    for r in c_lo c_mid c_hi hq_lo hq_mid hq_hi; do edgeae export runs/$r --int8 --out bundles/$r --force; done
    OMP_NUM_THREADS=1 python benchmarks/bench_hyperprior.py --hyper bundles/hq_lo,bundles/hq_mid,bundles/hq_hi \
        --codec bundles/c_lo,bundles/c_mid,bundles/c_hi --json bundles/bench_hyperprior.json

(About 55 minutes of training per run at 1 thread on a quiet core; 4 runs on 2 cores take 80. The scale-only
hyperprior trains its h_s in float, `qat=false`, and export integerises it; the earlier session's mean-scale runs,
h_lo_ms / h_hi_ms, went 1,161 / 1,222 steps scale-only with `qat` and then `--init ... --set means=true` for the
rest: docs/HYPERPRIOR.md has why neither QAT nor integer means are used now.)

Mean-scale (1/8-step means, docs/HYPERPRIOR.md; session 4 measured -0.4% against the factorized figures of
session 3, given as points since those bundles were not kept):

    edgeae train --model hyperprior $T --set qat=false --set means=true --set hyper_signed=true \
        --lmbda ${L#*:} --out runs/ms_${L%:*}                       # for each L as above, then export --int8
    OMP_NUM_THREADS=1 python benchmarks/bench_hyperprior.py --hyper bundles/ms_lo,bundles/ms_mid,bundles/ms_hi \
        --codec-points 0.2829:23.42,0.4465:23.65,0.6204:24.01

What it prints:
1. per bundle: mean bits per pixel (payload bytes * 8 / original pixels, headers included) and mean PSNR (RGB,
   uint8) over the whole validation photographs at their own size, fp32 encoder;
2. BD-rate of the hyperprior curve against the factorized one (negative = fewer bytes at equal PSNR);
3. per hyperprior run: bpp with the float hyper-decoder (PyTorch, no fake quantisation, continuous scales:
   ideal code length) vs the integer one (the numpy int64 reference's indices with the model's Gaussian
   integer tables, escapes included) vs the same with the manifest's tables (refit at export to the training
   crops' symbols) vs the real payloads;
4. speed at 1 thread on a 768x512 RGB photograph, fp32 and int8 encoder: the full Encoder.encode and its parts
   (bench_anysize.encode_breakdown): the bare encoder graph, the hyperprior's graphs (hyper-encoder + integer
   hyper-decoder) and the entropy coding proper, whose share of the encode the issue caps at 25%.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeae.bundling.hyper import y_tables  # noqa: E402
from edgeae.evaluate.bdrate import bd_rate  # noqa: E402
from edgeae.runtime import Encoder  # noqa: E402
from edgeae.runtime.entropy_models.hyperprior import tables_and_base  # noqa: E402
from edgeae.runtime.inthyper import IntHyperDecoder  # noqa: E402

SPEED_IMAGE = "set14_011.png"  # 768x512 RGB


def load_images(folder: Path) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    out = []
    for p in sorted(folder.glob("*.png")):
        with Image.open(p) as im:
            out.append((p.name, np.asarray(im.convert("RGB"), np.uint8)))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def rd_point(bundle: str, images: list[tuple[str, np.ndarray]], precision: str = "fp32") -> dict:
    """Every image in its own payload at its own size, 1 thread (edgeae.zoo.build.measure): mean bpp, PSNR, MS-SSIM."""
    from edgeae.zoo.build import measure

    m = measure(bundle, [img for _, img in images], precision, threads=1)
    return {"bundle": bundle, "precision": precision, "bpp": m["bpp"], "psnr": m["psnr"], "ms_ssim": m["ms_ssim"],
            "images": len(images)}


# --- float vs integer hyper-decoder (PyTorch side; the integer side is the runtime's numpy reference) ---


def code_lengths(rows: Sequence[Sequence[int]], precision: int) -> np.ndarray:
    """Bits of every symbol of every integer table (rows padded with +inf to the longest)."""
    out = np.full((len(rows), max(map(len, rows))), np.inf)
    for i, r in enumerate(rows):
        out[i, : len(r)] = precision - np.log2(np.asarray(r, np.float64))
    return out


def conditional_bits(values: np.ndarray, table: np.ndarray, lengths: np.ndarray, offsets: np.ndarray,
                     escape: np.ndarray) -> np.ndarray:
    """Ideal code length of each int value coded with its conditional table (conditional.ConditionalTables'
    layout): its symbol's bits, or the escape symbol's plus the zigzag varint the escape part carries."""
    v = np.asarray(values, np.int64)
    s = v - offsets[table]
    esc = escape[table]
    out = (s < 0) | (s >= esc)
    u = ((v << 1) ^ (v >> 63)).astype(np.uint64)
    varint = 1 + sum((u >= np.uint64(1 << (7 * k))).astype(np.int64) for k in range(1, 5))
    return lengths[table, np.where(out, esc, s)] + np.where(out, 8.0 * varint, 0.0)


def _code_bits(values: np.ndarray, index: np.ndarray, tables: list[dict]) -> float:
    """Ideal code length (bits) of int values under manifest tables ({"offset", "frequencies"}) with an escape."""
    rows = [t["frequencies"] for t in tables]
    lengths = code_lengths(rows, 0) + np.log2([sum(r) for r in rows])[:, None]  # -log2(f / total)
    offsets = np.array([int(t["offset"]) for t in tables], np.int64)
    escape = np.array([len(r) - 1 for r in rows], np.int64)
    return float(conditional_bits(values, np.asarray(index, np.int64), lengths, offsets, escape).sum())


def _cut(arrays: tuple, crop: tuple) -> tuple:
    """The top-left of y's own size of each index/mean array (None stays None), as the runtime keeps it."""
    return tuple(None if a is None else a[crop] for a in arrays)


def hyper_rates(bundle: str, images: list[tuple[str, np.ndarray]]) -> dict:
    """bpp of y and z: float hyper-decoder (ideal), integer hyper-decoder + integer tables (ideal code length)."""
    import torch

    from edgeae.train.models.hyperprior import gaussian_likelihood
    from edgeae.train.rundir import load_run

    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    run = load_run(manifest["source"]["run_dir"])
    model = run.model.eval()
    ent = manifest["entropy"]
    params = IntHyperDecoder.load(Path(bundle) / manifest["graphs"]["hyper_decoder"]["file"])
    gauss = y_tables(np.asarray(ent["y"]["scales"]), ent["precision"], phases=int(ent["y"].get("mean_phases", 1)))
    stride, zs = manifest["input"]["size_multiple"], ent["z"]["stride"]  # as the runtime pads: image, then y
    per_image: list[dict[str, float]] = []  # bits per pixel of each image, averaged per image as rd_point does
    tot = {"index_mismatch": 0, "index_total": 0}
    for _, img in images:
        bits: dict[str, float] = {}
        h, w = img.shape[:2]
        x = np.pad(img, ((0, -h % stride), (0, -w % stride), (0, 0)), mode="edge")
        xt = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
        with torch.no_grad():
            y = model.encoder(xt)
            hy, wy = y.shape[-2:]
            crop = (..., slice(0, hy), slice(0, wy))
            y_pad = torch.nn.functional.pad(y, (0, -wy % zs, 0, -hy % zs), mode="replicate")
            z_hat = torch.round(model.hyper_encoder(y_pad))
            y_hat = torch.round(y)

            model.h_s.set_fake_quant(True)  # the integer path's stand-in, whether or not it trained with qat
            idx_q, mean_q = _cut(model.scale_index_and_mean(z_hat, integer_like=True), crop)
            model.h_s.set_fake_quant(False)
            idx_f, mean_f = _cut(model.scale_index_and_mean(z_hat, integer_like=False), crop)
            model.h_s.set_fake_quant(model.config.qat)
            for key, idx, mean in (("y_float", idx_f, mean_f), ("y_fake_quant", idx_q, mean_q)):
                lik = gaussian_likelihood(y_hat if mean is None else y_hat - mean, model.scales_from_index(idx))
                bits[key] = float(-torch.log2(lik).sum())
        zi = z_hat.numpy().astype(np.int32)
        index, int_mean = _cut(params.decode(zi), crop)
        tot["index_mismatch"] += int((index != idx_q.numpy().astype(np.int32)).sum())
        tot["index_total"] += index.size
        table, base = tables_and_base(index, int_mean, int(ent["y"].get("mean_phases", 1)))
        yi = y_hat.numpy().astype(np.int64)
        if base is not None:  # mean-scale: the runtime codes round(y) - floor(mean) with the mean phase's table
            yi = yi - base
        bits["y_int"] = _code_bits(yi.reshape(-1), table.reshape(-1), ent["y"]["tables"])  # refit (export)
        bits["y_int_gauss"] = _code_bits(yi.reshape(-1), table.reshape(-1), gauss)  # the model's own Gaussians
        zc = np.repeat(np.arange(zi.shape[1]), zi.shape[2] * zi.shape[3])
        bits["z"] = _code_bits(zi.reshape(-1).astype(np.int64), zc, ent["z"]["tables"])
        per_image.append({k: v / (h * w) for k, v in bits.items()})
    bpp = {k: float(np.mean([p[k] for p in per_image])) for k in per_image[0]}
    return {"bundle": bundle, "bpp_z": bpp["z"], "bpp_y_float_hyper": bpp["y_float"],
            "bpp_y_fake_quant": bpp["y_fake_quant"], "bpp_y_integer_hyper": bpp["y_int"],
            "bpp_y_integer_gaussian_tables": bpp["y_int_gauss"], "bpp_total_integer_gaussian": bpp["z"] + bpp["y_int_gauss"],
            "bpp_total_float": bpp["z"] + bpp["y_float"], "bpp_total_integer": bpp["z"] + bpp["y_int"],
            "index_mismatch_vs_fake_quant": tot["index_mismatch"] / tot["index_total"]}


# --- speed ---


def speed(bundle: str, image: np.ndarray, repeats: int) -> dict:
    from bench_anysize import encode_breakdown  # the one timing split of Encoder.encode

    out: dict = {"bundle": bundle, "image": f"{image.shape[1]}x{image.shape[0]}"}
    for precision in ("fp32", "int8"):
        try:
            enc = Encoder(bundle, precision=precision, threads=1)
        except Exception as exc:  # a bundle exported without --int8
            out[precision] = f"unavailable: {exc}"
            continue
        out[precision] = encode_breakdown(enc, image, repeats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hyper", required=True, help="comma-separated hyperprior bundles (one per lambda)")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--codec", help="comma-separated factorized codec bundles (one per lambda)")
    group.add_argument("--codec-points", help="the factorized curve as bpp:psnr,... from an earlier run of this "
                       "benchmark on --codec bundles (same data), when those bundles are not at hand")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "photos" / "val"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--anchors", action="store_true", help="also the BD-rate of both curves against JPEG "
                    "(optimize=True) and WebP (method 6) quality sweeps on the same images (edgeae.zoo.build's)")
    ap.add_argument("--no-rates", action="store_true", help="skip the float vs integer hyper-decoder rates")
    a = ap.parse_args()
    images = load_images(Path(a.data))
    print(f"{len(images)} photographs from {a.data} (RGB, own sizes)")
    curves: dict[str, list[dict]] = {}
    if a.codec_points:
        pts = [tuple(float(v) for v in p.split(":")) for p in a.codec_points.split(",")]
        curves["codec"] = sorted(({"bundle": "(given)", "bpp": b, "psnr": q} for b, q in pts), key=lambda p: p["bpp"])
    for fam, arg in (("hyperprior", a.hyper), ("codec", a.codec)):
        if arg is None:
            print(f"  {fam:10s} given: " + ", ".join(f"bpp {p['bpp']:.4f} PSNR {p['psnr']:.2f} dB" for p in curves[fam]))
            continue
        curves[fam] = sorted((rd_point(b, images) for b in arg.split(",")), key=lambda p: p["bpp"])
        for p in curves[fam]:
            print(f"  {fam:10s} {Path(p['bundle']).name:22s} bpp {p['bpp']:.4f}  PSNR {p['psnr']:.2f} dB")
    r = bd_rate([p["bpp"] for p in curves["codec"]], [p["psnr"] for p in curves["codec"]],
                [p["bpp"] for p in curves["hyperprior"]], [p["psnr"] for p in curves["hyperprior"]])
    print(f"BD-rate hyperprior vs factorized (PSNR, pchip): {bd_spread(curves['codec'], curves['hyperprior'])}")
    anchors = classical_anchors([img for _, img in images], curves) if a.anchors else {}
    rates = [] if a.no_rates else [hyper_rates(b, images) for b in a.hyper.split(",")]
    for rr, p in zip(rates, curves_by_bundle(curves["hyperprior"], a.hyper.split(",")), strict=True):
        gi, ri = rr["bpp_total_integer_gaussian"], rr["bpp_total_integer"]
        print(f"  {Path(rr['bundle']).name}: bpp float hyper-decoder {rr['bpp_total_float']:.4f}  integer "
              f"{gi:.4f} ({(gi / rr['bpp_total_float'] - 1) * 100:+.2f}%)  integer with the refit tables "
              f"{ri:.4f} ({(ri / gi - 1) * 100:+.2f}%)  payload {p['bpp']:.4f}  (z {rr['bpp_z']:.4f}; y with the Gaussian at the float scales "
              f"{rr['bpp_y_float_hyper']:.4f} vs at the integer path's scales {rr['bpp_y_fake_quant']:.4f}; "
              f"index != fake-quant PyTorch on {rr['index_mismatch_vs_fake_quant']:.3%})")
    speed_img = dict(images).get(SPEED_IMAGE)
    speeds = []
    if speed_img is not None:
        for b in [a.hyper.split(",")[-1]] + ([a.codec.split(",")[-1]] if a.codec else []):
            s = speed(b, speed_img, a.repeats)
            speeds.append(s)
            for prec in ("fp32", "int8"):
                v = s[prec]
                if isinstance(v, dict):
                    print(f"  speed {Path(b).name} {prec} {s['image']}: Encoder.encode {v['encode_ms']:.1f} ms = "
                          f"encoder graph {v['graph_ms']:.1f} + hyper graphs {v['hyper_ms']:.1f} + entropy coding "
                          f"{v['coding_ms']:.1f} + other {v['other_ms']:.1f} ms (entropy coding {v['coding_share']:.1%} of encode; target <= 25%)")
    if a.json:
        Path(a.json).write_text(json.dumps({"curves": curves, "bd_rate": r.to_dict(), "hyper_rates": rates,
                                            "speed": speeds, "anchors": anchors}, indent=2))


def classical_anchors(images: list[np.ndarray], curves: dict[str, list[dict]]) -> dict:
    """Each curve's BD-rate (PSNR and MS-SSIM) against JPEG and WebP sweeps of the same images."""
    from edgeae.zoo.build import JPEG_QUALITIES, WEBP_QUALITIES, bd_rates, classical_curve

    sweeps = {"jpeg": classical_curve(images, "jpeg", JPEG_QUALITIES),
              "webp": classical_curve(images, "webp", WEBP_QUALITIES)}
    out: dict = {"sweeps": sweeps}
    for fam, pts in curves.items():
        if any(p["bundle"] == "(given)" for p in pts):
            continue
        out[fam] = bd_rates(pts, sweeps)
        for anchor, v in out[fam].items():
            ms = "n/a" if v["ms_ssim"] is None else f"{100 * v['ms_ssim']:+.1f}%"
            ps = "n/a" if v["psnr"] is None else f"{100 * v['psnr']:+.1f}%"
            print(f"BD-rate {fam} vs {anchor}: PSNR {ps} over {v['psnr_overlap_db']}; MS-SSIM {ms}")
    return out


def bd_spread(ref: list[dict], test: list[dict]) -> str:
    """BD-rate (PSNR, pchip) of test vs ref, and the same with each pair of points left out in turn (curves of
    equal length, sorted by bpp): how much one run decides it (docs/HYPERPRIOR.md, "Session 11")."""
    def bd(r: list[dict], t: list[dict]) -> str:
        return str(bd_rate([p["bpp"] for p in r], [p["psnr"] for p in r], [p["bpp"] for p in t],
                           [p["psnr"] for p in t]))

    out = bd(ref, test)
    if len(ref) == len(test) >= 3:
        r, t = sorted(ref, key=lambda p: p["bpp"]), sorted(test, key=lambda p: p["bpp"])
        out += " (leaving out pair 1.." + str(len(r)) + ": " + ", ".join(
            bd(r[:i] + r[i + 1:], t[:i] + t[i + 1:]) for i in range(len(r))) + ")"
    return out


def curves_by_bundle(points: list[dict], order: list[str]) -> list[dict]:
    by = {p["bundle"]: p for p in points}
    return [by[b] for b in order]


if __name__ == "__main__":
    main()
