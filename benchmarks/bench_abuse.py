"""Benchmark: the decode server under the abuse of issue 16, with well-behaved devices running alongside.

A real `edgeae serve` subprocess (device keys, --store, --memory-budget 64 MiB, 2 s header/body timeouts) on a
free loopback port. A *probe* device ingests fresh, signed one-image payloads one after the other the whole
time; its latencies give p50/p99 per phase, next to the unloaded p99. Phases, each bounded by --seconds:

  unloaded   the probe alone
  forged     attackers post the 64 KB payload of 65,536 empty item bodies (keyed and unkeyed, decode and
             ingest) as fast as the server answers
  slow       --slow connections trickling request heads, and as many sending 1 MiB - 1 byte of a 1 MiB
             body and stalling
  mixed      all of it at once, plus max-size valid batch payloads, garbage bytes and bad signatures

Printed: the server's peak RSS per phase (/proc, sampled every 20 ms) against its RSS after start-up, the CPU
seconds the server and the attackers' process used in the phase, the status counts of every client, the probe's p50/p99 vs unloaded, and at the end the integrity check: every
acknowledged probe payload is in the store exactly once, the SQLite index lists exactly the folders on disk,
and nothing the attackers sent was stored. Targets: RSS < 300 MB, probe p99 < 3x unloaded, 0 lost or
duplicated.

    .venv/bin/python benchmarks/bench_abuse.py [BUNDLE] [--seconds 8] [--slow 200] [--attackers 8] [--penalty-max 1]

Run it on a quiet host (docs/SERVER.md has the figures): PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python
benchmarks/bench_abuse.py. `--penalty-max 0` shows the server without refusal penalties.

Without BUNDLE the 8x8 digits conv of the test fixtures is trained (3 epochs) and exported to a temp folder.
The attackers run in a child process (the probe never waits for their GIL), but client and server share the
host's cores: on a 2-core machine the attackers' own CPU also slows the probe.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import multiprocessing as mp
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgeae.runtime import payload as wire
from edgeae.runtime.codec import Decoder, Encoder
from edgeae.serve.auth import rewrite_key_file, sign
from edgeae.serve.store import ImageStore, payload_id
from edgeae.serve.testing import LOOPBACK, ProcessServer, free_port

OCTET = "application/octet-stream"


class Client:
    """One keep-alive stdlib connection; reconnects after the server closes it."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port, self.timeout, self.conn = port, timeout, None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return r.status, data
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    return 0, b""  # connection refused/reset twice: counted as status 0
        return 0, b""


