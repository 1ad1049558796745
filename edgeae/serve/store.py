"""Idempotent, atomic image store with an SQLite index: one folder per payload, named by the payload's sha256.

    STORE/index.sqlite3                       what was received: id (sha256), device, time, bytes, items, bundle
    STORE/ab/abcdef.../payload.eae, 0000.png, 0001.png, ...

A folder is built under a temporary name (held under flock, files fsynced), renamed into place (rename is
atomic; a non-empty target makes it fail, so two writers of the same payload store it once), and the parent
folder is fsynced. The index row is committed as `pending` before the rename and marked `stored` after it,
so after a crash (kill -9 anywhere) the restart settles every pending row against the disk: the index and
the folders always agree. Expiry (`expire`, `--keep-days`) marks a row `expiring`, renames the folder to a
temporary name, deletes it, then the row: a crash in between is finished at the next start.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeae.fsutil import TEMP_PREFIX, fsync_dir, lock_fd, sweep_temps
from edgeae.runtime.images import png_bytes

TMP_PREFIX = TEMP_PREFIX  # entries being built; swept at start-up
PAYLOAD_NAME = "payload.eae"
INDEX_NAME = "index.sqlite3"
STORE_TEMP_GRACE_S = 0.0  # a live writer holds its temporary folder under flock from creation on
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingests (
    id TEXT PRIMARY KEY,            -- sha256 hex of the payload (its content hash)
    device TEXT NOT NULL,           -- the authenticated device ('-' on an open server)
    received REAL NOT NULL,         -- unix time
    bytes INTEGER NOT NULL,         -- payload size
    items INTEGER NOT NULL,
    disk_bytes INTEGER NOT NULL,    -- the folder's size on disk (payload + PNGs)
    bundle TEXT NOT NULL,           -- the bundle fingerprint it was decoded with
    state TEXT NOT NULL             -- pending | stored | expiring
);
CREATE INDEX IF NOT EXISTS ingests_device_time ON ingests (device, received);
CREATE INDEX IF NOT EXISTS ingests_time ON ingests (received);
"""


class StoreFull(Exception):
    """The store's disk is full (or below the free-space reserve)."""


@dataclass(frozen=True)
class Entry:
    id: str
    device: str
    received: float
    bytes: int
    items: int
    disk_bytes: int
    bundle: str
    state: str


