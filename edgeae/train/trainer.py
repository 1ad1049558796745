"""The training loop: Adam, per-family loss, optional denoising and early stopping, resumable checkpoints.

A run directory is written as training goes:

    RUN/config.json            at the start (model, data, training options: what --resume rebuilds from)
    RUN/checkpoint/            every --checkpoint-every steps / --checkpoint-minutes, at every epoch end and on
                               SIGINT/SIGTERM, replaced atomically (AtomicDir): model.safetensors, state.safetensors
                               (optimiser moments, torch RNG states), state.json (step, epoch, position in the
                               epoch, LR schedule, numpy/python RNG states, history, which device ran which steps)
    RUN/metrics.json, RUN/reconstructions.png, RUN/weights.safetensors   at the end (weights last: a run is
                               complete, for `load_run`, once it has them)

Resuming restores every random state as it was at the checkpoint (the epoch's crops and shuffle order are
redrawn from the states saved at the epoch's start), so an interrupted and resumed run takes exactly the
steps an uninterrupted one takes: on CPU with the same thread count the weights are bit-identical
(tests/test_train.py). No pickle anywhere: tensors in safetensors, the rest in JSON.
"""

from __future__ import annotations

import math
import os
import platform
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeae import __version__
from edgeae.errors import EdgeaeError, RunDirError
from edgeae.train.data import Dataset, DataSpec, load_dataset
from edgeae.train.models import AEOutput, AutoEncoder, build_model, make_config
from edgeae.train.rundir import (
    CHECKPOINT,
    CKPT_MODEL,
    CKPT_STATE,
    CKPT_TENSORS,
    CONFIG,
    GRID,
    METRICS,
    WEIGHTS,
    AtomicDir,
    lineage_steps,
    own_steps,
    read_json,
    save_grid,
    write_json,
)

CHECKPOINT_FORMAT = 1
MAX_THREADS_DEFAULT = 4
DEVICES = ("cpu", "cuda", "auto")
SYNC_EVERY = 20  # on a GPU, steps between reads of the running loss (each read waits for the GPU)
PRECISIONS = ("fp32", "bf16")


class TrainingInterrupted(EdgeaeError):
    """Training stopped early (SIGINT/SIGTERM or a planned stop) after writing a resumable checkpoint."""


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
    device: str = "cpu"  # "cpu", "cuda" or "auto" (cuda when available)
    threads: int | None = None  # torch intra-op threads on CPU; None: default_threads()
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: only by time and at epoch ends)
    checkpoint_minutes: float = 10.0  # checkpoint at least this often (wall clock; 0: off)
    precision: str = "fp32"  # "bf16": the forward pass under bfloat16 autocast (see `_autocast`)
    val_every: int = 1  # validate at the end of every this many epochs (and always when training ends)


@dataclass
class RunResult:
    path: Path
    model: AutoEncoder
    metrics: dict[str, Any]


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


# --- threads and devices ---

def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Intra-op threads when --threads is not given: OMP_NUM_THREADS if set, else the cores that are free.

    Free = the cores this process may use minus the 1-minute load average (other processes' runnable
    threads), capped at 4 (small convolutions gain little beyond that) and at least 1. Oversubscribing a busy
    machine costs far more than it gains: a second process's threads and ours preempt each other inside every
    parallel region (issue 17 saw a 20x slowdown with torch's default of one thread per core next to another
    job). On a quiet machine this is min(cores, 4).
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = available_cpus()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(MAX_THREADS_DEFAULT, cpus, int(cpus - busy + 0.5)))


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise EdgeaeError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise EdgeaeError(f"--device cuda: {why} (torch {torch.__version__}); train with --device cpu")
    return torch.device(name)


def cpu_bf16_native() -> bool | None:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16 in /proc/cpuinfo); None where unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """The training forward pass's autocast. bf16: convolutions and matmuls in bfloat16 (float32 weights,
    moments and accumulation); AMX/AVX-512-BF16 CPUs and CUDA GPUs run them several times faster (`edgeae
    train --precision bf16`; benchmarks/bench_train_precision.py measures the speed and the quality at equal
    steps). Families keep their entropy models and rates in float32 (models.base.full_precision); the loss
    is taken outside autocast. Validation and export always run in float32."""
    if cfg.precision not in PRECISIONS:
        raise EdgeaeError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """NHWC in memory for image batches: oneDNN/cuDNN convolutions are faster on it (the values are the same)."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _float32(out: AEOutput) -> AEOutput:
    """The model's outputs as float32 (what bf16 autocast left in bfloat16), so that losses see float32."""
    def f(t: torch.Tensor) -> torch.Tensor:
        return t.float() if t.is_floating_point() else t
    return AEOutput(x_hat=f(out.x_hat), latent=f(out.latent), extras={k: f(v) for k, v in out.extras.items()})


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- evaluation ---

