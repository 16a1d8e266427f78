"""[ucf101] classInd.txt + trainlistNN.txt / testlistNN.txt beside the videos (or under
ucfTrainTestlist/ and UCF-101/)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from clipdoctor.data.layouts.files import _LIST_LINE, _inside, _need_dir, _rel, _text_lines
from clipdoctor.data.layouts.registry import _add_listed, _Entry, _Listing, _register
from clipdoctor.data.splits import UCF_GROUP
from clipdoctor.errors import DataError


def ucf_lists_dir(root: Path) -> Path | None:
    """The folder holding UCF101's `classInd.txt` (the root or its `ucfTrainTestlist/`), or
    None: format detection asks it too."""
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
    if PurePosixPath(rel).is_absolute() or ".." in parts[:1]:  # outside the root: no class folder
        parts = parts[-1:]
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
    match = UCF_GROUP.match(PurePosixPath(rel).stem)
    if match and match.group(1) in classes:
        return match.group(1)
    raise DataError(f"{where}: cannot tell the class of '{rel}'; write it as <class>/<video>")


@_register("ucf101")
def _list_ucf101(root: Path, fold: int) -> _Listing:
    """UCF101: classInd.txt (1-based) + trainlistNN.txt (with labels) + testlistNN.txt."""
    _need_dir(root, "ucf101")
    lists = ucf_lists_dir(root)
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
