"""A sample's frames, whatever holds them: the one place that chooses between the frame cache
and decoding.

Below the cache: `probe_sample` and `read_sample` dispatch over the two kinds of sample (an
in-memory array, or a file / frame folder read through `decode`), and `kept_indices` says
which frames of a clip are kept (the cache stores those; without a cache the same ones are
decoded, so both paths see the same frames).

Above it: `FrameSource` is what the data module, `info`, training and the diagnosis probes
read frames through: with a `FrameCache` from its memory-mapped entries, without one by
decoding the sample.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from clipdoctor.data import decode
from clipdoctor.data.decode import VideoInfo
from clipdoctor.data.source_index import Sample
from clipdoctor.errors import DecodeError

if TYPE_CHECKING:  # a type only: the cache imports this module to fill its entries
    from clipdoctor.data.cache import FrameCache


def probe_sample(sample: Sample) -> VideoInfo:
    """Probe without a cache: arrays from their shape, files through `decode.probe`."""
    if sample.array is not None:
        t, h, w = sample.array.shape[:3]
        if t == 0:
            raise DecodeError(sample.name, "array clip holds no frames")
        return VideoInfo(t, w, h)
    return decode.probe(sample.path)


def read_sample(sample: Sample, indices: Sequence[int] | np.ndarray, size: int | None,
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


class FrameSource:
    """Frames of samples: from `cache` when given, else decoded on every call.

    Frame numbers (`count`, `frames`) are those of what the clip offers the sampler: the
    cache's kept frames, or every frame of the clip without a cache. `frame_size` and
    `cache_frames` say how frames are decoded without a cache; with one, pass the cache's own
    values (`DataConfig` gives both), so the two paths give the same frames.
    """

    def __init__(self, cache: FrameCache | None = None, *, frame_size: int = 128,
                 cache_frames: int = 32) -> None:
        self.cache, self.frame_size, self.cache_frames = cache, frame_size, cache_frames
        # probe results without a cache (the cache keeps its own): a clip is probed once
        self._infos: dict[Sample, VideoInfo] = {}

    def probe(self, sample: Sample) -> VideoInfo:
        """Frame count, size, fps of the clip; DecodeError when it cannot be read."""
        if self.cache is not None:
            return self.cache.probe(sample)
        info = self._infos.get(sample)
        if info is None:
            info = self._infos[sample] = probe_sample(sample)
        return info

    def count(self, sample: Sample) -> int:
        """How many frames the clip offers: the cache entry's, or all of the clip's."""
        if self.cache is not None:
            return self.cache.count(sample)
        return self.probe(sample).frames

    def frames(self, sample: Sample, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames `indices` (numbered as in `count`) as (len, S, S, 3) uint8, S = frame_size.
        The cache reads them with plain file reads (`FrameCache.take`), the fast path."""
        if self.cache is not None:
            return self.cache.take(sample, indices)
        return read_sample(sample, indices, self.frame_size, self.probe(sample))

    def kept(self, sample: Sample, decode_size: int | None = None) -> np.ndarray:
        """The frames the cache keeps of the clip (uniform over it), (K, S, S, 3) uint8: the
        cache entry, or the same frames decoded at `decode_size` (default frame_size) without
        a cache; a caller that shrinks the frames anyway saves decoding them large."""
        if self.cache is not None:
            return self.cache.frames(sample)
        info = self.probe(sample)
        return read_sample(sample, kept_indices(info.frames, self.cache_frames),
                           decode_size or self.frame_size, info)