def evaluate(model: AutoEncoder, images: np.ndarray, batch_size: int = 512,
             device: torch.device | None = None) -> dict[str, float]:
    """Validation loss terms, MSE, BCE and mean per-image PSNR (on the [0, 1] scale)."""
    model.eval()
    sums: dict[str, float] = {}
    psnrs, n = [], 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size])
            if device is not None:
                x = x.to(device)
            out = model(x)
            lo = model.loss(out, x)
            terms = {"loss": float(lo.total), **lo.terms}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * len(x)
            err = (out.x_hat - x).pow(2).flatten(1).mean(1)
            bce = torch.nn.functional.binary_cross_entropy(out.x_hat.clamp(1e-6, 1 - 1e-6), x, reduction="sum")
            sums["mse"] = sums.get("mse", 0.0) + float(err.sum())
            sums["bce"] = sums.get("bce", 0.0) + float(bce) / x[0].numel()
            psnrs.append(10 * torch.log10(1.0 / err.clamp_min(1e-10)).cpu())
            n += len(x)
    out_metrics = {k: v / n for k, v in sums.items()}
    out_metrics["psnr"] = float(torch.cat(psnrs).mean())
    return out_metrics


def _validate(model: AutoEncoder, images: np.ndarray, device: torch.device, batch: int) -> dict[str, Any]:
    """`evaluate`, plus one entry per operating point for families that have several (variable rate)."""
    points: Any = getattr(model, "operating_points", None)
    if not points:
        return evaluate(model, images, batch, device)
    per = []
    for q in range(points()):
        with getattr(model, "at_quality")(q):  # noqa: B009  (variable-rate families only)
            per.append(evaluate(model, images, batch, device))
    mean = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    return {**mean, "qualities": per}


def _optimizer(model: AutoEncoder, lr: float) -> torch.optim.Optimizer:
    # A family may ask for its own parameter groups (the learned codec trains its entropy model apart).
    hook = getattr(model, "configure_optimizer", None)
    return hook(lr) if hook else torch.optim.Adam(model.parameters(), lr=lr)


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


# --- progress ---

class _Progress:
    """Steps, loss, rate and ETA within an epoch: a rich bar on a terminal, a plain line every `every`
    seconds otherwise (logs of background runs), nothing when disabled."""

    def __init__(self, enabled: bool, total: int, done: int, every: float = 30.0) -> None:
        self.enabled, self.total, self.every = enabled, total, every
        self.start_done, self.t0, self.last = done, time.perf_counter(), time.perf_counter()
        self.bar = None
        if enabled:
            from rich.console import Console

            console = Console(stderr=True)
            if console.is_terminal:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )

                self.bar = Progress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True)
                self.task = self.bar.add_task("train", total=total, completed=done, loss=float("nan"), rate="")
            self.console = console

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, done: int, loss: float, epoch: int, epochs: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = (done - self.start_done) / max(now - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=done, loss=loss, rate=f"{rate:.2f} step/s",
                            description=f"epoch {epoch}/{epochs}")
        elif now - self.last >= self.every:
            self.last = now
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.print(f"epoch {epoch}/{epochs}  step {done}/{self.total}  loss {loss:.4f}  {rate:.2f} step/s  "
                       f"ETA {_duration(eta)}")

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(line)
        else:
            print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --- checkpoints ---

@dataclass
class _State:
    """Everything but tensors that a resumed run needs; saved as state.json."""

    steps: int = 0
    epoch: int = 1  # the epoch in progress (or next to start)
    batch: int = 0  # batches of `epoch` already taken
    running: float = 0.0
    seen: int = 0
    epoch_seconds: float = 0.0
    best: float = math.inf
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)  # which steps ran where
    epoch_crop_state: dict[str, Any] | None = None  # numpy crop generator at the start of `epoch`
    done: bool = False

    @property
    def seconds(self) -> float:
        return float(sum(d["seconds"] for d in self.devices))


