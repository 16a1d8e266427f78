"""What a dataset holds, before any decoding: `Sample`, `Skipped`, `SourceIndex` and the split
and file-suffix names every layout shares.

These are the types `clipdoctor.data.sources.load_source` returns (and re-exports); they live
apart so that the per-layout listers (`clipdoctor.data.layouts`) can build them without
importing the front door that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True, eq=False)
class Sample:
    """One clip: a video file, a folder of frame images, or a (T, H, W, C) uint8 array."""

    path: Path | None  # absolute path of the video file or frame folder; None for arrays
    label: int  # 0-based index into SourceIndex.classes
    split: str  # one of SPLITS
    group: str | None = None  # source group kept on one side of a split (UCF101 `_gNN_`)
    array: np.ndarray | None = field(default=None, repr=False)  # (T, H, W, C) uint8 for .npz data
    name: str = ""  # display name: path relative to the dataset root, or `file.npz[i]`


@dataclass(frozen=True)
class Skipped:
    """A file the source could not use, with the reason (path relative to the root)."""

    path: str
    reason: str


@dataclass
class SourceIndex:
    """What a dataset holds, before any decoding."""

    format: str  # a FORMATS name, or "arrays" for in-memory (X, y)
    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]
