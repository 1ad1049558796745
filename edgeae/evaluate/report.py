"""`edgeae eval --report DIR`: report.md (tables), rd.png (curves), grid.png (side by side), rd.json.

Every file is written atomically. matplotlib is imported only inside the plotting functions.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from edgeae.evaluate.metrics import MS_MIN_SIDE, PSNR_CAP_DB, WINDOW, window_size
from edgeae.evaluate.rd import RDEvaluation
from edgeae.evaluate.results import RDPoint
from edgeae.fsutil import write_atomic

REPORT, PLOT, GRID, JSON = "report.md", "rd.png", "grid.png", "rd.json"


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def point_table(points: list[RDPoint]) -> list[str]:
    rows = ["| curve | setting | bytes | bpp | PSNR dB | SSIM | MS-SSIM | exact |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        q = "lossless" if p.lossless and p.exact == p.n else _fmt(p.mean_psnr)
        rows.append(f"| {p.curve} | {p.setting} | {p.mean_bytes:.1f} | {p.mean_bpp:.3f} | {q} | {p.mean_ssim:.4f} "
                    f"| {_fmt(p.mean_ms_ssim, '.4f')} | {p.exact}/{p.n} |")
    return rows


def _nearest_note(ev: RDEvaluation, codec: str, psnr_db: float) -> str:
    pts = ev.curves().get(codec, [])
    if not pts:
        return "outside the sweep"
    lo, hi = min(pts, key=lambda p: p.mean_psnr), max(pts, key=lambda p: p.mean_psnr)
    end = lo if psnr_db < lo.mean_psnr else hi
    side = "below" if end is lo else "above"
    return f"{side} its sweep ({end.setting}: {end.mean_psnr:.2f} dB at {end.mean_bytes:.1f} B)"


def dominance(ev: RDEvaluation) -> list[tuple[RDPoint, RDPoint]]:
    """(edgeae point, the cheapest lossy classical point with <= its bytes and >= its PSNR), where one exists."""
    out = []
    classical = [q for q in ev.points if q.codec != "edgeae" and not q.lossless]
    for p in (p for p in ev.points if p.codec == "edgeae"):
        better = [q for q in classical if q.mean_bytes <= p.mean_bytes and q.mean_psnr >= p.mean_psnr]
        if better:
            out.append((p, min(better, key=lambda q: q.mean_bytes)))
    return out


def markdown(ev: RDEvaluation) -> str:
    c = ev.image_shape[2]
    h, w = min(s[0] for s in ev.shapes or [ev.image_shape]), min(s[1] for s in ev.shapes or [ev.image_shape])
    ds = ev.dataset.get("name", "images")
    lines = [f"# edgeae rate-distortion report: {ds}", "",
             f"{ev.n_images} images, {ev.size_label()}, {c} channel(s). Rate = whole file / whole payload bytes, headers "
             "included on both sides (edgeae: one payload per image, encoded and decoded by the runtime; "
             "JPEG/WebP/PNG: Pillow files). bpp = 8 * bytes / (H * W), over all images' pixels.",
             f"PSNR: mean of per-image PSNR (peak 255); exact images count as {PSNR_CAP_DB:.0f} dB. "
             f"BD-rate: log-rate vs PSNR, {ev.method} interpolation, over the overlapping PSNR range only; "
             "negative = edgeae needs fewer bytes.", ""]
    if min(h, w) < WINDOW:
        lines += [f"SSIM uses a {window_size(h, w)}x{window_size(h, w)} Gaussian window (images smaller than "
                  "11x11); not comparable with SSIM figures for larger images.", ""]
    if min(h, w) < MS_MIN_SIDE:
        lines += [f"MS-SSIM: n/a (needs images of at least {MS_MIN_SIDE}x{MS_MIN_SIDE}).", ""]
    lines += ["## Rate vs quality", "", *point_table(ev.points), ""]
    lines += ["## BD-rate (edgeae curve vs classical codec)", "",
              "| edgeae curve | vs | BD-rate | PSNR overlap dB | BD-PSNR dB |", "|---|---|---:|---|---:|"]
    for cmp in ev.comparisons:
        ov = "none" if cmp.bd_rate.overlap is None else f"{cmp.bd_rate.overlap[0]:.2f}..{cmp.bd_rate.overlap[1]:.2f}"
        psnr_d = "n/a" if cmp.bd_psnr.value is None else f"{cmp.bd_psnr.value:+.2f}"
        lines.append(f"| {cmp.curve} | {cmp.codec} | {cmp.bd_rate} | {ov} | {psnr_d} |")
    lines += ["", "## Equal quality (each edgeae point vs the codec interpolated at the same PSNR)", "",
              "| edgeae | setting | PSNR dB | edgeae bytes | codec | codec bytes | edgeae/codec |",
              "|---|---|---:|---:|---|---:|---:|"]
    for e in ev.equal_quality:
        cb = f"{e.codec_bytes:.1f}" if e.codec_bytes is not None else _nearest_note(ev, e.codec, e.psnr)
        lines.append(f"| {e.curve} | {e.setting} | {e.psnr:.2f} | {e.edgeae_bytes:.1f} | {e.codec} | {cb} | "
                     f"{_fmt(e.ratio, '.3f')} |")
    dom = dominance(ev)
    if dom:
        lines += ["", "## Dominated points (a classical setting with no more bytes and no less PSNR)", ""]
        lines += [f"- {p.curve} {p.setting} ({p.mean_bytes:.1f} B, {p.mean_psnr:.2f} dB) is dominated by "
                  f"{q.codec} {q.setting} ({q.mean_bytes:.1f} B, {q.mean_psnr:.2f} dB)" for p, q in dom]
    lines += ["", "## Which curve needs the fewest bytes where", ""]
    wins = ev.winners()
    lines += [f"- {a:.2f}..{b:.2f} dB: **{name}**" for a, b, name in wins] or ["- no lossy curves"]
    singles = [k for k, v in ev.curves("edgeae").items() if len(v) == 1]
    if singles:
        lines += ["", f"Single-bundle curves ({', '.join(singles)}) are points, not ranges: see the equal-quality "
                  "table; export more bundles of a family (other latent sizes / bits) for a BD-rate."]
    lines += ["", f"![rate-distortion]({PLOT})", "", f"![side by side]({GRID})", ""]
    return "\n".join(lines)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_rd(ev: RDEvaluation) -> bytes:
    """bpp (log; bytes on the top axis) vs PSNR and vs SSIM, every curve; PNG content."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    px = ev.points[0].pixels if ev.points else float(np.prod(ev.image_shape[:2]))  # mean pixels per image
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for name, pts in ev.curves().items():
        bpp = [p.mean_bpp for p in pts]
        style = "o-" if pts[0].codec == "edgeae" else ".--"
        for ax, key in zip(axes, ("mean_psnr", "mean_ssim"), strict=True):
            if pts[0].lossless:
                ax.axvline(bpp[0], color="gray", ls=":", label=f"{name} (lossless)")
                continue
            ax.plot(bpp, [getattr(p, key) for p in pts], style, label=name, ms=6 if pts[0].codec == "edgeae" else 4)
    for ax, ylabel in zip(axes, ("PSNR (dB)", "SSIM"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel (whole file / payload)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        top = ax.secondary_xaxis("top", functions=(lambda b: b * px / 8, lambda B: B * 8 / px))
        top.set_xlabel("bytes per image")
        # Plain numbers on the log axes, major ticks only (minor labels overlap on narrow ranges).
        for axis in (ax.xaxis, top.xaxis):
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(FormatStrFormatter("%g"))
            axis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{ev.dataset.get('name', 'images')}: {ev.n_images} images {ev.size_label()}")
    return _png(fig)


def grid_columns(ev: RDEvaluation, k: int) -> list[tuple[str, list[RDPoint], list[int]]]:
    """Grid columns (name, candidate points, per-image pick): the best point of each edgeae curve, then for each
    image the JPEG / WebP setting whose file size is closest to the first edgeae column's payload for that
    image. Only points that kept decoded images (`keep`) take part."""
    edge = [max(v, key=lambda p: p.mean_psnr) for v in ev.curves("edgeae").values()]
    edge = [p for p in edge if p.decoded is not None and len(p.decoded) >= k]
    cols = [(p.curve, [p], [0] * k) for p in edge]
    if not edge or edge[0].per_image is None:
        return cols
    target = edge[0].per_image.bytes
    for codec in ("jpeg", "webp"):
        pts = [p for p in ev.curves().get(codec, [])
               if p.decoded is not None and len(p.decoded) >= k and p.per_image is not None]
        if pts:
            sizes = [p.per_image.bytes for p in pts if p.per_image is not None]  # all of pts, in order
            pick = [_closest([s[i] for s in sizes], target[i]) for i in range(k)]
            cols.append((f"{codec} at similar size", pts, pick))
    return cols


def _closest(values: list[int], target: int) -> int:
    """Index of the value nearest `target` (the first on a tie)."""
    return min(range(len(values)), key=lambda j: abs(values[j] - target))


def plot_grid(ev: RDEvaluation, originals: np.ndarray, rows: int = 6) -> bytes | None:
    """original | edgeae | JPEG / WebP at similar size, for the first few images; None without decoded images."""
    from edgeae.evaluate.rd import to_uint8_images

    originals = to_uint8_images(originals)
    kept = [len(p.decoded) for p in ev.points if p.decoded is not None]
    n = min([rows, len(originals), *kept]) if kept else 0
    cols = grid_columns(ev, n) if n else []
    if not cols:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeae.evaluate.metrics import psnr

    fig, axes = plt.subplots(n, len(cols) + 1, figsize=(2.1 * (len(cols) + 1), 2.3 * n), squeeze=False)
    gray = originals.shape[-1] == 1

    def show(ax, img, title):
        ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    for i in range(n):
        show(axes[i][0], originals[i], "original")
        for j, (name, pts, pick) in enumerate(cols, start=1):
            p = pts[pick[i]]
            assert p.decoded is not None  # grid_columns only picks points that kept decoded images
            q = psnr(originals[i : i + 1], p.decoded[i][None])[0]
            size = p.per_image.bytes[i] if p.per_image else p.mean_bytes
            label = f"{name} {p.setting}" if p.codec == "edgeae" else f"{p.codec} {p.setting}"  # setting: bundle
            show(axes[i][j], p.decoded[i], f"{label}\n{size:.0f} B, {q:.1f} dB")
    return _png(fig)


def write_report(ev: RDEvaluation, out: str | os.PathLike[str], originals: np.ndarray | None = None) -> Path:
    """report.md, rd.png, grid.png (when decoded images were kept) and rd.json in `out`."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    ev.save(d / JSON)
    write_atomic(d / PLOT, plot_rd(ev))
    originals = originals if originals is not None else ev.originals
    grid = plot_grid(ev, originals) if originals is not None else None
    if grid is not None:
        write_atomic(d / GRID, grid)
    text = markdown(ev)
    if grid is None:
        text = text.replace(f"![side by side]({GRID})\n", "")
    write_atomic(d / REPORT, text)
    return d / REPORT
