"""What a profile run found: one Measurement per configuration, a ProfileReport, and its table / JSON / plot."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.fsutil import write_atomic

REPORT_SCHEMA = "edgeae.profile"
REPORT_VERSION = 1
DEVICE_LABEL = "measured on this host with the device's settings, not on the device"


@dataclass
class Timing:
    """Steady-state latency of one call (a whole batch), in milliseconds."""

    runs: int
    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    cv: float  # coefficient of variation, std / mean, of all runs
    cv_trimmed: float  # the same without the slowest 1% (a rare hiccup should not hide a steady measurement)

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> Timing:
        ms = np.asarray(samples, np.float64) * 1e3
        # Linear interpolation keeps min <= p50 <= p90 <= p95 <= p99 <= max by construction.
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(runs=len(ms), min=float(ms.min()), mean=float(ms.mean()), p50=float(p50), p90=float(p90),
                   p95=float(p95), p99=float(p99), max=float(ms.max()), std=float(ms.std()), cv=cls._cv(ms),
                   cv_trimmed=cls._cv(ms[ms <= p99]))

    @staticmethod
    def _cv(ms: np.ndarray) -> float:
        return float(ms.std() / ms.mean()) if len(ms) and ms.mean() > 0 else 0.0


@dataclass
class OpStat:
    """One operator type as onnxruntime executed it (after graph optimisation: fused kernels keep their names)."""

    op_type: str
    nodes: int  # distinct nodes of this type
    ms_per_run: float
    share: float  # of all operator time
    examples: list[str] = field(default_factory=list)  # a few node names


@dataclass
class Verdict:
    """One configuration against a device's budgets."""

    latency_ms_per_image: float  # p90 latency / batch
    latency_budget_ms: float
    peak_rss_mb: float | None
    memory_budget_mb: int
    latency_ok: bool
    memory_ok: bool | None  # None: peak RSS unavailable on this OS
    label: str = DEVICE_LABEL

    @property
    def ok(self) -> bool:
        return self.latency_ok and self.memory_ok is not False


@dataclass
class Measurement:
    """One configuration, measured in a fresh process with a fresh session (or model, or codec)."""

    engine: str  # onnxruntime (a graph), edgeae (Encoder.encode / Decoder.decode), torch, jpeg, webp
    part: str  # encoder, decoder, encode, decode
    precision: str  # fp32, int8; "q75" for the image codecs
    threads: int
    batch: int
    cold_create_ms: float  # session (or model, codec) creation
    cold_first_run_ms: float  # the first call after creation
    latency: Timing
    per_image_ms: float  # mean latency / batch
    throughput_ips: float  # images per second: batch / mean latency
    noisy: bool  # latency.cv_trimmed above the engine's threshold
    peak_rss_mb: float | None  # the measuring process's peak: interpreter + libraries + session + data
    base_rss_mb: float | None  # its peak before the session existed (interpreter + libraries + data)
    model_bytes: int | None = None  # graph file size on disk
    bytes_per_image: float | None = None  # payload / JPEG / WebP size (encode parts)
    session: dict[str, Any] | None = None  # settings read back from the live onnxruntime session
    affinity: list[int] | None = None  # CPUs the process was pinned to
    ops: list[OpStat] | None = None  # --per-op
    verdict: Verdict | None = None
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        if self.engine in ("onnxruntime", "edgeae"):
            return f"{self.engine} {self.precision}"
        return "torch eager" if self.engine == "torch" else f"{self.engine} {self.precision}"


@dataclass
class Skipped:
    what: str
    reason: str


