"""Fuzz campaign: 100,000 inputs each for the payload parser (+ entropy decoder) and the manifest loader.

Inputs are mutations of real seeds (edgeae.serve.testing.mutate: bit flips, byte sets, inserts, deletes,
truncations, duplications; for manifests also mutate_json: one node of the JSON tree replaced by a hostile
value), plus purely random bytes. Every input must end in "ok" or a typed error (PayloadError /
BundleError); anything else stops the run with the input saved. A share of the manifest inputs goes through
the whole `Bundle.open` on a copy of the bundle (files, fingerprint recomputation). With atheris installed,
`--atheris` runs its coverage-guided engine on the payload target instead of the mutation loop.

    .venv/bin/python benchmarks/bench_fuzz.py [BUNDLE] [--inputs 100000] [--seed 0] [--open-every 1]

Without BUNDLE the 8x8 digits conv of the test fixtures is trained (3 epochs) and exported to a temp folder.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeae.runtime.codec import Decoder, Encoder
from edgeae.serve.testing import fuzz_manifest, fuzz_payload, mutate, mutate_json


def tiny_bundle(root: Path) -> Path:
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.train.trainer import TrainConfig, train

    run = train("conv", "digits", root / "run", {}, TrainConfig(epochs=3, batch_size=64, seed=0, progress=False)).path
    export_run(run, ExportOptions(out=root / "bundle", int8=False, calibration_samples=64, measure_speed=False))
    return root / "bundle"


def payloads(decoder: Decoder, seeds: list[bytes], n: int, rng: np.random.Generator, out: Path) -> dict:
    outcomes: collections.Counter[str] = collections.Counter()
    t0 = time.perf_counter()
    for i in range(n):
        data = rng.integers(0, 256, int(rng.integers(0, 256)), dtype=np.uint8).tobytes() if i % 10 == 0 \
            else mutate(seeds[i % len(seeds)], rng, rounds=4)
        try:
            outcomes[fuzz_payload(data, decoder)] += 1
        except Exception:
            (out / "payload-crash.bin").write_bytes(data)
            raise
    return {"inputs": n, "seconds": time.perf_counter() - t0, "outcomes": dict(outcomes.most_common())}


def manifests(seed_bytes: bytes, bundle: Path, n: int, open_every: int, rng: np.random.Generator, out: Path) -> dict:
    tree = json.loads(seed_bytes)
    folder = out / "bundle-copy"
    shutil.copytree(bundle, folder)
    outcomes: collections.Counter[str] = collections.Counter()
    opened = 0
    t0 = time.perf_counter()
    for i in range(n):
        data = mutate(seed_bytes, rng, rounds=4) if i % 2 else json.dumps(mutate_json(tree, rng)).encode()
        through_open = i % open_every == 0
        opened += through_open
        try:
            outcomes[fuzz_manifest(data, folder if through_open else None)] += 1
        except Exception:
            (out / "manifest-crash.json").write_bytes(data)
            raise
    return {"inputs": n, "through_bundle_open": opened, "seconds": time.perf_counter() - t0,
            "outcomes": dict(outcomes.most_common())}


def run_atheris(decoder: Decoder, seeds: list[bytes], n: int) -> None:  # pragma: no cover (optional)
    import atheris

    corpus = Path(tempfile.mkdtemp(prefix="edgeae-fuzz-"))
    for i, s in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(s)
    atheris.instrument_all()  # coverage feedback from every loaded module (the parser, the coders)
    atheris.Setup([sys.argv[0], f"-runs={n}", "-max_len=4096", str(corpus)], lambda data: fuzz_payload(data, decoder))
    atheris.Fuzz()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--open-every", type=int, default=1, help="every Nth manifest input runs Bundle.open")
    ap.add_argument("--atheris", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        root = Path(tmp)
        bundle = Path(args.bundle) if args.bundle else tiny_bundle(root)
        enc, dec = Encoder(bundle), Decoder(bundle)
        images = np.random.default_rng(0).integers(0, 256, (16, *enc.manifest.input.shape[1:]), dtype=np.uint8)
        if enc.manifest.input.shape[0] == 3:
            images = np.random.default_rng(0).integers(0, 256, (16, *enc.manifest.input.shape[1:], 3), dtype=np.uint8)
        seeds = [enc.encode(images[:1]), enc.encode(images[:4]), enc.encode(images)]
        if args.atheris:
            run_atheris(dec, seeds, args.inputs)
            return
        rng = np.random.default_rng(args.seed)
        p = payloads(dec, seeds, args.inputs, rng, root)
        m = manifests((bundle / "manifest.json").read_bytes(), bundle, args.inputs, args.open_every, rng, root)
    print(f"bundle: {bundle} ({dec.manifest.name}, latent {list(dec.latent_shape)})")
    for name, r in (("payload parser + decoder", p), ("manifest loader", m)):
        rate = r["inputs"] / r["seconds"]
        print(f"{name:<26} {r['inputs']:>7} inputs in {r['seconds']:6.1f} s ({rate:,.0f}/s), no untyped error; "
              f"outcomes {r['outcomes']}" + (f"; {r['through_bundle_open']} through Bundle.open"
                                             if "through_bundle_open" in r else ""))


if __name__ == "__main__":
    main()
