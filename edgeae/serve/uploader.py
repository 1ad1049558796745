"""Edge uploader, stdlib only (urllib): a durable spool of payloads drained to a server's /v1/ingest.

Every payload is first written to the spool atomically (temp file, fsync, rename, folder fsync) under its
sha256, then POSTed; it leaves the spool only after the server acknowledges it (HTTP 200). Connection errors,
timeouts, 408/425/429, 5xx (503, 507) are retried with exponential backoff and full jitter (Retry-After
honoured); the server keys stored payloads by the same sha256, so a retry after a lost acknowledgement stores
nothing twice. Payloads the server refuses for good (400, 409, 413, 415, 422: corrupt, wrong bundle, too
large) move to SPOOL/rejected/. A refusal that says nothing about the payload (401/403: the device key;
404/405: the URL or a server without --store; other 4xx) stops the drain and keeps everything spooled.
A restart resumes where it stopped: whatever is still in the spool is still to be sent.

With a device key (`key=`, or the EDGEAE_KEY environment variable, or `--key-file`) every request carries
`Authorization: Bearer <key>` and `X-Edgeae-Signature` (HMAC-SHA256 of the payload with the key).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeae.errors import InputError
from edgeae.fsutil import fsync_dir, sweep_temps, write_atomic

SUFFIX = ".eae"
REJECTED = "rejected"
INGEST_PATH = "/v1/ingest"
MAX_RESPONSE = 1 << 16
KEY_ENV = "EDGEAE_KEY"
RETRY_STATUSES = (408, 425, 429)
PAYLOAD_REFUSALS = (400, 409, 413, 415, 422)  # about this payload: it will never be accepted


def ingest_url(url: str) -> str:
    """A server base URL (http://host:port) or the full ingest URL -> the ingest URL."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise InputError(f"--send must be an http(s) URL like http://127.0.0.1:8000, got {url!r}")
    path = u.path.rstrip("/")
    if not path.endswith(INGEST_PATH):
        path += INGEST_PATH
    return urllib.parse.urlunsplit((u.scheme, u.netloc, path, u.query, ""))


class Spool:
    """A folder of payloads waiting to be sent, one file each, named by their sha256."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        sweep_temps(self.root)  # what a crash mid-write left (never a writer's file in flight: those are locked)

    def put(self, payload: bytes) -> Path:
        """Write the payload durably; returns its spool file. The same payload twice is spooled once."""
        if not payload:
            raise InputError("refusing to spool an empty payload")
        target = self.root / (hashlib.sha256(payload).hexdigest() + SUFFIX)
        if target.exists():
            return target
        return write_atomic(target, payload, durable=True)

    def pending(self) -> list[Path]:
        """Spooled payloads, oldest first."""
        found = []
        for p in self.root.glob("*" + SUFFIX):
            try:  # a concurrent drain may remove a file between listing and stat
                found.append((p.stat().st_mtime_ns, p.name, p))
            except FileNotFoundError:
                continue
        return [p for _, _, p in sorted(found)]

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        fsync_dir(self.root)

    def reject(self, path: Path, reason: str) -> Path:
        folder = self.root / REJECTED
        folder.mkdir(exist_ok=True)
        target = folder / path.name
        os.replace(path, target)
        (folder / (path.name + ".reason")).write_text(reason + "\n")
        fsync_dir(self.root)
        return target

    def __len__(self) -> int:
        return len(self.pending())


@dataclass
class UploadReport:
    sent: int = 0  # acknowledged and removed from the spool
    new: int = 0  # of those, stored for the first time by the server
    rejected: list[str] = field(default_factory=list)
    remaining: int = 0
    attempts: int = 0
    last_error: str | None = None
    stopped: str | None = None  # why the drain stopped early on a refusal that is not the payload's fault

    @property
    def complete(self) -> bool:
        return self.remaining == 0


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Refused(Exception):
    pass


class _Stop(Exception):
    """The server refuses for a reason that is not this payload's (key, URL, server setup): stop the drain."""


def load_key(key: str | None = None, key_file: str | os.PathLike[str] | None = None) -> str | None:
    """The device key: `key`, else the first line of `key_file`, else $EDGEAE_KEY, else None."""
    if key:
        return key.strip()
    if key_file:
        try:
            text = Path(key_file).read_text().strip()
        except OSError as exc:
            raise InputError(f"cannot read the key file {key_file}: {exc.strerror or exc}") from None
        if not text:
            raise InputError(f"key file {key_file} is empty; put the device key on its first line")
        return text.splitlines()[0].strip()
    return os.environ.get(KEY_ENV) or None


def post_payload(url: str, payload: bytes, timeout: float, key: str | None = None) -> dict:
    """One POST; returns the server's JSON on 200. Raises _Retry (try again), _Refused (this payload never
    will work) or _Stop (nothing will work until the device key, URL or server changes)."""
    headers = {"Content-Type": "application/octet-stream", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
        headers["X-Edgeae-Signature"] = "sha256=" + hmac.new(key.encode(), payload, hashlib.sha256).hexdigest()
    req = urllib.request.Request(url, data=payload, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read(MAX_RESPONSE)
            if resp.status != 200:
                raise _Retry(f"HTTP {resp.status}")
    except urllib.error.HTTPError as e:
        detail = e.read(MAX_RESPONSE).decode("utf-8", "replace").strip()
        if e.code in RETRY_STATUSES or e.code >= 500:
            ra = e.headers.get("Retry-After") if e.headers else None
            raise _Retry(f"HTTP {e.code}", float(ra) if ra and ra.isdigit() else None) from None
        if e.code in PAYLOAD_REFUSALS:
            raise _Refused(f"HTTP {e.code}: {detail[:300]}") from None
        hint = {401: "check the device key (--key-file / $EDGEAE_KEY)", 403: "the device key lacks the ingest scope",
                404: "check the URL, and that the server runs with --store"}.get(e.code, "check the server")
        raise _Stop(f"HTTP {e.code}: {detail[:200]}; {hint}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:  # refused, reset, timeout, DNS
        raise _Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise _Retry("acknowledgement is not JSON") from None


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng.uniform(0, min(cap, base * (2 ** attempt)))


def upload_spool(spool: Spool | str | os.PathLike[str], url: str, *, timeout: float = 10.0, base_delay: float = 0.2,
                 max_delay: float = 10.0, max_attempts: int | None = 8, deadline: float | None = None,
                 sleep: Callable[[float], None] = time.sleep, seed: int | None = None,
                 log: Callable[[str], None] | None = None, key: str | None = None,
                 key_file: str | os.PathLike[str] | None = None) -> UploadReport:
    """Send every spooled payload to `url` (base or ingest URL) in order; remove each once acknowledged.

    A payload that keeps failing for `max_attempts` tries (None: no limit) or past `deadline` seconds stops the
    drain and stays spooled: calling again (or `edgeae upload`) resumes. Returns what happened.
    `key` / `key_file` / $EDGEAE_KEY: the device key (bearer token and payload HMAC)."""
    spool = spool if isinstance(spool, Spool) else Spool(spool)
    target = ingest_url(url)
    key = load_key(key, key_file)
    rng = random.Random(seed)
    stop_at = None if deadline is None else time.monotonic() + deadline
    report = UploadReport()
    for path in spool.pending():
        try:
            payload = path.read_bytes()
        except FileNotFoundError:  # another drain took it
            continue
        attempt = 0
        while True:
            report.attempts += 1
            try:
                ack = post_payload(target, payload, timeout, key)
            except _Stop as e:
                report.last_error = report.stopped = str(e)
                report.remaining = len(spool.pending())
                if log:
                    log(f"stopping: the server refused {path.name} for a reason that is not the payload's: {e}")
                return report
            except _Refused as e:
                spool.reject(path, str(e))
                report.rejected.append(path.name)
                if log:
                    log(f"rejected {path.name}: {e}")
                break
            except _Retry as e:
                report.last_error = str(e)
                attempt += 1
                out_of_time = stop_at is not None and time.monotonic() >= stop_at
                if (max_attempts is not None and attempt >= max_attempts) or out_of_time:
                    report.remaining = len(spool.pending())
                    if log:
                        log(f"giving up for now on {path.name} after {attempt} tries: {e}")
                    return report
                delay = backoff(attempt - 1, base_delay, max_delay, rng)
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, max_delay))
                if stop_at is not None:
                    delay = max(0.0, min(delay, stop_at - time.monotonic()))
                if log:
                    log(f"retrying {path.name} in {delay:.2f}s: {e}")
                sleep(delay)
                continue
            spool.remove(path)
            report.sent += 1
            report.new += bool(ack.get("new"))
            break
    report.remaining = len(spool.pending())
    return report
