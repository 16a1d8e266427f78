"""Dataset layouts on disk -> a `SourceIndex`: classes, samples with labels and splits, skipped
files.

Every layout of DESIGN §2 is detected here. Nothing is decoded in this module: it only reads
directory listings and annotation files. Whether a clip file can really be decoded is decided
later (`clipdoctor.data.summary` probes every file and reports those that cannot be read).

This module is the front door: format detection, `load_source` and `from_arrays`, and the types
they return (re-exported from `source_index`). Each layout is one small "lister" in its own
module of `clipdoctor.data.layouts`, registered in `FORMATS`; a lister returns the raw entries
(path or array, label, split given by the layout or None) and the shared `finish` step
(`layouts/registry.py`) turns them into a `SourceIndex`: it makes the splits the layout does not
give (`splits.py`: seeded, stratified by label, keeping a source group such as UCF101's
`v_<Class>_g<GG>` on one side).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Sequence

import numpy as np

from clipdoctor.data.layouts.files import csv_header, describe, resolve_root, visible
from clipdoctor.data.layouts.folder import has_class_folders
from clipdoctor.data.layouts.hmdb51 import hmdb_split_files
from clipdoctor.data.layouts.kinetics import is_kinetics_header
from clipdoctor.data.layouts.manifest import manifest_columns
from clipdoctor.data.layouts.npz import list_arrays
from clipdoctor.data.layouts.registry import FORMATS, finish, layouts_line
from clipdoctor.data.layouts.ucf101 import ucf_lists_dir
from clipdoctor.data.source_index import (IMAGE_SUFFIXES, SPLITS, VIDEO_SUFFIXES, Sample,
                                          Skipped, SourceIndex)
from clipdoctor.errors import DataError

__all__ = [
    "FORMATS", "IMAGE_SUFFIXES", "SPLITS", "VIDEO_SUFFIXES", "Sample", "Skipped", "SourceIndex",
    "detect_format", "load_source",
]


def detect_format(root: Path) -> str:
    """Name the layout of `root` (a folder, a .csv or an .npz), in the order of DESIGN §2."""
    root = resolve_root(root)
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix == ".npz":
            return "npz"
        if suffix == ".csv":
            return "kinetics" if is_kinetics_header(csv_header(root)) else "csv"
        raise DataError(f"{root} is a '{suffix or 'plain'}' file; DATA must be a dataset folder, "
                        f"a CSV manifest (.csv) or an .npz file ({layouts_line()})")
    entries = visible(root)
    if not entries:
        raise DataError(f"{root} is empty; expected one of the layouts: {layouts_line()}")
    if ucf_lists_dir(root) is not None:
        return "ucf101"
    if hmdb_split_files(root):
        return "hmdb51"
    if (root / "labels.json").is_file() and (root / "train.json").is_file():
        return "ssv2"
    csvs = [p for p in entries if p.is_file() and p.suffix.lower() == ".csv"]
    if any(is_kinetics_header(csv_header(p)) for p in csvs):
        return "kinetics"
    if any(manifest_columns(csv_header(p)) for p in csvs):
        return "csv"
    if len([p for p in entries if p.is_file() and p.suffix.lower() == ".npz"]) == 1:
        return "npz"
    if has_class_folders(root):
        return "folder"
    raise DataError(f"cannot tell the layout of {root}: found {describe(entries)} but no known "
                    f"layout; expected one of: {layouts_line()}; or pass --format NAME "
                    f"(one of {', '.join(FORMATS)})")


def load_source(root: str | Path, format: str | None = None, *, fold: int = 1, seed: int = 0,
                val_fraction: float = 0.1, test_fraction: float = 0.1,
                strict: bool = False, allow_outside_root: bool = False) -> SourceIndex:
    """Read any layout of DESIGN §2 into a `SourceIndex` (detected, or forced by `format`).

    Splits the layout does not give are made here (seeded, stratified, groups kept together).
    With `strict`, any file that had to be skipped is an error instead of a note. Paths in
    annotation files (manifests, split lists) must stay inside the root (no `..`, absolute
    paths or symbolic links out) unless `allow_outside_root`."""
    path = resolve_root(root)
    _check_options(fold, val_fraction, test_fraction)
    name = detect_format(path) if format is None else _format_name(format)
    index = FORMATS[name](path, fold=fold, seed=seed, val_fraction=val_fraction,
                          test_fraction=test_fraction, allow_outside_root=allow_outside_root)
    if strict and index.skipped:
        first = index.skipped[0]
        raise DataError(f"{len(index.skipped)} file(s) skipped in {path} (strict mode); first: "
                        f"'{first.path}': {first.reason}; fix or remove them, or drop --strict")
    return index


def _format_name(format: str) -> str:
    """The registered name for a user-given `--format`, or a DataError with close matches."""
    name = format.strip().lower()
    if name in FORMATS:
        return name
    close = difflib.get_close_matches(name, list(FORMATS), n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise DataError(f"unknown format '{format}'{hint}; valid formats: {', '.join(FORMATS)}; "
                    f"pass --format NAME with one of them")


def _check_options(fold: int, val_fraction: float, test_fraction: float) -> None:
    """Reject option values that no layout can use."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or fold < 1:
        raise DataError(f"fold {fold!r} is not allowed; pass --fold N with N >= 1")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DataError(f"{name} {value} is not allowed; use a fraction in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction {val_fraction} + test_fraction {test_fraction} leave no "
                        f"training clips; keep their sum below 1")


def from_arrays(X: np.ndarray, y: np.ndarray, *, X_val: np.ndarray | None = None,
                y_val: np.ndarray | None = None, X_test: np.ndarray | None = None,
                y_test: np.ndarray | None = None, classes: Sequence[str] | None = None,
                seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1) -> SourceIndex:
    """In-memory clips, X (N, T, H, W, C) uint8 and y (N,), checked like an .npz file."""
    arrays = {k: np.asarray(v) for k, v in (("X", X), ("y", y), ("X_val", X_val), ("y_val", y_val),
                                             ("X_test", X_test), ("y_test", y_test))
              if v is not None}
    if classes is not None:
        arrays["classes"] = np.asarray(list(classes), dtype=str)
    _check_options(1, val_fraction, test_fraction)
    return finish("arrays", Path.cwd(), list_arrays(arrays, "arrays"), seed, val_fraction,
                  test_fraction)
