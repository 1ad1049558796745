"""`profile_bundle`: plan the configurations, run each in a fresh worker process, assemble a ProfileReport."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.errors import EdgeaeError, InputError
from edgeae.profiling.host import describe_host, usable_cpus
from edgeae.profiling.report import (
    DEVICE_LABEL,
    Measurement,
    OpStat,
    ProfileReport,
    Skipped,
    Timing,
    Verdict,
)
from edgeae.runtime.bundle import Bundle
from edgeae.runtime.devices import DeviceProfile, load_profile

GRAPH_PARTS = ("encoder", "decoder")
CODEC_PARTS = ("encode", "decode")
PARTS = GRAPH_PARTS + CODEC_PARTS
PRECISIONS = ("fp32", "int8")
BASELINES = ("torch", "jpeg", "webp")
QUALITY = {"jpeg": 75, "webp": 80}  # Pillow's default qualities; encoder options as in `edgeae eval`
DEFAULT_SECONDS = 1.0
DEFAULT_TIMEOUT_S = 300.0  # per configuration: a worker that takes longer is stopped and the profile fails
NOISY_CV = 0.10  # pyperf warns at the same ratio: std above 10% of the mean
_ROLE = {"encoder": "encoder", "encode": "encoder", "decoder": "decoder", "decode": "decoder"}


@dataclass
class ProfileSettings:
    parts: tuple[str, ...] = PARTS
    precisions: tuple[str, ...] | None = None  # None: fp32, plus int8 when the bundle has int8 graphs
    threads: tuple[int, ...] | None = None  # None: the device's intra-op threads, else 1
    batches: tuple[int, ...] = (1,)
    device: str | os.PathLike[str] | DeviceProfile | None = None
    warmup: int = 5
    runs: int | None = None  # exactly this many timed calls ...
    seconds: float | None = None  # ... or calls for this long; neither: DEFAULT_SECONDS
    per_op: bool = False
    baselines: tuple[str, ...] = ()
    images: np.ndarray | str | os.PathLike[str] | None = None  # None: deterministic synthetic images
    timeout: float = DEFAULT_TIMEOUT_S  # seconds one configuration's worker may take, start to finish

    def check(self) -> None:
        for what, values, allowed in (("part", self.parts, PARTS), ("precision", self.precisions or (), PRECISIONS),
                                      ("baseline", self.baselines, BASELINES)):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise InputError(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)}")
        if not self.parts:
            raise InputError("no part to profile; choose from " + ", ".join(PARTS))
        for what, counts in (("threads", self.threads or (1,)), ("batch", self.batches)):
            if not counts or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in counts):
                raise InputError(f"{what} values must be positive integers, got {counts}")
        if self.runs is not None and self.seconds is not None:
            raise InputError("give the number of runs (--runs) or a duration (--seconds), not both")
        if (self.runs is not None and self.runs < 1) or (self.seconds is not None and self.seconds <= 0):
            raise InputError("runs must be >= 1 and seconds > 0")
        if self.warmup < 0:
            raise InputError(f"warmup must be >= 0, got {self.warmup}")
        if not self.timeout > 0:
            raise InputError(f"timeout must be > 0 seconds, got {self.timeout}")


def profile_bundle(bundle: str | os.PathLike[str] | Bundle, settings: ProfileSettings | None = None) -> ProfileReport:
    """Measure a bundle's graphs and codec paths (and the chosen baselines) configuration by configuration."""
    s = settings or ProfileSettings()
    s.check()
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, partial=True)
    profile = load_profile(s.device) if s.device is not None else None
    precisions = s.precisions or tuple(b.precisions)
    threads = s.threads or ((profile.session.intra_op_threads,) if profile else (1,))
    cpus, affinity_note = _affinity(profile)
    skipped: list[Skipped] = []
    warnings = _thread_warnings(threads, cpus)
    images, images_label = _images(b, s.images, max(s.batches))
    timing = {"warmup": s.warmup, "runs": s.runs,
              "seconds": None if s.runs is not None else (s.seconds or DEFAULT_SECONDS)}
    with tempfile.TemporaryDirectory(prefix="edgeae-profile-") as tmp:
        inputs = Path(tmp)
        _write_inputs(b, images, s, inputs)
        jobs = _graph_jobs(b, s, precisions, threads, profile)
        jobs += _baseline_jobs(b, s, threads, skipped)
        measurements = [_run(job, {**timing, "cpus": cpus, "inputs": str(inputs)}, inputs, s.timeout)
                        for job in jobs]
    warnings += _judge(measurements, profile)
    device = None
    if profile:
        device = {**profile.to_dict(), "label": DEVICE_LABEL, "affinity": cpus, "affinity_note": affinity_note}
    return ProfileReport(bundle=_describe_bundle(b), host=describe_host(), device=device,
                         settings={"parts": list(s.parts), "precisions": list(precisions), "threads": list(threads),
                                   "batches": list(s.batches), **timing, "per_op": s.per_op,
                                   "baselines": list(s.baselines), "images": images_label},
                         measurements=measurements, skipped=skipped, warnings=warnings)


