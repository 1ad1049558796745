"""Run directories: config.json + weights.safetensors + metrics.json + reconstructions.png; never pickle."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.errors import RunDirError
from edgeae.fsutil import read_json_bounded, write_atomic

CONFIG, WEIGHTS, METRICS, GRID = "config.json", "weights.safetensors", "metrics.json", "reconstructions.png"
# checkpoint/: the resumable state (edgeae.train.trainer writes and reads it)
CHECKPOINT = "checkpoint"
CKPT_MODEL, CKPT_TENSORS, CKPT_STATE = "model.safetensors", "state.safetensors", "state.json"
MAX_JSON_BYTES = 16 << 20


@dataclass
class LoadedRun:
    path: Path
    config: dict[str, Any]
    model: Any  # AutoEncoder, in eval mode
    metrics: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def family(self) -> str:
        return self.config["model"]["family"]


def read_json(path: Path) -> dict[str, Any]:
    return read_json_bounded(path, MAX_JSON_BYTES, RunDirError, hint="re-run `edgeae train`")


def own_steps(run: Path) -> int | None:
    """Steps a run itself trained (its metrics.json, else its checkpoint's; a run in progress: the latter)."""
    states = [read_json(f) for f in (run / METRICS, run / CHECKPOINT / CKPT_STATE) if f.is_file()]
    steps = [int(st["steps"]) for st in states if isinstance(st.get("steps"), int)]
    return max(steps) if steps else None


def lineage_steps(init: dict[str, Any] | None, depth: int = 64) -> int:
    """Steps behind a run's `--init` record (config.json "init"): the source's own steps plus everything
    behind its own init, followed through the run directories that still exist; a record that carries
    `total_steps` (written since 2026-12-03) or a source no longer on disk ends the walk with what it says."""
    if not init:
        return 0
    if isinstance(init.get("total_steps"), int):
        return int(init["total_steps"])
    own = int(init.get("steps") or 0)
    source = Path(str(init.get("run", "")))
    if depth <= 0 or not (source / CONFIG).is_file():
        return own
    return own + lineage_steps(read_json(source / CONFIG).get("init"), depth - 1)


def load_run(run_dir: str | os.PathLike[str]) -> LoadedRun:
    """Rebuild a trained model from its run directory, with a one-line error for anything missing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from edgeae.train.models import build_model, make_config

    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"run directory {str(path)!r} does not exist; train one with `edgeae train --out DIR`")
    missing = [f for f in (CONFIG, WEIGHTS) if not (path / f).is_file()]
    checkpoint_state = path / CHECKPOINT / CKPT_STATE
    if missing == [WEIGHTS] and checkpoint_state.is_file():
        steps = read_json(checkpoint_state).get("steps")
        raise RunDirError(f"run {path} has a checkpoint (step {steps}) but no final {WEIGHTS}: finish it with "
                          f"`edgeae train --resume {path}` (add `--max-steps {steps}` to end it where it is)")
    if missing:
        raise RunDirError(f"run directory {path} is incomplete: missing {', '.join(missing)}; re-run `edgeae train`")
    config = read_json(path / CONFIG)
    try:
        family, values = config["model"]["family"], config["model"]["config"]
        model = build_model(family, make_config(family, **values))
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path / CONFIG} does not describe a model ({exc}); re-run `edgeae train`") from None
    try:
        state = load_file(str(path / WEIGHTS))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise RunDirError(f"weights in {path / WEIGHTS} do not match config.json ({first})") from None
    model.eval()
    metrics = read_json(path / METRICS) if (path / METRICS).is_file() else {}
    return LoadedRun(path=path, config=config, model=model, metrics=metrics)


class AtomicDir:
    """Build a directory under a temporary name beside its target, rename it into place on success.

    A failure (an exception inside the `with`) removes the temporary directory: no half-written output.
    """

    def __init__(self, target: str | os.PathLike[str], overwrite: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        if self.target.exists() and not overwrite and any(self.target.iterdir()):
            raise RunDirError(f"{self.target} already exists and is not empty; choose another --out or pass --force")

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        os.chmod(self.tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Indented JSON, but lists of numbers on one line (entropy tables stay readable and small); atomic."""
    write_atomic(path, dumps(data) + "\n")


def dumps(data: Any, indent: int = 0) -> str:
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(data, dict) and data:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent + 1)}" for k, v in data.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(data, list) and data and not all(isinstance(v, (int, float, str, bool)) or v is None for v in data):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in data) + "\n" + pad + "]"
    return json.dumps(data, separators=(", ", ": "))


def save_grid(path: Path, originals: np.ndarray, recons: np.ndarray, scale: int = 0, title: str = "") -> None:
    """A titled PNG: originals on the row labelled "original", their reconstructions on the row below."""
    from PIL import Image, ImageDraw, ImageFont

    n, c, h, w = originals.shape
    scale = scale or max(1, 64 // max(h, w))
    pad = 2
    tiles = np.full((2 * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for r, imgs in enumerate((originals, recons)):
        for i in range(n):
            y, x = pad + r * (h + pad), pad + i * (w + pad)
            tile = np.clip(np.round(imgs[i].transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8)
            tiles[y : y + h, x : x + w] = tile if c == 3 else np.repeat(tile[..., :1], 3, axis=2)
    grid = Image.fromarray(tiles)
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    font = ImageFont.load_default()
    labels = ("original", "reconstruction")
    draw = ImageDraw.Draw(grid)
    label_w = max(int(draw.textlength(t, font=font)) for t in labels) + 12
    title_h = 22 if title else 4
    title = title or ""
    width = max(label_w + grid.width, int(draw.textlength(title, font=font)) + 12)
    canvas = Image.new("RGB", (width, title_h + grid.height), "white")
    canvas.paste(grid, (label_w, title_h))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 5), title, fill="black", font=font)
    row = grid.height / 2
    for r, text in enumerate(labels):
        draw.text((6, title_h + int(row * r + row / 2) - 6), text, fill="black", font=font)
    canvas.save(path)
