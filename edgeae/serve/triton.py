"""A Triton Inference Server model repository for a bundle's decoder graph.

    OUT/<name>/config.pbtxt   platform "onnxruntime_onnx", max_batch_size, dims without the batch axis,
                              dynamic_batching
    OUT/<name>/1/model.onnx   the bundle's decoder graph (fp32 or int8), copied byte for byte
    OUT/README.md             what Triton does and does not do (entropy decoding happens before it)

Also a small text-proto reader (`parse_pbtxt`) so the written config can be checked without Triton's protos.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeae.errors import InputError
from edgeae.runtime.bundle import Bundle

README = """# Triton model repository for the edgeae bundle `{bundle}`

Model `{name}` is the bundle's **decoder graph only** ({precision}): float32 latents `{input}`
{in_dims} (plus the batch axis) -> float32 images `{output}` {out_dims} in [0, 1].

Triton does **not** read edgeae payloads. Parsing the payload, checking its fingerprint
(`{fingerprint}`), range (entropy) decoding and dequantising the symbols happen on the client or a
front service **before** Triton, with the torch-free runtime:

```python
from edgeae.runtime.codec import Decoder
dec = Decoder("{bundle}")
latents = dec.latents(payload)   # (N, {latent}) float32 -> Triton input `{input}`
# images = Triton output `{output}`; to uint8: edgeae.runtime.images.to_uint8(images)
```

Serve with `tritonserver --model-repository {out}`. `max_batch_size` {max_batch}; Triton's dynamic batcher
waits up to {delay_us} µs to group requests.
"""


def _name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-")
    return name or "edgeae_decoder"


def config_pbtxt(name: str, input_name: str, in_dims: tuple[int, ...], output_name: str,
                 out_dims: tuple[int, ...], max_batch: int, delay_us: int) -> str:
    preferred = sorted({b for b in (4, 8, 16, 32, 64) if b <= max_batch} | {max_batch})
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch}\n"
        "input [\n"
        "  {\n"
        f'    name: "{input_name}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {', '.join(map(str, in_dims))} ]\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        f'    name: "{output_name}"\n'
        "    data_type: TYPE_FP32\n"
        f"    dims: [ {', '.join(map(str, out_dims))} ]\n"
        "  }\n"
        "]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {delay_us}\n"
        "}\n"
        "instance_group [\n"
        "  {\n"
        "    count: 1\n"
        "    kind: KIND_CPU\n"
        "  }\n"
        "]\n"
    )


def write_repository(bundle: str | os.PathLike[str], out: str | os.PathLike[str], *, name: str | None = None,
                     precision: str = "fp32", max_batch: int = 32, delay_us: int = 5000) -> Path:
    """Write the repository (atomically: built beside OUT/<name>, then renamed into place); returns the
    model folder."""
    if max_batch < 1:
        raise InputError(f"max batch must be >= 1, got {max_batch}")
    b = Bundle.open(bundle, partial=True)
    m = b.manifest
    graph = m.graphs["decoder"]
    src = b.graph_path("decoder", precision)
    name = _name(name or f"{m.name}_decoder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / name
    if final.exists():
        raise InputError(f"{final} already exists; remove it or choose another --out / --name")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        (tmp / "1").mkdir()
        shutil.copyfile(src, tmp / "1" / "model.onnx")
        cfg = config_pbtxt(name, graph.input, _dims(m.latent.shape, m), graph.output, _dims(m.input.shape, m),
                           max_batch, delay_us)
        (tmp / "config.pbtxt").write_text(cfg)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    readme = README.format(bundle=b.path, name=name, precision=precision, input=graph.input, output=graph.output,
                           in_dims=list(m.latent.shape), out_dims=list(m.input.shape), fingerprint=m.fingerprint,
                           latent=", ".join(map(str, m.latent.shape)), out=out, max_batch=max_batch,
                           delay_us=delay_us)
    (out / "README.md").write_text(readme)
    return final


def _dims(shape: tuple[int, ...], m: Any) -> tuple[int, ...]:
    """Triton dims: -1 for the H and W axes of any-size bundles (their graphs take any size)."""
    return (shape[0], -1, -1) if m.input.size_multiple and len(shape) == 3 else tuple(shape)


# --- a minimal protobuf text-format reader --------------------------------------------------------------

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([A-Za-z_][A-Za-z0-9_.]*)|(-?\d+(?:\.\d+)?)|([{}\[\]:,<>]))')


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read text proto at offset {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group(1) is None:
            out.append(next(g for g in m.groups()[1:] if g is not None))
    return out


def _scalar(tok: str) -> Any:
    if tok.startswith('"'):
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    if re.fullmatch(r"-?\d+\.\d+", tok):
        return float(tok)
    return tok  # enum or identifier


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Protobuf text format -> {field: [values]} (every field repeated; messages are nested dicts)."""
    toks = _tokens(text)
    pos = 0

    def value() -> Any:
        nonlocal pos
        t = toks[pos]
        if t in ("{", "<"):
            pos += 1
            return message("}" if t == "{" else ">")
        pos += 1
        return _scalar(t)

    def message(end: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        msg: dict[str, list[Any]] = {}
        while pos < len(toks) and toks[pos] != end:
            key = toks[pos]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"expected a field name, got {key!r}")
            pos += 1
            if toks[pos] == ":":
                pos += 1
            if toks[pos] == "[":
                pos += 1
                while toks[pos] != "]":
                    msg.setdefault(key, []).append(value())
                    if toks[pos] == ",":
                        pos += 1
                pos += 1
            else:
                msg.setdefault(key, []).append(value())
            if pos < len(toks) and toks[pos] in (",", ";"):
                pos += 1
        if end is not None:
            if pos >= len(toks):
                raise ValueError(f"missing {end!r}")
            pos += 1
        return msg

    result = message(None)
    if pos != len(toks):
        raise ValueError("trailing tokens")
    return result
