"""Dataset layouts on disk -> a `SourceIndex`: classes, samples with labels and splits, skipped
files.

Every layout of DESIGN §2 is detected here. Nothing is decoded in this module: it only reads
directory listings and annotation files. Whether a clip file can really be decoded is decided
later (`clipdoctor.data.summary` probes every file and reports those that cannot be read).

Each layout is one small "lister" function registered in `FORMATS`; a lister returns the raw
entries (path or array, label, split given by the layout or None) and the shared `_finish` step
turns them into a `SourceIndex`: it makes the splits the layout does not give (seeded,
stratified by label, keeping a source group such as UCF101's `v_<Class>_g<GG>` on one side).
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import os
import re
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np

from clipdoctor.errors import DataError

__all__ = [
    "FORMATS", "IMAGE_SUFFIXES", "SPLITS", "VIDEO_SUFFIXES", "Sample", "Skipped", "SourceIndex",
    "detect_format", "load_source",
]

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------
# registry

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
    """Put a lister into `FORMATS` as a full loader: root check, listing, then `_finish`."""

    def deco(lister: _Lister) -> _Lister:
        def load(root: str | Path, *, fold: int = 1, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1) -> SourceIndex:
            path = _resolve_root(root)
            return _finish(name, path, lister(path, fold), seed, val_fraction, test_fraction)

        load.__name__ = load.__qualname__ = f"load_{name}"
        load.__doc__ = lister.__doc__
        FORMATS[name] = load
        return lister

    return deco


# --------------------------------------------------------------------------------------------
# public API

def detect_format(root: Path) -> str:
    """Name the layout of `root` (a folder, a .csv or an .npz), in the order of DESIGN §2."""
    root = _resolve_root(root)
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix == ".npz":
            return "npz"
        if suffix == ".csv":
            return "kinetics" if _is_kinetics_header(_csv_header(root)) else "csv"
        raise DataError(f"{root} is a '{suffix or 'plain'}' file; DATA must be a dataset folder, "
                        f"a CSV manifest (.csv) or an .npz file ({_layouts_line()})")
    entries = _visible(root)
    if not entries:
        raise DataError(f"{root} is empty; expected one of the layouts: {_layouts_line()}")
    if _ucf_lists_dir(root) is not None:
        return "ucf101"
    if _hmdb_split_files(root):
        return "hmdb51"
    if (root / "labels.json").is_file() and (root / "train.json").is_file():
        return "ssv2"
    csvs = [p for p in entries if p.is_file() and p.suffix.lower() == ".csv"]
    if any(_is_kinetics_header(_csv_header(p)) for p in csvs):
        return "kinetics"
    if any(_manifest_columns(_csv_header(p)) for p in csvs):
        return "csv"
    if len([p for p in entries if p.is_file() and p.suffix.lower() == ".npz"]) == 1:
        return "npz"
    if _has_class_folders(root):
        return "folder"
    raise DataError(f"cannot tell the layout of {root}: found {_describe(entries)} but no known "
                    f"layout; expected one of: {_layouts_line()}; or pass --format NAME "
                    f"(one of {', '.join(FORMATS)})")


def load_source(root: str | Path, format: str | None = None, *, fold: int = 1, seed: int = 0,
                val_fraction: float = 0.1, test_fraction: float = 0.1,
                strict: bool = False) -> SourceIndex:
    """Read any layout of DESIGN §2 into a `SourceIndex` (detected, or forced by `format`).

    Splits the layout does not give are made here (seeded, stratified, groups kept together).
    With `strict`, any file that had to be skipped is an error instead of a note."""
    path = _resolve_root(root)
    _check_options(fold, val_fraction, test_fraction)
    name = detect_format(path) if format is None else _format_name(format)
    index = FORMATS[name](path, fold=fold, seed=seed, val_fraction=val_fraction,
                          test_fraction=test_fraction)
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


# --------------------------------------------------------------------------------------------
# shared helpers: paths, listings, text, CSV, JSON

_SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_SPLIT_VALUES = {**_SPLIT_DIRS, "training": "train", "valid": "val", "validate": "val",
                 "testing": "test"}
_JUNK = {"__MACOSX", "Thumbs.db", "desktop.ini"}
_UCF_GROUP = re.compile(r"^v_(.+)_g(\d+)_c(\d+)$")
_LIST_LINE = re.compile(r"^(.*\S)\s+(\d+)$")  # "<path> <number>" in UCF101 / HMDB51 lists


def _resolve_root(root: str | Path) -> Path:
    """Absolute, symlink-free root; DataError if it does not exist."""
    path = Path(root).expanduser()
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name the OS cannot take (NUL byte, too long)
        exists = False
    if not exists:
        raise DataError(f"{root}: no such file or folder; pass a dataset folder, a CSV manifest "
                        f"or an .npz file")
    return path.resolve()


def _need_dir(root: Path, fmt: str) -> None:
    if not root.is_dir():
        raise DataError(f"format '{fmt}' needs a dataset folder, got the file {root}; pass the "
                        f"folder, or a --format that reads this file (csv, kinetics, npz)")


def _layouts_line() -> str:
    return "; ".join(f"{name} ({text})" for name, text in _LAYOUTS.items())


def _visible(folder: Path) -> list[Path]:
    """Sorted entries of `folder` without hidden files and OS clutter."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror}; check the path and its "
                        f"permissions") from None
    return [folder / n for n in names if not n.startswith(".") and n not in _JUNK]