class RSS:
    """The server's resident set size, sampled every 20 ms from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.status = Path(f"/proc/{pid}/status")
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.now())
            except OSError:
                return

    def now(self) -> int:
        for line in self.status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise OSError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process and its threads so far (/proc, Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tiny_bundle(root: Path) -> Path:
    from edgeae.bundling.build import ExportOptions, export_run
    from edgeae.train.trainer import TrainConfig, train

    run = train("conv", "digits", root / "run", {}, TrainConfig(epochs=3, batch_size=64, seed=0, progress=False)).path
    export_run(run, ExportOptions(out=root / "bundle", int8=False, calibration_samples=64, measure_speed=False))
    return root / "bundle"


def probe(port: int, key: str, enc: Encoder, shape: tuple, stop: threading.Event, seed: int,
          acked: list[str], lat: list[float], statuses: collections.Counter) -> None:
    """The well-behaved device: fresh signed one-image ingests, one at a time."""
    rng = np.random.default_rng(seed)
    c = Client(port)
    while not stop.is_set():
        p = enc.encode(rng.integers(0, 256, (1, *shape), dtype=np.uint8))
        t0 = time.perf_counter()
        status, _ = c.post("/v1/ingest", p, {"Content-Type": OCTET, "Authorization": f"Bearer {key}",
                                             "X-Edgeae-Signature": sign(key, p)})
        lat.append(time.perf_counter() - t0)
        statuses[status] += 1
        if status == 200:
            acked.append(payload_id(p))


def attacker(port: int, bodies: list[tuple[str, bytes, dict]], stop: threading.Event,
             statuses: collections.Counter) -> None:
    c = Client(port)
    i = 0
    while not stop.is_set():
        path, body, headers = bodies[i % len(bodies)]
        i += 1
        statuses[c.post(path, body, headers)[0]] += 1


def slow_head(port: int, stop: threading.Event, statuses: collections.Counter) -> None:
    """Trickle a request head one byte every 0.2 s until the server answers or closes."""
    head = b"POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n" + b"X-Pad: " + b"a" * 500
    while not stop.is_set():
        try:
            with socket.create_connection((LOOPBACK, port), timeout=30) as s:
                s.settimeout(0.2)
                for b in head:
                    try:
                        s.send(bytes([b]))
                        data = s.recv(4096)
                        statuses[int(data[9:12]) if data[:5] == b"HTTP/" else 0] += 1
                        break
                    except TimeoutError:
                        if stop.is_set():
                            break
                    except OSError:
                        statuses[0] += 1
                        break
        except OSError:
            statuses[0] += 1
            time.sleep(0.2)


def stalled_body(port: int, key: str, stop: threading.Event, statuses: collections.Counter) -> None:
    """Announce a 1 MiB body, send 1 MiB - 1 byte of it, stall."""
    size = 1 << 20
    head = (f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: {OCTET}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    chunk = b"\0" * 65536
    while not stop.is_set():
        try:
            with socket.create_connection((LOOPBACK, port), timeout=30) as s:
                s.sendall(head + b"\xea\xae")
                sent = 2
                while sent < size - 1:
                    n = min(len(chunk), size - 1 - sent)
                    s.sendall(chunk[:n])
                    sent += n
                s.settimeout(30)
                data = s.recv(4096)
                statuses[int(data[9:12]) if data[:5] == b"HTTP/" else 0] += 1
        except OSError:
            statuses[0] += 1
        time.sleep(0.1)  # then stall again on a new connection


def attack(phase: str, port: int, evil_key: str, bodies: list, n_attackers: int, n_slow: int, seconds: float,
           out: mp.Queue) -> None:
    """One phase's attackers, in their own process (so the probe in the parent never waits for their GIL)."""
    stop = threading.Event()
    statuses: collections.Counter = collections.Counter()
    threads = []
    if phase in ("forged", "mixed"):
        threads += [threading.Thread(target=attacker, args=(port, bodies, stop, statuses)) for _ in range(n_attackers)]
    if phase in ("slow", "mixed"):
        threads += [threading.Thread(target=slow_head, args=(port, stop, statuses)) for _ in range(n_slow)]
        threads += [threading.Thread(target=stalled_body, args=(port, evil_key, stop, statuses))
                    for _ in range(n_slow // 2)]
    for t in threads:
        t.daemon = True
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=40)
    out.put((dict(statuses), time.process_time()))


def q(a: list[float], p: float) -> float:
    return float(np.quantile(a, p)) * 1000 if a else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("--seconds", type=float, default=8.0, help="per phase")
    ap.add_argument("--slow", type=int, default=200, help="slow-head connections (and as many stalled bodies / 2)")
    ap.add_argument("--attackers", type=int, default=8, help="forged-payload client threads")
    ap.add_argument("--penalty-max", type=float, default=1.0, help="the server's --penalty-max (0: refusals never wait)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
        root = Path(tmp)
        bundle = Path(args.bundle) if args.bundle else tiny_bundle(root)
        enc, dec = Encoder(bundle), Decoder(bundle)
        shape = enc.manifest.input.shape[1:] if enc.manifest.input.shape[0] == 1 else (*enc.manifest.input.shape[1:], 3)
        keys = root / "keys.toml"
        probe_key, evil_key = rewrite_key_file(keys, "probe"), rewrite_key_file(keys, "evil")
        store_dir = root / "store"
        port = free_port()
        server = ProcessServer(bundle, port, "--keys", str(keys), "--store", str(store_dir), "--memory-budget", "64",
                               "--header-timeout", "2", "--body-timeout", "2", "--threads", "1",
                               "--penalty-max", str(args.penalty_max),
                               "--log-level", "warning", log=root / "server.log")
        server.start()
        try:
            report(args, server, enc, dec, shape, probe_key, evil_key, store_dir)
        finally:
            server.stop()


def report(args, server, enc, dec, shape, probe_key, evil_key, store_dir) -> None:
    port = server.base.rsplit(":", 1)[1]
    port = int(port)
    rss = RSS(server.proc.pid)
    base_rss = rss.now()
    rss.thread.start()
    forged = wire.pack_v1(dec.fingerprint, dec.latent_shape, [b""] * 65536, bits=dec.bits)  # the 64 KB
    rng = np.random.default_rng(1)
    big = enc.encode(rng.integers(0, 256, (256, *shape), dtype=np.uint8))  # a valid max-size-ish batch
    evil = {"Content-Type": OCTET, "Authorization": f"Bearer {evil_key}"}
    forged_bodies = [("/v1/decode", forged, evil), ("/v1/ingest", forged, evil),
                     ("/v1/ingest", forged, {"Content-Type": OCTET})]
    mixed_bodies = forged_bodies + [("/v1/decode", big, evil), ("/v1/ingest", rng.bytes(3000), evil),
                                    ("/v1/ingest", big, {**evil, "X-Edgeae-Signature": "sha256=00"}),
                                    ("/v1/decode", big, {**evil, "Content-Type": "text/plain"})]
    acked: list[str] = []
    rows = []
    ctx = mp.get_context("fork")
    for phase in ("unloaded", "forged", "slow", "mixed"):
        stop = threading.Event()
        lat: list[float] = []
        probe_status: collections.Counter = collections.Counter()
        results: mp.Queue = ctx.Queue()
        bodies = forged_bodies if phase == "forged" else mixed_bodies
        attackers = ctx.Process(target=attack, args=(phase, port, evil_key, bodies, args.attackers, args.slow,
                                                     args.seconds, results), daemon=True)
        rss.peak = rss.now()
        server_cpu = cpu_seconds(server.proc.pid)
        attackers.start()
        prober = threading.Thread(target=probe, args=(port, probe_key, enc, shape, stop, len(rows), acked, lat,
                                                      probe_status), daemon=True)
        prober.start()
        time.sleep(args.seconds)
        stop.set()
        prober.join(timeout=40)
        attack_status, attack_cpu = results.get(timeout=60)
        attackers.join(timeout=10)
        server_cpu = cpu_seconds(server.proc.pid) - server_cpu
        rows.append((phase, rss.peak, len(lat), q(lat, 0.5), q(lat, 0.99), server_cpu, attack_cpu,
                     dict(probe_status), dict(sorted(attack_status.items()))))
    rss.stop.set()
    print(f"server RSS after start-up: {base_rss / 2**20:.0f} MB; memory budget 64 MiB; per phase {args.seconds:g} s, "
          f"{args.attackers} forged-payload threads, {args.slow} slow heads + {args.slow // 2} stalled 1 MiB bodies")
    print(f"{'phase':<9} {'peak RSS MB':>11} {'probe n':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99/unloaded':>12} "
          f"{'server CPU s':>12} {'attacker CPU s':>14}  probe statuses | attacker statuses")
    unloaded = rows[0][4]
    for phase, peak, n, p50, p99, scpu, acpu, ps, at in rows:
        print(f"{phase:<9} {peak / 2**20:>11.0f} {n:>7} {p50:>7.1f} {p99:>7.1f} {p99 / unloaded:>12.2f} {scpu:>12.1f} "
              f"{acpu:>14.1f}  {ps} | {at}")
    store = ImageStore(store_dir)
    entries = store.entries()
    index_ids, folder_ids = sorted(e.id for e in entries), store.ids()
    lost = set(acked) - set(index_ids)
    dup = len(acked) - len(set(acked))
    foreign = [e for e in entries if e.device != "probe"]
    print(f"integrity: {len(acked)} probe payloads acknowledged, {len(lost)} lost, {dup} acknowledged twice, "
          f"index == folders: {index_ids == folder_ids} ({len(folder_ids)} stored), "
          f"stored from attackers: {len(foreign)}")
    worst = max(r[1] for r in rows)
    worst_ratio = max(r[4] for r in rows[1:]) / unloaded
    print(f"targets: peak RSS {worst / 2**20:.0f} MB (< 300: {'met' if worst < 300 * 2**20 else 'NOT met'}), "
          f"worst probe p99 {worst_ratio:.2f}x unloaded (< 3x: {'met' if worst_ratio < 3 else 'NOT met'}), "
          f"lost/duplicated {len(lost) + dup} (0: {'met' if not lost and not dup else 'NOT met'})")


if __name__ == "__main__":
    main()
