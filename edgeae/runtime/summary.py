"""A human summary of a bundle's manifest: graphs, accepted sizes, latent, entropy model and table sizes,
PSNRs, fingerprint, int8 speed verdict (`edgeae inspect BUNDLE`, `edgeae export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeae.runtime.manifest import load_manifest


def load_summary_manifest(path: Path) -> dict[str, Any]:
    """The validated manifest of a bundle folder or a manifest.json path, as a plain dict."""
    return load_manifest(path).to_dict()


def describe_input(i: dict[str, Any]) -> str:
    """`1x28x28 L image, pixels -> [0, 1]`, `6x128 tensor, (x - mean) / std per channel`, any-size noted."""
    shape = "x".join(map(str, i["shape"]))
    scale, offset = i["scale"], i["offset"]
    if i.get("kind", "image") == "tensor":
        plain = scale == 1 and offset == 0
        return f"{shape} float tensor" + ("" if plain else ", standardised per channel (manifest scale/offset)")
    if isinstance(scale, list) or isinstance(offset, list):
        norm = "per-channel mean/std"
    else:
        norm = f"[{offset:g}, {offset + 255 * scale:g}]"
    size = f", any size (multiple of {i['size_multiple']})" if i.get("size_multiple") else ""
    return f"{shape} {i['channel_order']} image, pixels -> {norm}{size}"
def _kib(m: dict[str, Any], name: str | None) -> str:
    entry = m["files"].get(name) if name else None
    return f" {entry['bytes'] / 1024:.1f} KiB" if entry else ""


def graphs_line(m: dict[str, Any]) -> str:
    """encoder, decoder and every extra graph (an entropy model's), with their files and sizes."""
    parts = []
    for role, g in m["graphs"].items():
        int8 = f" + int8{_kib(m, g.get('int8_file'))}" if g.get("int8_file") else ""
        parts.append(f"{role} {g['file']}{_kib(m, g['file'])}{int8}")
    return ", ".join(parts)


def sizes_line(m: dict[str, Any]) -> str:
    """Which image sizes the bundle accepts."""
    inp, lat = m["input"], m["latent"]
    shape = inp["shape"]
    multiple = inp.get("size_multiple", 0)
    if multiple:
        return (f"any HxW, {shape[0]} channel(s) (padded to a multiple of {multiple}; latent stride "
                f"{lat.get('stride')}; sides up to 65536); reference {shape[1]}x{shape[2]}")
    dims = "x".join(map(str, shape[1:])) or "x".join(map(str, shape))
    return f"fixed {dims} only (this model is not fully convolutional, or was exported at one size)"


def entropy_line(m: dict[str, Any]) -> str:
    """The entropy model and its table sizes."""
    e = m["entropy"]
    model = e.get("model", "factorized")
    if model == "factorized":
        rows = e["frequencies"]
        return (f"factorized, {e['coder']} coder: {len(rows)} tables (one per channel) x {len(rows[0])} "
                f"entries, precision {e['precision']}")
    qualities = e.get("qualities") or []
    y = e["y"]["tables"]
    z = [t for q in qualities for t in q["z"]["tables"]] if qualities else e["z"]["tables"]
    scales = e["y"].get("scales") or []
    span = f", scales {min(scales):.3g}..{max(scales):.3g}" if scales else ""
    per = f" ({len(qualities)} qualities' own)" if qualities else ""
    line = (f"{model}, {e['coder']} coder, precision {e['precision']}: z {len(z)} tables{per} "
            f"({sum(len(t['frequencies']) for t in z)} entries, stride {e['z']['stride']}), y {len(y)} tables "
            f"indexed by the hyper-decoder ({sum(len(t['frequencies']) for t in y)} entries{span}, means "
            f"{'yes' if e['y'].get('means') else 'no'}), escape = last entry of each table")
    if qualities:
        points = ", ".join(f"{k}: lambda {q['lmbda']:g}, gain {sum(q['gain']) / len(q['gain']):.3g}"
                           for k, q in enumerate(qualities, 1))
        line += (f"\n            {len(qualities)} qualities sharing every graph (payload v3 carries the quality; "
                 f"default {e['default_quality']}): {points}")
    return line


def summarize(m: dict[str, Any]) -> str:
    q, lat = m.get("quality", {}), m["latent"]
    quant = lat["quantization"]
    family = m.get("model", {}).get("family", "?")
    metric = q.get("metric", "psnr")
    nan = float("nan")
    lines = [
        f"name        {m['name']}  ({family})",
        f"input       {describe_input(m['input'])}",
        f"sizes       {sizes_line(m)}",
        f"graphs      {graphs_line(m)}",
        f"latent      {'x'.join(map(str, lat['shape']))} at the reference size -> {quant['levels']} levels/channel "
        f"({quant['bits']} bits)",
        f"entropy     {entropy_line(m)}",
        f"fingerprint {m['fingerprint'][:16]}... (payloads carry the first 8 bytes)",
        f"{metric.upper():11s} torch {q.get(f'{metric}_torch', nan):.2f} dB | onnx fp32, float latent "
        f"{q.get(f'{metric}_onnx_fp32', nan):.2f} | as deployed (quantised latent): fp32 "
        f"{q.get(f'{metric}_fp32_quantized_latent', nan):.2f}"
        + (f", int8 {q[f'{metric}_onnx_int8']:.2f}" if f"{metric}_onnx_int8" in q else ""),
    ]
    int8 = m.get("int8")
    if int8:
        lines.append(f"int8 preset {int8['preset']['name']}")
        for role, g in int8["graphs"].items():
            verdict = ""
            if "latency_us_fp32" in g:
                faster = "FASTER" if g["int8_faster"] else "SLOWER"
                verdict = (f", batch 1 / 1 thread: fp32 {g['latency_us_fp32']:.1f} us vs int8 "
                           f"{g['latency_us_int8']:.1f} us -> int8 {faster} ({g['int8_speedup']:.2f}x) on this host")
            drop = g.get(f"{metric}_drop_db", nan)
            lines.append(f"  {role:8s} size x{g['size_ratio']:.2f}, {metric.upper()} {-drop:+.2f} dB vs fp32 "
                         f"(limit -{int8['max_drop_db']:g}){verdict}")
    return "\n".join(lines)
