"""The acid test's Python side (benchmarks/arm64/acid.sh drives it): inputs, symbols, comparisons.

    acid.py prepare BUNDLE OUT [--photos 24] [--digits 256] [--max-side 512]   # host: the input images
    acid.py symbols BUNDLE PAYLOADS OUT.npz                                     # either side: decoded symbols
    acid.py compare NAME A_DIR B_DIR [--pixels]                                 # host: file-by-file equality

`symbols` runs on the emulated arm64 install too, so it imports only the runtime (no torch, no scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "photos"
if not PHOTOS.is_dir():
    PHOTOS = Path("/work/shared/data/photos")


def _input_spec(bundle: Path) -> tuple[tuple[int, int, int], str, int]:
    m = json.loads((bundle / "manifest.json").read_text())
    spec = m["input"]
    return tuple(spec["shape"]), spec.get("channel_order", "L"), int(spec.get("size_multiple") or 0)


def prepare(args: argparse.Namespace) -> None:
    """Digits (8x8 bundles) or real photographs fitted to the bundle's input into OUT as PNG files."""
    from PIL import Image, ImageOps

    bundle, out = Path(args.bundle), Path(args.out)
    (c, h, w), mode, multiple = _input_spec(bundle)
    out.mkdir(parents=True, exist_ok=True)
    if (h, w) == (8, 8) and c == 1:
        from sklearn.datasets import load_digits

        digits = np.rint(load_digits().images[-args.digits:] / 16.0 * 255.0).astype(np.uint8)
        for i, d in enumerate(digits):
            Image.fromarray(d).save(out / f"digit-{i:04d}.png")
        print(f"{len(digits)} scikit-learn digits (the last {len(digits)} of 1,797), 8x8 gray")
        return
    files = sorted((PHOTOS / "val").glob("*.png")) + sorted((PHOTOS / "train").glob("*.png"))
    files = files[: args.photos]
    sizes = set()
    for f in files:
        with Image.open(f) as im:
            im = im.convert(mode)
            if multiple:  # any-size bundle: the photo's own size, only scaled down to --max-side
                if max(im.size) > args.max_side:
                    im.thumbnail((args.max_side, args.max_side), Image.Resampling.LANCZOS)
            else:
                im = ImageOps.fit(im, (w, h), Image.Resampling.LANCZOS)
            sizes.add(im.size)
            im.save(out / f"{f.parent.name}-{f.stem}.png")
    how = f"{len(sizes)} sizes, their own (long side <= {args.max_side})" if multiple else f"fitted to {h}x{w}"
    print(f"{len(files)} photographs from {PHOTOS} (val, then train), {mode}, {how}")


def _as_arrays(symbols: object, name: str) -> dict[str, np.ndarray]:
    """Decoder.symbols' result (an array, or the parts of a richer entropy model) as named int arrays."""
    if isinstance(symbols, np.ndarray):
        return {name: symbols}
    if isinstance(symbols, dict):
        return {f"{name}/{k}": np.asarray(v) for k, v in symbols.items()}
    if isinstance(symbols, (tuple, list)):
        return {f"{name}/{i}": np.asarray(v) for i, v in enumerate(symbols)}
    if hasattr(symbols, "__dict__"):
        return {f"{name}/{k}": np.asarray(v) for k, v in vars(symbols).items() if not k.startswith("_")}
    raise TypeError(f"cannot store symbols of type {type(symbols).__name__}")


def symbols(args: argparse.Namespace) -> None:
    from edgeae.runtime import Decoder

    dec = Decoder(args.bundle, threads=1)
    found: dict[str, np.ndarray] = {}
    for f in sorted(Path(args.payloads).rglob("*.eae")):
        found.update(_as_arrays(dec.symbols(f.read_bytes()), f.relative_to(args.payloads).as_posix()))
    np.savez(args.out, **found)
    print(f"{len(found)} symbol arrays from {args.payloads}")


def compare(args: argparse.Namespace) -> None:
    """Every file of A_DIR against B_DIR's: bytes (payloads, .npz of symbols) or decoded pixels (--pixels)."""
    a, b = Path(args.a), Path(args.b)
    if a.suffix == ".npz":
        with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
            if sorted(za.files) != sorted(zb.files):
                sys.exit(f"FAIL {args.name}: different payloads decoded ({len(za.files)} vs {len(zb.files)})")
            diff = sum(int((za[k] != zb[k]).sum()) for k in za.files)
            total = sum(za[k].size for k in za.files)
            verdict = "identical" if diff == 0 else f"{diff} DIFFERENT"
            print(f"{'PASS' if diff == 0 else 'FAIL'} {args.name}: {total:,} symbols in {len(za.files)} arrays, "
                  f"{verdict}")
            sys.exit(0 if diff == 0 else 1)
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    other = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    if names != other or not names:
        sys.exit(f"FAIL {args.name}: {len(names)} files vs {len(other)}")
    same, worst, pixels_off = 0, 0, 0
    for n in names:
        x, y = (a / n).read_bytes(), (b / n).read_bytes()
        if x == y:
            same += 1
        elif args.pixels:
            from PIL import Image

            pa = np.asarray(Image.open(a / n), np.int16)
            pb = np.asarray(Image.open(b / n), np.int16)
            d = np.abs(pa - pb)
            if not d.any():
                same += 1
            worst, pixels_off = max(worst, int(d.max())), pixels_off + int((d > 0).sum())
    total = sum((a / n).stat().st_size for n in names)
    what = "images pixel-identical" if args.pixels else "files byte-identical"
    extra = f" (others: {pixels_off} pixels off, at most {worst} levels)" if same < len(names) and args.pixels else ""
    print(f"{'PASS' if same == len(names) else 'FAIL'} {args.name}: {same}/{len(names)} {what}{extra}, "
          f"{total:,} bytes")
    sys.exit(0 if same == len(names) else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("bundle")
    p.add_argument("out")
    p.add_argument("--photos", type=int, default=24)
    p.add_argument("--digits", type=int, default=256)
    p.add_argument("--max-side", type=int, default=512)
    p = sub.add_parser("symbols")
    p.add_argument("bundle")
    p.add_argument("payloads")
    p.add_argument("out")
    p = sub.add_parser("compare")
    p.add_argument("name")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--pixels", action="store_true")
    args = ap.parse_args()
    {"prepare": prepare, "symbols": symbols, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    main()