def quick_profile(bundle: str | os.PathLike[str] | Bundle, seconds: float = 0.3) -> str:
    """fp32 vs int8 at batch 1 on 1 thread, next to PyTorch eager and JPEG: a printable table (for the demo)."""
    settings = ProfileSettings(threads=(1,), batches=(1,), seconds=seconds, baselines=("torch", "jpeg"))
    return profile_bundle(bundle, settings).table()


def _affinity(profile: DeviceProfile | None) -> tuple[list[int] | None, str]:
    """Pin workers to as many CPUs as the device has, where the OS allows it and the host has enough."""
    if profile is None:
        return None, ""
    n, cpus = profile.cpu.cores, usable_cpus()
    if not hasattr(os, "sched_setaffinity"):
        return None, "CPU affinity not supported by this OS: the process may use every core of this host"
    if len(cpus) < n:
        return None, (f"this host offers {len(cpus)} CPUs, fewer than the device's {n} cores: "
                      "affinity not restricted")
    return cpus[:n], f"pinned to CPUs {cpus[:n]} ({n} cores, like the device)"


def _thread_warnings(threads: tuple[int, ...], cpus: list[int] | None) -> list[str]:
    limit = len(cpus) if cpus else len(usable_cpus())
    return [f"{t} threads on {limit} usable CPUs: oversubscribed, latency will suffer" for t in threads if t > limit]