def payload_id(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def write_file_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _is_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class ImageStore:
    def __init__(self, root: str | os.PathLike[str], min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / INDEX_NAME, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._clean()
        self.recover()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _shards(self) -> list[Path]:
        return [p for p in self.root.iterdir() if p.is_dir() and len(p.name) == 2 and not p.name.startswith(".")]

    def _clean(self) -> None:
        """Remove half-built folders a crash left (never renamed into place; nobody holds their lock)."""
        for shard in [self.root, *self._shards()]:
            sweep_temps(shard, STORE_TEMP_GRACE_S)

    def recover(self) -> tuple[int, int]:
        """Settle rows a crash left unfinished: pending -> stored if the folder is there, else dropped;
        expiring -> folder and row removed. Returns (kept, dropped)."""
        kept = dropped = 0
        with self._lock:
            rows = self._db.execute("SELECT id, state FROM ingests WHERE state != 'stored'").fetchall()
        for pid, state in rows:
            if state == "pending" and self.path(pid).is_dir():
                with self._lock:
                    self._db.execute("UPDATE ingests SET state='stored', disk_bytes=? WHERE id=?",
                                     (_folder_bytes(self.path(pid)), pid))
                kept += 1
            else:
                if state == "expiring":
                    self._remove_folder(pid)
                with self._lock:
                    self._db.execute("DELETE FROM ingests WHERE id=? AND state=?", (pid, state))
                dropped += 1
        return kept, dropped

    def path(self, pid: str) -> Path:
        return self.root / pid[:2] / pid

    def exists(self, pid: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT state FROM ingests WHERE id=?", (pid,)).fetchone()
        return row is not None and row[0] == "stored" and self.path(pid).is_dir()

    def check_space(self, need: int) -> None:
        """Raise StoreFull unless `need` bytes fit above the free-space reserve."""
        free = shutil.disk_usage(self.root).free
        if free - need < self.min_free_bytes:
            raise StoreFull(f"{free} bytes free, {need} needed above the reserve of {self.min_free_bytes}")

    def put(self, payload: bytes, images: np.ndarray | Sequence[np.ndarray], pid: str | None = None, *,
            device: str = "-", bundle: str = "", received: float | None = None) -> tuple[str, bool]:
        """Store the payload's images; returns (id, created). Storing the same payload again changes nothing.
        Raises StoreFull when the disk is full (nothing half-written stays)."""
        pid = pid or payload_id(payload)
        final = self.path(pid)
        if self.exists(pid):
            return pid, False
        now = time.time() if received is None else received
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO ingests (id, device, received, bytes, items, disk_bytes, bundle, state) "
                "VALUES (?, ?, ?, ?, ?, 0, ?, 'pending')", (pid, device, now, len(payload), len(images), bundle))
            mine = cur.rowcount == 1
        shard = final.parent
        tmp: Path | None = None
        fd = -1
        try:
            shard.mkdir(exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=shard))
            fd = os.open(tmp, os.O_RDONLY)
            lock_fd(fd)
            write_file_synced(tmp / PAYLOAD_NAME, payload)
            for i, image in enumerate(images):
                write_file_synced(tmp / f"{i:04d}.png", png_bytes(image))
            fsync_dir(tmp)
            size = _folder_bytes(tmp)
            with self._lock:
                try:
                    os.rename(tmp, final)
                except OSError:
                    if final.is_dir():  # another writer stored the same payload first
                        return pid, False
                    raise
                tmp = None
                self._db.execute(  # an upsert: the row may have been dropped by a failed concurrent writer
                    "INSERT INTO ingests (id, device, received, bytes, items, disk_bytes, bundle, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'stored') ON CONFLICT(id) DO UPDATE SET state='stored', "
                    "disk_bytes=excluded.disk_bytes", (pid, device, now, len(payload), len(images), size, bundle))
            fsync_dir(shard)
            fsync_dir(self.root)
            return pid, True
        except BaseException as exc:
            if mine and not final.is_dir():
                with self._lock:
                    self._db.execute("DELETE FROM ingests WHERE id=? AND state='pending'", (pid,))
            if isinstance(exc, OSError) and _is_full(exc):
                raise StoreFull(f"disk full while storing {pid[:16]}: {exc.strerror}") from None
            raise
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # --- the index: list, count, quotas, expiry ------------------------------------------------------------

    def entries(self, device: str | None = None, since: float | None = None, until: float | None = None,
                limit: int | None = None) -> list[Entry]:
        """Stored entries, oldest first, optionally of one device and/or within [since, until)."""
        sql, args = self._where(device, since, until)
        lim = f" LIMIT {int(limit)}" if limit is not None else ""
        with self._lock:
            rows = self._db.execute(f"SELECT id, device, received, bytes, items, disk_bytes, bundle, state FROM "
                                    f"ingests WHERE {sql} ORDER BY received, id{lim}", args).fetchall()
        return [Entry(*r) for r in rows]

    def count(self, device: str | None = None, since: float | None = None,
              until: float | None = None) -> tuple[int, int, int, int]:
        """(payloads, items, bytes received, bytes on disk) of the stored entries selected like `entries`."""
        sql, args = self._where(device, since, until)
        with self._lock:
            row = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(items), 0), COALESCE(SUM(bytes), 0), "
                                   f"COALESCE(SUM(disk_bytes), 0) FROM ingests WHERE {sql}", args).fetchone()
        return tuple(int(v) for v in row)  # type: ignore[return-value]

    def usage(self, device: str, window_s: float, now: float | None = None) -> tuple[int, int, int, float | None]:
        """(bytes, items) a device sent in the last `window_s` seconds (pending included), its bytes on disk,
        and when its oldest entry in the window leaves it (for Retry-After)."""
        now = time.time() if now is None else now
        with self._lock:
            b, n, first = self._db.execute(
                "SELECT COALESCE(SUM(bytes), 0), COALESCE(SUM(items), 0), MIN(received) FROM ingests "
                "WHERE device=? AND received>=?", (device, now - window_s)).fetchone()
            disk = self._db.execute("SELECT COALESCE(SUM(disk_bytes), 0) FROM ingests WHERE device=?",
                                    (device,)).fetchone()[0]
        return int(b), int(n), int(disk), None if first is None else float(first) + window_s

    def oldest(self, device: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(received) FROM ingests WHERE device=? AND state='stored'",
                                   (device,)).fetchone()
        return None if row[0] is None else float(row[0])

    def expire(self, older_than: float) -> int:
        """Delete every entry received before `older_than` (unix time); returns how many."""
        with self._lock:
            ids = [r[0] for r in self._db.execute(
                "SELECT id FROM ingests WHERE state='stored' AND received<?", (older_than,)).fetchall()]
        for pid in ids:
            with self._lock:
                self._db.execute("UPDATE ingests SET state='expiring' WHERE id=?", (pid,))
            self._remove_folder(pid)
            with self._lock:
                self._db.execute("DELETE FROM ingests WHERE id=?", (pid,))
        return len(ids)

    def _remove_folder(self, pid: str) -> None:
        final = self.path(pid)
        if not final.is_dir():
            return
        doomed = final.parent / f"{TMP_PREFIX}expire-{pid}"
        os.rename(final, doomed)  # the entry vanishes atomically; the sweep finishes a crash in rmtree
        fsync_dir(final.parent)
        shutil.rmtree(doomed, ignore_errors=True)

    @staticmethod
    def _where(device: str | None, since: float | None, until: float | None) -> tuple[str, list[object]]:
        sql: list[str] = ["state='stored'"]
        args: list[object] = []
        if device is not None:
            sql.append("device=?")
            args.append(device)
        if since is not None:
            sql.append("received>=?")
            args.append(since)
        if until is not None:
            sql.append("received<?")
            args.append(until)
        return " AND ".join(sql), args

    # --- the folders ----------------------------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Ids of the folders on disk (the index says the same after any crash; `entries` reads the index)."""
        return sorted(p.name for shard in self._shards() for p in shard.iterdir()
                      if not p.name.startswith(TMP_PREFIX))

    def images(self) -> list[Path]:
        return sorted(self.root.glob("??/*/[0-9]*.png"))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
