"""The acid test's Python side (benchmarks/arm64/acid.sh drives it): inputs, symbols, comparisons.

    acid.py prepare BUNDLE OUT [--photos 24] [--digits 256] [--max-side 512]   # host: the input images
    acid.py symbols BUNDLE PAYLOADS OUT.npz                                     # either side: decoded symbols
    acid.py compare NAME A_DIR B_DIR [--pixels [--near 1]]                      # host: file-by-file equality

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
    if (h, w) == (8, 8) and c == 1 and not multiple:  # any-size bundles get photographs of their own sizes
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


def symbols(args: argparse.Namespace) -> None:
    """What each payload decodes to, before the decoder graph: the int symbols (factorized, one size) or else
    each item's latent (hyperprior, mixed sizes), which is the symbols plus their integer-derived means. A
    hyperprior decodes with verify=True: every hyper-decoder run is checked against the numpy int64 reference."""
    from edgeae.errors import CorruptStream, InputError
    from edgeae.runtime import Decoder

    dec = Decoder(args.bundle, threads=1)
    verify = ""
    if hasattr(dec.entropy, "verify"):
        try:
            import edgeae.runtime.inthyper  # noqa: F401  (the numpy int64 reference of the hyper-decoder)
        except ImportError:
            verify = " (no numpy reference of the hyper-decoder in this runtime: not verified)"
        else:
            dec = Decoder(args.bundle, threads=1, verify=True)
            verify = " (every hyper-decoder run verified against the numpy int64 reference)"
    found: dict[str, np.ndarray] = {}
    for f in sorted(Path(args.payloads).rglob("*.eae")):
        name, data = f.relative_to(args.payloads).as_posix(), f.read_bytes()
        try:
            found[name] = dec.symbols(data)
        except (CorruptStream, InputError):  # no single symbol array (hyperprior, mixed sizes): per-item latents
            latents, sizes = dec.items(data)
            found.update({f"{name}/{i}-{h}x{w}": y for i, (y, (h, w)) in enumerate(zip(latents, sizes, strict=True))})
    np.savez(args.out, **found)
    print(f"{len(found)} arrays from {args.payloads}{verify}")


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
            what = "symbols" if all(za[k].dtype.kind in "iu" for k in za.files) else "latent values"
            print(f"{'PASS' if diff == 0 else 'FAIL'} {args.name}: {total:,} {what} in {len(za.files)} arrays, "
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
    if same == len(names):
        verdict = "PASS"
    elif args.pixels and worst <= args.near:
        verdict = "NEAR"
    else:
        verdict = "FAIL"
    extra = f"; in the others {pixels_off} pixel value(s) differ, by at most {worst} level(s)" if worst else ""
    print(f"{verdict} {args.name}: {same}/{len(names)} {what}{extra} ({total:,} bytes)")
    sys.exit(1 if verdict == "FAIL" else 0)

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
    p.add_argument("--near", type=int, default=0, help="with --pixels: differences up to this many levels are "
                   "NEAR (reported, exit 0), not FAIL")
    args = ap.parse_args()
    {"prepare": prepare, "symbols": symbols, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    main()
