"""A human summary of a bundle's manifest (shapes, sizes, PSNRs, fingerprint, int8 speed verdict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeae.runtime.manifest import load_manifest


def load_summary_manifest(path: Path) -> dict[str, Any]:
    """The validated manifest of a bundle folder or a manifest.json path, as a plain dict."""
    return load_manifest(path).to_dict()


def summarize(m: dict[str, Any]) -> str:
    q, lat = m.get("quality", {}), m["latent"]
    quant = lat["quantization"]
    lines = [
        f"name        {m['name']}  ({m['model']['family']})",
        f"input       {'x'.join(map(str, m['input']['shape']))} {m['input']['channel_order']} float32 [0,1]",
        f"latent      {'x'.join(map(str, lat['shape']))} -> {quant['levels']} levels/channel "
        f"({quant['bits']} bits), {m['entropy']['coder']} coder, {len(m['entropy']['frequencies'])} tables",
        f"fingerprint {m['fingerprint'][:16]}... (payloads carry the first 8 bytes)",
        "files       " + ", ".join(f"{k} {v['bytes'] / 1024:.1f} KiB" for k, v in m["files"].items()),
        f"PSNR        torch {q.get('psnr_torch', float('nan')):.2f} dB | onnx fp32, float latent "
        f"{q.get('psnr_onnx_fp32', float('nan')):.2f} | as deployed (quantised latent): fp32 "
        f"{q.get('psnr_fp32_quantized_latent', float('nan')):.2f}"
        + (f", int8 {q['psnr_onnx_int8']:.2f}" if "psnr_onnx_int8" in q else ""),
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
            lines.append(f"  {role:8s} size x{g['size_ratio']:.2f}, PSNR {-g['psnr_drop_db']:+.2f} dB{verdict}")
    return "\n".join(lines)
