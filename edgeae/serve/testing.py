"""Helpers for tests and benchmarks: a free loopback port, a uvicorn server in a thread or a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_ready(base: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{base} not ready after {timeout}s")


class ThreadServer:
    """uvicorn serving `app` on a free loopback port in a daemon thread (context manager)."""

    def __init__(self, app: Any, port: int | None = None, **tls: Any) -> None:
        import uvicorn

        self.port = port or free_port()
        self.base = f"{'https' if tls else 'http'}://{LOOPBACK}:{self.port}"
        self.tls = tls
        service = getattr(getattr(app, "state", None), "service", None)
        if service is not None:  # the edgeae app: the same protocol limits as `edgeae serve`
            from edgeae.serve.app import uvicorn_config

            config = uvicorn_config(app, service.config, LOOPBACK, self.port, **tls)
        else:
            config = uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning", access_log=False,
                                    lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        if self.tls:
            deadline = time.monotonic() + 30
            while not self.server.started and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            wait_ready(self.base)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class ProcessServer:
    """`edgeae serve` in a subprocess on a fixed loopback port; `kill()` sends SIGKILL (fault tests)."""

    def __init__(self, bundle: str | os.PathLike[str], port: int, *args: str, log: Path | None = None) -> None:
        self.cmd = [sys.executable, "-c", "from edgeae.cli import main; main()", "serve", "--bundle", str(bundle), "--host", LOOPBACK,
                    "--port", str(port), *args]
        self.base = f"http://{LOOPBACK}:{port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> ProcessServer:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        wait_ready(self.base, timeout, self.proc)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def forged_payload(fingerprint: bytes, items: int, height: int, width: int, *, bits: int) -> bytes:
    """An attacker's version-2 payload: a valid frame (right fingerprint, right CRC) of `items` factorized
    items of height x width with EMPTY coded parts, which no encoder writes (the Packer refuses them)."""
    import zlib

    from edgeae.runtime import payload as wire

    def varint(v: int) -> bytes:
        out = bytearray()
        while True:
            out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
            v >>= 7
            if not v:
                return bytes(out)

    head = (fingerprint[: wire.FINGERPRINT_BYTES] + bytes([wire.CODER_RANGE << 5 | bits, wire.MODEL_FACTORIZED])
            + varint(items) + varint(height) + varint(width) + b"\x00" * items)
    out = wire.MAGIC + b"\x02" + varint(len(head)) + head
    return out + zlib.crc32(out).to_bytes(wire.CRC_BYTES, "little")


# --- fuzz targets (tests/test_fuzz.py runs a short hypothesis campaign; benchmarks/bench_fuzz.py 100,000) --


def fuzz_payload(data: bytes, decoder: Any) -> str:
    """Parse and decode arbitrary bytes as a payload of `decoder`'s bundle. Returns "ok" or the PayloadError
    code; any other exception is a bug (it propagates)."""
    from edgeae.errors import PayloadError
    from edgeae.runtime import payload as wire

    try:
        wire.parse_header(data)
    except PayloadError:
        pass
    try:
        images = decoder.decode(data)
    except PayloadError as exc:
        return exc.code
    assert len(images) >= 1 and all(im.dtype.name == "uint8" for im in images)
    return "ok"


def fuzz_manifest(raw: bytes, bundle_dir: Path | None = None) -> str:
    """Load arbitrary bytes as manifest.json: the bounded JSON reader and the validator, and with `bundle_dir`
    (a copy of a real bundle) the whole `Bundle.open`. Returns "ok" or "refused"; anything but a BundleError
    is a bug (it propagates)."""
    from edgeae.errors import BundleError
    from edgeae.fsutil import parse_json_bounded
    from edgeae.runtime import Bundle, Manifest

    try:
        Manifest.from_dict(parse_json_bounded(raw, "manifest.json", BundleError))
    except BundleError:
        return "refused"
    if bundle_dir is not None:
        (bundle_dir / "manifest.json").write_bytes(raw)
        try:
            Bundle.open(bundle_dir)
        except BundleError:
            return "refused"
    return "ok"


def mutate(data: bytes, rng: Any, rounds: int = 3) -> bytes:
    """A random mutation of `data` (bit flips, byte sets, inserts, deletes, truncation, duplication)."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, rounds + 1))):
        op = int(rng.integers(0, 6))
        if not b:
            b.extend(rng.integers(0, 256, int(rng.integers(1, 16)), dtype="uint8").tobytes())
            continue
        i = int(rng.integers(0, len(b)))
        if op == 0:
            b[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:
            b[i] = int(rng.integers(0, 256))
        elif op == 2:
            b[i:i] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype="uint8").tobytes()
        elif op == 3:
            del b[i : i + int(rng.integers(1, 9))]
        elif op == 4:
            del b[i:]
        else:
            j = int(rng.integers(i, len(b) + 1))
            b[i:i] = b[i:j][:4096]
    return bytes(b)


def mutate_json(value: Any, rng: Any) -> Any:
    """Replace one random node of a JSON tree with a hostile value (wrong type, huge or negative number,
    deep nesting, long string, empty container), or delete a key; only the path to it is copied."""
    hostile: list[Any] = [None, True, -1, 0, 2 ** 63, -(2 ** 63), 1e308, 0.5, "", "x" * 1000, [], {}, [[[[[]]]]],
               [0] * 1000, {"a": {"b": {"c": 1}}}, "../../etc/passwd", "\u0000"]

    def leaf(node: Any) -> Any:
        if isinstance(node, (int, float)) and not isinstance(node, bool) and rng.random() < 0.5:
            return node * int(rng.choice([-1, 2, 1 << 20])) + int(rng.integers(-2, 3))
        return hostile[int(rng.integers(0, len(hostile)))]

    def descend(node: Any, depth: int) -> Any:
        if not isinstance(node, (dict, list)) or not node or (depth and rng.random() < 0.25):
            return leaf(node)
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        k = keys[int(rng.integers(0, len(keys)))]
        out = dict(node) if isinstance(node, dict) else list(node)
        if isinstance(out, dict) and rng.random() < 0.1:
            del out[k]
        else:
            out[k] = descend(node[k], depth + 1)
        return out

    return descend(value, 0)
