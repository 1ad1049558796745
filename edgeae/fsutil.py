"""Atomic file writes, the sweep of what a crash left, and one bounded JSON reader (stdlib only: safe to
import on the edge side).

A reader never sees half a file: data goes to a temporary file beside the target, then `os.replace` renames
it into place. `durable=True` also fsyncs the file before the rename and the folder after it, so the file
survives a power cut once the call returns (the uploader's spool, the server's ingest store).

A temporary file (or folder) is held under an exclusive `flock` while it is written; `sweep_temps` removes
only temporaries that nobody holds and that are older than a grace period, so a start-up sweep never deletes
another process's write in flight (only what a crash left behind).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no locks; the age rule alone protects writes in flight)
    fcntl = None  # type: ignore[assignment]

TEMP_PREFIX = ".tmp-"  # temporary files start with this; a folder's owner may sweep them after a crash
TEMP_GRACE_S = 60.0  # a temporary younger than this is never swept, locked or not
JSON_MAX_DEPTH = 64
JSON_MAX_DIGITS = 100  # digits of one JSON number


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or an unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, durable: bool = False,
                 mode: int = 0o644) -> Path:
    """Write `data` to `path` all at once or not at all; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        lock_fd(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def lock_fd(fd: int, blocking: bool = True) -> bool:
    """Take an exclusive flock on an open file or folder descriptor; False if someone else holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def sweep_temps(folder: str | os.PathLike[str], grace_s: float = TEMP_GRACE_S) -> list[Path]:
    """Remove `TEMP_PREFIX` files and folders in `folder` that a crash left: older than `grace_s` and not
    locked by a live writer. Returns what was removed."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(Path(folder).iterdir())
    except FileNotFoundError:
        return removed
    for p in entries:
        if not p.name.startswith(TEMP_PREFIX):
            continue
        try:
            if now - p.lstat().st_mtime < grace_s:
                continue
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # gone already, or a link: leave links alone
            continue
        try:
            if not lock_fd(fd, blocking=False):
                continue  # a live writer holds it
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        finally:
            os.close(fd)
    return removed


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


def parse_json_bounded(raw: bytes | str, what: str, error: type[Exception], *, max_depth: int = JSON_MAX_DEPTH,
                       max_digits: int = JSON_MAX_DIGITS, hint: str = "") -> Any:
    """`json.loads` with a nesting-depth cap, a per-number digit cap and no NaN/Infinity; any problem is one
    `error(...)` line naming `what`, then `hint` (never RecursionError, ValueError or a traceback)."""
    tail = f"; {hint}" if hint else ""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start}){tail}") from None
    depth = deepest = 0
    stripped = _STRING.sub('""', text)  # brackets and digits inside strings do not count
    for m in _BRACKET.finditer(stripped):
        depth += 1 if m.group() in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > max_depth:
                raise error(f"{what} nests deeper than {max_depth} levels{tail}")

    long_number = re.search(rf"[0-9.eE+-]{{{max_digits + 1},}}", stripped)
    if long_number:
        raise error(f"{what} has a number of {len(long_number.group())} characters (limit {max_digits}){tail}")

    def constant(s: str) -> Any:
        raise error(f"{what} contains {s}, which is not valid JSON{tail}")

    try:
        return json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc}){tail}") from None
    except RecursionError:  # unreachable after the depth scan; kept so no input can escape untyped
        raise error(f"{what} nests too deeply{tail}") from None


def read_json_bounded(path: str | os.PathLike[str], max_bytes: int, error: type[Exception], *,
                      max_depth: int = JSON_MAX_DEPTH, max_digits: int = JSON_MAX_DIGITS, hint: str = "") -> Any:
    """Read and parse a JSON file of at most `max_bytes` bytes (read with that bound, whatever `stat` says),
    with the caps of `parse_json_bounded`; every failure is one `error(...)` line ending with `hint`."""
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        with open(p, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{p} not found{tail}") from None
    except OSError as exc:
        raise error(f"cannot read {p}: {exc.strerror or exc}{tail}") from None
    if len(raw) > max_bytes:
        raise error(f"{p} is larger than {max_bytes} bytes{tail}")
    return parse_json_bounded(raw, str(p), error, max_depth=max_depth, max_digits=max_digits, hint=hint)