OPTIM_PREFIX = "optim."  # Adam's moments among checkpoint/state.safetensors' tensors


def slim_tensors(tensors: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's state tensors (torch or numpy) without Adam's moments."""
    return {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}


def slim_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's state.json for slim_tensors' tensors: a resume re-estimates the moments from zero."""
    return {**meta, "optimizer": {**meta["optimizer"], "slim": True, "scalars": {}}}


def _opt_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{OPTIM_PREFIX}{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_opt_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    if meta.get("slim"):  # a slim checkpoint: the learning rates, no moments (Adam starts them afresh)
        groups = [{**g, "params": og["params"]} for g, og in zip(meta["param_groups"], opt.state_dict()["param_groups"],
                                                                   strict=True)]
        opt.load_state_dict({"state": {}, "param_groups": [{k: (tuple(v) if k == "betas" else v)
                                                            for k, v in g.items()} for g in groups]})
        return
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith(OPTIM_PREFIX):
            pid, name = key[len(OPTIM_PREFIX):].split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _save_checkpoint(run: Path, model: AutoEncoder, opt: torch.optim.Optimizer, schedule: Any,
                     gen: torch.Generator, epoch_gen_state: torch.Tensor, state: _State) -> None:
    from safetensors.torch import save_file

    tensors, opt_meta = _opt_state(opt)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = gen.get_state()
    tensors["rng.generator_epoch_start"] = epoch_gen_state
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state: Any = np.random.get_state()
    tensors["rng.numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], np.int64))
    py_state: Any = random.getstate()
    meta = {
        "format": CHECKPOINT_FORMAT, "edgeae": __version__, "torch": torch.__version__,
        **asdict(state), "best": state.best if math.isfinite(state.best) else None,
        "optimizer": opt_meta,
        "schedule": None if schedule is None else {k: v for k, v in schedule.state_dict().items()
                                                   if k != "lr_lambdas"},
        "rng": {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
                "python": [py_state[0], list(py_state[1]), py_state[2]]},
    }
    with AtomicDir(run / CHECKPOINT, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / CKPT_MODEL))
        save_file(tensors, str(tmp / CKPT_TENSORS))
        write_json(tmp / CKPT_STATE, meta)


def slim_checkpoint(run: str | Path, out: str | Path) -> Path:
    """A copy of `run` (config.json + checkpoint/) without Adam's moments: about a third of the size, to commit
    or ship. Resuming from it restores everything but the moments, which Adam re-estimates from zero, so the
    continuation is not bit-identical to the uninterrupted run (a short warm-up's worth of difference)."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(run), Path(out)
    ckpt = _checkpoint_dir(src)
    meta = read_json(ckpt / CKPT_STATE)
    tensors, meta = slim_tensors(load_file(str(ckpt / CKPT_TENSORS))), slim_meta(meta)
    with AtomicDir(dst, overwrite=True) as tmp:
        shutil.copy2(src / CONFIG, tmp / CONFIG)
        (tmp / CHECKPOINT).mkdir()
        shutil.copy2(ckpt / CKPT_MODEL, tmp / CHECKPOINT / CKPT_MODEL)
        save_file(tensors, str(tmp / CHECKPOINT / CKPT_TENSORS))
        write_json(tmp / CHECKPOINT / CKPT_STATE, meta)
    return dst


def _checkpoint_dir(run: Path) -> Path:
    ckpt = run / CHECKPOINT
    if (ckpt / CKPT_STATE).is_file():
        return ckpt
    # A crash between AtomicDir's two renames leaves the previous checkpoint under its aside name.
    aside = sorted(run.glob(f".{CHECKPOINT}.old-*"))
    if aside and (aside[-1] / CKPT_STATE).is_file():
        return aside[-1]
    raise RunDirError(f"{run} has no checkpoint to resume from ({CHECKPOINT}/{CKPT_STATE} is missing)")


def _load_checkpoint(run: Path, model: AutoEncoder, opt: torch.optim.Optimizer, schedule: Any,
                     gen: torch.Generator) -> tuple[_State, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt = _checkpoint_dir(run)
    meta = read_json(ckpt / CKPT_STATE)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{ckpt} has checkpoint format {meta.get('format')!r}; this edgeae reads "
                          f"{CHECKPOINT_FORMAT}")
    try:
        model.load_state_dict(load_file(str(ckpt / CKPT_MODEL)), strict=True)
        tensors = load_file(str(ckpt / CKPT_TENSORS))
        _load_opt_state(opt, tensors, meta["optimizer"])  # slim checkpoints: meta["optimizer"]["slim"]
    except (SafetensorError, RuntimeError, OSError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise RunDirError(f"checkpoint {ckpt} does not match the run's config.json ({first})") from None
    if schedule is not None and meta.get("schedule"):
        schedule.load_state_dict({**meta["schedule"], "lr_lambdas": [None] * len(opt.param_groups)})
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.generator"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = meta["rng"]["numpy"]
    np.random.set_state((name, tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    known = _State.__dataclass_fields__
    state = _State(**{k: v for k, v in meta.items() if k in known})
    state.best = math.inf if meta.get("best") is None else float(meta["best"])
    return state, tensors["rng.generator_epoch_start"]


class _StopSignal:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step and stops (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self.old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


# --- the loop ---

def fit(model: AutoEncoder, data: Dataset, cfg: TrainConfig, run: Path | None = None, resume: bool = False,
        stop_at_step: int | None = None) -> dict[str, Any]:
    """Train in place; returns per-epoch history and the final validation metrics.

    With `run`, checkpoints go to run/checkpoint (see the module docstring) and `resume` continues from the
    one there. `stop_at_step` checkpoints and raises TrainingInterrupted after that many steps (what a
    SIGTERM does; tests use it to interrupt a run at a known point)."""
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop shapes: let cuDNN pick each convolution's algorithm
    gen = seed_everything(cfg.seed)
    autocast = _autocast(cfg, device)
    if device.type == "cpu" and cfg.precision == "bf16" and cpu_bf16_native() is False:
        print("warning: this CPU has neither AMX nor AVX512-BF16, so bf16 is emulated: a Balle-sized step took "
              "13x as long as in fp32 on such a CPU (AMD EPYC, 2026-12-04); train with --precision fp32",
              file=sys.stderr)
    model.to(device)
    if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # 4-D weights; moments follow
    opt = _optimizer(model, cfg.lr)
    n_train = len(data.crops) if data.crops is not None else len(data.train)
    if cfg.val_every < 1:
        raise EdgeaeError(f"--val-every must be >= 1 (epochs between validations), got {cfg.val_every}")
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    planned = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        planned = min(planned, cfg.max_steps)
    schedule = _schedule(opt, cfg, cfg.epochs * steps_per_epoch)
    crop_rng = np.random.default_rng((cfg.seed, 1))
    fixed_train = torch.from_numpy(data.train) if data.crops is None else None
    sampler = data.crops  # crop mode: whole images, each batch cut from its rows
    if resume:
        if run is None:
            raise ValueError("resume needs the run directory")
        state, epoch_gen_state = _load_checkpoint(run, model, opt, schedule, gen)
        if state.epoch_crop_state is not None:
            crop_rng.bit_generator.state = state.epoch_crop_state
    else:
        state, epoch_gen_state = _State(), gen.get_state()
    segment = {"device": device.type, "name": _device_name(device), "host": platform.node(),
               "torch": torch.__version__, "threads": torch.get_num_threads() if device.type == "cpu" else None,
               "precision": cfg.precision,
               "first_step": state.steps + 1, "last_step": state.steps, "seconds": 0.0,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    state.devices.append(segment)
    seg_t0 = time.perf_counter()
    last_ckpt_time, last_ckpt_step = seg_t0, state.steps
    val_batch = max(1, min(512, cfg.batch_size * 4))

    def cut(idx: torch.Tensor, rows: np.ndarray | None) -> torch.Tensor:
        """One batch: rows of the fixed training set, or (crop mode) crops cut from the epoch's rows."""
        if rows is None:
            assert fixed_train is not None
            return fixed_train[idx]
        assert sampler is not None
        return sampler.gather(rows[idx.numpy()], device)

    pending = torch.zeros((), device=device)  # summed batch losses not yet in state.running (a GPU's, between syncs)

    def flush() -> None:
        nonlocal pending
        state.running += float(pending)
        pending = torch.zeros((), device=device)

    def checkpoint() -> None:
        nonlocal last_ckpt_time, last_ckpt_step
        flush()
        segment["seconds"] = time.perf_counter() - seg_t0
        segment["last_step"] = state.steps
        if run is not None:
            _save_checkpoint(run, model, opt, schedule, gen, epoch_gen_state, state)
        last_ckpt_time, last_ckpt_step = time.perf_counter(), state.steps

    def capped() -> bool:
        return bool(cfg.max_steps and state.steps >= cfg.max_steps)

    def finished() -> bool:
        return state.done or state.epoch > cfg.epochs or capped()

    last_val: dict[str, Any] | None = None  # the latest validation (training always ends on a validated epoch)

    def next_epoch(epoch: int) -> None:
        state.epoch, state.batch, state.running, state.seen, state.epoch_seconds = epoch + 1, 0, 0.0, 0, 0.0
        state.epoch_crop_state = dict(crop_rng.bit_generator.state)  # where the next epoch's draw starts
        if run is not None:
            checkpoint()

    with _StopSignal() as stop, _Progress(cfg.progress, planned, state.steps) as progress:
        while not finished():
            epoch = state.epoch
            if state.batch == 0:  # a fresh epoch: remember the random states that draw it
                epoch_gen_state = gen.get_state()
                state.epoch_crop_state = dict(crop_rng.bit_generator.state)
            else:  # resuming inside an epoch: redraw it from the states saved at its start
                assert state.epoch_crop_state is not None  # saved with every checkpoint inside an epoch
                crop_rng.bit_generator.state = state.epoch_crop_state
                now_state = gen.get_state()
                gen.set_state(epoch_gen_state)
            # crop mode: the epoch's crops as (image, top, left, flip) rows, each batch cut on the device
            rows = None if sampler is None else sampler.positions(crop_rng)
            batches = torch.randperm(n_train, generator=gen).split(cfg.batch_size)
            if state.batch:
                gen.set_state(now_state)
            model.train()
            t0 = time.perf_counter() - state.epoch_seconds
            for idx in batches[state.batch :]:
                target = cut(idx, rows)
                x = target
                if cfg.denoise_std > 0:
                    noise = torch.randn(target.shape, generator=gen).to(target.device)
                    x = (target + cfg.denoise_std * noise).clamp(0, 1)
                x, target = (_channels_last(t.to(device, non_blocking=True)) for t in (x, target))
                with autocast:
                    out = _float32(model(x))
                loss = model.loss(out, target).total
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if schedule is not None:
                    schedule.step()
                pending = pending + loss.detach() * len(idx)  # on the device: no wait for the GPU each step
                state.seen += len(idx)
                state.steps += 1
                if "warm_seconds" not in segment:  # the first step here (CUDA start, cuDNN's search): not the pace
                    segment["warm_seconds"] = time.perf_counter() - seg_t0
                state.batch += 1
                state.epoch_seconds = time.perf_counter() - t0
                if device.type == "cpu" or state.steps % SYNC_EVERY == 0:
                    flush()
                    progress.update(state.steps, state.running / state.seen, epoch, cfg.epochs)
                if capped():
                    break
                due = (cfg.checkpoint_every and state.steps - last_ckpt_step >= cfg.checkpoint_every) or (
                    cfg.checkpoint_minutes and time.perf_counter() - last_ckpt_time >= 60 * cfg.checkpoint_minutes)
                if stop.requested or (stop_at_step is not None and state.steps >= stop_at_step):
                    checkpoint()
                    raise TrainingInterrupted(
                        f"training stopped at step {state.steps} (epoch {epoch}); checkpoint in "
                        f"{run / CHECKPOINT if run else '(no run directory)'}; continue with "
                        f"`edgeae train --resume {run}`")
                if due and run is not None:
                    checkpoint()
            flush()
            if epoch % cfg.val_every and epoch < cfg.epochs and not capped():  # train loss only
                state.history.append({"epoch": epoch, "steps": state.steps, "seconds": time.perf_counter() - t0,
                                      "train_loss": state.running / max(state.seen, 1)})
                progress.print(f"epoch {epoch:3d}  step {state.steps}  train {state.history[-1]['train_loss']:.4f}")
                next_epoch(epoch)
                continue
            val = _validate(model, data.val, device, val_batch)
            last_val = val
            state.history.append({"epoch": epoch, "steps": state.steps,
                                  "train_loss": state.running / max(state.seen, 1), "val_loss": val["loss"],
                                  "val_psnr": val["psnr"], "seconds": time.perf_counter() - t0,
                                  **({"val_bpp": val["bpp"]} if "bpp" in val else {}),
                                  **({"val_qualities": [{k: q[k] for k in ("loss", "bpp", "psnr") if k in q}
                                                        for q in val["qualities"]]} if "qualities" in val else {})})
            h = state.history[-1]
            progress.print(f"epoch {epoch:3d}  step {state.steps}  train {h['train_loss']:.4f}  "
                           f"val {h['val_loss']:.4f}  PSNR {h['val_psnr']:.2f} dB"
                           + (f"  {h['val_bpp']:.3f} bpp" if "val_bpp" in h else "") + f"  {h['seconds']:.1f}s")
            if val["loss"] < state.best - 1e-6:
                state.best, state.bad_epochs = val["loss"], 0
            else:
                state.bad_epochs += 1
            if cfg.patience and state.bad_epochs >= cfg.patience:
                state.done = True
            next_epoch(epoch)
    checkpoint()
    final = last_val or _validate(model, data.val, device, val_batch)  # fresh only if no epoch ran here
    return {"history": state.history, "final": final, "steps": state.steps, "devices": state.devices,
            "seconds": state.seconds}


def _set_threads(cfg: TrainConfig) -> tuple[int, int]:
    """Apply cfg.threads (or the default); returns (used, previous) so the caller can restore it."""
    previous = torch.get_num_threads()
    n = cfg.threads if cfg.threads is not None else default_threads()
    if n < 1:
        raise EdgeaeError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n, previous


def train(
    family: str,
    data: DataSpec | Dataset | str,
    out: str | Path,
    model_options: dict[str, Any] | None = None,
    cfg: TrainConfig | None = None,
    overwrite: bool = False,
    stop_at_step: int | None = None,
    init: str | Path | None = None,
) -> RunResult:
    """Train a model family on a dataset; writes the run directory `out` (see the module docstring).
    `init`: start from the weights of another run (see `init_weights`) instead of a random initialisation."""
    cfg = cfg or TrainConfig()
    resolve_device(cfg.device)  # a clear error before any data is read
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    seed_everything(cfg.seed)
    model = build_model(family, make_config(family, in_shape=dataset.shape, **(model_options or {})))
    config = {
        "edgeae": __version__,
        "model": {"family": family, "config": model.config.to_dict()},
        "data": {**dataset.spec.to_dict(), "channel_order": dataset.channel_order},
        "train": asdict(cfg),
        "latent_shape": list(model.latent_shape),
    }
    if init is not None:
        config["init"] = init_weights(model, Path(init), sample=lambda: init_sample(dataset))
    run = Path(out)
    _start_run_dir(run, overwrite)
    write_json(run / CONFIG, config)
    return _run(run, model, dataset, cfg, resume=False, stop_at_step=stop_at_step)


INIT_SAMPLE_PIXELS = 1 << 20  # what `fit_init_state` may see of the training data (16 crops of 256^2)


def init_sample(dataset: Dataset) -> torch.Tensor:
    """Training images for an init that fits weights to data (`fit_init_state`): evenly spaced over the
    training set, at most INIT_SAMPLE_PIXELS pixels (one image at least)."""
    n, _, h, w = dataset.train.shape
    count = max(1, min(n, INIT_SAMPLE_PIXELS // (h * w)))
    return torch.from_numpy(np.ascontiguousarray(dataset.train[np.linspace(0, n - 1, count).astype(int)]))


def init_weights(model: AutoEncoder, source: Path,
                 sample: Callable[[], torch.Tensor] | None = None) -> dict[str, Any]:
    """Load another run's weights (its weights.safetensors, else its checkpoint's) into `model`: same keys, or
    whatever the family's `load_base_state` maps (a variable-rate model from its base family's run); a family
    with `fit_init_state` may first fit them to training images (`sample()`, drawn only if it needs them), e.g.
    a codec cutting a wider synthesis down to its own widths. Returns what config.json records about it: the source run, its family
    and how many steps it had trained."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = source / WEIGHTS if (source / WEIGHTS).is_file() else source / CHECKPOINT / CKPT_MODEL
    if not weights.is_file():
        raise RunDirError(f"--init {source}: no {WEIGHTS} or {CHECKPOINT}/{CKPT_MODEL} there")
    info: dict[str, Any] = {"run": str(source.resolve()), "weights": weights.name}
    cfg_file = source / CONFIG
    source_config = read_json(cfg_file) if cfg_file.is_file() else {}
    source_model = source_config.get("model", {})
    if source_model:
        info["family"] = source_model.get("family")
        info["lmbda"] = source_model.get("config", {}).get("lmbda")
    steps = own_steps(source)
    if steps is not None:
        info["steps"] = steps
    info["total_steps"] = (steps or 0) + lineage_steps(source_config.get("init"))  # every step behind the weights
    try:
        state = load_file(str(weights))
        fit = getattr(model, "fit_init_state", None)
        if fit is not None and sample is not None:
            state = fit(state, sample)
        hook = getattr(model, "load_base_state", None)
        if hook is not None:
            hook(state)
        else:
            model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise RunDirError(f"--init {source}: its weights do not fit this model ({first})") from None
    return info


def resume(run_dir: str | Path, epochs: int | None = None, max_steps: int | None = None, device: str | None = None,
           threads: int | None = None, progress: bool | None = None, stop_at_step: int | None = None,
           data: str | None = None, val_data: str | None = None, precision: str | None = None,
           val_every: int | None = None) -> RunResult:
    """Continue a run from its checkpoint. The model, data and optimiser options come from its config.json;
    only the length (epochs, max_steps), the device, the threads, the precision (a GPU or CPU without bf16
    may continue in fp32), how often it validates, progress output and where the same data now lives (`data`,
    `val_data`: another machine) may change."""
    run = Path(run_dir)
    if not (run / CONFIG).is_file():
        raise RunDirError(f"{run} is not a run directory (no {CONFIG}); start one with `edgeae train --out`")
    config = read_json(run / CONFIG)
    try:
        family, values = config["model"]["family"], config["model"]["config"]
        saved = config["train"]
        cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
        moved = {k: str(Path(v).resolve()) for k, v in (("data", data), ("val_data", val_data)) if v}
        spec = DataSpec.from_dict({**config["data"], **moved})
    except (KeyError, TypeError) as exc:
        raise RunDirError(f"{run / CONFIG} does not describe a run ({exc})") from None
    if moved:
        config = {**config, "data": {**config["data"], **moved}}
        write_json(run / CONFIG, config)
    changes = {"epochs": epochs, "max_steps": max_steps, "device": device, "threads": threads, "progress": progress,
               "precision": precision, "val_every": val_every}
    cfg = TrainConfig(**{**asdict(cfg), **{k: v for k, v in changes.items() if v is not None}})
    resolve_device(cfg.device)
    _checkpoint_dir(run)
    dataset = load_dataset(spec)
    model = build_model(family, make_config(family, **values))
    if changes["epochs"] or changes["max_steps"]:
        write_json(run / CONFIG, {**config, "train": {**config["train"], "epochs": cfg.epochs,
                                                      "max_steps": cfg.max_steps}})
    for stale in (WEIGHTS, METRICS):  # a finished run being extended is incomplete again until it ends
        (run / stale).unlink(missing_ok=True)
    return _run(run, model, dataset, cfg, resume=True, stop_at_step=stop_at_step)


def _start_run_dir(run: Path, overwrite: bool) -> None:
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise RunDirError(f"{run} already exists and is not empty; choose another --out, pass --force, or "
                              f"continue it with --resume {run}")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)


def _run(run: Path, model: AutoEncoder, dataset: Dataset, cfg: TrainConfig, resume: bool,
         stop_at_step: int | None) -> RunResult:
    threads, previous = _set_threads(cfg)
    try:
        result = fit(model, dataset, cfg, run=run, resume=resume, stop_at_step=stop_at_step)
    except TrainingInterrupted:
        raise
    except BaseException:
        if not resume and not (run / CHECKPOINT).exists():
            shutil.rmtree(run, ignore_errors=True)  # nothing worth keeping: no half-written run
        raise
    finally:
        torch.set_num_threads(previous)
    model.cpu().eval()
    metrics = {**result, "threads": threads, "summary": model.summary()}
    from safetensors.torch import save_file

    write_json(run / METRICS, metrics)
    n = min(10, len(dataset.val))
    with torch.no_grad():
        recon = model(torch.from_numpy(dataset.val[:n])).x_hat.numpy()
    save_grid(run / GRID, dataset.val[:n], recon, title=f"{run.name}: {model.family}"  # type: ignore[attr-defined]
              f", {result['steps']} steps, validation PSNR {result['final']['psnr']:.2f} dB")
    tmp = run / f".tmp-{WEIGHTS}"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.chmod(tmp, 0o644)
    os.replace(tmp, run / WEIGHTS)
    return RunResult(path=run, model=model, metrics=metrics)
