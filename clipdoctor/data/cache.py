"""Decoded-frame cache: each clip is decoded once into a memory-mapped uint8 `.npy` file.

An entry is keyed by a hash of the file (absolute path, size, modification time) and the
parameters that produced it (frame size, frames kept), so it is reused across epochs and runs
and silently replaced when the file changes. Entries are written to a temporary file in the
same folder and renamed into place, so two processes filling one cache never see half an
entry (the rename is atomic). While an entry is computed its process holds an exclusive lock
on `<entry>.lock` (`EntryLock`): a second run, or another DDP rank, that needs the same entry
waits for it and reads it instead of computing it again.

What is stored: `min(frames in the clip, max_frames)` frames spread uniformly over the whole
clip, each resized (short side) and centre-cropped to `frame_size` x `frame_size`. The clip
sampler then picks T of those frames (with jitter when training). Probe results (frame
counts, sizes, timestamps) are cached the same way as small JSON files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from clipdoctor.data import decode
from clipdoctor.data.decode import VideoInfo
from clipdoctor.data.sources import Sample
from clipdoctor.errors import DecodeError

log = logging.getLogger(__name__)

_VERSION = 1  # bump when the stored layout changes: old entries are then simply not found

try:  # POSIX advisory locks; elsewhere entries stay whole (atomic renames) but may be computed twice
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def default_cache_dir() -> Path:
    """`$CLIPDOCTOR_CACHE`, else `$XDG_CACHE_HOME/clipdoctor`, else `~/.cache/clipdoctor`."""
    if os.environ.get("CLIPDOCTOR_CACHE"):
        return Path(os.environ["CLIPDOCTOR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clipdoctor"


def sample_key(sample: Sample, **params: object) -> str:
    """Hash of what a sample's content depends on plus the parameters that derive from it."""
    if sample.array is not None:
        ident: dict = {"array": hashlib.sha1(np.ascontiguousarray(sample.array).data).hexdigest(),
                       "shape": list(sample.array.shape)}
    else:
        st = sample.path.stat()
        ident = {"path": str(sample.path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
        if sample.path.is_dir():  # a frame folder changes when any of its files does
            ident["files"] = [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                              for p in decode.list_frame_files(sample.path)]
    blob = json.dumps({"v": _VERSION, **ident, **params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write an .npy file under a temporary name in the same folder, then rename it into place."""
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getbuffer())


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
    atomic_write_bytes(Path(path), text.encode("utf-8"))


class EntryLock:
    """Exclusive lock on one cache entry while it is computed: `fcntl.flock` on `<entry>.lock`.

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


def probe_sample(sample: Sample) -> VideoInfo:
    """Probe without a cache: arrays from their shape, files through `decode.probe`."""
    if sample.array is not None:
        t, h, w = sample.array.shape[:3]
        if t == 0:
            raise DecodeError(sample.name, "array clip holds no frames")
        return VideoInfo(t, w, h)
    return decode.probe(sample.path)


def read_sample(sample: Sample, indices: list[int] | np.ndarray, size: int | None,
                info: VideoInfo | None = None) -> np.ndarray:
    """Frames of any sample kind at `indices` as (len, H, W, 3) uint8 (square when `size`)."""
    if sample.array is not None:
        frames = [decode.to_rgb(sample.array[i]) for i in indices]
        if size is not None:
            frames = [decode.resize_square(f, size) for f in frames]
        return np.stack(frames)
    return decode.read_frames(sample.path, list(indices), size=size, info=info)


def kept_indices(num_frames: int, max_frames: int) -> np.ndarray:
    """Which frames of a clip the cache keeps: all of them, or max_frames spread uniformly."""
    if num_frames <= max_frames:
        return np.arange(num_frames)
    return np.round(np.linspace(0, num_frames - 1, max_frames)).astype(np.int64)


def _read_probe(path: Path) -> VideoInfo | None:
    """A cached probe result, or None when absent or unreadable (then it is probed again)."""
    if not path.exists():
        return None
    try:
        return VideoInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, OSError):
        log.warning("ignoring unreadable cache entry %s", path)
        return None


class FrameCache:
    """Memory-mapped decoded frames and cached probe results under one folder."""

    def __init__(self, root: str | Path | None = None, *, frame_size: int = 128,
                 max_frames: int = 32) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.frame_size = frame_size
        self.max_frames = max_frames
        self._entries: dict[tuple, Path] = {}  # (file, size, mtime) -> entry: no rehash per item
        self._layouts: dict[Path, tuple[tuple[int, ...], np.dtype, int]] = {}

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def probe(self, sample: Sample) -> VideoInfo:
        """Probe once per file version; a failure raises DecodeError and is not cached."""
        key = sample_key(sample, kind="probe")
        path = self._path("probe", key, ".json")
        info = _read_probe(path)
        if info is None:
            with EntryLock(path):  # another process may be probing this clip now
                info = _read_probe(path)
                if info is None:
                    info = probe_sample(sample)
                    atomic_write_text(path, json.dumps(info.to_dict()))
        return info

    def frames(self, sample: Sample) -> np.ndarray:
        """(N, S, S, 3) uint8 memory-mapped frames of the clip, decoded on the first call."""
        return np.load(self._ready(sample), mmap_mode="r")

    def count(self, sample: Sample) -> int:
        """How many frames the clip's entry holds (decoded on the first call)."""
        return self._layout(self._ready(sample))[0][0]

    def take(self, sample: Sample, indices: Sequence[int]) -> np.ndarray:
        """Frames `indices` of the clip's entry as (len, S, S, 3) uint8, read with plain file
        reads (decoded on the first call). A memory map faults each page in on first touch:
        for 8 frames at 128 px that was 2.3x slower per clip (measured)."""
        path = self._ready(sample)
        shape, dtype, offset = self._layout(path)
        frame = int(np.prod(shape[1:])) * dtype.itemsize
        out = np.empty((len(indices), *shape[1:]), dtype)
        with open(path, "rb", buffering=0) as f:
            for j, i in enumerate(indices):
                if not 0 <= i < shape[0]:
                    raise IndexError(f"{path}: frame {i} of {shape[0]}")
                f.seek(offset + int(i) * frame)
                if f.readinto(memoryview(out[j]).cast("B")) != frame:
                    self._layouts.pop(path, None)
                    raise ValueError(f"{path}: cache entry is truncated; delete it to decode "
                                     "the clip again")
        return out

    def _ready(self, sample: Sample) -> Path:
        """The clip's entry, decoded first if it is not there yet."""
        path = self._entry(sample)
        if not path.exists():
            with computing(path) as needed:  # another process may be decoding this clip now
                if needed:
                    info = self.probe(sample)
                    frames = read_sample(sample, kept_indices(info.frames, self.max_frames),
                                         self.frame_size, info)
                    atomic_save_npy(path, frames)
        return path

    def _layout(self, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
        """(shape, dtype, data offset) of an .npy entry, read once (entries never change)."""
        if path in self._layouts:
            return self._layouts[path]
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(f)
            offset = f.tell()
        if fortran or len(shape) != 4:
            raise ValueError(f"{path}: not a frame cache entry; delete it")
        self._layouts[path] = (shape, dtype, offset)
        return self._layouts[path]

    def has(self, sample: Sample) -> bool:
        return self._entry(sample).exists()

    def _entry(self, sample: Sample) -> Path:
        memo = None
        if sample.array is None:
            st = sample.path.stat()
            if stat.S_ISREG(st.st_mode):  # a folder's key lists its files: not memoised
                memo = (str(sample.path), st.st_size, st.st_mtime_ns)
                if memo in self._entries:
                    return self._entries[memo]
        key = sample_key(sample, kind="frames", size=self.frame_size, max_frames=self.max_frames)
        path = self._path("frames", key, ".npy")
        if memo is not None:
            self._entries[memo] = path
        return path

    def fill(self, samples: Iterable[Sample], *, workers: int = 2,
             progress: Callable[[int, int], None] | None = None) -> list[tuple[Sample, DecodeError]]:
        """Decode every sample not cached yet; returns the samples that failed, with the error."""
        samples = list(samples)
        todo = [s for s in samples if not self.has(s)]
        failed: list[tuple[Sample, DecodeError]] = []
        done = len(samples) - len(todo)
        if progress:
            progress(done, len(samples))

        def one(s: Sample) -> DecodeError | None:
            try:
                self._ready(s)
            except DecodeError as e:
                return e
            return None

        # PyAV releases the GIL while decoding, so threads overlap well on small clips
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for s, err in zip(todo, pool.map(one, todo)):
                if err is not None:
                    failed.append((s, err))
                done += 1
                if progress:
                    progress(done, len(samples))
        return failed


class FeatureCache:
    """Per-clip arrays computed by a frozen network (e.g. per-frame features), one `.npy` per key.

    The caller builds the key (`sample_key(sample, **everything_that_produced_it)`), so a
    changed file, backbone, weight, pooling or sampling parameter never hits a stale entry."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / "features" / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            log.warning("ignoring unreadable cache entry %s", path)
            return None

    def put(self, key: str, array: np.ndarray) -> None:
        atomic_save_npy(self.path(key), np.ascontiguousarray(array))

    def lock(self, key: str) -> EntryLock:
        """The entry's lock: hold it while computing the entry (see `EntryLock`)."""
        return EntryLock(self.path(key))