def _describe(entries: list[Path], limit: int = 6) -> str:
    """'2 folders (a/, b/) and 1 file (x.txt)' for error messages."""
    parts = []
    for kind, items in (("folder", [p.name + "/" for p in entries if p.is_dir()]),
                        ("file", [p.name for p in entries if not p.is_dir()])):
        if items:
            shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
            parts.append(f"{len(items)} {kind}{'s' if len(items) > 1 else ''} ({shown})")
    return " and ".join(parts) or "nothing"


def _rel(path: Path, base: Path) -> str:
    """POSIX path of `path` relative to `base`."""
    return Path(os.path.relpath(path, base)).as_posix()


def _within(path: str, base: str) -> bool:
    """Is the normalised absolute `path` equal to or below `base`?"""
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def _joined(base: Path, rel: str, where: str) -> Path:
    """`base / rel` normalised, refusing absolute paths and `..` that climbs out of `base`."""
    text = rel.strip()
    if not text:
        raise DataError(f"{where}: empty path; give the clip's path relative to {base}")
    if text.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", text):
        raise DataError(f"{where}: path '{rel}' is absolute and escapes the dataset root {base}; "
                        f"use paths inside it, relative to it")
    joined = os.path.normpath(os.path.join(base, text))
    if not _within(joined, os.path.normpath(base)):
        raise DataError(f"{where}: path '{rel}' escapes the dataset root {base}; use paths "
                        f"inside it")
    return Path(joined)


def _inside(base: Path, rel: str, where: str) -> Path:
    """`base / rel`, refusing paths that leave `base` (absolute, `..`, or a symlink out).

    Annotation files come from anywhere; a path in them must never reach outside the dataset."""
    joined = _joined(base, rel, where)
    real = os.path.realpath(joined)
    if not _within(real, os.path.realpath(base)):
        raise DataError(f"{where}: path '{rel}' (a link to {real}) escapes the dataset root "
                        f"{base}; use paths inside it")
    return joined


def _has_images(folder: Path) -> bool:
    try:
        return any(n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")
                   for n in os.listdir(folder))
    except OSError:
        return False


def _clip_problem(path: Path) -> str | None:
    """Why `path` cannot be a clip (None when it is a video file or a frame folder)."""
    if path.is_symlink() and not path.exists():
        return "broken symbolic link"
    if path.is_dir():
        if _has_images(path):
            return None
        if any(p.suffix.lower() in VIDEO_SUFFIXES for p in _visible(path)):
            return "frame folder holds no images (videos must sit directly in the class folder)"
        return "frame folder holds no images"
    if path.is_file():
        return None if path.suffix.lower() in VIDEO_SUFFIXES else "not a video file or frame folder"
    return "not found"


def _add_listed(entries: list[_Entry], skipped: list[Skipped], entry: _Entry, source: str) -> None:
    """Keep a clip named by an annotation file, or note why it cannot be used."""
    reason = _clip_problem(entry.path)
    if reason is None:
        entries.append(entry)
    else:
        missing = reason == "not found"
        reason = f"listed in {source} but not found" if missing else reason
        skipped.append(Skipped(entry.name, reason))


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank, stripped lines with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save it as "
                        f"UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    return [(i, s.strip()) for i, s in enumerate(text.splitlines(), 1) if s.strip()]


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Lower-cased header and the data rows (with their line numbers) of a UTF-8 CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {exc.start}); save it as "
                        f"UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path.name}: not a valid CSV ({exc}); fix the file") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    return header, rows


