"""Per-device keys for the decode server: a TOML key file, re-read when it changes (no restart to add, rotate
or revoke a key), bearer-token authentication and an optional HMAC-SHA256 over the payload.

    # keys.toml: one table per device
    [devices.cam-01]
    key = "k7Jd...43 more chars"       # the bearer token, also the HMAC key; >= 32 characters
    scopes = ["ingest", "decode"]      # optional; "metrics" must be granted explicitly
    revoked = false                    # optional; true refuses the key at once

Requests send `Authorization: Bearer <key>`; with payload signing, also `X-Edgeae-Signature: sha256=<hex>`
where hex = HMAC-SHA256(key, payload bytes). Only sha256(key) is kept in memory for lookup; signatures are
compared in constant time. Stdlib only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeae.errors import InputError

try:
    import tomllib
except ImportError:  # pragma: no cover (Python 3.10)
    import tomli as tomllib  # type: ignore[no-redef]

SCOPES = ("ingest", "decode", "metrics")
DEFAULT_SCOPES = ("ingest", "decode")
MIN_KEY_CHARS = 32
MAX_KEY_FILE_BYTES = 4 << 20
SIGNATURE_HEADER = "x-edgeae-signature"
SIGNATURE_PREFIX = "sha256="
DEVICE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
log = logging.getLogger("edgeae.serve")


@dataclass(frozen=True)
class Device:
    name: str
    key: bytes
    scopes: frozenset[str]


def new_key() -> str:
    """A fresh random device key (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def sign(key: str | bytes, payload: bytes) -> str:
    """The `X-Edgeae-Signature` value for a payload (what a device sends)."""
    k = key.encode() if isinstance(key, str) else key
    return SIGNATURE_PREFIX + hmac.new(k, payload, hashlib.sha256).hexdigest()


def parse_key_file(text: str, source: str) -> dict[str, Device]:
    """Validate a key file; returns sha256(key) hex -> Device. One InputError line names the bad entry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source} is not valid TOML ({exc}); see docs/SERVER.md for the key file") from None
    devices = data.get("devices", {})
    if not isinstance(devices, dict) or set(data) - {"devices"}:
        raise InputError(f"{source}: only [devices.<name>] tables are allowed; see docs/SERVER.md")
    out: dict[str, Device] = {}
    for name, entry in devices.items():
        where = f"{source}: devices.{name}"
        if not DEVICE_NAME.match(name):
            raise InputError(f"{where}: a device name is 1-64 of A-Z a-z 0-9 . _ -")
        if not isinstance(entry, dict) or set(entry) - {"key", "scopes", "revoked"}:
            raise InputError(f"{where}: allowed fields are key, scopes, revoked")
        key = entry.get("key")
        if not isinstance(key, str) or len(key) < MIN_KEY_CHARS or not key.isascii() or not key.isprintable():
            raise InputError(f"{where}.key must be printable ASCII of at least {MIN_KEY_CHARS} characters "
                             "(make one with `edgeae keys add`)")
        scopes = entry.get("scopes", list(DEFAULT_SCOPES))
        if not isinstance(scopes, list) or not all(s in SCOPES for s in scopes):
            raise InputError(f"{where}.scopes must be a list of {', '.join(SCOPES)}")
        revoked = entry.get("revoked", False)
        if not isinstance(revoked, bool):
            raise InputError(f"{where}.revoked must be true or false")
        digest = hashlib.sha256(key.encode()).hexdigest()
        if digest in out:
            raise InputError(f"{where}.key is also the key of device {out[digest].name}; give each device its own")
        if not revoked:
            out[digest] = Device(name, key.encode(), frozenset(scopes))
    return out


class KeyRing:
    """The server's view of a key file, re-read when its size, mtime or inode change (checked at most every
    `reload_s` seconds). A file that stops parsing keeps the previous keys and logs the error once per change,
    so a half-written file never opens or closes the door; write it atomically (write + rename)."""

    def __init__(self, path: str | os.PathLike[str], reload_s: float = 1.0) -> None:
        self.path = Path(path)
        self.reload_s = reload_s
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._devices = parse_key_file(self._read(), str(self.path))  # a bad file at start-up is fatal
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _read(self) -> str:
        return _read_key_file(self.path)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.reload_s:
            return
        with self._lock:
            if now - self._checked < self.reload_s:
                return
            self._checked = now
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._devices = parse_key_file(self._read(), str(self.path))
                log.info("key file %s reloaded: %d active key(s)", self.path, len(self._devices))
            except InputError as exc:
                log.error("key file not reloaded, previous keys stay active: %s", exc)

    def __len__(self) -> int:
        self._refresh()
        return len(self._devices)

    def device(self, token: str) -> Device | None:
        """The device whose key is `token`, or None."""
        self._refresh()
        return self._devices.get(hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest())


def _read_key_file(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise InputError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"key file {path} is not UTF-8 text") from None


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def signature_ok(device: Device, payload: bytes, header: str | None) -> bool:
    if not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    want = hmac.new(device.key, payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, header[len(SIGNATURE_PREFIX):].strip().lower())


def render_key_file(entries: dict[str, dict]) -> str:
    """TOML text of a key file (device -> {key, scopes, revoked})."""
    out = ["# edgeae serve key file (docs/SERVER.md); the server re-reads it when it changes\n"]
    for name, e in entries.items():
        out.append(f'\n[devices."{name}"]\nkey = "{e["key"]}"\n')
        if "scopes" in e:
            out.append("scopes = [" + ", ".join(f'"{s}"' for s in e["scopes"]) + "]\n")
        if e.get("revoked"):
            out.append("revoked = true\n")
    return "".join(out)


def rewrite_key_file(path: str | os.PathLike[str], device: str, *, scopes: list[str] | None = None,
                     revoke: bool = False) -> str:
    """Add or rotate `device`'s key (returns the new key), or revoke it; the file is replaced atomically
    (mode 0600), so a running server never reads half of it."""
    from edgeae.fsutil import write_atomic

    p = Path(path)
    if not DEVICE_NAME.match(device):
        raise InputError("a device name is 1-64 of A-Z a-z 0-9 . _ -")
    entries: dict[str, dict] = {}
    if p.exists():
        text = _read_key_file(p)
        parse_key_file(text, str(p))  # refuse to rewrite a file that does not parse
        entries = {k: dict(v) for k, v in tomllib.loads(text).get("devices", {}).items()}
    if revoke:
        if device not in entries:
            raise InputError(f"{p} has no device {device}")
        entries[device]["revoked"] = True
        key = entries[device]["key"]
    else:
        key = new_key()
        entry: dict[str, Any] = {"key": key}
        if scopes:
            entry["scopes"] = scopes
        elif "scopes" in entries.get(device, {}):
            entry["scopes"] = entries[device]["scopes"]
        entries[device] = entry
    text_out = render_key_file(entries)
    parse_key_file(text_out, str(p))
    write_atomic(p, text_out, durable=True, mode=0o600)
    return key
