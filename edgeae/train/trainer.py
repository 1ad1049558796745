"""The training loop: Adam, per-family loss, optional denoising and early stopping, a run directory at the end."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeae import __version__
from edgeae.train.data import Dataset, DataSpec, load_dataset
from edgeae.train.models import AutoEncoder, build_model, make_config
from edgeae.train.rundir import CONFIG, GRID, METRICS, WEIGHTS, AtomicDir, save_grid, write_json


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    denoise_std: float = 0.0  # > 0: Gaussian noise on the input, clean target (denoising AE)
    patience: int | None = None  # early stopping on validation loss
    max_steps: int | None = None  # cap on optimiser steps (tests, quick runs)
    lr_decay: str = "none"  # "cosine": every group's lr falls to 1% of its start over the planned steps
    progress: bool = True


@dataclass
class RunResult:
    path: Path
    model: AutoEncoder
    metrics: dict[str, Any]


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def evaluate(model: AutoEncoder, images: np.ndarray, batch_size: int = 512) -> dict[str, float]:
    """Validation loss terms, MSE, BCE and mean per-image PSNR (on the [0, 1] scale)."""
    model.eval()
    sums: dict[str, float] = {}
    psnrs, n = [], 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size])
            out = model(x)
            lo = model.loss(out, x)
            terms = {"loss": float(lo.total), **lo.terms}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * len(x)
            err = (out.x_hat - x).pow(2).flatten(1).mean(1)
            bce = torch.nn.functional.binary_cross_entropy(out.x_hat.clamp(1e-6, 1 - 1e-6), x, reduction="sum")
            sums["mse"] = sums.get("mse", 0.0) + float(err.sum())
            sums["bce"] = sums.get("bce", 0.0) + float(bce) / x[0].numel()
            psnrs.append(10 * torch.log10(1.0 / err.clamp_min(1e-10)))
            n += len(x)
    out_metrics = {k: v / n for k, v in sums.items()}
    out_metrics["psnr"] = float(torch.cat(psnrs).mean())
    return out_metrics


def _optimizer(model: AutoEncoder, lr: float) -> torch.optim.Optimizer:
    # A family may ask for its own parameter groups (the learned codec trains its entropy model apart).
    hook = getattr(model, "configure_optimizer", None)
    return hook(lr) if hook else torch.optim.Adam(model.parameters(), lr=lr)


def fit(model: AutoEncoder, data: Dataset, cfg: TrainConfig) -> dict[str, Any]:
    """Train in place; returns per-epoch history and the final validation metrics."""
    gen = seed_everything(cfg.seed)
    opt = _optimizer(model, cfg.lr)
    train = torch.from_numpy(data.train)
    history: list[dict[str, Any]] = []
    best, bad_epochs, steps = math.inf, 0, 0
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    schedule = _schedule(opt, cfg, cfg.epochs * steps_per_epoch)
    progress = _progress(cfg.progress)
    with progress:
        task = progress.add_task("train", total=cfg.epochs * steps_per_epoch, loss=float("nan"))
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0, running, seen = time.perf_counter(), 0.0, 0
            for idx in torch.randperm(len(train), generator=gen).split(cfg.batch_size):
                target = train[idx]
                x = target
                if cfg.denoise_std > 0:
                    x = (target + cfg.denoise_std * torch.randn(target.shape, generator=gen)).clamp(0, 1)
                loss = model.loss(model(x), target).total
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if schedule is not None:
                    schedule.step()
                running, seen, steps = running + float(loss.detach()) * len(idx), seen + len(idx), steps + 1
                progress.update(task, advance=1, loss=running / seen, description=f"epoch {epoch}/{cfg.epochs}")
                if cfg.max_steps and steps >= cfg.max_steps:
                    break
            val = evaluate(model, data.val)
            history.append({"epoch": epoch, "train_loss": running / max(seen, 1), "val_loss": val["loss"],
                            "val_psnr": val["psnr"], "seconds": time.perf_counter() - t0})
            if cfg.progress:
                progress.console.print(
                    f"epoch {epoch:3d}  train {running / max(seen, 1):.4f}  val {val['loss']:.4f}  "
                    f"PSNR {val['psnr']:.2f} dB  {history[-1]['seconds']:.1f}s"
                )
            if val["loss"] < best - 1e-6:
                best, bad_epochs = val["loss"], 0
            else:
                bad_epochs += 1
            if (cfg.patience and bad_epochs >= cfg.patience) or (cfg.max_steps and steps >= cfg.max_steps):
                break
    return {"history": history, "final": evaluate(model, data.val), "steps": steps}


LR_DECAYS = ("none", "cosine")


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, planned_steps: int):
    """Per-step learning-rate schedule. Cosine decay to 1% helps the rate-distortion codecs most: the
    last low-lr epochs tighten both the transforms and the learned prior."""
    if cfg.lr_decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {', '.join(LR_DECAYS)}, got {cfg.lr_decay!r}")
    if cfg.lr_decay == "none":
        return None
    total = max(1, min(planned_steps, cfg.max_steps or planned_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(), disable=not enabled, transient=True,
    )


def train(
    family: str,
    data: DataSpec | Dataset | str,
    out: str | Path,
    model_options: dict[str, Any] | None = None,
    cfg: TrainConfig | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Train a model family on a dataset and write a run directory (atomically) at `out`."""
    cfg = cfg or TrainConfig()
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    target = AtomicDir(out, overwrite=overwrite)
    seed_everything(cfg.seed)
    model = build_model(family, make_config(family, in_shape=dataset.shape, **(model_options or {})))
    result = fit(model, dataset, cfg)
    config = {
        "edgeae": __version__,
        "model": {"family": family, "config": model.config.to_dict()},
        "data": {**dataset.spec.to_dict(), "channel_order": dataset.channel_order},
        "train": asdict(cfg),
        "latent_shape": list(model.latent_shape),
    }
    metrics = {**result, "summary": model.summary()}
    from safetensors.torch import save_file

    with target as tmp:
        write_json(tmp / CONFIG, config)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
        write_json(tmp / METRICS, metrics)
        n = min(10, len(dataset.val))
        with torch.no_grad():
            recon = model(torch.from_numpy(dataset.val[:n])).x_hat.numpy()
        save_grid(tmp / GRID, dataset.val[:n], recon)
    return RunResult(path=target.target, model=model, metrics=metrics)
