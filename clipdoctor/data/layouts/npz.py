"""[npz] arrays X (N, T, H, W, C) uint8 and y (N,), optionally X_val/y_val, X_test/y_test and
`classes`; also the check behind `clipdoctor.data.sources.from_arrays` for in-memory clips."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from clipdoctor.data.layouts.files import visible
from clipdoctor.data.layouts.registry import _Entry, _Listing, _register
from clipdoctor.errors import DataError


def _npz_file(root: Path) -> Path:
    if root.is_file():
        return root
    found = [p for p in visible(root) if p.is_file() and p.suffix.lower() == ".npz"]
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
    return list_arrays(_load_npz(path), path.name)


def list_arrays(arrays: dict[str, np.ndarray], name: str) -> _Listing:
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
