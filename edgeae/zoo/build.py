"""Making the zoo (needs the train extra): export (fp32 + int8 encoder), measure on whole images through real
payloads, and write edgeae/zoo/index.json. Three sources:

    python -m edgeae.zoo.build HYPERPRIOR_VR_RUN --name photo --val ../shared/data/photos/val   # ONE bundle
    python -m edgeae.zoo.build VR_RUN --name photo --val ../shared/data/photos/val --bake [--qualities 0,1,2]
    python -m edgeae.zoo.build RUN_A RUN_B RUN_C RUN_D --name photo --val ../shared/data/photos/val

A `hyperprior-vr` run ships as one multi-quality bundle (edgeae/zoo/<name>/, every quality sharing its graphs;
index entries name their `point`); `--bake` (and any `codec-vr`) bakes one plain bundle per quality
(<name>-q<k>/), as do separately trained plain runs, one per lambda.

The measured figures are what `edgeae models --pretrained` prints and docs/MODELS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.zoo import INDEX_NAME, INDEX_SCHEMA, ZOO_DIR
from edgeae.zoo import index as read_index

JPEG_QUALITIES = (1, 3, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)


def bake_run(vr_run: Path, q: int, out: Path, checkpoint: bool = False) -> Path:
    """Quality `q` of a variable-rate run as a plain run directory of its base family (loadable by
    `load_run`, exportable by `edgeae export`). `checkpoint`: take the weights of run/checkpoint (a run still
    in progress) instead of the final weights."""
    from safetensors.torch import load_file, save_file

    from edgeae.train.models import build_model, make_config
    from edgeae.train.models.variable_rate import bake
    from edgeae.train.rundir import (
        CHECKPOINT,
        CKPT_MODEL,
        CKPT_STATE,
        CONFIG,
        METRICS,
        WEIGHTS,
        AtomicDir,
        read_json,
        write_json,
    )

    config = read_json(vr_run / CONFIG)
    family, values = config["model"]["family"], config["model"]["config"]
    model: Any = build_model(family, make_config(family, **values))
    weights = vr_run / CHECKPOINT / CKPT_MODEL if checkpoint else vr_run / WEIGHTS
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.eval()
    plain = bake(model, q)
    state_file = vr_run / CHECKPOINT / CKPT_STATE if checkpoint else vr_run / METRICS
    state = read_json(state_file) if state_file.is_file() else {}
    history = state.get("history", [])
    last = history[-1] if history else {}
    per_q = (last.get("val_qualities") or [{}] * len(model.lmbdas))[q]
    data = dict(config["data"])
    if data.get("crop"):
        data["val_crop"] = data["crop"]  # export validates at the model's input shape
    baked_from = {"run": str(vr_run.resolve()), "family": family, "quality": q, "lmbda": model.lmbdas[q],
                  "steps": state.get("steps"), "checkpoint": checkpoint, "devices": state.get("devices", []),
                  "seconds": float(sum(d.get("seconds", 0.0) for d in state.get("devices", []))),
                  "training_val_crop": config["data"].get("val_crop")}
    with AtomicDir(out, overwrite=True) as tmp:
        write_json(tmp / CONFIG, {**config, "model": {"family": plain.family, "config": plain.config.to_dict()},
                                  "data": data, "latent_shape": list(plain.latent_shape),
                                  "baked_from": baked_from})
        save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(tmp / WEIGHTS))
        write_json(tmp / METRICS, {"final": per_q, "history": history, "steps": state.get("steps"),
                                   "baked_from": baked_from})
    return out


def snapshot_run(run: Path, out: Path) -> Path:
    """A run still in progress as a finished run directory (its checkpoint's weights and record), to export."""
    from edgeae.train import rundir as rd

    ckpt = run / rd.CHECKPOINT
    if not (ckpt / rd.CKPT_MODEL).is_file():
        raise SystemExit(f"{run} has no checkpoint to ship (--checkpoint)")
    state = rd.read_json(ckpt / rd.CKPT_STATE) if (ckpt / rd.CKPT_STATE).is_file() else {}
    with rd.AtomicDir(out, overwrite=True) as tmp:
        shutil.copyfile(run / rd.CONFIG, tmp / rd.CONFIG)
        shutil.copyfile(ckpt / rd.CKPT_MODEL, tmp / rd.WEIGHTS)
        rd.write_json(tmp / rd.METRICS, {"final": {}, "history": state.get("history", []), "steps": state.get("steps"),
                                         "devices": state.get("devices", []), "snapshot_of": str(run.resolve())})
    return out


def measure(bundle: Any, images: list[np.ndarray], precision: str = "fp32", quality: int | None = None,
            threads: int | None = None) -> dict[str, Any]:
    """Every image in its own payload (header included), at its own size: mean bits per pixel, PSNR, MS-SSIM
    over the images, and the per-image values. `precision` is the encoder's; the decoder is fp32 (the zoo's
    decoders are fp32 only: decoding runs where floats are cheap). `quality`: a multi-quality bundle's point."""
    from edgeae.evaluate.metrics import ms_ssim, psnr
    from edgeae.runtime.codec import Decoder, Encoder

    enc = Encoder(bundle, precision, threads=threads, quality=quality)
    dec = Decoder(bundle, "fp32", threads=threads)
    rows = []
    t_enc = t_dec = 0.0
    for img in images:
        t0 = time.perf_counter()
        payload = enc.encode(img[None])
        t1 = time.perf_counter()
        out = dec.decode(payload)
        t2 = time.perf_counter()
        rec = out[0] if isinstance(out, list) else out[0]
        rec = np.asarray(rec).reshape(img.shape)
        t_enc, t_dec = t_enc + t1 - t0, t_dec + t2 - t1
        ms = ms_ssim(img, rec, batch=False)
        rows.append({"bytes": len(payload), "bpp": 8 * len(payload) / (img.shape[0] * img.shape[1]),
                     "psnr": float(psnr(img, rec, batch=False)[0]),
                     "ms_ssim": None if ms is None else float(ms[0])})
    return _summary(rows) | {"encode_s": t_enc, "decode_s": t_dec, "images": rows}


def classical_curve(images: list[np.ndarray], codec: str, qualities: tuple[int, ...]) -> list[dict[str, Any]]:
    """JPEG (optimize=True) / WebP (method 6) over a quality sweep, same statistics as `measure`."""
    from edgeae.evaluate.classical import roundtrip
    from edgeae.evaluate.metrics import ms_ssim, psnr

    curve = []
    for q in qualities:
        rows = []
        for img in images:
            data, rec = roundtrip(img, codec, q)
            ms = ms_ssim(img, rec, batch=False)
            rows.append({"bytes": len(data), "bpp": 8 * len(data) / (img.shape[0] * img.shape[1]),
                         "psnr": float(psnr(img, rec, batch=False)[0]),
                         "ms_ssim": None if ms is None else float(ms[0])})
        curve.append({"quality": q, **_summary(rows)})
    return curve


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ms = [r["ms_ssim"] for r in rows if r["ms_ssim"] is not None]
    return {"bytes": float(np.mean([r["bytes"] for r in rows])), "bpp": float(np.mean([r["bpp"] for r in rows])),
            "psnr": float(np.mean([r["psnr"] for r in rows])), "ms_ssim": float(np.mean(ms)) if ms else None}


def bd_rates(points: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """BD-rate (bpp at equal PSNR, and at equal MS-SSIM in dB: -10 log10(1 - MS-SSIM)) vs each anchor."""
    from edgeae.evaluate.bdrate import bd_rate

    def msdb(v: float) -> float:
        return float(-10 * np.log10(max(1 - v, 1e-10)))

    out: dict[str, Any] = {}
    for name, curve in curves.items():
        r = bd_rate([c["bpp"] for c in curve], [c["psnr"] for c in curve], [p["bpp"] for p in points],
                    [p["psnr"] for p in points])
        out[name] = {"psnr": r.value, "psnr_overlap_db": r.overlap, "psnr_reason": r.reason,
                     "ms_ssim": None, "ms_ssim_overlap_db": None}
        if all(c["ms_ssim"] is not None for c in [*curve, *points]):  # images >= 176 px on a side
            m = bd_rate([c["bpp"] for c in curve], [msdb(c["ms_ssim"]) for c in curve],
                        [p["bpp"] for p in points], [msdb(p["ms_ssim"]) for p in points])
            out[name] |= {"ms_ssim": m.value, "ms_ssim_overlap_db": m.overlap}
    return out


def _stage(runs: list[Path], qualities: list[int] | None, work: Path, checkpoint: bool,
           bake: bool = False) -> list[dict[str, Any]]:
    """The run (and the operating point, `point` > 0, of a multi-quality bundle) of every quality, lowest lambda
    first: a hyperprior-vr run as it is (one shared bundle) unless `bake`; any other variable-rate run baked per
    quality; or finished plain runs of one family taken as they are (ordered by lambda)."""
    from edgeae.train.models import build_model, make_config
    from edgeae.train.rundir import CONFIG, METRICS, WEIGHTS, read_json

    configs = [read_json(r / CONFIG) for r in runs]
    families = {c["model"]["family"] for c in configs}
    if len(runs) == 1 and configs[0]["model"]["family"].endswith("-vr"):
        family, values = configs[0]["model"]["family"], configs[0]["model"]["config"]
        vr: Any = build_model(family, make_config(family, **values))
        picked = list(range(len(vr.lmbdas))) if qualities is None else qualities
        if family == "hyperprior-vr" and not bake:
            run = snapshot_run(runs[0], work / "snapshot") if checkpoint else runs[0]
            if not (run / WEIGHTS).is_file():
                raise SystemExit(f"{run} has not finished training (no {WEIGHTS}); finish it with `edgeae train "
                                 "--resume`, or ship its checkpoint with --checkpoint")
            return [{"run": run, "lmbda": vr.lmbdas[q], "vr_index": q, "point": q + 1, "source": runs[0]}
                    for q in picked]
        return [{"run": bake_run(runs[0], q, work / f"q{k}", checkpoint=checkpoint), "lmbda": vr.lmbdas[q],
                 "vr_index": q, "source": runs[0]} for k, q in enumerate(picked, start=1)]
    if len(families) != 1 or any(f.endswith("-vr") for f in families):
        raise SystemExit("give one variable-rate run, or plain runs of one family (one per quality)")
    if qualities is not None or checkpoint:
        raise SystemExit("--qualities and --checkpoint are for a variable-rate run; list the plain runs to ship")
    for r in runs:
        if not (r / WEIGHTS).is_file() or not (r / METRICS).is_file():
            raise SystemExit(f"{r} has not finished training (no {WEIGHTS}); finish it with `edgeae train --resume`")
    rows = [{"run": r, "lmbda": float(c["model"]["config"]["lmbda"]), "vr_index": None, "source": r}
            for r, c in zip(runs, configs, strict=True)]
    return sorted(rows, key=lambda row: row["lmbda"])


def _training(run: Path) -> dict[str, Any]:
    """What a run's records say about how it trained: steps, where, how long, and its warm start."""
    from edgeae.train.rundir import CHECKPOINT, CKPT_STATE, CONFIG, METRICS, lineage_steps, read_json

    states = [read_json(f) for f in (run / METRICS, run / CHECKPOINT / CKPT_STATE) if f.is_file()]
    state = max(states, key=lambda st: st.get("steps") or 0, default={})  # a run in progress: its checkpoint
    init = read_json(run / CONFIG).get("init")
    return {"run": run.name, "steps": state.get("steps"), "devices": state.get("devices", []),
            "seconds": float(sum(d.get("seconds", 0.0) for d in state.get("devices", []))),
            "init": {**init, "total_steps": lineage_steps(init)} if init else None}


def build(source: Path | list[Path], name: str, val: Path, qualities: list[int] | None = None,
          zoo_dir: Path = ZOO_DIR, work: Path | None = None, checkpoint: bool = False, int8: bool = True,
          description: str = "", card: str = "docs/MODELS.md", max_int8_drop_db: float = 0.5,
          int8_decoder: bool = False, bake: bool = False) -> dict[str, Any]:
    """Export a hyperprior-vr run as one multi-quality bundle, or bake (other variable-rate runs, or `bake`) or
    take (plain runs, one per quality) one bundle per quality; export fp32 graphs + the int8 encoder (the int8
    decoder too with `int8_decoder`), measure on every image of `val` at its own size, and record the model in
    zoo_dir/index.json (others are kept)."""
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.runtime.bundle import Bundle
    from edgeae.train.data import read_image_folder
    from edgeae.train.rundir import CONFIG, read_json, write_json

    runs = [source] if isinstance(source, Path) else list(source)
    config = read_json(runs[0] / CONFIG)
    family = config["model"]["family"]
    work = work or runs[0].parent / f"{name}-zoo-staging"
    stages = _stage(runs, qualities, work, checkpoint, bake)
    gray = config["data"].get("channel_order") == "L"
    images = [a[..., 0] if gray else a for a in read_image_folder(val, "L" if gray else "RGB")]
    entries: dict[str, Any] = {}
    exported: dict[Path, tuple[str, float]] = {}  # run -> (zoo folder, export seconds): a shared bundle once
    for k, stage in enumerate(stages, start=1):
        plain_run, point = stage["run"], stage.get("point")
        folder = name if point else f"{name}-q{k}"
        if plain_run not in exported:
            t0 = time.perf_counter()
            staged = work / f"bundle-{folder}"
            roles = None if not int8 or int8_decoder else ("encoder",)  # the zoo ships int8 encoders only
            export_run(plain_run, ExportOptions(out=staged, int8=int8, int8_roles=roles, measure_speed=False,
                                                force=True, max_int8_drop_db=max_int8_drop_db))
            Bundle.open(staged)  # a valid, sha256-checked bundle
            if (zoo_dir / folder).exists():
                shutil.rmtree(zoo_dir / folder)
            zoo_dir.mkdir(parents=True, exist_ok=True)
            os.replace(staged, zoo_dir / folder)
            exported[plain_run] = folder, time.perf_counter() - t0
        export_s = exported[plain_run][1]
        fp32 = measure(zoo_dir / folder, images, "fp32", point)
        row: dict[str, Any] = {"bundle": folder, **({"point": point} if point else {}),
                               "lmbda": stage["lmbda"], "vr_index": stage["vr_index"],
                               "bpp": fp32["bpp"], "psnr": fp32["psnr"], "ms_ssim": fp32["ms_ssim"],
                               "bytes": fp32["bytes"], "encode_s_fp32": fp32["encode_s"],
                               "decode_s_fp32": fp32["decode_s"], "export_s": export_s,
                               "measured_on": f"{val.name}: {len(images)} whole images"}
        if len(runs) > 1:
            row["training"] = _training(stage["source"])
        if int8:
            q8 = measure(zoo_dir / folder, images, "int8", point)
            row |= {"bpp_int8": q8["bpp"], "psnr_int8": q8["psnr"], "ms_ssim_int8": q8["ms_ssim"],
                    "encode_s_int8": q8["encode_s"], "decode_s_int8": q8["decode_s"]}
        entries[str(k)] = row
        ms = "-" if row["ms_ssim"] is None else f"{row['ms_ssim']:.4f}"
        print(f"{name}:{k}  lmbda {row['lmbda']:<7g} {row['bpp']:.3f} bpp  {row['psnr']:.2f} dB  MS-SSIM {ms}"
              + (f"  int8 {row['psnr_int8']:.2f} dB" if int8 else ""), flush=True)
    curves = {"jpeg": classical_curve(images, "jpeg", JPEG_QUALITIES),
              "webp": classical_curve(images, "webp", WEBP_QUALITIES)}
    points = [entries[k] for k in sorted(entries, key=int)]
    bd = bd_rates(points, curves)
    base = read_index(zoo_dir)
    trained = _training(runs[0])
    base["models"][name] = {
        "family": family.removesuffix("-vr"), "trained_as": family,
        "description": description, "card": card, "qualities": entries,
        "training": {"steps": trained["steps"], "devices": trained["devices"], "seconds": trained["seconds"],
                     "data": config["data"], "train": config["train"], "model": config["model"],
                     "init": trained["init"], "history": _history(runs[0]), "runs": len(runs)},
        "baselines": curves, "bd_rate": bd,
    }
    base["schema"], base["version"] = INDEX_SCHEMA, 1
    write_json(zoo_dir / INDEX_NAME, base)
    for anchor, v in bd.items():
        print(f"BD-rate vs {anchor}: PSNR " + ("n/a" if v["psnr"] is None else f"{100 * v['psnr']:+.1f}%")
              + f" over {v['psnr_overlap_db']}; MS-SSIM "
              + ("n/a" if v["ms_ssim"] is None else f"{100 * v['ms_ssim']:+.1f}%"))
    return base["models"][name]


def _history(run: Path) -> list[dict[str, Any]]:
    from edgeae.train.rundir import CHECKPOINT, CKPT_STATE, METRICS, read_json

    for f in (run / METRICS, run / CHECKPOINT / CKPT_STATE):
        if f.is_file():
            return [{k: h.get(k) for k in ("epoch", "steps", "val_psnr", "val_bpp", "val_qualities")}
                    for h in read_json(f).get("history", [])]
    return []


def plot_rd(entry: dict[str, Any], out: Path, title: str = "") -> None:
    """The model's operating points (fp32 and int8) against the JPEG and WebP sweeps, PSNR and MS-SSIM."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeae.fsutil import write_atomic

    pts = [entry["qualities"][k] for k in sorted(entry["qualities"], key=int)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "psnr", "PSNR (RGB) dB"), (axes[1], "ms_ssim", "MS-SSIM")):
        for codec, style in (("jpeg", "s--"), ("webp", "^--")):
            c = [p for p in entry["baselines"][codec] if p[key] is not None]
            ax.plot([p["bpp"] for p in c], [p[key] for p in c], style, label=codec.upper(), ms=4)
        ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], "o-", label="edgeae fp32", lw=2)
        if all(p.get(f"{key}_int8") is not None for p in pts):
            ax.plot([p["bpp_int8"] for p in pts], [p[f"{key}_int8"] for p in pts], "x:", label="edgeae int8")
        ax.set_xlabel("bits per pixel (payload incl. header)")
        ax.set_ylabel(label)
        ax.set_xlim(0, max(1.6, 1.1 * max(p["bpp"] for p in pts)))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    write_atomic(out, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+",
                    help="a variable-rate run directory (codec-vr / hyperprior-vr), or one plain run per quality")
    ap.add_argument("--name", required=True, help="zoo model name (bundles MODEL-q1..)")
    ap.add_argument("--val", type=Path, required=True, help="folder of whole images to measure on")
    ap.add_argument("--qualities", help="comma-separated operating points of the run to ship (default: all)")
    ap.add_argument("--zoo", type=Path, default=ZOO_DIR)
    ap.add_argument("--checkpoint", action="store_true", help="use run/checkpoint (a run still in progress)")
    ap.add_argument("--description", default="")
    ap.add_argument("--bake", action="store_true", help="a hyperprior-vr run: one plain bundle per quality "
                    "instead of one shared multi-quality bundle")
    ap.add_argument("--clean", action="store_true", help="remove this model's old bundles first")
    ap.add_argument("--plot", type=Path, help="write the RD plot (PNG) here")
    a = ap.parse_args(argv)
    if a.clean:
        for old in [*a.zoo.glob(f"{a.name}-q*"), *([a.zoo / a.name] if (a.zoo / a.name).is_dir() else [])]:
            shutil.rmtree(old)
    qs = [int(v) for v in a.qualities.split(",")] if a.qualities else None
    entry = build(a.runs, a.name, a.val, qs, zoo_dir=a.zoo, checkpoint=a.checkpoint, description=a.description,
                  bake=a.bake)
    if a.plot:
        plot_rd(entry, a.plot, f"{a.name}: whole {a.val.name} images")
    print(json.dumps({k: v for k, v in entry.items() if k in ("bd_rate",)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
