"""[ssv2] Something-Something v2: labels.json + train.json / validation.json over <id>.webm."""

from __future__ import annotations

from pathlib import Path

from clipdoctor.data.layouts.files import _inside, _need_dir, _read_json, _rel
from clipdoctor.data.layouts.registry import _add_listed, _Entry, _Listing, _register
from clipdoctor.errors import DataError


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
