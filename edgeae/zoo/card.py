"""Model cards rendered from the zoo index, so every number in docs/MODELS.md comes from a measurement.

    python -m edgeae.zoo.card [docs/MODELS.md] [--speed photo=bench.json]

Replaces the text between `<!-- zoo-cards:begin -->` and `<!-- zoo-cards:end -->` (atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgeae.fsutil import write_atomic
from edgeae.zoo import ZOO_DIR, index

BEGIN, END = "<!-- zoo-cards:begin -->", "<!-- zoo-cards:end -->"

DATA_NOTE = (
    "**Training data.** `../shared/data/photos/train/`: 280 natural photographs, ~0.2 MP each, from the standard "
    "super-resolution benchmark sets as published in the SelfExSR repository (high-resolution versions): BSD100 "
    "(Berkeley segmentation data set, 100 images, 480x320), Urban100 (100 city/building images, 512 px long "
    "side), Sun-Hays 80 (80 scenes, downscaled by 2 with Lanczos). Validation and every figure below: "
    "`../shared/data/photos/val/` (Set14 incl. one gray image, converted to RGB, and Set5; 19 images), never "
    "trained on. **Licence of the data:** these are research benchmark images distributed for research use "
    "without an open licence; they are not copied into this project (only weights trained on them ship, as "
    "the data's README allows); check the original sets' terms before commercial use of the weights.")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.1f}%"


def _f(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def _mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6 if folder.is_dir() else 0.0


def _where(t: dict[str, Any]) -> str:
    """Which steps ran where, from a run's device segments."""
    def one(s: dict[str, Any]) -> str:
        threads = f"{s['threads']} thread(s), " if s.get("threads") else ""  # a GPU's segment has none
        return (f"steps {s.get('first_step')}-{s.get('last_step')} on {s.get('device')} ({s.get('name')}, "
                f"{threads}{s.get('precision', 'fp32')}, {s.get('seconds', 0) / 60:.1f} min)")

    return "; ".join(one(s) for s in t.get("devices", []) if s.get("last_step", 0) >= s.get("first_step", 1)) or "n/a"


def _init(t: dict[str, Any]) -> str:
    init, own = t.get("init") or {}, int(t.get("steps") or 0)
    if not init:
        return ""
    behind = int(init.get("total_steps") or init.get("steps") or 0)  # the source's steps and its own init's
    source = f"`{Path(str(init.get('run'))).name}` ({init.get('family')}, {behind} steps"
    cfg = t.get("model", {}).get("config", {})
    if cfg.get("synthesis_only"):
        cut = ("; its g_s was cut down to these widths and refitted by least squares on training latents "
               "before these steps" if cfg.get("synthesis_widths") else "")
        return (f" Started from {source} counting its own warm starts): g_a, the entropy model and the gains "
                f"are that run's, unchanged, so it codes the same symbols{cut}.")
    return (f" Initialised from {source} at lambda {init.get('lmbda', '?')} counting its own warm starts, same "
            f"transforms), so the transforms have seen {own + behind} steps.")


