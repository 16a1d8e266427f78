"""[csv] a CSV manifest path,label[,split] (or the keras.io example's video_name,tag); paths
relative to the CSV's folder."""

from __future__ import annotations

from pathlib import Path

from clipdoctor.data.layouts.files import (_SPLIT_VALUES, _inside, _read_csv, _rel,
                                           _sort_classes, _split_from_name, csv_header, visible)
from clipdoctor.data.layouts.registry import _add_listed, _Entry, _Listing, _register
from clipdoctor.errors import DataError

_PATH_COLUMNS = ("path", "video_name", "video", "filename")
_LABEL_COLUMNS = ("label", "tag", "class")


def manifest_columns(header: list[str]) -> tuple[int, int, int | None] | None:
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
    found = [p for p in visible(root) if p.is_file() and p.suffix.lower() == ".csv"
             and manifest_columns(csv_header(p))]
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
    columns = manifest_columns(header)
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
