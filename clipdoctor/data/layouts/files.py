"""Shared helpers of the layout listers: the dataset root, folder listings without OS clutter,
paths from annotation files kept inside the root, and UTF-8 text / CSV / JSON readers that turn
every failure into a one-line `DataError`.
"""

from __future__ import annotations

import contextvars
import csv
import json
import os
import re
from pathlib import Path

from clipdoctor.data.source_index import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from clipdoctor.errors import DataError

_SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_SPLIT_VALUES = {**_SPLIT_DIRS, "training": "train", "valid": "val", "validate": "val",
                 "testing": "test"}
_JUNK = {"__MACOSX", "Thumbs.db", "desktop.ini"}
# Annotation files come from anywhere: their paths may leave the dataset root only when the
# user says so (--allow-outside-root). Set by a loader for the duration of its listing.
_ALLOW_OUTSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("allow_outside_root",
                                                                      default=False)
_OUTSIDE_HINT = "use paths inside it, or pass --allow-outside-root if that is intended"
_LIST_LINE = re.compile(r"^(.*\S)\s+(\d+)$")  # "<path> <number>" in UCF101 / HMDB51 lists


def resolve_root(root: str | Path) -> Path:
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


def visible(folder: Path) -> list[Path]:
    """Sorted entries of `folder` without hidden files and OS clutter."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror}; check the path and its "
                        f"permissions") from None
    return [folder / n for n in names if not n.startswith(".") and n not in _JUNK]


def describe(entries: list[Path], limit: int = 6) -> str:
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
    if _ALLOW_OUTSIDE.get():
        return Path(os.path.normpath(os.path.join(base, os.path.expanduser(text))))
    if text.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", text):
        raise DataError(f"{where}: path '{rel}' is absolute and escapes the dataset root {base}; "
                        f"{_OUTSIDE_HINT}")
    joined = os.path.normpath(os.path.join(base, text))
    if not _within(joined, os.path.normpath(base)):
        raise DataError(f"{where}: path '{rel}' escapes the dataset root {base}; {_OUTSIDE_HINT}")
    return Path(joined)


def _inside(base: Path, rel: str, where: str) -> Path:
    """`base / rel`, refusing paths that leave `base` (absolute, `..`, or a symlink out).

    Annotation files come from anywhere; a path in them must never reach outside the dataset."""
    joined = _joined(base, rel, where)
    if _ALLOW_OUTSIDE.get():
        return joined
    real = os.path.realpath(joined)
    if not _within(real, os.path.realpath(base)):
        raise DataError(f"{where}: path '{rel}' (a link to {real}) escapes the dataset root "
                        f"{base}; {_OUTSIDE_HINT}")
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
        if any(p.suffix.lower() in VIDEO_SUFFIXES for p in visible(path)):
            return "frame folder holds no images (videos must sit directly in the class folder)"
        return "frame folder holds no images"
    if path.is_file():
        return None if path.suffix.lower() in VIDEO_SUFFIXES else "not a video file or frame folder"
    return "not found"


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


def csv_header(path: Path) -> list[str]:
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
