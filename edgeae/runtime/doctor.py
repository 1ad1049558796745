"""`edgeae doctor`: is this install fit to encode and decode? Platform, versions, coder, and a real self-test.

The self-test runs a tiny real bundle shipped in the package (`_selftest/`, made on x86-64 by
benchmarks/arm64/make_selftest.py with our trainer and exporter) through the runtime, torch-free:

1. decode `reference.eae` and `reference-v1.eae`, payloads encoded on x86-64 (the current wire format and
   v1): their symbols must be exactly the stored ones (the entropy decoder reads other machines' payloads);
2. encode the stored digits here and decode the result here: same symbols (a payload round trip);
3. compare the symbols computed here from the digits with x86-64's: a symbol off by more than one step fails
   (a broken encoder graph), off by one is float rounding in the encoder graph, reported but harmless (every
   machine decodes any payload the same way); with the same symbols, the payload must be x86-64's byte for
   byte (unless the runtime now writes another wire-format version);
4. the images decoded here from `reference.eae` against x86-64's decode: at most 2 grey levels apart
   (float arithmetic in the decoder graph differs between CPUs by a few ulps, not more).

With a bundle of one's own, the self-test encodes and decodes seeded noise images of its input size.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeae.errors import EdgeaeError, SelfTestFailed

SELFTEST = Path(__file__).resolve().parent / "_selftest"
MAX_DECODE_DIFF = 2  # grey levels between this machine's and x86-64's decode of the same payload
_ARM_PARTS = {  # /proc/cpuinfo "CPU part" of ARM Ltd cores (implementer 0x41) -> core and typical board
    "0xd03": "Cortex-A53 (Raspberry Pi 3 / Zero 2)", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57 (Jetson Nano)", "0xd08": "Cortex-A72 (Raspberry Pi 4)", "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76 (Raspberry Pi 5)", "0xd0c": "Neoverse-N1",
    "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE (Jetson Orin)", "0xd4f": "Neoverse-V2",
}
_NO_ORT_WHEEL = {"armv7l", "armv6l", "armv8l", "arm", "i686", "i386"}


def coder_backend() -> str:
    """The entropy coder backend this install uses ("constriction" or "numpy")."""
    try:
        from edgeae.runtime.rangecoder import backend_name
    except ImportError:  # before the numpy coder: constriction is the only one
        try:
            import constriction  # noqa: F401
        except ImportError:
            return "none (constriction is not importable)"
        return "constriction"
    return backend_name()


def _cpu() -> str:
    cores = os.cpu_count() or 0
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        pass
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and not model:
            model = value
        elif key == "CPU part" and not model:
            model = _ARM_PARTS.get(value.lower(), f"ARM part {value}")
    board = ""
    try:
        board = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ")[:100]
    except OSError:
        pass
    return ", ".join(x for x in (f"{cores} cores", model or platform.processor(), board) if x)


def environment() -> list[tuple[str, str]]:
    """(label, value) rows describing this machine and install; never raises."""
    rows = [
        ("platform", f"{platform.platform()} ({platform.machine()}, {platform.architecture()[0]})"),
        ("cpu", _cpu()),
        ("python", f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"),
        ("numpy", np.__version__),
    ]
    try:
        import onnxruntime as ort
    except ImportError as exc:
        rows.append(("onnxruntime", f"NOT IMPORTABLE ({exc})"))
    else:
        rows.append(("onnxruntime", f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}"))
    try:
        import PIL

        rows.append(("Pillow", PIL.__version__))
    except ImportError:
        rows.append(("Pillow", "not installed (image files cannot be read; arrays still work)"))
    try:
        rows.append(("entropy coder", coder_backend()))
    except ValueError as exc:  # a bad EDGEAE_CODER
        rows.append(("entropy coder", f"INVALID: {exc}"))
    return rows


def _noise_images(shape: tuple[int, ...], n: int = 4) -> np.ndarray:
    c, h, w = shape
    x = np.random.default_rng(0).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    return x[..., 0] if c == 1 else x


def self_test(bundle: str | os.PathLike[str] | None = None, threads: int = 1) -> list[tuple[str, str]]:
    """Encode and decode with a real bundle; (label, result) rows, or SelfTestFailed with one line."""
    from edgeae.runtime.codec import Decoder, Encoder
    from edgeae.runtime.payload import parse

    rows: list[tuple[str, str]] = []
    own = bundle is not None
    path = Path(bundle) if bundle is not None else SELFTEST / "bundle"
    t0 = time.perf_counter()
    try:
        enc, dec = Encoder(path, threads=threads), Decoder(path, threads=threads)
    except EdgeaeError as exc:
        raise SelfTestFailed(f"self-test: cannot open the bundle {path}: {exc}") from None
    except Exception as exc:  # onnxruntime or the coder failing to start is what doctor is for
        raise SelfTestFailed(f"self-test: the runtime cannot load {path}: {type(exc).__name__}: {exc}") from None
    m = enc.manifest
    rows.append(("bundle", f"{path if own else 'built-in'}: {m.name}, input {tuple(m.input.shape)}, "
                           f"latent {tuple(m.latent.shape)}, fingerprint {m.fingerprint[:16]}"))
    images = np.load(SELFTEST / "images.npy") if not own else _noise_images(tuple(m.input.shape))
    try:
        if not own:  # 1. payloads made on x86-64: the current wire format, and v1 from older installs
            reference = (SELFTEST / "reference.eae").read_bytes()
            made = json.loads((SELFTEST / "reference.json").read_text())
            theirs = np.load(SELFTEST / "symbols.npy").astype(np.int64)
            read = []
            for name in ("reference.eae", "reference-v1.eae"):
                data = (SELFTEST / name).read_bytes()
                got = dec.symbols(data)
                if not np.array_equal(got, theirs):
                    raise SelfTestFailed(f"self-test: the payload {name} encoded on {made['machine']} decodes to "
                                         f"{int((got != theirs).sum())} wrong symbol(s) here: the entropy decoder "
                                         "is broken on this install; report it with this output")
                read.append(f"v{parse(data).header.version} {len(data)} B")
            rows.append(("decode ref", f"payloads from {made['machine']} ({', '.join(read)}): symbols identical"))
        # 2. a round trip on this machine
        payload = enc.encode(images)
        ours = enc.symbols(images)
        if not np.array_equal(dec.symbols(payload), ours):
            raise SelfTestFailed("self-test: a payload encoded here does not decode to its own symbols; the "
                                 "entropy coder is broken on this install; report it with this output")
        out = np.asarray(dec.decode(payload))  # one size: an array
        if out.shape != images.shape or out.dtype != np.uint8:
            raise SelfTestFailed(f"self-test: decoding gave {out.dtype} {out.shape}, expected uint8 {images.shape}")
        rows.append(("round trip", f"{len(images)} images -> {len(payload)} B payload -> same symbols -> "
                                   f"{len(out)} images"))
        if not own:  # 3. symbols and bytes against x86-64's
            diff = np.abs(ours.astype(np.int64) - theirs)
            if diff.max() > 1:
                raise SelfTestFailed(f"self-test: the encoder graph gives symbols up to {int(diff.max())} steps "
                                     f"from {made['machine']}'s for the same images; onnxruntime is computing "
                                     "wrong results on this install")
            if diff.any():
                rows.append(("encode", f"{int((diff > 0).sum())} of {diff.size} symbols differ by one step "
                                       f"from {made['machine']}'s (float rounding in the encoder graph; payloads "
                                       "still decode identically everywhere)"))
            else:
                mine_v, theirs_v = parse(payload).header.version, parse(reference).header.version
                if payload == reference:
                    same = "payload byte-identical"
                elif mine_v != theirs_v:
                    same = f"payload in wire format v{mine_v} (the reference is v{theirs_v})"
                else:  # same symbols, same format: the bytes are a pure function of them
                    raise SelfTestFailed(f"self-test: the same symbols give other bytes than on {made['machine']} "
                                         f"(wire format v{mine_v}): the entropy coder is not byte-compatible on "
                                         "this install; report it with this output")
                rows.append(("encode", f"symbols identical to {made['machine']}'s; {same}"))
            # 4. the decoder graph against x86-64's
            mine = np.asarray(dec.decode(reference)).astype(np.int16)
            worst = int(np.abs(mine - np.load(SELFTEST / "decoded.npy").astype(np.int16)).max())
            if worst > MAX_DECODE_DIFF:
                raise SelfTestFailed(f"self-test: decoding the reference payload gives pixels {worst} levels from "
                                     f"{made['machine']}'s (at most {MAX_DECODE_DIFF} expected); onnxruntime "
                                     "is computing wrong results on this install")
            rows.append(("decode", "images identical to " + made["machine"] + "'s" if worst == 0
                         else f"images within {worst} grey level(s) of {made['machine']}'s"))
    except EdgeaeError as exc:
        if isinstance(exc, SelfTestFailed):
            raise
        raise SelfTestFailed(f"self-test: {type(exc).__name__}: {exc}") from None
    rows.append(("self-test", f"passed in {time.perf_counter() - t0:.2f} s"))
    return rows


def run_doctor(bundle: str | os.PathLike[str] | None = None, run_self_test: bool = True,
               echo: Callable[[str], Any] = print) -> None:
    """Print the environment, then the self-test; SelfTestFailed (one line) if this install cannot work."""
    def show(rows: list[tuple[str, str]]) -> None:
        for label, value in rows:
            echo(f"{label:<14}{value}")

    env = environment()
    show(env)
    machine = platform.machine().lower()
    if machine in _NO_ORT_WHEEL or platform.architecture()[0] == "32bit":
        # A 32-bit userland on a 64-bit kernel reports aarch64 but installs armv7l wheels.
        echo(f"{'note':<14}this is a 32-bit Python ({machine}): onnxruntime publishes no 32-bit ARM wheel; "
             "install a 64-bit OS (aarch64) on this board (docs/DEVICES.md)")
    problems = [f"{label}: {value}" for label, value in env if "NOT IMPORTABLE" in value or "INVALID" in value
                or value.startswith("none (")]
    if problems:
        raise SelfTestFailed(f"this install cannot encode or decode: {problems[0]}")
    if run_self_test:
        show(self_test(bundle))