def _csv_header(path: Path) -> list[str]:
    """The lower-cased first row of a CSV, or [] if it cannot be read (for detection only)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [h.strip().lower() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path.name} line {exc.lineno}: invalid JSON ({exc.msg}); fix the "
                        f"file") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def _sort_classes(names: set[str] | list[str]) -> list[str]:
    """Sorted class names; numerically when every name is an integer ("2" before "10")."""
    unique = set(names)
    if unique and all(re.fullmatch(r"[+-]?\d+", n) for n in unique):
        return sorted(unique, key=lambda n: (int(n), n))
    return sorted(unique)


def _split_from_name(path: Path) -> str | None:
    """train.csv -> "train", validate.csv -> "val", ... ; None for other names."""
    return _SPLIT_VALUES.get(path.stem.strip().lower())


# --------------------------------------------------------------------------------------------
# [folder] ROOT/<class>/<clip> or ROOT/<split>/<class>/<clip>

def _split_dirs(root: Path) -> dict[Path, str]:
    """Top-level split folders, when the folder layout is split into train/val/test."""
    top_dirs = [p for p in _visible(root) if p.is_dir()]
    found = {p: _SPLIT_DIRS[p.name.lower()] for p in top_dirs if p.name.lower() in _SPLIT_DIRS}
    if found and ("train" in found.values() or len(found) == len(top_dirs)):
        return found
    return {}


def _has_class_folders(root: Path) -> bool:
    """True when some subfolder (or split/subfolder) holds a video or a frame folder."""
    splits = _split_dirs(root)
    parents = list(splits) if splits else [root]
    for parent in parents:
        for class_dir in _visible(parent):
            if class_dir.is_dir() and any(_clip_problem(c) is None for c in _visible(class_dir)):
                return True
    return False


def _scan_classes(root: Path, parent: Path, split: str | None,
                  skipped: list[Skipped]) -> list[tuple[str, Path, str | None]]:
    """(class, clip, split) for every clip under `parent/<class>/`; the rest into `skipped`."""
    found = []
    for class_dir in _visible(parent):
        if not class_dir.is_dir():
            # a README or a manifest beside the class folders is fine; a lone video is not
            if class_dir.suffix.lower() in VIDEO_SUFFIXES:
                skipped.append(Skipped(_rel(class_dir, root),
                                       "video outside a class folder: its class is unknown"))
            continue
        before = len(found)
        for clip in _visible(class_dir):
            reason = _clip_problem(clip)
            if reason:
                skipped.append(Skipped(_rel(clip, root), reason))
            else:
                found.append((class_dir.name, clip, split))
        if len(found) == before:
            skipped.append(Skipped(_rel(class_dir, root), "class folder holds no clips"))
    return found


@_register("folder")
def _list_folder(root: Path, fold: int) -> _Listing:
    """Folder per class, optionally split: ROOT/[train|val|test/]<class>/<clip>."""
    _need_dir(root, "folder")
    skipped: list[Skipped] = []
    splits = _split_dirs(root)
    if splits:
        found = []
        for top in _visible(root):
            if top in splits:
                found += _scan_classes(root, top, splits[top], skipped)
            else:
                skipped.append(Skipped(_rel(top, root), "not inside a train/val/test folder"))
    else:
        found = _scan_classes(root, root, None, skipped)
    classes = sorted({c for c, _, _ in found})  # plain sort: the same indices as ImageFolder
    index = {c: i for i, c in enumerate(classes)}
    entries = [_Entry(path, index[c], split, _rel(path, root)) for c, path, split in found]
    return _Listing(classes, entries, skipped)


# --------------------------------------------------------------------------------------------
# [ucf101] classInd.txt + trainlistNN.txt / testlistNN.txt

def _ucf_lists_dir(root: Path) -> Path | None:
    for folder in (root, root / "ucfTrainTestlist"):
        if (folder / "classInd.txt").is_file():
            return folder
    return None


def _read_class_ind(path: Path) -> list[str]:
    """Class names in index order from `classInd.txt` ("1 ApplyEyeMakeup"; 1-based)."""
    by_number: dict[int, str] = {}
    for lineno, line in _text_lines(path):
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path.name} line {lineno}: expected '<number> <class name>', got "
                            f"'{line}'; fix the line")
        number, name = int(parts[0]), parts[1].strip()
        if number in by_number or name in by_number.values():
            raise DataError(f"{path.name} line {lineno}: class number or name given twice "
                            f"('{line}'); each class once")
        by_number[number] = name
    if sorted(by_number) != list(range(1, len(by_number) + 1)):
        raise DataError(f"{path.name}: class numbers must run 1..{len(by_number)} (UCF101 counts "
                        f"from 1), found {min(by_number, default=0)}..{max(by_number, default=0)}; "
                        f"renumber the classes")
    return [by_number[n] for n in sorted(by_number)]


def _ucf_class(rel: str, label: int | None, classes: list[str], where: str) -> str:
    """The class of a list line, from its folder (checked against the label) or its label."""
    parts = PurePosixPath(rel).parts
    if label is not None and not 1 <= label <= len(classes):
        raise DataError(f"{where}: label {label} is out of range 1..{len(classes)} of "
                        f"classInd.txt; fix the label")
    if len(parts) > 1:
        folder = parts[0]
        if folder not in classes:
            raise DataError(f"{where}: class '{folder}' is not in classInd.txt; add it there or "
                            f"fix the line")
        if label is not None and classes[label - 1] != folder:
            raise DataError(f"{where}: label {label} is '{classes[label - 1]}' in classInd.txt "
                            f"but the path's folder is '{folder}'; make them agree")
        return folder
    if label is not None:
        return classes[label - 1]
    match = _UCF_GROUP.match(PurePosixPath(rel).stem)
    if match and match.group(1) in classes:
        return match.group(1)
    raise DataError(f"{where}: cannot tell the class of '{rel}'; write it as <class>/<video>")


@_register("ucf101")
def _list_ucf101(root: Path, fold: int) -> _Listing:
    """UCF101: classInd.txt (1-based) + trainlistNN.txt (with labels) + testlistNN.txt."""
    _need_dir(root, "ucf101")
    lists = _ucf_lists_dir(root)
    if lists is None:
        raise DataError(f"no classInd.txt in {root} or {root}/ucfTrainTestlist; the ucf101 layout "
                        f"needs classInd.txt and trainlistNN.txt/testlistNN.txt")
    classes = _read_class_ind(lists / "classInd.txt")
    index = {c: i for i, c in enumerate(classes)}
    files = [(lists / f"trainlist{fold:02d}.txt", "train"),
             (lists / f"testlist{fold:02d}.txt", "test")]
    missing = [f.name for f, _ in files if not f.is_file()]
    if missing:
        found = sorted(p.name for p in lists.glob("*list*.txt"))
        raise DataError(f"fold {fold}: {', '.join(missing)} not found in {lists}; found "
                        f"{', '.join(found) or 'no list files'}; pass --fold N for a fold that "
                        f"exists")
    videos = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    entries, skipped = [], []
    for list_file, split in files:
        for lineno, line in _text_lines(list_file):
            where = f"{list_file.name} line {lineno}"
            match = _LIST_LINE.match(line)
            rel, label = (match[1], int(match[2])) if match else (line, None)
            path = _inside(videos, rel, where)
            cls = _ucf_class(rel, label, classes, where)
            if len(PurePosixPath(rel).parts) == 1 and not path.exists():
                path = _inside(videos, f"{cls}/{rel}", where)
            _add_listed(entries, skipped, _Entry(path, index[cls], split, _rel(path, root)),
                        list_file.name)
    return _Listing(classes, entries, skipped)


# --------------------------------------------------------------------------------------------
# [hmdb51] <class>_test_split<N>.txt with "<video>.avi <0|1|2>"

_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<fold>\d+)\.txt$")


def _hmdb_split_files(root: Path) -> list[Path]:
    """Split files in ROOT or in folders (up to two levels) whose name contains 'split'."""
    folders, level, found = [root], [root], []
    for _ in range(2):
        level = [d for parent in level for d in _visible(parent)
                 if d.is_dir() and "split" in d.name.lower()]
        folders += level
    for folder in folders:
        found += [p for p in _visible(folder) if p.is_file() and _HMDB_FILE.match(p.name)]
    return found


@_register("hmdb51")
def _list_hmdb51(root: Path, fold: int) -> _Listing:
    """HMDB51: one split file per class and fold; 1 = train, 2 = test, 0 = unused (left out)."""
    _need_dir(root, "hmdb51")
    files = _hmdb_split_files(root)
    chosen: dict[str, Path] = {}
    for path in sorted(files, key=lambda p: p.name):
        match = _HMDB_FILE.match(path.name)
        if int(match["fold"]) == fold:
            chosen.setdefault(match["cls"], path)
    if not chosen:
        folds = sorted({int(_HMDB_FILE.match(p.name)["fold"]) for p in files})
        raise DataError(f"no HMDB51 split files for fold {fold} (<class>_test_split{fold}.txt) in "
                        f"{root}; found folds {folds or 'none'}; pass --fold N for one of them")
    classes = _sort_classes(chosen)
    entries, skipped = [], []
    for label, cls in enumerate(classes):
        split_file = chosen[cls]
        for lineno, line in _text_lines(split_file):
            where = f"{split_file.name} line {lineno}"
            match = _LIST_LINE.match(line)
            video, flag = (match[1], match[2]) if match else ("", "")
            if flag not in ("0", "1", "2"):
                raise DataError(f"{where}: expected '<video>.avi <0|1|2>' (0 unused, 1 train, "
                                f"2 test), got '{line}'; fix the line")
            if flag == "0":
                continue
            path = _inside(root, f"{cls}/{video}", where)
            split = "train" if flag == "1" else "test"
            _add_listed(entries, skipped, _Entry(path, label, split, _rel(path, root)),
                        split_file.name)
    return _Listing(classes, entries, skipped)


# --------------------------------------------------------------------------------------------
# [kinetics] label,youtube_id,time_start,time_end,split

_KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
_KINETICS_SPLIT_DIRS = {"train": ("train",), "val": ("val", "validate", "validation"),
                        "test": ("test",)}


def _is_kinetics_header(header: list[str]) -> bool:
    return all(c in header for c in _KINETICS_COLUMNS)


def _kinetics_file(root: Path, label: str, name: str, split: str | None, where: str,
                   listings: dict[str, set[str]]) -> Path | None:
    """The first existing clip among ROOT/[<split>/]<label or label_with_underscores>/<name>.

    Folder listings are cached in `listings`: a Kinetics CSV has ~10^5 rows over ~10^3 folders."""
    _joined(root, f"{label}/{name}", where)  # refuses absolute paths and '..' once per row
    for prefix in ("", *_KINETICS_SPLIT_DIRS.get(split, ())):
        for lab in dict.fromkeys([label, label.replace(" ", "_")]):
            folder = os.path.join(root, prefix, lab)
            if folder not in listings:
                try:
                    listings[folder] = set(os.listdir(folder))
                except OSError:
                    listings[folder] = set()
            if name in listings[folder]:
                return _inside(root, os.path.join(prefix, lab, name), where)
    return None


def _kinetics_rows(path: Path) -> tuple[list[tuple[str, str, str | None, str]], int]:
    """(label, clip file name, split, 'file line N') per labelled row, and the unlabelled count."""
    header, data = _read_csv(path)
    if not _is_kinetics_header(header):
        raise DataError(f"{path.name} line 1: header {','.join(header)} lacks "
                        f"{', '.join(c for c in _KINETICS_COLUMNS if c not in header)}; "
                        f"expected label,youtube_id,time_start,time_end,split")
    col = {name: header.index(name) for name in (*_KINETICS_COLUMNS, "split") if name in header}
    rows, unlabelled = [], 0
    for lineno, row in data:
        cell = {k: (row[i].strip() if i < len(row) else "") for k, i in col.items()}
        where = f"{path.name} line {lineno}"
        if not cell["label"]:
            unlabelled += 1
            continue
        try:
            start, end = int(float(cell["time_start"])), int(float(cell["time_end"]))
        except (ValueError, OverflowError):
            raise DataError(f"{where}: time_start/time_end '{cell['time_start']}', "
                            f"'{cell['time_end']}' are not whole seconds; fix the row") from None
        split = _split_from_name(path)
        if cell.get("split"):
            split = _SPLIT_VALUES.get(cell["split"].lower())
            if split is None:
                raise DataError(f"{where}: unknown split '{cell['split']}'; allowed: train, "
                                f"validate, val, test")
        name = f"{cell['youtube_id']}_{start:06d}_{end:06d}.mp4"
        rows.append((cell["label"], name, split, where))
    return rows, unlabelled


@_register("kinetics")
def _list_kinetics(root: Path, fold: int) -> _Listing:
    """Kinetics CSV(s); clips `<youtube_id>_<start:06d>_<end:06d>.mp4` in label folders.

    Rows without a label (an unlabelled test set) are left out."""
    base = root.parent if root.is_file() else root
    csvs = [root] if root.is_file() else [p for p in _visible(root) if p.is_file()
                                            and p.suffix.lower() == ".csv"
                                            and _is_kinetics_header(_csv_header(p))]
    if not csvs:
        raise DataError(f"no Kinetics CSV in {root}: expected a CSV with header "
                        f"label,youtube_id,time_start,time_end,split")
    rows = []
    for path in csvs:
        found, unlabelled = _kinetics_rows(path)
        rows += [(*row, path.name) for row in found]
        if unlabelled:
            log.info("%s: left out %d rows without a label", path.name, unlabelled)
    classes = _sort_classes({r[0] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    entries, skipped, listings = [], [], {}
    for label, name, split, where, csv_name in rows:
        path = _kinetics_file(base, label, name, split, where, listings)
        if path is None:
            skipped.append(Skipped(f"{label}/{name}", f"listed in {csv_name} but not found"))
        else:
            _add_listed(entries, skipped, _Entry(path, index[label], split, _rel(path, base)),
                        csv_name)
    return _Listing(classes, entries, skipped)


# --------------------------------------------------------------------------------------------
# [ssv2] labels.json + train.json / validation.json over <id>.webm

def _ssv2_classes(path: Path) -> list[str]:
    """Class names ordered by the string indices of labels.json."""
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path.name}: expected an object {{\"class name\": \"index\", ...}}")
    by_index: dict[int, str] = {}
    for name, value in data.items():
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise DataError(f"{path.name}: class '{name}' has index {value!r}, not a number; "
                            f"use \"0\"..\"K-1\"") from None
        if number in by_index:
            raise DataError(f"{path.name}: index {number} is given to both '{by_index[number]}' "
                            f"and '{name}'; each class needs its own index")
        by_index[number] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{path.name}: class indices must run 0..{len(by_index) - 1}; renumber "
                        f"them")
    return [by_index[i] for i in range(len(by_index))]


@_register("ssv2")
def _list_ssv2(root: Path, fold: int) -> _Listing:
    """Something-Something v2: the class of an entry is its template without square brackets."""
    _need_dir(root, "ssv2")
    for required in ("labels.json", "train.json"):
        if not (root / required).is_file():
            raise DataError(f"no {required} in {root}; the ssv2 layout needs labels.json, "
                            f"train.json and optionally validation.json")
    classes = _ssv2_classes(root / "labels.json")
    index = {c: i for i, c in enumerate(classes)}
    sub = root / "20bn-something-something-v2"
    videos = sub if sub.is_dir() else root
    entries, skipped = [], []
    for file_name, split in (("train.json", "train"), ("validation.json", "val")):
        if not (root / file_name).is_file():
            continue
        items = _read_json(root / file_name)
        if not isinstance(items, list):
            raise DataError(f"{file_name}: expected a list of {{\"id\", \"template\", ...}} "
                            f"objects")
        for i, item in enumerate(items):
            where = f"{file_name} entry {i}"
            if not isinstance(item, dict) or "id" not in item or "template" not in item:
                raise DataError(f"{where}: expected an object with 'id' and 'template'; fix it")
            cls = str(item["template"]).replace("[", "").replace("]", "")
            if cls not in index:
                raise DataError(f"{where} (id {item['id']}): template '{item['template']}' is not "
                                f"in labels.json; add '{cls}' there or fix the entry")
            path = _inside(videos, f"{item['id']}.webm", where)
            _add_listed(entries, skipped, _Entry(path, index[cls], split, _rel(path, root)),
                        file_name)
    return _Listing(classes, entries, skipped)


# --------------------------------------------------------------------------------------------
# [csv] manifest path,label[,split] (or the keras.io example's video_name,tag)

_PATH_COLUMNS = ("path", "video_name", "video", "filename")
_LABEL_COLUMNS = ("label", "tag", "class")


def _manifest_columns(header: list[str]) -> tuple[int, int, int | None] | None:
    """(path, label, split) column indices of a manifest header, or None if it is not one."""
    path = next((header.index(c) for c in _PATH_COLUMNS if c in header), None)
    label = next((header.index(c) for c in _LABEL_COLUMNS if c in header), None)
    if path is None or label is None:
        return None
    return path, label, header.index("split") if "split" in header else None


def _manifests(root: Path) -> list[Path]:
    """The manifest CSV(s): `root` itself, or the CSVs of the folder with a manifest header."""
    if root.is_file():
        return [root]
    found = [p for p in _visible(root) if p.is_file() and p.suffix.lower() == ".csv"
             and _manifest_columns(_csv_header(p))]
    if not found:
        raise DataError(f"no manifest CSV in {root}: expected a .csv whose header names "
                        f"path,label[,split] (or video_name,tag)")
    if len(found) > 1 and any(_split_from_name(p) is None for p in found):
        raise DataError(f"several manifests in {root} ({', '.join(p.name for p in found)}); name "
                        f"them train.csv/val.csv/test.csv, or pass one CSV file as DATA")
    return found


def _manifest_rows(path: Path) -> list[tuple[str, str, str | None, str]]:
    """(clip path text, label, split or None, 'file line N') for every row of one manifest."""
    header, data = _read_csv(path)
    columns = _manifest_columns(header)
    if columns is None:
        raise DataError(f"{path.name} line 1: expected a header row naming the columns "
                        f"path,label[,split] (or video_name,tag), got '{','.join(header)}'; add it")
    ip, il, isplit = columns
    file_split = _split_from_name(path)
    rows = []
    for lineno, row in data:
        where = f"{path.name} line {lineno}"
        cell = [c.strip() for c in row] + [""] * len(header)
        if not cell[il]:
            raise DataError(f"{where}: empty label; every clip needs a class name")
        split = file_split
        if isplit is not None and cell[isplit]:  # an empty cell: not given, clipdoctor chooses
            split = _SPLIT_VALUES.get(cell[isplit].lower())
            if split is None:
                raise DataError(f"{where}: unknown split '{cell[isplit]}'; allowed: train, val, "
                                f"test")
        rows.append((cell[ip], cell[il], split, where))
    return rows


@_register("csv")
def _list_csv(root: Path, fold: int) -> _Listing:
    """CSV manifest(s); paths relative to the CSV's folder (or its split folder, keras-style)."""
    manifests = _manifests(root)
    base = manifests[0].parent
    rows = [(m, *row) for m in manifests for row in _manifest_rows(m)]
    classes = _sort_classes({label for _, _, label, _, _ in rows})
    index = {c: i for i, c in enumerate(classes)}
    entries, skipped = [], []
    for manifest, text, label, split, where in rows:
        path = _inside(base, text, where)
        if not path.exists() and _split_from_name(manifest):  # keras.io: train/<video_name>
            alt = _inside(base, f"{manifest.stem}/{text}", where)
            path = alt if alt.exists() else path
        _add_listed(entries, skipped, _Entry(path, index[label], split, _rel(path, base)), where)
    return _Listing(classes, entries, skipped)


