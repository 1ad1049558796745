"""A human summary of a bundle's manifest (shapes, sizes, PSNRs, fingerprint, int8 speed verdict)."""

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


def summarize(m: dict[str, Any]) -> str:
    q, lat = m.get("quality", {}), m["latent"]
    quant = lat["quantization"]
    metric = q.get("metric", "psnr")
    nan = float("nan")
    lines = [
        f"name        {m['name']}  ({m['model'].get('family', 'custom')})",
        f"input       {describe_input(m['input'])}",
        f"latent      {'x'.join(map(str, lat['shape']))} -> {quant['levels']} levels/channel "
        f"({quant['bits']} bits), {m['entropy']['coder']} coder"
        + (f", {len(m['entropy']['frequencies'])} tables" if "frequencies" in m["entropy"] else ""),
        f"fingerprint {m['fingerprint'][:16]}... (payloads carry the first 8 bytes)",
        "files       " + ", ".join(f"{k} {v['bytes'] / 1024:.1f} KiB" for k, v in m["files"].items()),
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
