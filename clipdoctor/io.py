"""Files written whole or not at all, and one-writer-at-a-time locks: what caches, run folders
and reports share.

Atomic writes go to a temporary file in the target's folder, then `os.replace` renames it into
place (atomic on one filesystem), so a reader (another process, a resumed run, a second DDP
rank) never sees half a file and a crash leaves the old file or nothing. The file gets the
permissions a plain `open` would give (`0o666` less the umask), not `mkstemp`'s private 0600.

`EntryLock` makes the second of two processes that need the same missing entry (a cache
entry, a run file) wait for the first and read its result instead of computing it again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)

try:  # POSIX advisory locks; elsewhere entries stay whole (atomic renames) but may be computed twice
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_UMASK = os.umask(0o022)  # read once, at import (setting it is the only portable way to read it)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write a file under a temporary name in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide shared caches and runs
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write an .npy file under a temporary name in the same folder, then rename it into place."""
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getbuffer())


class EntryLock:
    """Exclusive lock on one entry while it is computed: `fcntl.flock` on `<entry>.lock`.

    Why: two runs (or two DDP ranks) sharing a cache folder would otherwise both compute an
    entry neither finds yet. The lock file is removed by its holder before release; a process
    that locked a file meanwhile unlinked sees a different inode at the path and tries again,
    so at most one process holds the lock of an entry at a time. The kernel drops the lock of
    a process that dies, so a crash never leaves an entry locked. Where locks are unavailable
    (no fcntl, or a filesystem without flock support) the lock degrades to a no-op: entries
    stay whole, only the work may be done twice.
    """

    _warned = False

    def __init__(self, entry: Path) -> None:
        self.path = entry.with_name(entry.name + ".lock")
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with `blocking=False` return False at once when another holds it."""
        if fcntl is None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, flags)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as e:  # e.g. ENOLCK: a network filesystem without lock support
                os.close(fd)
                if not EntryLock._warned:
                    log.warning("cache locks unavailable under %s (%s): concurrent runs may "
                                "compute an entry twice", self.path.parent, e.strerror or e)
                    EntryLock._warned = True
                return True
            try:
                held = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                held = False
            if held:
                self._fd = fd
                return True
            os.close(fd)  # the holder we waited for removed this file: lock the new one

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still held: see the class docstring
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> EntryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def computing(entry: Path) -> Iterator[bool]:
    """Lock `entry` for computing it; yields False when it exists (done while this waited)."""
    with EntryLock(entry):
        yield not entry.exists()