def render(name: str, entry: dict[str, Any], zoo_dir: Path = ZOO_DIR, speed: dict[str, Any] | None = None) -> str:
    t = entry.get("training", {})
    model = t.get("model", {})
    cfg = model.get("config", {})
    train_cfg, data = t.get("train", {}), t.get("data", {})
    own = t.get("steps") or 0
    lines = [f"### `{name}`: {entry.get('description') or entry.get('family')}", ""]
    separate = int(t.get("runs") or 1) > 1  # one plain run per quality rather than one variable-rate run
    qualities = sorted(entry.get("qualities", {}).items(), key=lambda kv: int(kv[0]))
    shared = any(r.get("point") for _, r in qualities)  # one multi-quality bundle
    how = ("one model per operating point, each trained on its own" if separate else
           f"one model for {len(qualities)} operating points, " + (
               "shipped as ONE bundle whose graphs every quality shares (per-quality gains and z tables)"
               if shared else "baked per quality"))
    arch = (f"`{entry.get('family')}` family (trained as `{entry.get('trained_as')}`, {how}): N={cfg.get('channels')}, "
            f"M={cfg.get('latent_channels')} latent channels, total stride {2 ** int(cfg.get('downsamplings', 0))}"
            f" for y")
    if "hyper_channels" in cfg:
        arch += (f", hyper-latent z: {cfg.get('hyper_latent_channels')} channels at stride "
                 f"{2 ** (int(cfg.get('downsamplings', 0)) + 2)}, h_a/h_s width {cfg.get('hyper_channels')}, "
                 f"{cfg.get('scale_levels')}-entry scale table, integer hyper-decoder")
        if cfg.get("means"):
            arch += (f", mean-scale (means in 1/{cfg.get('mean_phases')} steps within +-{cfg.get('mean_range')}, "
                     f"h_a on {'y' if cfg.get('hyper_signed') else '|y|'})")
    if cfg.get("synthesis_widths"):
        arch += (f", g_s {'/'.join(str(w) for w in cfg['synthesis_widths'])} channels after its upsamplings "
                 f"(N={cfg.get('channels')} before them)")
    arch += f"; lambdas {cfg.get('lmbdas') or [r.get('lmbda') for _, r in qualities]}."
    photos = str(data.get("data", "")).rstrip("/").endswith("photos/train")
    note = DATA_NOTE if photos else f"**Training data.** `{data.get('data') or data.get('name')}`."
    lines += [f"**Architecture.** {arch}", "", note, ""]
    steps = ("**Training** (each quality the same way, lambda apart). " if separate else "**Training.** ")
    if cfg.get("synthesis_only"):
        steps += "g_s alone (`synthesis_only`): "
    steps += (f"{own} steps of batch {train_cfg.get('batch_size')} x " if not separate else
              f"Batches of {train_cfg.get('batch_size')} x ")
    steps += (f"{data.get('crop')}x{data.get('crop')} random crops ({data.get('crops_per_image')} per image per "
              f"epoch, flipped at random)" if data.get("crop") else f"{data.get('name')} images")
    steps += (f", Adam lr {train_cfg.get('lr')} with {train_cfg.get('lr_decay')} decay"
              + (" over each run's steps." if separate else " over "
                 + (f"{train_cfg['max_steps']} steps" if train_cfg.get("max_steps") else f"{train_cfg.get('epochs')} epochs")
                 + f", {t.get('seconds', 0) / 60:.0f} min in all: {_where(t)}." + _init(t)))
    lines += [steps, ""]
    if separate:
        lines += [f"- `{name}:{q}` (`{r['training'].get('run')}`): {r['training'].get('steps')} steps, "
                  f"{r['training'].get('seconds', 0) / 60:.0f} min: {_where(r['training'])}.{_init(r['training'])}"
                  for q, r in qualities if r.get("training")]
        lines.append("")
    first: dict[str, Any] = next(iter(entry.get("qualities", {}).values()), {})
    curve = [h for h in t.get("history", []) if h.get("val_qualities")]
    if curve:
        lines += ["**Training curve** (validation centre crops during training, the model's own rate estimate; "
                  "per quality PSNR dB / bpp):", "",
                  "| epoch | steps | " + " | ".join(f"q{i + 1}" for i in range(len(curve[0]["val_qualities"]))) + " |",
                  "|---|---|" + "---|" * len(curve[0]["val_qualities"])]
        pick = curve if len(curve) <= 8 else [curve[round(i * (len(curve) - 1) / 7)] for i in range(8)]
        for h in pick:
            lines.append(f"| {h['epoch']} | {h['steps']} | " + " | ".join(
                f"{v.get('psnr', 0):.2f} / {v.get('bpp', 0):.3f}" for v in h["val_qualities"]) + " |")
        lines.append("")
    lines += [f"**Rate-distortion** on {first.get('measured_on', 'the validation images')} (each image at its own "
              "size in its own payload, header included; mean over images of bpp, PSNR on RGB, MS-SSIM):", "",
              "| quality | lambda | bpp | PSNR dB | MS-SSIM | int8 encoder PSNR dB (delta) | bundle MB |",
              "|---|---|---|---|---|---|---|"]
    for q, r in qualities:
        delta = (r["psnr_int8"] - r["psnr"]) if isinstance(r.get("psnr_int8"), float) else None
        lines.append(f"| `{name}:{q}` | {r.get('lmbda')} | {_f(r.get('bpp'), '.3f')} | {_f(r.get('psnr'), '.2f')} | "
                     f"{_f(r.get('ms_ssim'), '.4f')} | {_f(r.get('psnr_int8'), '.2f')} ({_f(delta, '+.2f')}) | "
                     f"{_mb(zoo_dir / str(r.get('bundle'))):.2f}{' (shared)' if r.get('point') else ''} |")
    lines.append("")
    base = entry.get("baselines", {})
    for codec, label in (("jpeg", "JPEG (Pillow, optimize=True)"), ("webp", "WebP (Pillow, method 6)")):
        pts = "; ".join(f"q{c['quality']} {c['bpp']:.3f} bpp {c['psnr']:.2f} dB" for c in base.get(codec, []))
        lines.append(f"- {label}: {pts}")
    lines.append("")
    bd = entry.get("bd_rate", {})
    for codec in ("webp", "jpeg"):
        b = bd.get(codec, {})
        ov = b.get("psnr_overlap_db")
        span = f"over {ov[0]:.2f}-{ov[1]:.2f} dB" if ov else f"({b.get('psnr_reason') or 'no overlap'})"
        lines.append(f"- **BD-rate vs {codec.upper()}: {_pct(b.get('psnr'))}** at equal PSNR {span}; "
                     f"{_pct(b.get('ms_ssim'))} at equal MS-SSIM (dB)")
    lines.append("")
    if speed:
        rows = speed.get("rows", {})
        webp = next((v for k, v in rows.items() if k.startswith("webp")), None)
        load = speed.get("load_average")
        lines += ["**Speed** (768x512 RGB, 1 thread, medians, `benchmarks/bench_zoo.py`; int8 = int8 encoder, "
                  "the decoder is fp32 in every row" + (f"; measured with a load average of {load:.1f} on this "
                  "2-core host" + (", so absolute times are inflated and noisy" if load > 1.5 else "")
                  if load else "") + "):", "",
                  "| codec | bytes | encode ms | x WebP | decode ms | x WebP |", "|---|---|---|---|---|---|"]
        for k, v in rows.items():
            lines.append(f"| {k} | {v['bytes']:.0f} | {v['encode_ms']:.1f} | "
                         f"{v['encode_ms'] / webp['encode_ms']:.2f} | {v['decode_ms']:.1f} | "
                         f"{v['decode_ms'] / webp['decode_ms']:.2f} |" if webp else f"| {k} | - | - | - | - | - |")
        rss = speed.get("peak_rss_mb", {})
        lines += ["", "Peak RSS encoding one 1920x1080 photo on the torch-free runtime: "
                  + ", ".join(f"{p} {v:.0f} MB" for p, v in rss.items()) + ".", ""]
    return "\n".join(lines)


def update(md: Path, zoo_dir: Path = ZOO_DIR, speeds: dict[str, dict[str, Any]] | None = None) -> str:
    text = md.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{md} has no {BEGIN} ... {END} section")
    models = index(zoo_dir)["models"]
    cards = "\n".join(render(n, e, zoo_dir, (speeds or {}).get(n)) for n, e in sorted(models.items()))
    body = cards or "No pretrained model is shipped in this version."
    new = text[: text.index(BEGIN) + len(BEGIN)] + "\n" + body + "\n" + text[text.index(END):]
    write_atomic(md, new)
    return body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("md", nargs="?", type=Path, default=Path("docs/MODELS.md"))
    ap.add_argument("--speed", action="append", default=[], metavar="MODEL=JSON",
                    help="bench_zoo.py --json output for a model")
    a = ap.parse_args(argv)
    speeds = {}
    for item in a.speed:
        name, _, path = item.partition("=")
        speeds[name] = json.loads(Path(path).read_text())
    print(update(a.md, speeds=speeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
