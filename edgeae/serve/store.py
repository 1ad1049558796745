"""Idempotent, atomic image store: one folder per payload, named by the payload's sha256.

    STORE/ab/abcdef.../payload.eae, 0000.png, 0001.png, ...

A folder is built under a temporary name (files fsynced), renamed into place (rename is atomic; a non-empty
target makes it fail, so two writers of the same payload store it once), and the parent folder is fsynced.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeae.fsutil import TEMP_PREFIX, fsync_dir
from edgeae.runtime.images import png_bytes

TMP_PREFIX = TEMP_PREFIX  # entries being built; swept at start-up
PAYLOAD_NAME = "payload.eae"


def payload_id(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def write_file_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class ImageStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._clean()

    def _clean(self) -> None:
        """Remove half-built folders left by a crash (they were never renamed into place)."""
        for shard in [self.root, *[p for p in self.root.iterdir() if p.is_dir() and len(p.name) == 2]]:
            for p in shard.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    shutil.rmtree(p, ignore_errors=True)

    def path(self, pid: str) -> Path:
        return self.root / pid[:2] / pid

    def exists(self, pid: str) -> bool:
        return self.path(pid).is_dir()

    def put(self, payload: bytes, images: np.ndarray | Sequence[np.ndarray], pid: str | None = None) -> tuple[str, bool]:
        """Store the payload's images; returns (id, created). Storing the same payload again changes nothing."""
        pid = pid or payload_id(payload)
        final = self.path(pid)
        if final.is_dir():
            return pid, False
        shard = final.parent
        shard.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=shard))
        try:
            write_file_synced(tmp / PAYLOAD_NAME, payload)
            for i, image in enumerate(images):
                write_file_synced(tmp / f"{i:04d}.png", png_bytes(image))
            fsync_dir(tmp)
            with self._lock:
                try:
                    os.rename(tmp, final)
                except OSError:
                    if final.is_dir():  # another writer stored the same payload first
                        return pid, False
                    raise
            fsync_dir(shard)
            fsync_dir(self.root)
            return pid, True
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def ids(self) -> list[str]:
        return sorted(p.name for shard in self.root.iterdir() if shard.is_dir() and len(shard.name) == 2
                      for p in shard.iterdir() if not p.name.startswith(TMP_PREFIX))

    def images(self) -> list[Path]:
        return sorted(self.root.glob("??/*/[0-9]*.png"))
