"""A human summary of a bundle's manifest (shapes, sizes, PSNRs, fingerprint, int8 speed verdict)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeae.errors import BundleError

MAX_MANIFEST_BYTES = 32 << 20


def load_summary_manifest(path: Path) -> dict[str, Any]:
    """The raw manifest dict of a bundle folder or a manifest.json path (bounded read, one-line errors)."""
    path = path / "manifest.json" if path.is_dir() else path
    if not path.is_file():
        raise BundleError(f"{path} not found; is this a bundle written by `edgeae export`?")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes; not an edgeae manifest")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); re-export the bundle") from None
    if not isinstance(data, dict) or data.get("schema") != "edgeae.bundle":
        raise BundleError(f"{path} is not an edgeae bundle manifest (schema field missing)")
    return data


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
        f"PSNR        torch {q.get('psnr_torch', float('nan')):.2f} dB | onnx fp32 {q.get('psnr_onnx_fp32', float('nan')):.2f}"
        f" | fp32+quantised latent {q.get('psnr_fp32_quantized_latent', float('nan')):.2f}"
        + (f" | int8 {q['psnr_onnx_int8']:.2f}" if "psnr_onnx_int8" in q else ""),
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