@dataclass
class ProfileReport:
    bundle: dict[str, Any]
    host: dict[str, Any]
    device: dict[str, Any] | None
    settings: dict[str, Any]
    measurements: list[Measurement]
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"schema": REPORT_SCHEMA, "version": REPORT_VERSION, **asdict(self)}
        for m, d in zip(self.measurements, out["measurements"], strict=True):
            d["label"] = m.label
            if m.verdict is not None:
                d["verdict"]["ok"] = m.verdict.ok
        out["comparisons"] = self.comparisons()
        return out

    def write_json(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def comparisons(self) -> list[dict[str, Any]]:
        """int8 and baselines against fp32 of the same part, threads and batch (median latency; >1 is faster).

        A baseline of a graph part (torch) compares with the graph; JPEG/WebP compare with the full codec path,
        or the graph where only the graph was profiled, at the fewest threads (Pillow codes on one thread).
        """
        ref: dict[tuple[str, int], list[Measurement]] = {}
        for m in self.measurements:
            if m.engine in ("onnxruntime", "edgeae") and m.precision == "fp32":
                ref.setdefault((m.part, m.batch), []).append(m)
        raw = {"encode": "encoder", "decode": "decoder"}
        out = []
        for m in self.measurements:
            if m.precision == "fp32" and m.engine in ("onnxruntime", "edgeae"):
                continue
            refs = ref.get((m.part, m.batch)) or ref.get((raw.get(m.part, m.part), m.batch)) or []
            same = [r for r in refs if r.threads == m.threads]
            base = same[0] if same else min(refs, key=lambda r: r.threads) if m.engine in ("jpeg", "webp") and refs \
                else None
            if base is not None:
                out.append({"part": m.part, "threads": m.threads, "batch": m.batch, "subject": m.label,
                            "reference": f"{base.label} t{base.threads}",
                            "speedup": base.latency.p50 / m.latency.p50})
        return out

    def rows(self) -> tuple[list[str], list[list[str]]]:
        headers = ["part", "what", "thr", "batch", "cold ms", "p50 ms", "p90 ms", "p99 ms", "ms/img", "img/s",
                   "cv", "RSS MB", "model KB", "B/img"]
        if self.device:
            headers.append("budget")
        rows = []
        for m in self.measurements:
            t = m.latency
            row = [m.part, m.label, str(m.threads), str(m.batch), f"{m.cold_create_ms:.1f}+{m.cold_first_run_ms:.1f}",
                   _num(t.p50), _num(t.p90), _num(t.p99), _num(m.per_image_ms), f"{m.throughput_ips:,.0f}",
                   f"{t.cv_trimmed:.0%}" + ("!" if m.noisy else ""), _opt(m.peak_rss_mb, "{:.0f}"),
                   _opt(m.model_bytes and m.model_bytes / 1024, "{:.1f}"), _opt(m.bytes_per_image, "{:.0f}")]
            if self.device:
                row.append("" if m.verdict is None else ("ok" if m.verdict.ok else "OVER"))
            rows.append(row)
        return headers, rows

    def table(self) -> str:
        """The whole report as plain text: header lines, the table, comparisons, per-op tops, notes."""
        headers, rows = self.rows()
        lines = self.header_lines() + ["", format_table(headers, rows)] + self.footer_lines()
        return "\n".join(lines)

    def header_lines(self) -> list[str]:
        h, b = self.host, self.bundle
        lines = [f"bundle  {b['name']} ({b['path']}), input {'x'.join(map(str, b['input_shape']))}, "
                 f"latent {'x'.join(map(str, b['latent_shape']))}",
                 f"host    {h['cpu_model']} ({h['architecture']}, {h['usable_cores']} usable of "
                 f"{h['logical_cores']} cores), onnxruntime {h['onnxruntime']}, python {h['python']}",
                 f"images  {self.settings['images']}; each configuration in a fresh process",
                 "        cold = creation + first call; latencies per call (the whole batch); cv = std / mean "
                 "without the slowest 1% (! = noisy); RSS = the measuring process's peak"]
        if self.device:
            d = self.device
            lines.append(f"device  {d['name']}: {d['description']}")
            lines.append(f"        budgets {d['budget']['latency_ms']:g} ms per image (p90 / batch), "
                         f"{d['budget']['memory_mb']} MB peak RSS; {DEVICE_LABEL}")
            lines.append(f"        {d['affinity_note']}")
        return lines

    def footer_lines(self) -> list[str]:
        lines = []
        comps = self.comparisons()
        if comps:
            lines.append("")
            lines.append("speed vs fp32 (median latency; >1 is faster):")
            for c in comps:
                x = c["speedup"]
                word = "faster" if x > 1.02 else "slower" if x < 0.98 else "about the same"
                ratio = f"{x:6.2f}" if x >= 0.1 else f"{x:6.2g}"
                lines.append(f"  {c['part']:<8} t{c['threads']} b{c['batch']:<4} {c['subject']:<16} "
                             f"{ratio}x ({word}) vs {c['reference']}")
        for m in self.measurements:
            if m.ops:
                lines.append("")
                lines.append(f"top operators, {m.part} {m.label} t{m.threads} b{m.batch} "
                             "(as executed after onnxruntime's graph optimisation):")
                for op in m.ops:
                    lines.append(f"  {op.op_type:<24} {op.nodes:>3} nodes {op.ms_per_run:9.4f} ms/run {op.share:6.1%}"
                                 f"   e.g. {', '.join(op.examples)}")
        lines += [""] * bool(self.skipped or self.warnings)
        lines += [f"skipped {s.what}: {s.reason}" for s in self.skipped]
        lines += [f"warning: {w}" for w in self.warnings]
        return lines

    def write_histogram(self, path: str | Path) -> None:
        """Latency distribution per configuration, one panel per part (needs matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        parts = list(dict.fromkeys(m.part for m in self.measurements))
        fig, axes = plt.subplots(len(parts), 1, figsize=(8, 2.8 * len(parts)), squeeze=False)
        for ax, part in zip(axes[:, 0], parts, strict=True):
            group = [m for m in self.measurements if m.part == part]
            lo = min(min(m.samples_ms) for m in group)
            hi = max(max(m.samples_ms) for m in group)
            bins = np.geomspace(lo, hi * 1.001, 60)  # shared log-spaced bins: configurations differ by 10x
            for m in group:
                ax.hist(m.samples_ms, bins=bins, histtype="step", label=f"{m.label} t{m.threads} b{m.batch}")
            ax.set_xscale("log")
            ax.set_title(part)
            ax.set_xlabel("latency per call (ms, log scale)")
            ax.set_ylabel("runs")
            ax.legend(fontsize="small")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        write_atomic(path, buf.getvalue())


def _num(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def _opt(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell: text left-aligned, numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    left = {0, 1}

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                 strict=True)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]).rstrip()
