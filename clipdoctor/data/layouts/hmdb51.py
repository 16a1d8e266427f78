"""[hmdb51] <class>_test_split<N>.txt with "<video>.avi <0|1|2>" lines beside
ROOT/<class>/<video>.avi."""

from __future__ import annotations

import re
from pathlib import Path

from clipdoctor.data.layouts.files import (_LIST_LINE, _inside, _need_dir, _rel, _sort_classes,
                                           _text_lines, visible)
from clipdoctor.data.layouts.registry import _add_listed, _Entry, _Listing, _register
from clipdoctor.errors import DataError

_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<fold>\d+)\.txt$")


def hmdb_split_files(root: Path) -> list[Path]:
    """Split files in ROOT or in folders (up to two levels) whose name contains 'split'."""
    folders, level, found = [root], [root], []
    for _ in range(2):
        level = [d for parent in level for d in visible(parent)
                 if d.is_dir() and "split" in d.name.lower()]
        folders += level
    for folder in folders:
        found += [p for p in visible(folder) if p.is_file() and _HMDB_FILE.match(p.name)]
    return found


@_register("hmdb51")
def _list_hmdb51(root: Path, fold: int) -> _Listing:
    """HMDB51: one split file per class and fold; 1 = train, 2 = test, 0 = unused (left out)."""
    _need_dir(root, "hmdb51")
    files = hmdb_split_files(root)
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
