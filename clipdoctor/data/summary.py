"""What a dataset holds (`clipdoctor info`): classes, counts per split, frame / duration /
resolution / fps ranges, and every file that cannot be read with the reason.

Every clip is probed (frames counted from the container's packets, the first frame decoded;
every image of a frame folder loaded), through the probe cache when the `FrameSource` has one,
so a second `info` is instant.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from clipdoctor.data.decode import VideoInfo
from clipdoctor.data.frames import FrameSource
from clipdoctor.data.sources import SPLITS, Sample, SourceIndex
from clipdoctor.errors import DecodeError


def _range(values: list[float]) -> dict | None:
    return {"min": min(values), "max": max(values)} if values else None


def probe_all(samples: list[Sample], frames: FrameSource | None = None, *, workers: int = 2,
              progress: Callable[[int, int], None] | None = None
              ) -> list[VideoInfo | DecodeError]:
    """Probe every sample (in threads: PyAV releases the GIL); errors are returned, not raised.
    Without `frames`, nothing is cached."""
    frames = frames or FrameSource()

    def one(s: Sample) -> VideoInfo | DecodeError:
        try:
            return frames.probe(s)
        except DecodeError as e:
            return e

    out: list[VideoInfo | DecodeError] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for result in pool.map(one, samples):
            out.append(result)
            if progress:
                progress(len(out), len(samples))
    return out


def summarize(index: SourceIndex, frames: FrameSource | None = None, *, workers: int = 2,
              progress: Callable[[int, int], None] | None = None) -> dict:
    """The `info --json` object of DESIGN §2 (counts only readable clips; the rest is skipped)."""
    results = probe_all(index.samples, frames, workers=workers, progress=progress)
    ok = [(s, r) for s, r in zip(index.samples, results) if isinstance(r, VideoInfo)]
    skipped = [{"path": sk.path, "reason": sk.reason} for sk in index.skipped]
    skipped += [{"path": s.name, "reason": r.reason}
                for s, r in zip(index.samples, results) if isinstance(r, DecodeError)]
    splits = {}
    for split in SPLITS:
        per_class = {c: 0 for c in index.classes}
        for s, _ in ok:
            if s.split == split:
                per_class[index.classes[s.label]] += 1
        splits[split] = {"clips": sum(per_class.values()), "per_class": per_class}
    infos = [r for _, r in ok]
    return {
        "format": index.format,
        "root": str(index.root),
        "classes": list(index.classes),
        "splits": splits,
        "clips": len(ok),
        "frames": _range([i.frames for i in infos]),
        "duration": _range([round(i.duration, 3) for i in infos if i.duration is not None]),
        "resolution": {"width": _range([i.width for i in infos]),
                       "height": _range([i.height for i in infos]),
                       "distinct": len({(i.width, i.height) for i in infos})},
        "fps": _range([round(i.fps, 3) for i in infos if i.fps is not None]),
        "skipped": skipped,
    }
