"""[folder] ROOT/<class>/<clip> or ROOT/<split>/<class>/<clip>: a video file or a folder of frame
images per clip, class = folder name (the same indices as torchvision's ImageFolder)."""

from __future__ import annotations

from pathlib import Path

from clipdoctor.data.layouts.files import (_SPLIT_DIRS, _clip_problem, _need_dir, _rel,
                                           visible)
from clipdoctor.data.layouts.registry import _Entry, _Listing, _register
from clipdoctor.data.source_index import VIDEO_SUFFIXES, Skipped


def _split_dirs(root: Path) -> dict[Path, str]:
    """Top-level split folders, when the folder layout is split into train/val/test."""
    top_dirs = [p for p in visible(root) if p.is_dir()]
    found = {p: _SPLIT_DIRS[p.name.lower()] for p in top_dirs if p.name.lower() in _SPLIT_DIRS}
    if found and ("train" in found.values() or len(found) == len(top_dirs)):
        return found
    return {}


def has_class_folders(root: Path) -> bool:
    """True when some subfolder (or split/subfolder) holds a video or a frame folder."""
    splits = _split_dirs(root)
    parents = list(splits) if splits else [root]
    for parent in parents:
        for class_dir in visible(parent):
            if class_dir.is_dir() and any(_clip_problem(c) is None for c in visible(class_dir)):
                return True
    return False


def _scan_classes(root: Path, parent: Path, split: str | None,
                  skipped: list[Skipped]) -> list[tuple[str, Path, str | None]]:
    """(class, clip, split) for every clip under `parent/<class>/`; the rest into `skipped`."""
    found = []
    for class_dir in visible(parent):
        if not class_dir.is_dir():
            # a README or a manifest beside the class folders is fine; a lone video is not
            if class_dir.suffix.lower() in VIDEO_SUFFIXES:
                skipped.append(Skipped(_rel(class_dir, root),
                                       "video outside a class folder: its class is unknown"))
            continue
        before = len(found)
        for clip in visible(class_dir):
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
        for top in visible(root):
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
