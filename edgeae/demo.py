"""`edgeae demo`: the main job on embedded data, stage by stage: train, export, encode/decode, profile, evaluate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class DemoConfig:
    out: Path = Path("demo-out")
    bundle: Path = Path("export") / "demo-digits-conv"
    epochs: int = 60
    family: str = "conv"
    echo: Callable[[str], None] = print


def run_demo(cfg: DemoConfig) -> dict[str, Path]:
    """Train the seed-003 conv AE on scikit-learn's digits, export it with int8, then exercise the runtime."""
    t0 = time.perf_counter()
    run = _train(cfg)
    bundle = _export(cfg, run)
    for stage in (_codec_stage, _profile_stage, _eval_stage):
        stage(cfg, bundle)
    cfg.echo(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    return {"run": run, "bundle": bundle}


def _heading(cfg: DemoConfig, text: str) -> None:
    cfg.echo(f"\n== {text}")


def _train(cfg: DemoConfig) -> Path:
    from edgeae.train.trainer import TrainConfig, train

    _heading(cfg, f"1. train the seed-003 {cfg.family} autoencoder on scikit-learn's digits (8x8, 1,797 images)")
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

    _heading(cfg, "2. export: encoder.onnx + decoder.onnx, int8 twins, verified against PyTorch")
    res = export_run(run, ExportOptions(out=cfg.bundle, int8=True, force=True))
    cfg.echo(f"bundle: {res.path}")
    cfg.echo(summarize(res.manifest))
    return res.path


def _validation_images(bundle: Path) -> np.ndarray:
    """The demo's validation split as uint8 (N, H, W), rebuilt from the run's data spec."""
    from edgeae.runtime.summary import load_summary_manifest
    from edgeae.train.data import DataSpec, load_dataset
    from edgeae.train.rundir import read_json

    run_dir = Path(load_summary_manifest(bundle)["source"]["run_dir"])
    data = load_dataset(DataSpec.from_dict(read_json(run_dir / "config.json")["data"]))
    return np.clip(np.round(data.val[:, 0] * 255), 0, 255).astype(np.uint8)


def _codec_stage(cfg: DemoConfig, bundle: Path) -> None:
    pass


def _profile_stage(cfg: DemoConfig, bundle: Path) -> None:
    from edgeae.profiling.engine import quick_profile

    _heading(cfg, "4. profile on this host: fp32 vs int8, batch 1, 1 thread, vs PyTorch eager and JPEG")
    cfg.echo(quick_profile(bundle))


def _eval_stage(cfg: DemoConfig, bundle: Path) -> None:
    pass
