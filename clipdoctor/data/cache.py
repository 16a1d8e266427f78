"""Decoded-frame cache: each clip is decoded once into a memory-mapped uint8 `.npy` file.

An entry is keyed by a hash of the file (absolute path, size, modification time) and the
parameters that produced it (frame size, frames kept), so it is reused across epochs and runs
and silently replaced when the file changes. Entries are written to a temporary file in the
same folder and renamed into place, so two processes filling one cache never see half an
entry (the rename is atomic; the loser of a race overwrites an identical file).

What is stored: `min(frames in the clip, max_frames)` frames spread uniformly over the whole
clip, each resized (short side) and centre-cropped to `frame_size` x `frame_size`. The clip
sampler then picks T of those frames (with jitter when training). Probe results (frame
counts, sizes, timestamps) are cached the same way as small JSON files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from clipdoctor.data import decode
from clipdoctor.data.decode import VideoInfo
from clipdoctor.data.sources import Sample
from clipdoctor.errors import DecodeError

log = logging.getLogger(__name__)

_VERSION = 1  # bump when the stored layout changes: old entries are then simply not found


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


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write a file under a temporary name in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode("utf-8"))


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


class FrameCache:
    """Memory-mapped decoded frames and cached probe results under one folder."""

    def __init__(self, root: str | Path | None = None, *, frame_size: int = 128,
                 max_frames: int = 32) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.frame_size = frame_size
        self.max_frames = max_frames

    def _path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def probe(self, sample: Sample) -> VideoInfo:
        """Probe once per file version; a failure raises DecodeError and is not cached."""
        key = sample_key(sample, kind="probe")
        path = self._path("probe", key, ".json")
        if path.exists():
            try:
                return VideoInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, KeyError):
                log.warning("ignoring unreadable cache entry %s", path)
        info = probe_sample(sample)
        atomic_write_text(path, json.dumps(info.to_dict()))
        return info

    def frames(self, sample: Sample) -> np.ndarray:
        """(N, S, S, 3) uint8 memory-mapped frames of the clip, decoded on the first call."""
        path = self._entry(sample)
        if not path.exists():
            info = self.probe(sample)
            frames = read_sample(sample, kept_indices(info.frames, self.max_frames),
                                 self.frame_size, info)
            atomic_save_npy(path, frames)
        return np.load(path, mmap_mode="r")

    def has(self, sample: Sample) -> bool:
        return self._entry(sample).exists()

    def _entry(self, sample: Sample) -> Path:
        key = sample_key(sample, kind="frames", size=self.frame_size, max_frames=self.max_frames)
        return self._path("frames", key, ".npy")

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
                self.frames(s)
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
