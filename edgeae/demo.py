"""`edgeae demo`: the main job on embedded data, stage by stage: train, export, encode/decode, profile, evaluate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QUICK = {"epochs": 3, "codec_epochs": 3, "family_bits": (4,), "codec_lambdas": (0.005, 0.08),
         "profile_seconds": 0.02}  # --quick: every stage runs, in seconds; the figures mean nothing
ANOMALIES = 8  # inverted validation digits written for `edgeae score`
PHOTO_CODEC = "photo:3"  # the zoo's pretrained photo codec (edgeae.zoo), when the package ships it


@dataclass
class DemoConfig:
    out: Path = Path("demo-out")
    bundle: Path = Path("export") / "demo-digits-conv"
    epochs: int = 60
    family_bits: tuple[int, ...] = (2, 3, 4, 6)  # extra latent bit depths: the RD curve behind the BD-rates
    family: str = "conv"
    # The learned codec (Balle-style, factorized prior) at three rate-distortion trade-offs: its own RD curve.
    codec_lambdas: tuple[float, ...] = (0.005, 0.02, 0.08)
    codec_epochs: int = 80
    profile_seconds: float = 0.3  # per profiled configuration
    echo: Callable[[str], None] = print

    @classmethod
    def quick(cls, **kw) -> DemoConfig:
        """Every stage at the smallest sizes (tests, a first look); the numbers it prints mean nothing."""
        return cls(**{**QUICK, **kw})


def run_demo(cfg: DemoConfig) -> dict[str, Path]:
    """Train the seed-003 conv AE on scikit-learn's digits, export it with int8, then exercise the runtime."""
    import edgeae.bundling.build  # noqa: F401  (the [train] extra: a missing one fails before anything prints)
    import edgeae.train.trainer  # noqa: F401

    t0 = time.perf_counter()

    def heading(text: str) -> None:
        cfg.echo(f"\n== {text}   [t={time.perf_counter() - t0:.0f}s]")

    heading(f"1. train the seed-003 {cfg.family} autoencoder on scikit-learn's digits (8x8, 1,797 images)")
    run = _train(cfg)
    heading("2. export: encoder.onnx + decoder.onnx, int8 twins, verified against PyTorch")
    bundle = _export(cfg, run)
    family = _export_family(cfg, run)
    heading("2b. train the learned codec (strided convs, learned per-channel prior) at lambda "
            + ", ".join(map(str, cfg.codec_lambdas)))
    codecs = _codec_family(cfg)
    images = _validation_images(bundle)
    _write_images(cfg, images)
    heading(f"3. encode {len(images)} validation images on the torch-free runtime, decode them, compare with "
            "JPEG/WebP")
    ev = _codec_stage(cfg, bundle, family, codecs, images)
    heading("4. profile on this host: fp32 vs int8, batch 1, 1 thread, vs PyTorch eager and JPEG")
    _profile_stage(cfg, bundle)
    heading("5. rate-distortion vs JPEG / WebP / PNG (BD-rate over the overlapping PSNR range)")
    report = _eval_stage(cfg, ev, images)
    photo = None
    if _pretrained(PHOTO_CODEC):
        heading(f"6. the pretrained photo codec ({PHOTO_CODEC}, shipped in the package) on a 512x512 photograph vs "
                "JPEG / WebP at the same size")
        photo = _photo_stage(cfg)
    cfg.echo(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    return {"run": run, "bundle": bundle, "report": report, "images": cfg.out / "images",
            "anomalies": cfg.out / "anomalies", **({"photo": photo} if photo else {})}


def _train(cfg: DemoConfig) -> Path:
    from edgeae.train.trainer import TrainConfig, train

    res = train(cfg.family, "digits", cfg.out / cfg.bundle.name, {"loss": "bce"},
                TrainConfig(epochs=cfg.epochs, batch_size=32, lr=3e-3, progress=False), overwrite=True)
    hist, final = res.metrics["history"], res.metrics["final"]
    cfg.echo(f"{'epoch':>6} {'train loss':>11} {'val loss':>9} {'val PSNR':>9}")
    shown = hist[:: max(1, len(hist) // 6)]
    for h in shown + ([hist[-1]] if shown[-1] is not hist[-1] else []):
        cfg.echo(f"{h['epoch']:>6} {h['train_loss']:>11.4f} {h['val_loss']:>9.4f} {h['val_psnr']:>8.2f}")
    secs = sum(h["seconds"] for h in hist)
    cfg.echo(f"validation BCE {final['bce']:.4f}, PSNR {final['psnr']:.2f} dB, {secs:.1f} s of training")
    cfg.echo(f"run directory: {res.path}   reconstruction grid: {res.path / 'reconstructions.png'}")
    return res.path


def _export(cfg: DemoConfig, run: Path) -> Path:
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.runtime.summary import summarize

    res = export_run(run, ExportOptions(out=cfg.bundle, int8=True, force=True))
    cfg.echo(f"bundle: {res.path}")
    cfg.echo(summarize(res.manifest))
    return res.path


def _export_family(cfg: DemoConfig, run: Path) -> list[Path]:
    from edgeae.bundling.build import ExportOptions, export_run

    bits = ", ".join(map(str, cfg.family_bits))
    cfg.echo(f"\nsame run exported at {bits} latent bits too (fp32), for a rate-distortion curve")
    return [export_run(run, ExportOptions(out=cfg.out / "bundles" / f"{cfg.bundle.name}-b{b}", latent_bits=b,
                                          force=True, measure_speed=False)).path for b in cfg.family_bits]


def _codec_family(cfg: DemoConfig) -> list[Path]:
    """Train and export the `codec` family at each lambda (same digits split): bundles for the RD curve."""
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.train.trainer import TrainConfig, train

    cfg.echo(f"{'lambda':>7} {'val PSNR':>9} {'model bpp':>10} {'seconds':>8}")
    bundles = []
    for lam in cfg.codec_lambdas:
        res = train("codec", "digits", cfg.out / "runs" / f"codec-l{lam}",
                    {"lmbda": lam, "channels": 32, "latent_channels": 8, "downsamplings": 1},
                    TrainConfig(epochs=cfg.codec_epochs, batch_size=32, lr=3e-3, lr_decay="cosine", progress=False),
                    overwrite=True)
        final, secs = res.metrics["final"], sum(h["seconds"] for h in res.metrics["history"])
        cfg.echo(f"{lam:>7} {final['psnr']:>9.2f} {final['bpp']:>10.2f} {secs:>8.1f}")
        bundles.append(export_run(res.path, ExportOptions(out=cfg.out / "bundles" / f"codec-l{lam}", force=True,
                                                          measure_speed=False)).path)
    return bundles


def _validation_images(bundle: Path) -> np.ndarray:
    """The demo's validation split as uint8 (N, H, W), rebuilt from the run's data spec."""
    from edgeae.runtime.summary import load_summary_manifest
    from edgeae.train.data import DataSpec, load_dataset
    from edgeae.train.rundir import read_json

    run_dir = Path(load_summary_manifest(bundle)["source"]["run_dir"])
    data = load_dataset(DataSpec.from_dict(read_json(run_dir / "config.json")["data"]))
    return np.clip(np.round(data.val[:, 0] * 255), 0, 255).astype(np.uint8)


def _write_images(cfg: DemoConfig, images: np.ndarray) -> None:
    """The validation digits as PNG files (what a device camera would hand over), and a few inverted ones
    (white strokes on black turned black on white: unlike anything the model was trained on) for `edgeae score`."""
    from edgeae.fsutil import write_atomic
    from edgeae.runtime.images import png_bytes

    for i, image in enumerate(images):
        write_atomic(cfg.out / "images" / f"validation-{i:04d}.png", png_bytes(image))
    for i, image in enumerate(images[:ANOMALIES]):
        write_atomic(cfg.out / "anomalies" / f"inverted-{i:04d}.png", png_bytes(255 - image))
    cfg.echo(f"wrote {len(images)} validation images to {cfg.out / 'images'} and {ANOMALIES} inverted ones to "
             f"{cfg.out / 'anomalies'} (PNG)")


def _codec_stage(cfg: DemoConfig, bundle: Path, family: list[Path], codecs: list[Path], images: np.ndarray):
    from edgeae.evaluate.rd import evaluate
    from edgeae.fsutil import write_atomic
    from edgeae.runtime import Encoder

    n, h, w = images.shape
    # One evaluation serves this table and the report: every bundle through the runtime's Encoder/Decoder
    # (one payload per image) and every JPEG/WebP quality, on the same images.
    ev = evaluate([bundle, *family, *codecs], images, labels=["conv"] * (1 + len(family)) + ["codec"] * len(codecs),
                  progress=False, keep=6)
    main = next(p for p in ev.points if p.codec == "edgeae" and p.setting == bundle.name and p.precision == "fp32")
    ours = main.mean_psnr
    batch = Encoder(bundle).encode(images)
    path = write_atomic(cfg.out / "validation.eae", batch)
    rows = [("edgeae conv (1 payload/img)", main.mean_bytes, ours), ("edgeae conv (1 batch)", len(batch) / n, ours)]
    rows += [(f"edgeae codec {p.setting}", p.mean_bytes, p.mean_psnr) for p in ev.points
             if p.curve.startswith("codec") and p.precision == "fp32"]
    for codec in ("jpeg", "webp"):
        pts = [p for p in ev.points if p.codec == codec]
        best = min(pts, key=lambda p: abs(p.mean_psnr - ours))
        rows.append((f"{codec} {best.setting} (closest PSNR)", best.mean_bytes, best.mean_psnr))
    cfg.echo(f"{'codec':<34} {'bytes/img':>9} {'bpp':>6} {'PSNR dB':>8}")
    for name, size, quality in rows:
        cfg.echo(f"{name:<34} {size:>9.1f} {8 * size / (h * w):>6.2f} {quality:>8.2f}")
    cfg.echo(f"batch payload written to {path} (`edgeae inspect {path}` shows its header)")
    return ev


def _profile_stage(cfg: DemoConfig, bundle: Path) -> None:
    from edgeae.profiling.engine import quick_profile

    cfg.echo(quick_profile(bundle, seconds=cfg.profile_seconds))


def _eval_stage(cfg: DemoConfig, ev, images: np.ndarray) -> Path:
    from edgeae.evaluate.report import write_report

    cfg.echo(f"{'curve':<16} {'setting':<22} {'bytes':>7} {'bpp':>6} {'PSNR':>6}")
    for p in ev.points:
        if p.codec not in ("jpeg", "webp") or p.setting in ("q=1", "q=20", "q=50", "q=90"):
            cfg.echo(f"{p.curve:<16} {p.setting:<22} {p.mean_bytes:>7.1f} {p.mean_bpp:>6.2f} {p.mean_psnr:>6.2f}")
    for c in ev.comparisons:
        cfg.echo(f"BD-rate {c.curve} vs {c.codec}: {c.bd_rate}")
    report = write_report(ev, cfg.out / "report", images)
    cfg.echo(f"report: {report} (with rd.png, grid.png, rd.json beside it)")
    return report


def _pretrained(name: str) -> bool:
    from edgeae.zoo import pretrained

    return any(r["name"] == name for r in pretrained())


def _photo_stage(cfg: DemoConfig) -> Path:
    """scikit-image's astronaut (not in the codec's training set), coded by the pretrained codec; JPEG and WebP
    at their best quality that fits the same number of bytes."""
    import skimage.data

    from edgeae.zoo.compare import compare_at_budget

    path = cfg.out / "photo" / "compare.png"
    r = compare_at_budget(skimage.data.astronaut(), PHOTO_CODEC, out=path, precision="int8")
    h, w = r["size"]
    cfg.echo(f"budget: {r['budget_bytes']} bytes for {h}x{w} RGB")
    cfg.echo(f"{'codec':<8} {'setting':<22} {'bytes':>7} {'bpp':>6} {'PSNR dB':>8} {'MS-SSIM':>8}")
    for codec, row in r["codecs"].items():
        ms = row.get("ms_ssim")
        cfg.echo(f"{codec:<8} {row['setting']:<22} {row['bytes']:>7} {row['bpp']:>6.3f} {row['psnr']:>8.2f} "
                 f"{'-' if ms is None else f'{ms:.4f}':>8}")
    cfg.echo(f"side by side: {path}")
    return path