# --------------------------------------------------------------------------------------------
# [npz] X (N, T, H, W, C) uint8, y (N,), optionally X_val/y_val, X_test/y_test, classes

def _npz_file(root: Path) -> Path:
    if root.is_file():
        return root
    found = [p for p in _visible(root) if p.is_file() and p.suffix.lower() == ".npz"]
    if len(found) != 1:
        raise DataError(f"the npz layout needs exactly one .npz in {root}, found "
                        f"{', '.join(p.name for p in found) or 'none'}; pass the file itself")
    return found[0]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, without pickle; DataError for anything unreadable."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"cannot read {path.name}: not an .npz (zip) archive; save the arrays "
                        f"with np.savez(path, X=X, y=y)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:  # object arrays need pickle, which is never allowed here
        hint = ("an array holds Python objects; store class names as np.array(names, dtype=str)"
                if "pickle" in str(exc) else str(exc))
        raise DataError(f"cannot read {path.name}: {hint}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path.name} as .npz ({exc}); save the arrays with "
                        f"np.savez(path, X=X, y=y)") from None


def _check_clips(name: str, X: np.ndarray, y: np.ndarray, key: str) -> None:
    """X must be (N, T, H, W, C) uint8 with C in 1/3/4 and y (N,) integers of the same length."""
    if X.dtype.kind == "f":
        raise DataError(f"{name}: {key} is {X.dtype}; scale the frames to 0..255 and cast to "
                        f"uint8, e.g. ({key} * 255).round().astype(np.uint8)")
    if X.dtype != np.uint8:
        raise DataError(f"{name}: {key} is {X.dtype}; clips must be uint8 (0..255): "
                        f"{key}.astype(np.uint8)")
    if X.ndim != 5:
        hint = f"; add a channel axis: {key}[..., None]" if X.ndim == 4 else ""
        raise DataError(f"{name}: {key} has shape {X.shape}; expected (N, T, H, W, C){hint}")
    if X.shape[-1] not in (1, 3, 4):
        hint = (f"; move the channel axis last: {key}.transpose(0, 1, 3, 4, 2)"
                if X.shape[2] in (1, 3, 4) else "")
        raise DataError(f"{name}: {key} has shape {X.shape}; the last axis must be 1, 3 or 4 "
                        f"channels{hint}")
    ykey = key.replace("X", "y")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{name}: {ykey} has shape {y.shape} and dtype {y.dtype}; expected (N,) "
                        f"integer labels 0..K-1 (e.g. one-hot -> {ykey}.argmax(1))")
    if len(X) != len(y):
        raise DataError(f"{name}: {key} holds {len(X)} clips but {ykey} {len(y)} labels; give "
                        f"one label per clip")


