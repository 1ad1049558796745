"""Atomic file writes (stdlib only: safe to import on the edge side).

A reader never sees half a file: data goes to a temporary file beside the target, then `os.replace` renames
it into place. `durable=True` also fsyncs the file before the rename and the folder after it, so the file
survives a power cut once the call returns (the uploader's spool, the server's ingest store).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_PREFIX = ".tmp-"  # temporary files start with this; a folder's owner may sweep them after a crash


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
