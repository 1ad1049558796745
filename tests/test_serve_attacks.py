"""The decode server under abuse, started for real (uvicorn on a loopback port, the same protocol limits as
`edgeae serve`): every attack of issue 16 gets its status, and nothing is written for it."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import logging
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from click.testing import CliRunner  # noqa: E402

from edgeae.cli import main  # noqa: E402
from edgeae.errors import InputError  # noqa: E402
from edgeae.runtime import payload as wire  # noqa: E402
from edgeae.runtime.codec import Decoder, Encoder  # noqa: E402
from edgeae.serve.app import ServeConfig, create_app  # noqa: E402
from edgeae.serve.auth import rewrite_key_file, sign  # noqa: E402
from edgeae.serve.batcher import MicroBatcher  # noqa: E402
from edgeae.serve.penalty import Penalties  # noqa: E402
from edgeae.serve.store import ImageStore  # noqa: E402
from edgeae.serve.testing import LOOPBACK, ThreadServer, forged_payload  # noqa: E402

OCTET = {"content-type": "application/octet-stream"}


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


@pytest.fixture(scope="module")
def enc(tiny_bundle):
    return Encoder(tiny_bundle)


class Capture(logging.Handler):
    """The server's log records (access lines are JSON), with an event per record for waiting on them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def access(self) -> list[dict]:
        return [json.loads(r.getMessage()) for r in self.records if r.name == "edgeae.serve.access"]

    def wait_for(self, pred, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [a for a in self.access() if pred(a)]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                assert left > 0, "log line never came"
                self.cond.wait(left)


@pytest.fixture
def logs():
    h = Capture()
    lg = logging.getLogger("edgeae.serve")
    lg.addHandler(h)
    old = lg.level
    lg.setLevel(logging.INFO)
    yield h
    lg.removeHandler(h)
    lg.setLevel(old)


@pytest.fixture(scope="module")
def keyfile(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    keys = {"cam": rewrite_key_file(path, "cam"), "cam2": rewrite_key_file(path, "cam2"),
            "ops": rewrite_key_file(path, "ops", scopes=["metrics"])}
    return path, keys


@pytest.fixture(scope="module")
def secured(tiny_bundle, keyfile, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    path, keys = keyfile
    cfg = ServeConfig(bundle=str(tiny_bundle), store=str(store), keys=str(path), key_reload_s=0,
                      max_batch=8, max_wait_ms=2, header_timeout=0.5, body_timeout=0.5, max_connections=16,
                      quota_items=6, quota_window_s=3600)
    with ThreadServer(create_app(cfg)) as s:
        s.store, s.keys = ImageStore(store), keys
        yield s


def _auth(key: str, **extra) -> dict:
    return {**OCTET, "authorization": f"Bearer {key}", **extra}


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_anyone_can_no_longer_ingest(secured, enc):
    good = enc.encode_each(_images(1))[0]
    for path in ("/v1/ingest", "/v1/decode", "/metrics"):
        method = httpx.get if path == "/metrics" else (lambda url, **kw: httpx.post(url, content=good, **kw))
        r = method(secured.base + path, headers=OCTET)
        assert (r.status_code, r.json()["error"]) == (401, "unauthorized") and "bearer" in r.headers["www-authenticate"].lower()
        r = method(secured.base + path, headers=_auth("x" * 40))
        assert r.status_code == 401
    assert httpx.get(secured.base + "/metrics", headers=_auth(secured.keys["cam"])).status_code == 403
    assert httpx.get(secured.base + "/metrics", headers=_auth(secured.keys["ops"])).status_code == 200
    assert httpx.post(secured.base + "/v1/ingest", content=good, headers=_auth(secured.keys["ops"])).status_code == 403
    assert httpx.get(secured.base + "/healthz").status_code == 200  # liveness stays open
    assert secured.store.ids() == [] and secured.store.count()[0] == 0


def test_forged_empty_bodies_payload_is_refused_before_decoding(secured, enc, tiny_bundle):
    dec = Decoder(tiny_bundle)
    key = secured.keys["cam"]
    # the 64 KB attack: 65,536 empty item bodies in a well-formed v1 frame, and the same in v2
    for forged in (wire.pack_v1(dec.fingerprint, dec.latent_shape, [b""] * 65536, bits=dec.bits),
                   forged_payload(dec.fingerprint, 65536, 8, 8, bits=dec.bits)):
        r = httpx.post(secured.base + "/v1/ingest", content=forged, headers=_auth(key), timeout=30)
        assert (r.status_code, r.json()["error"]) == (413, "too_many_items")
    for few in (wire.pack_v1(dec.fingerprint, dec.latent_shape, [b""] * 3, bits=dec.bits),
                forged_payload(dec.fingerprint, 3, 8, 8, bits=dec.bits)):
        r = httpx.post(secured.base + "/v1/ingest", content=few, headers=_auth(key), timeout=30)
        assert (r.status_code, r.json()["error"]) == (400, "corrupt_stream")  # the parser refuses empty parts
    assert secured.store.ids() == [] and secured.store.count()[0] == 0


def test_payload_signature_is_checked_before_decoding(secured, enc):
    key = secured.keys["cam"]
    p = enc.encode_each(_images(1, seed=21))[0]
    r = httpx.post(secured.base + "/v1/decode", content=p, headers=_auth(key, **{"x-edgeae-signature": sign("w" * 40, p)}))
    assert (r.status_code, r.json()["error"]) == (401, "bad_signature")
    r = httpx.post(secured.base + "/v1/decode", content=p, headers=_auth(key, **{"x-edgeae-signature": sign(key, p)}))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_key_rotated_and_revoked_while_running(secured, keyfile, enc, logs):
    path, _ = keyfile
    p = enc.encode_each(_images(1, seed=22))[0]
    old = rewrite_key_file(path, "rot")
    assert httpx.post(secured.base + "/v1/decode", content=p, headers=_auth(old)).status_code == 200
    new = rewrite_key_file(path, "rot")  # rotate: the server re-reads the file, no restart
    assert httpx.post(secured.base + "/v1/decode", content=p, headers=_auth(old)).status_code == 401
    assert httpx.post(secured.base + "/v1/decode", content=p, headers=_auth(new)).status_code == 200
    rewrite_key_file(path, "rot", revoke=True)
    assert httpx.post(secured.base + "/v1/decode", content=p, headers=_auth(new)).status_code == 401
    line = logs.wait_for(lambda a: a["status"] == 200 and a.get("device") == "rot")
    assert {"id", "device", "status", "items", "ms", "endpoint"} <= set(line) and line["items"] == 1
    good = path.read_text()
    path.write_text("this is [not toml")  # a broken file keeps the keys that were active
    assert httpx.post(secured.base + "/v1/decode", content=p, headers=_auth(secured.keys["cam"])).status_code == 200
    with pytest.raises(InputError, match="not valid TOML"):
        rewrite_key_file(path, "rot")  # the tool refuses to build on a broken file
    path.write_text(good)


def test_strict_framing_and_content_type(secured, enc):
    p = enc.encode_each(_images(1, seed=23))[0]
    key = secured.keys["cam"]
    r = httpx.post(secured.base + "/v1/decode", content=p, headers={"authorization": f"Bearer {key}",
                                                                    "content-type": "text/plain"})
    assert (r.status_code, r.json()["error"]) == (415, "unsupported_media_type")
    head = (f"POST /v1/decode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(p)}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    body = f"{len(p):x}\r\n".encode() + p + b"\r\n0\r\n\r\n"
    out = _raw(secured.port, head + body)
    assert out.startswith(b"HTTP/1.1 400") and b"Content-Length and Transfer-Encoding" in out


def test_slow_headers_and_slow_bodies_get_408_and_are_closed(secured, enc):
    # headers trickled: the header timeout closes the connection whatever arrives
    out = _raw(secured.port, b"POST /v1/decode HTTP/1.1\r\nHost: x\r\n")
    assert out.startswith(b"HTTP/1.1 408") and b"header_timeout" in out
    key = secured.keys["cam"]
    head = (f"POST /v1/decode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n").encode()
    out = _raw(secured.port, head + b"\xea\xae" + b"\0" * 100)  # 102 of 1000 bytes, then nothing
    assert out.startswith(b"HTTP/1.1 408") and b"body_timeout" in out
    assert secured.store.ids() == []


def test_connection_cap_answers_503_at_once(secured):
    socks = [socket.create_connection((LOOPBACK, secured.port)) for _ in range(16)]
    try:
        out = _raw(secured.port, b"")  # the 17th: refused before it sends anything
        assert out.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in out.lower()
    finally:
        for s in socks:
            s.close()


def test_quota_per_device_answers_429_with_retry_after(secured, enc):
    ps = enc.encode_each(_images(8, seed=30))
    key, other = secured.keys["cam"], secured.keys["cam2"]
    rs = [httpx.post(secured.base + "/v1/ingest", content=p, headers=_auth(key)) for p in ps[:7]]
    assert [r.status_code for r in rs] == [200] * 6 + [429]
    assert rs[-1].json()["error"] == "quota_items" and int(rs[-1].headers["retry-after"]) > 3000
    assert httpx.post(secured.base + "/v1/ingest", content=ps[0], headers=_auth(key)).json()["new"] is False
    assert httpx.post(secured.base + "/v1/ingest", content=ps[7], headers=_auth(other)).status_code == 200
    store = secured.store
    assert store.count("cam")[:2] == (6, 6) and store.count("cam2")[0] == 1
    assert sorted(e.id for e in store.entries()) == store.ids()  # the index matches the folders


def test_decode_cost_caps_memory_budget_and_full_disk(tiny_bundle, enc, tmp_path):
    cfg = ServeConfig(bundle=str(tiny_bundle), max_pixels=5 * 64, max_items=100, memory_budget=3 << 20,
                      budget_share=1.0, max_body=1 << 20, store=str(tmp_path / "store"), min_free_bytes=1 << 60,
                      body_timeout=30)
    app = create_app(cfg)
    service = app.state.service
    with ThreadServer(app) as s:
        r = httpx.post(s.base + "/v1/decode", content=enc.encode(_images(6)), headers=OCTET)
        assert (r.status_code, r.json()["error"]) == (413, "too_many_pixels")
        assert httpx.post(s.base + "/v1/decode", content=enc.encode(_images(5)), headers=OCTET).status_code == 200
        r = httpx.post(s.base + "/v1/ingest", content=enc.encode(_images(2)), headers=OCTET)
        assert (r.status_code, r.json()["error"]) == (507, "insufficient_storage")
        assert ImageStore(tmp_path / "store").ids() == []
        # bodies in flight count against the memory budget: three stalled 1 MiB bodies hold 3 MiB
        head = ("POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {1 << 20}\r\n\r\n").encode()
        stalled = []
        for _ in range(3):
            c = socket.create_connection((LOOPBACK, s.port))
            c.sendall(head + b"\0" * 10)
            stalled.append(c)
        while service.budget.used < 3 << 20:
            time.sleep(0.005)
        r = httpx.post(s.base + "/v1/decode", content=enc.encode(_images(1)), headers=OCTET)
        assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "overloaded", "1")
        for c in stalled:
            c.close()
        while service.budget.used:
            time.sleep(0.005)
        assert httpx.post(s.base + "/v1/decode", content=enc.encode(_images(1)), headers=OCTET).status_code == 200


def test_one_device_stalling_bodies_cannot_starve_the_others(tiny_bundle, keyfile, enc):
    path, keys = keyfile
    cfg = ServeConfig(bundle=str(tiny_bundle), keys=str(path), memory_budget=4 << 20, budget_share=0.5,
                      max_body=1 << 20, body_timeout=30)
    app = create_app(cfg)
    budget = app.state.service.budget
    with ThreadServer(app) as s:
        head = (f"POST /v1/decode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys['cam']}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {1 << 20}\r\n\r\n").encode()
        stalled = []
        try:
            for _ in range(2):  # cam holds its whole share (2 MiB of 4)
                c = socket.create_connection((LOOPBACK, s.port))
                c.sendall(head + b"\0" * 10)
                stalled.append(c)
            while budget.used < 2 << 20:
                time.sleep(0.005)
            p = enc.encode_each(_images(1, seed=70))[0]
            r = httpx.post(s.base + "/v1/decode", content=p, headers=_auth(keys["cam"]))
            assert (r.status_code, r.json()["error"]) == (503, "overloaded") and "per device" in r.json()["detail"]
            assert httpx.post(s.base + "/v1/decode", content=p, headers=_auth(keys["cam2"])).status_code == 200
        finally:
            for c in stalled:
                c.close()


def test_time_limit_and_disconnected_clients_cancel_their_work(tiny_bundle, enc, logs):
    gate, entered = threading.Event(), threading.Event()

    def slow(_batch: int) -> None:
        entered.set()
        assert gate.wait(30)

    cfg = ServeConfig(bundle=str(tiny_bundle), max_batch=1, max_wait_ms=0, request_timeout=0.5)
    app = create_app(cfg, hook=slow)
    service = app.state.service
    ps = enc.encode_each(_images(3, seed=40))
    with ThreadServer(app) as s:
        r = httpx.post(s.base + "/v1/decode", content=ps[0], headers=OCTET)  # blocks the decoder past its limit
        assert (r.status_code, r.json()["error"]) == (503, "timeout") and r.headers["retry-after"] == "1"
        assert entered.wait(10)
        c = socket.create_connection((LOOPBACK, s.port))  # queued behind it, then the client leaves
        c.sendall(("POST /v1/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                   f"Content-Length: {len(ps[1])}\r\nX-Request-Id: leaver\r\n\r\n").encode() + ps[1])
        while service.batcher.outstanding < 2:
            time.sleep(0.005)
        c.close()
        assert logs.wait_for(lambda a: a["id"] == "leaver")["status"] == 499
        gate.set()
        while service.batcher.outstanding:
            time.sleep(0.005)
        assert service.metrics.cancelled == 1  # the leaver's payload was never decoded
        assert httpx.post(s.base + "/v1/decode", content=ps[2], headers=OCTET).status_code == 200


def test_internal_errors_are_logged_with_the_request_id(tiny_bundle, enc, logs):
    def boom(_batch: int) -> None:
        raise RuntimeError("decoder exploded")

    with ThreadServer(create_app(ServeConfig(bundle=str(tiny_bundle)), hook=boom)) as s:
        r = httpx.post(s.base + "/v1/decode", content=enc.encode_each(_images(1))[0],
                       headers={**OCTET, "x-request-id": "req-500"})
        assert (r.status_code, r.json()["error"]) == (500, "internal") and "req-500" in r.json()["detail"]
        assert r.headers["x-request-id"] == "req-500"
    errors = [rec for rec in logs.records if rec.levelno >= logging.ERROR]
    assert any("req-500" in rec.getMessage() and rec.exc_info for rec in errors)


def test_a_failed_batch_finishes_each_job_once(tiny_bundle, enc):
    import asyncio

    class Engine:  # prepare fails for one payload, then the graph run fails for the others
        def prepare(self, payload):
            if payload == b"bad":
                raise ValueError("bad payload")
            return payload

        def run(self, prepared):
            raise RuntimeError("graph run failed")

    async def scenario():
        b = MicroBatcher(Engine(), max_batch=4, max_wait_ms=50, queue_size=8)  # type: ignore[arg-type]
        token = b.arrive()  # hold the gathering thread until all four are queued
        jobs = [b.submit(p) for p in (b"bad", b"a", b"b", b"c")]
        b.arrived(token)
        results = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
        b.close()
        return b, results

    b, results = asyncio.run(scenario())
    assert isinstance(results[0], ValueError) and all(isinstance(r, RuntimeError) for r in results[1:])
    assert b.outstanding == 0  # was -1: the failed job was finished a second time with the batch


def test_tls_and_refusing_an_open_network_bind(tiny_bundle, enc, tmp_path):
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a self-signed certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True, timeout=60)
    with ThreadServer(create_app(ServeConfig(bundle=str(tiny_bundle))), ssl_certfile=str(cert),
                      ssl_keyfile=str(key)) as s:
        assert s.base.startswith("https://")
        r = httpx.post(s.base + "/v1/decode", content=enc.encode_each(_images(1))[0], headers=OCTET,
                       verify=str(cert))
        assert r.status_code == 200
        with pytest.raises(httpx.ConnectError):  # the certificate is not trusted by default
            httpx.get(s.base + "/healthz")
    res = CliRunner().invoke(main, ["serve", "--bundle", str(tiny_bundle), "--host", "0.0.0.0"])
    assert res.exit_code != 0 and "without --keys" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_index_matches_the_store_after_kill_9_mid_ingest(tiny_bundle, enc, tmp_path):
    from edgeae.serve.testing import ProcessServer, free_port

    payloads = enc.encode_each(_images(48, seed=50))
    store_dir = tmp_path / "store"
    port = free_port()
    server = ProcessServer(tiny_bundle, port, "--store", str(store_dir), log=tmp_path / "server.log")
    acked: set[bytes] = set()

    def send(p: bytes) -> None:
        try:
            r = httpx.post(server.base + "/v1/ingest", content=p, headers=OCTET, timeout=10)
            if r.status_code == 200:
                acked.add(p)
        except httpx.HTTPError:
            pass

    try:
        server.start()
        with cf.ThreadPoolExecutor(8) as ex:
            futures = [ex.submit(send, p) for p in payloads]
            while len(acked) < len(payloads) // 3:
                time.sleep(0.002)
            server.kill()  # SIGKILL with ingests in every stage: reading, decoding, writing, renaming
            cf.wait(futures)
        assert 0 < len(acked) < len(payloads)
        server.start()
        store = ImageStore(store_dir)  # a second reader of the same index, as an operator would open it
        entries = store.entries()
        assert sorted(e.id for e in entries) == store.ids()  # every folder indexed, every row a folder
        assert store.count()[0] == len(entries) and not list(store_dir.rglob(".tmp-*"))
        assert {hashlib_id(p) for p in acked} <= {e.id for e in entries}  # nothing acknowledged was lost
        with cf.ThreadPoolExecutor(8) as ex:
            rs = list(ex.map(lambda p: httpx.post(server.base + "/v1/ingest", content=p, headers=OCTET,
                                                  timeout=30), payloads))
        assert all(r.status_code == 200 for r in rs)
        assert all(r.json()["new"] is False for r, p in zip(rs, payloads, strict=True) if p in acked)
        assert len(store.ids()) == len(payloads) == store.count()[0]
        assert sorted(e.id for e in store.entries()) == store.ids()
    finally:
        server.stop()


def hashlib_id(p: bytes) -> str:
    import hashlib

    return hashlib.sha256(p).hexdigest()


def test_penalties_grow_with_refusals_decay_and_stay_bounded():
    now = [0.0]
    p = Penalties(free=3, step_s=0.1, max_s=0.25, half_life_s=10, max_owners=4, clock=lambda: now[0])
    waits = [p.strike("evil") for _ in range(7)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] == pytest.approx(0.1) and waits[4] == pytest.approx(0.2)
    assert waits[5:] == [0.25, 0.25]  # capped
    assert p.strike("good") == 0.0  # strikes are per owner
    now[0] += 100  # ten half-lives: forgiven
    assert p.strikes("evil") < 0.01 and p.strike("evil") == 0.0
    for i in range(10):
        p.strike(f"addr{i}")
    assert len(p) == 4  # least recently struck dropped first
    assert Penalties(max_s=0).strike("x") == 0.0 and not Penalties(step_s=0).enabled
    with pytest.raises(ValueError):
        Penalties(half_life_s=0)


def test_a_device_that_keeps_erring_waits_others_and_its_successes_do_not(tiny_bundle, keyfile, enc, logs):
    path, keys = keyfile
    cfg = ServeConfig(bundle=str(tiny_bundle), keys=str(path), penalty_free=2, penalty_step_s=0.05,
                      penalty_max_s=0.2)
    good = enc.encode_each(_images(1, seed=80))[0]
    with ThreadServer(create_app(cfg)) as s:
        for i in range(5):  # garbage from cam: refused, and the refusals come later and later
            r = httpx.post(s.base + "/v1/decode", content=b"garbage", headers=_auth(keys["cam"], **{"x-request-id": f"bad{i}"}))
            assert r.status_code == 400
        for _ in range(3):  # wrong keys from an address: strikes against the address
            assert httpx.post(s.base + "/v1/decode", content=good, headers=_auth("y" * 40)).status_code == 401
        r1 = httpx.post(s.base + "/v1/decode", content=good, headers=_auth(keys["cam"], **{"x-request-id": "ok-cam"}))
        r2 = httpx.post(s.base + "/v1/decode", content=good, headers=_auth(keys["cam2"], **{"x-request-id": "ok-cam2"}))
        bad2 = httpx.post(s.base + "/v1/decode", content=b"garbage", headers=_auth(keys["cam2"], **{"x-request-id": "bad-cam2"}))
        metrics = httpx.get(s.base + "/metrics", headers=_auth(keys["ops"])).text
    assert (r1.status_code, r2.status_code, bad2.status_code) == (200, 200, 400)
    by_id = {a["id"]: a for a in logs.access()}
    assert [by_id[f"bad{i}"].get("penalty_ms", 0) for i in range(5)] == pytest.approx([0, 0, 50, 100, 150], abs=3)
    assert "penalty_ms" not in by_id["ok-cam"] and "penalty_ms" not in by_id["ok-cam2"]  # successes never wait
    assert "penalty_ms" not in by_id["bad-cam2"]  # another device's first refusal is free
    unknown = [a for a in logs.access() if a["status"] == 401]
    assert [a.get("penalty_ms", 0) for a in unknown] == pytest.approx([0, 0, 50], abs=3)  # the address
    assert "edgeae_penalised_total 4" in metrics


def test_a_stalled_body_does_not_hold_everyone_s_batch(tiny_bundle):
    class Engine:
        def prepare(self, payload):
            return payload

        def run(self, prepared):
            return [np.zeros((1, 8, 8), np.uint8) for _ in prepared]

    async def scenario():
        b = MicroBatcher(Engine(), max_batch=4, max_wait_ms=60_000, queue_size=8)  # type: ignore[arg-type]
        token = b.arrive()  # a body that started arriving long ago and never finishes
        b._arriving[token] -= 120.0
        try:
            return await asyncio.wait_for(b.submit(b"a").future, 30)  # not held for the 60 s max_wait
        finally:
            b.arrived(token)
            b.close()

    assert asyncio.run(scenario()) is not None


def test_waiting_refusals_are_capped_and_hang_ups_mid_body_are_strikes(tiny_bundle, keyfile, logs, monkeypatch):
    from edgeae.serve import http as http_layer

    monkeypatch.setattr(http_layer, "MAX_SLEEPING", 4)  # 2 per owner
    path, keys = keyfile
    cfg = ServeConfig(bundle=str(tiny_bundle), keys=str(path), penalty_free=0, penalty_step_s=0.5, penalty_max_s=1.0)
    app = create_app(cfg)
    service = app.state.service
    with ThreadServer(app) as s:
        def bad(i):
            return httpx.post(s.base + "/v1/decode", content=b"garbage",
                              headers=_auth(keys["cam"], **{"x-request-id": f"cap{i}"}))
        with cf.ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(bad, range(8)))
        assert all(r.status_code == 400 for r in rs)
        closed = [r for r in rs if r.headers.get("connection") == "close"]
        assert closed and len(closed) <= 6  # at most 2 of cam's refusals waited at once; the others closed
        lines = [a for a in logs.access() if a["id"].startswith("cap")]
        assert sum(1 for a in lines if a.get("penalty_ms")) >= 2
        assert all(a["penalty_ms"] == 0 for a in lines if a["id"] in {r.headers["x-request-id"] for r in closed})
        before = service.penalties.strikes("device:cam2")
        with socket.create_connection((LOOPBACK, s.port)) as c:  # cam2 hangs up inside its body
            c.sendall((f"POST /v1/decode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys['cam2']}\r\n"
                       "Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n").encode() + b"\0" * 10)
            time.sleep(0.2)
        logs.wait_for(lambda a: a.get("device") == "cam2" and a["status"] == 499)
        assert service.penalties.strikes("device:cam2") > before
        for _ in range(2):  # a device using a scope it lacks: the strike is the device's, not its address's
            assert httpx.get(s.base + "/metrics", headers=_auth(keys["cam"])).status_code == 403
        assert service.penalties.strikes("device:cam") > 8 and service.penalties.strikes("client:127.0.0.1") == 0