@_register("npz")
def _list_npz(root: Path, fold: int) -> _Listing:
    """Arrays in an .npz: X/y (+ X_val/y_val, X_test/y_test), optional `classes` names."""
    path = _npz_file(root)
    return _list_arrays(_load_npz(path), path.name)


def _list_arrays(arrays: dict[str, np.ndarray], name: str) -> _Listing:
    """X/y (+ X_val/y_val, X_test/y_test) and optional `classes`, from an .npz or from memory."""
    parts = [(k, k.replace("X", "y"), s) for k, s in (("X", "train"), ("X_val", "val"),
                                                      ("X_test", "test")) if k in arrays]
    if "X" not in arrays or "y" not in arrays:
        raise DataError(f"{name} holds {', '.join(arrays) or 'no arrays'}; it needs X "
                        f"(N, T, H, W, C) uint8 and y (N,): np.savez(path, X=X, y=y)")
    for key, ykey, _ in parts:
        if ykey not in arrays:
            raise DataError(f"{name} has {key} but no {ykey}; give both")
        _check_clips(name, arrays[key], arrays[ykey], key)
    top = max(int(arrays[y].max(initial=-1)) for _, y, _ in parts)
    low = min(int(arrays[y].min(initial=0)) for _, y, _ in parts)
    if "classes" in arrays:
        names = np.asarray(arrays["classes"])
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names.ravel().tolist()]
        if len(set(classes)) != len(classes):
            raise DataError(f"{name}: classes holds a name twice; give each class once")
    else:
        classes = [str(i) for i in range(top + 1)]
    if low < 0 or top >= len(classes):
        raise DataError(f"{name}: labels run {low}..{top} but there are {len(classes)} "
                        f"classes; labels must be 0-based indices 0..{len(classes) - 1}")
    has_splits = len(parts) > 1
    entries = []
    for key, ykey, split in parts:
        X, y = arrays[key], arrays[ykey]
        prefix = name if key == "X" else f"{name}:{key}"
        entries += [_Entry(None, int(y[i]), split if has_splits else None, f"{prefix}[{i}]", X[i])
                    for i in range(len(X))]
    return _Listing(classes, entries, [])


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
    return _finish("arrays", Path.cwd(), _list_arrays(arrays, "arrays"), seed, val_fraction,
                   test_fraction)