def _images(b: Bundle, source: Any, n: int) -> tuple[np.ndarray, str]:
    """float32 (n, C, H, W) in [0, 1]: the given images (repeated to fill n) or deterministic synthetic ones."""
    from edgeae.runtime.files import find_files
    from edgeae.runtime.images import IMAGE_SUFFIXES, ImageAdapter

    if b.manifest.input.kind != "image":
        raise InputError("edgeae profile measures image bundles; this bundle takes tensors")
    adapter = ImageAdapter(b.manifest.input)
    if source is None:
        c, h, w = b.manifest.input.shape
        return synthetic_images((c, h, w), n), f"{n} synthetic images (smooth blobs, seed 0)"
    if isinstance(source, np.ndarray):
        x, label = adapter(source), f"{len(source)} given images"
    else:
        path = Path(source)
        if path.is_dir():
            x = adapter([f.source for f in find_files([path], IMAGE_SUFFIXES)[:n]])
        elif path.suffix == ".npy" and path.is_file():
            try:
                x = adapter(np.load(path, allow_pickle=False))
            except ValueError as exc:
                raise InputError(f"cannot read {path}: {exc}") from None
        else:
            raise InputError(f"--images {path}: give a folder of images or a .npy array")
        label = f"{len(x)} images from {path}"
    if len(x) < n:
        x = np.concatenate([x] * -(-n // len(x)))
        label += f", repeated to fill a batch of {n}"
    return np.ascontiguousarray(x[:n]), label


def synthetic_images(shape: tuple[int, int, int], n: int, seed: int = 0) -> np.ndarray:
    """Smooth random blobs quantised to 8-bit levels: image-like enough for JPEG sizes and entropy coding."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        for ch in range(c):
            centres, widths, amps = rng.random((4, 2)), 0.05 + 0.3 * rng.random(4), rng.random(4)
            img = sum(a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
                      for (cy, cx), s, a in zip(centres, widths, amps, strict=True))
            out[i, ch] = img / max(float(img.max()), 1e-6)
    return np.round(out * 255) / 255


def _write_inputs(b: Bundle, images: np.ndarray, s: ProfileSettings, inputs: Path) -> None:
    """Everything the workers feed their configurations, prepared once so no worker pays for it."""
    from edgeae.runtime.images import to_uint8
    from edgeae.runtime.session import make_session

    np.save(inputs / "images.npy", images)
    np.save(inputs / "images_u8.npy", to_uint8(images))
    if {"decoder", "decode"} & set(s.parts) or "torch" in s.baselines:
        enc = make_session(b.graph_path("encoder"), threads=1)
        np.save(inputs / "latents.npy", enc.run(None, {enc.get_inputs()[0].name: images})[0])
    if "decode" in s.parts:
        from edgeae.runtime.codec import Encoder

        encoder = Encoder(b, "fp32", threads=1)
        for n in s.batches:
            (inputs / f"payload_{n}.bin").write_bytes(encoder.encode(to_uint8(images[:n])))


def _graph_jobs(b: Bundle, s: ProfileSettings, precisions, threads, profile) -> list[dict[str, Any]]:
    device = str(profile.path) if profile else None
    jobs = []
    for part in s.parts:
        for precision in precisions:
            graph = b.graph_path(_ROLE[part], precision)  # a BundleError names a missing int8 graph
            for t in threads:
                for n in s.batches:
                    job = {"part": part, "precision": precision, "threads": t, "batch": n, "device": device,
                           "model_bytes": graph.stat().st_size}
                    if part in GRAPH_PARTS:
                        job.update(kind="onnx", engine="onnxruntime", graph=str(graph), per_op=s.per_op,
                                   input_file="images.npy" if part == "encoder" else "latents.npy",
                                   arena=_ROLE[part] != "encoder")  # as the runtime's Encoder runs it
                    else:
                        job.update(kind="codec", engine="edgeae", bundle=str(b.path))
                    jobs.append(job)
    return jobs


def _baseline_jobs(b: Bundle, s: ProfileSettings, threads, skipped: list[Skipped]) -> list[dict[str, Any]]:
    roles = [r for r in GRAPH_PARTS if any(_ROLE[p] == r for p in s.parts)]
    jobs: list[dict[str, Any]] = []
    if "torch" in s.baselines:
        reason = _torch_unavailable(b)
        if reason:
            skipped.append(Skipped("PyTorch eager baseline", reason))
        else:
            run_dir = b.manifest.source["run_dir"]
            jobs += [{"kind": "torch", "engine": "torch", "part": r, "precision": "fp32", "threads": t, "batch": n,
                      "run_dir": run_dir, "input_file": "images.npy" if r == "encoder" else "latents.npy"}
                     for r in roles for t in threads for n in s.batches]
    for fmt in (f for f in ("jpeg", "webp") if f in s.baselines):
        # Pillow codes one image on one thread: thread counts do not apply.
        jobs += [{"kind": "pillow", "engine": fmt, "format": fmt, "quality": QUALITY[fmt],
                  "part": "encode" if r == "encoder" else "decode", "precision": f"q{QUALITY[fmt]}", "threads": 1,
                  "batch": n} for r in roles for n in s.batches]
    return jobs


def _torch_unavailable(b: Bundle) -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install 'edgeae[train]')"
    run_dir = b.manifest.source.get("run_dir")
    if not run_dir:
        return "the bundle's manifest names no source run directory"
    missing = [f for f in ("config.json", "weights.safetensors") if not (Path(run_dir) / f).is_file()]
    if missing:
        return f"the run directory {run_dir} named by the manifest lacks {', '.join(missing)}"
    return None


def _run(job: dict[str, Any], common: dict[str, Any], tmp: Path, timeout: float = DEFAULT_TIMEOUT_S) -> Measurement:
    """One configuration in a fresh interpreter, stopped after `timeout` seconds; its stderr's last line becomes
    the error if it fails."""
    job = {**job, **common}
    name = f"{job['kind']}-{job['part']}-{job['precision']}-t{job['threads']}-b{job['batch']}"
    job["out"] = str(tmp / f"{name}.result.json")
    (tmp / f"{name}.job.json").write_text(json.dumps(job))
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeae.profiling.worker", str(tmp / f"{name}.job.json")],
                              capture_output=True, text=True, env=_worker_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgeaeError(f"profiling {name} took longer than {timeout:g} s and was stopped; fewer --runs or "
                          "--seconds, or a larger --timeout") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeaeError(f"profiling {name} failed: {last}")
    r = json.loads(Path(job["out"]).read_text())
    return _measurement(job, r)


def _worker_env() -> dict[str, str]:
    """The caller's environment; plus the folder holding this edgeae when the interpreter would not find it
    by itself (running from a source tree without installing). Never prepends site-packages wholesale."""
    root = Path(__file__).resolve().parents[2]
    if any(Path(p or ".").resolve() == root for p in sys.path[1:]):
        return dict(os.environ)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}


def _measurement(job: dict[str, Any], r: dict[str, Any]) -> Measurement:
    t = Timing.from_seconds(r["samples_s"])
    return Measurement(
        engine=job["engine"], part=job["part"], precision=job["precision"], threads=job["threads"],
        batch=job["batch"], cold_create_ms=r["cold_create_s"] * 1e3, cold_first_run_ms=r["cold_first_run_s"] * 1e3,
        latency=t, per_image_ms=t.mean / job["batch"], throughput_ips=job["batch"] / (t.mean / 1e3),
        noisy=False, peak_rss_mb=r["peak_rss_mb"], base_rss_mb=r["base_rss_mb"], model_bytes=job.get("model_bytes"),
        bytes_per_image=r.get("bytes_per_image"), session=r.get("session"), affinity=r.get("affinity"),
        ops=[OpStat(**o) for o in r["ops"]] if r.get("ops") is not None else None,
        samples_ms=[v * 1e3 for v in r["samples_s"]],
    )


def _judge(measurements: list[Measurement], profile: DeviceProfile | None) -> list[str]:
    """Flag noisy measurements and give each edgeae/onnxruntime one a verdict against the device's budgets."""
    noisy = []
    for m in measurements:
        m.noisy = m.latency.cv_trimmed > NOISY_CV
        if m.noisy:
            noisy.append(f"{m.part} {m.label} t{m.threads} b{m.batch} ({m.latency.cv_trimmed:.0%})")
        if profile and m.engine in ("onnxruntime", "edgeae"):
            m.verdict = _verdict(m, profile)
    if not noisy:
        return []
    return [f"noisy timings, coefficient of variation above {NOISY_CV:.0%} even without the slowest 1%: "
            f"{', '.join(noisy)}; other load on this host? Re-run, with --seconds for longer"]


def _verdict(m: Measurement, p: DeviceProfile) -> Verdict:
    per_image = m.latency.p90 / m.batch
    return Verdict(latency_ms_per_image=per_image, latency_budget_ms=p.budget.latency_ms, peak_rss_mb=m.peak_rss_mb,
                   memory_budget_mb=p.budget.memory_mb, latency_ok=per_image <= p.budget.latency_ms,
                   memory_ok=None if m.peak_rss_mb is None else m.peak_rss_mb <= p.budget.memory_mb)


def _describe_bundle(b: Bundle) -> dict[str, Any]:
    m = b.manifest
    return {"path": str(b.path), "name": m.name, "fingerprint": m.fingerprint, "input_shape": list(m.input.shape),
            "latent_shape": list(m.latent.shape),
            "files": {name: f.bytes for name, f in m.files.items()}}
