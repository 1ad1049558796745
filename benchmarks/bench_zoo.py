"""Speed and memory of a pretrained zoo bundle next to WebP and JPEG (issue 15's runtime targets).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_zoo.py photo:3 [--image PNG] [--repeat 7]

One process, one thread everywhere (onnxruntime intra-op 1, Pillow is single-threaded), measured side by side
on the same 768x512 RGB image (a crop of the given photograph, resized up when smaller; default:
scikit-image's astronaut, which is not in the training set): medians of --repeat runs of the full
`Encoder.encode` (preprocess, graph, entropy coding, payload) int8 and fp32, full `Decoder.decode` (fp32 when
the bundle has no int8 decoder, as the zoo's), WebP
method 6 and JPEG optimize=True encode/decode at a quality of similar size. Then the peak RSS of encoding one
1920x1080 photograph on the torch-free runtime, in a fresh interpreter with torch made unimportable.
Targets: int8 encode <= 3x WebP m6 encode, decode <= 50x WebP decode, peak RSS <= 400 MB.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np


def _image(path: str | None, h: int, w: int) -> np.ndarray:
    from PIL import Image

    if path:
        im = Image.open(path).convert("RGB")
    else:
        import skimage.data

        im = Image.fromarray(skimage.data.astronaut())
    scale = max(h / im.height, w / im.width, 1.0)
    if scale > 1:
        im = im.resize((round(im.width * scale + 0.5), round(im.height * scale + 0.5)), Image.Resampling.BICUBIC)
    x0, y0 = (im.width - w) // 2, (im.height - h) // 2
    return np.asarray(im.crop((x0, y0, x0 + w, y0 + h)))


def _median(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _pillow(img: np.ndarray, fmt: str, budget: int) -> tuple[int, bytes]:
    from edgeae.zoo.compare import fit_budget

    q, data, _ = fit_budget(img, fmt, budget)
    return q, data


def _decode(data: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()


def peak_rss(bundle: str, precision: str) -> float:
    """MB of peak RSS of a torch-free interpreter that encodes one 1920x1080 RGB image: its own high-water
    mark (VmHWM, Linux). Not ru_maxrss: Linux carries a forked child's ru_maxrss over from its parent, so
    measured from this benchmark (500+ MB of sessions) it read the parent's figure -- the 469 MB of the last
    record, for fp32 and int8 alike."""
    code = textwrap.dedent(f"""
        import sys, resource
        sys.modules["torch"] = None
        import numpy as np
        from edgeae.runtime.codec import Encoder
        img = np.random.default_rng(0).integers(0, 256, (1, 1080, 1920, 3), dtype=np.uint8)
        enc = Encoder({bundle!r}, {precision!r}, threads=1)
        data = enc.encode(img)
        try:
            hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0].split()[1]
            print(int(hwm) / 1024, len(data))
        except (OSError, IndexError):
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(data))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(out.stderr.strip().splitlines()[-1])
    return float(out.stdout.split()[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="zoo name (photo:3) or bundle folder")
    ap.add_argument("--image", help="photograph to crop 768x512 from (default: skimage astronaut)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json")
    a = ap.parse_args()
    from PIL import Image

    from edgeae.runtime.bundle import Bundle
    from edgeae.runtime.codec import Decoder, Encoder

    img = _image(a.image, 512, 768)
    rows: dict[str, dict[str, float]] = {}
    for precision in ("int8", "fp32"):
        enc = Encoder(a.bundle, precision, threads=1)
        has_int8_decoder = Bundle.open(a.bundle).manifest.graphs["decoder"].int8_file is not None
        dec = Decoder(a.bundle, precision if has_int8_decoder else "fp32", threads=1)
        payload = enc.encode(img[None])
        rows[f"edgeae {precision}"] = {
            "bytes": len(payload),
            "encode_ms": 1e3 * _median(functools.partial(enc.encode, img[None]), a.repeat),
            "decode_ms": 1e3 * _median(functools.partial(dec.decode, payload), a.repeat)}
    budget = int(rows["edgeae int8"]["bytes"])
    pil = Image.fromarray(img)
    for fmt, opts in (("webp", {"method": 6}), ("jpeg", {"optimize": True})):
        q, data = _pillow(img, fmt, budget)
        save = functools.partial(pil.save, format=fmt.upper(), quality=q, **opts)
        rows[f"{fmt} q{q}"] = {"bytes": len(data), "encode_ms": 1e3 * _median(lambda s=save: s(io.BytesIO()), a.repeat),
                               "decode_ms": 1e3 * _median(functools.partial(_decode, data), a.repeat)}
    webp = next(v for k, v in rows.items() if k.startswith("webp"))
    print(f"768x512 RGB, 1 thread, median of {a.repeat} (bundle {a.bundle})")
    print(f"{'codec':14s} {'bytes':>7s} {'encode ms':>10s} {'x WebP':>7s} {'decode ms':>10s} {'x WebP':>7s}")
    for k, v in rows.items():
        print(f"{k:14s} {v['bytes']:7.0f} {v['encode_ms']:10.1f} {v['encode_ms'] / webp['encode_ms']:7.2f} "
              f"{v['decode_ms']:10.1f} {v['decode_ms'] / webp['decode_ms']:7.2f}")
    rss = {p: peak_rss(a.bundle, p) for p in ("int8", "fp32")}
    print("peak RSS encoding one 1920x1080 photo, torch-free runtime: "
          + ", ".join(f"{p} {v:.0f} MB" for p, v in rss.items()))
    if a.json:
        import os

        from edgeae.fsutil import write_atomic

        write_atomic(a.json, json.dumps({"rows": rows, "peak_rss_mb": rss, "load_average": os.getloadavg()[0]},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
