"""[kinetics] CSV label,youtube_id,time_start,time_end,split over
ROOT/[<split>/]<label>/<youtube_id>_<start>_<end>.mp4."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from clipdoctor.data.layouts.files import (_SPLIT_VALUES, _inside, _joined, _read_csv, _rel,
                                           _sort_classes, _split_from_name, csv_header,
                                           visible)
from clipdoctor.data.layouts.registry import _add_listed, _Entry, _Listing, _register
from clipdoctor.data.source_index import Skipped
from clipdoctor.errors import DataError

log = logging.getLogger(__name__)

_KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
_KINETICS_SPLIT_DIRS = {"train": ("train",), "val": ("val", "validate", "validation"),
                        "test": ("test",)}


def is_kinetics_header(header: list[str]) -> bool:
    """Whether a CSV header has Kinetics' annotation columns (format detection asks it too)."""
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
    if not is_kinetics_header(header):
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
    csvs = [root] if root.is_file() else [p for p in visible(root) if p.is_file()
                                            and p.suffix.lower() == ".csv"
                                            and is_kinetics_header(csv_header(p))]
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
