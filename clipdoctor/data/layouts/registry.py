"""The lister contract and the `FORMATS` registry: a lister returns a `_Listing` of `_Entry`s
(path or array, label, split given by the layout or None) and `_register` wraps it into a full
loader (root check, listing, then `finish`, which checks the classes and makes the missing
splits). Listers add clips named by annotation files through `_add_listed`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from clipdoctor.data.layouts.files import _ALLOW_OUTSIDE, _clip_problem, resolve_root
from clipdoctor.data.source_index import Sample, Skipped, SourceIndex
from clipdoctor.data.splits import assign_splits, group_of
from clipdoctor.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    """One clip as a lister finds it; `split` is None where the layout says nothing."""

    path: Path | None
    label: int
    split: str | None
    name: str
    array: np.ndarray | None = None


@dataclass
class _Listing:
    """What a lister returns: the class names in index order, the clips and the skipped files."""

    classes: list[str]
    entries: list[_Entry]
    skipped: list[Skipped] = field(default_factory=list)


_Lister = Callable[[Path, int], _Listing]

FORMATS: dict[str, Callable[..., SourceIndex]] = {}

_LAYOUTS = {
    "folder": "ROOT/<class>/<clip>.mp4 or ROOT/<class>/<clip>/ of frames, optionally under "
              "ROOT/{train,val,test}/",
    "ucf101": "classInd.txt + trainlistNN.txt/testlistNN.txt beside the videos",
    "hmdb51": "<class>_test_splitN.txt files + ROOT/<class>/<video>.avi",
    "kinetics": "CSV label,youtube_id,time_start,time_end,split + "
                "ROOT/<label>/<id>_<start>_<end>.mp4",
    "ssv2": "labels.json + train.json/validation.json + <id>.webm",
    "csv": "a CSV manifest with header path,label[,split] (or video_name,tag)",
    "npz": "an .npz with X (N, T, H, W, C) uint8 and y (N,)",
}


def _register(name: str) -> Callable[[_Lister], _Lister]:
    """Put a lister into `FORMATS` as a full loader: root check, listing, then `finish`."""

    def deco(lister: _Lister) -> _Lister:
        def load(root: str | Path, *, fold: int = 1, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, allow_outside_root: bool = False) -> SourceIndex:
            path = resolve_root(root)
            token = _ALLOW_OUTSIDE.set(allow_outside_root)
            try:
                listing = lister(path, fold)
            finally:
                _ALLOW_OUTSIDE.reset(token)
            return finish(name, path, listing, seed, val_fraction, test_fraction)

        load.__name__ = load.__qualname__ = f"load_{name}"
        load.__doc__ = lister.__doc__
        FORMATS[name] = load
        return lister

    return deco


def layouts_line() -> str:
    """Every layout with a few words on it, for error messages that list the choices."""
    return "; ".join(f"{name} ({text})" for name, text in _LAYOUTS.items())


def _add_listed(entries: list[_Entry], skipped: list[Skipped], entry: _Entry, source: str) -> None:
    """Keep a clip named by an annotation file, or note why it cannot be used."""
    reason = _clip_problem(entry.path)
    if reason is None:
        entries.append(entry)
    else:
        missing = reason == "not found"
        reason = f"listed in {source} but not found" if missing else reason
        skipped.append(Skipped(entry.name, reason))


def finish(fmt: str, root: Path, listing: _Listing, seed: int, val_fraction: float,
           test_fraction: float) -> SourceIndex:
    """Check the listing, make the missing splits and build the `SourceIndex`."""
    entries = listing.entries
    if not entries:
        detail = ""
        if listing.skipped:
            first = listing.skipped[0]
            detail = (f"; {len(listing.skipped)} skipped, first '{first.path}': {first.reason}")
        raise DataError(f"no usable clips found in {root}{detail}; expected "
                        f"{_LAYOUTS.get(fmt, 'clips')}")
    used = sorted({e.label for e in entries})
    if len(used) < 2:
        raise DataError(f"only one class ('{listing.classes[used[0]]}') found in {root}; a "
                        f"classifier needs at least 2 classes")
    groups = [group_of(e.name) if e.array is None else None for e in entries]
    keys = [g if g is not None else f"\0{e.name}" for g, e in zip(groups, entries)]
    splits = assign_splits([e.label for e in entries], keys, [e.split for e in entries],
                           seed, val_fraction, test_fraction)
    samples = [Sample(path=e.path, label=e.label, split=s, group=g, array=e.array, name=e.name)
               for e, s, g in zip(entries, splits, groups)]
    if listing.skipped:
        log.debug("%s: skipped %d file(s), first %s: %s", root, len(listing.skipped),
                    listing.skipped[0].path, listing.skipped[0].reason)
    return SourceIndex(format=fmt, root=root, classes=list(listing.classes), samples=samples,
                       skipped=list(listing.skipped))