# --------------------------------------------------------------------------------------------
# finishing: class checks, groups, splits

def _group_of(name: str) -> str | None:
    """`v_<Class>_g<GG>_c<CC>` -> `<Class>_g<GG>` (the UCF101 source group), else None."""
    match = _UCF_GROUP.match(PurePosixPath(name).stem)
    return f"{match.group(1)}_g{match.group(2)}" if match else None


def _finish(fmt: str, root: Path, listing: _Listing, seed: int, val_fraction: float,
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
    groups = [_group_of(e.name) if e.array is None else None for e in entries]
    keys = [g if g is not None else f"\0{e.name}" for g, e in zip(groups, entries)]
    splits = _assign_splits([e.label for e in entries], keys, [e.split for e in entries],
                            seed, val_fraction, test_fraction)
    samples = [Sample(path=e.path, label=e.label, split=s, group=g, array=e.array, name=e.name)
               for e, s, g in zip(entries, splits, groups)]
    if listing.skipped:
        log.debug("%s: skipped %d file(s), first %s: %s", root, len(listing.skipped),
                    listing.skipped[0].path, listing.skipped[0].reason)
    return SourceIndex(format=fmt, root=root, classes=list(listing.classes), samples=samples,
                       skipped=list(listing.skipped))


def _assign_splits(labels: list[int], keys: list[str], given: list[str | None], seed: int,
                   val_fraction: float, test_fraction: float) -> list[str]:
    """Each clip's split: as given; with none given, seeded 80/10/10; without val, val from train.

    Clips without a given split, beside clips with one, go to train."""
    totals = Counter(labels)
    rng = np.random.default_rng(seed)
    if all(s is None for s in given):
        splits = ["train"] * len(labels)
        _carve(splits, labels, keys, totals, [("test", test_fraction), ("val", val_fraction)], rng)
        return splits
    splits = [s or "train" for s in given]
    if "val" not in splits:
        _carve(splits, labels, keys, totals, [("val", val_fraction)], rng)
    return splits


def _carve(splits: list[str], labels: list[int], keys: list[str], totals: Counter,
           targets: list[tuple[str, float]], rng: np.random.Generator) -> None:
    """Move whole groups of train clips into `targets` (split, fraction of the class), per class.

    Stratified: each class gives `fraction` of its clips to each target split (at least one group
    when it has >= 3 groups in train, and always keeps one group for train and for each later
    target). A class with 1-2 groups stays in train. Group order is a seeded permutation of the
    sorted group keys, so the same seed gives the same split. This is done by hand rather than
    with sklearn's StratifiedGroupKFold: k folds only approximate fractions that are not 1/k and
    give no clip to a split for classes with fewer groups than folds."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        if splits[i] == "train":
            members[key].append(i)
    by_class: dict[int, list[str]] = defaultdict(list)
    for key, idx in members.items():
        counts = Counter(labels[i] for i in idx)
        by_class[max(counts, key=lambda lab: (counts[lab], -lab))].append(key)
    active = [(s, f) for s, f in targets if f > 0]
    for label in sorted(by_class):
        groups = sorted(by_class[label])
        if len(groups) < 3:
            continue
        order = [groups[j] for j in rng.permutation(len(groups))]
        pos = 0
        for t, (split, fraction) in enumerate(active):
            target, taken, reserve = fraction * totals[label], 0, len(active) - t
            while pos < len(order) - reserve and taken < target:
                for i in members[order[pos]]:
                    splits[i] = split
                taken += len(members[order[pos]])
                pos += 1
