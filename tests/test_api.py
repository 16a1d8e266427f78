"""The public Python API of DESIGN §3 (data part)."""

from __future__ import annotations

import numpy as np
import pytest

import clipdoctor as cd
from conftest import make_video, numbered_frames


def test_load_dataset_from_a_folder(tmp_path):
    for c in ("a", "b"):
        for i in range(10):
            make_video(tmp_path / c / f"{i}.mp4", n=8)
    data = cd.load_dataset(tmp_path)
    assert data.format == "folder" and data.classes == ["a", "b"]
    assert sorted({s.split for s in data.samples}) == ["test", "train", "val"]


def test_load_dataset_from_arrays_splits_and_checks():
    X = np.stack([numbered_frames(6, (16, 16)) for _ in range(30)])
    y = np.arange(30) % 3
    data = cd.load_dataset((X, y), classes=["x", "y", "z"])
    assert data.classes == ["x", "y", "z"] and len(data.samples) == 30
    assert {s.split for s in data.samples} == {"train", "val", "test"}
    assert np.array_equal(data.samples[0].array, X[0])
    with pytest.raises(cd.DataError, match="uint8"):
        cd.load_dataset((X.astype(np.float32) / 255, y))
    with pytest.raises(cd.DataError, match="pass a dataset path"):
        cd.load_dataset(42)


def test_load_dataset_from_user_datasets_and_loaders():
    """DESIGN §3: the user's own torch Datasets (by name: val=, test=) and DataLoaders; tensors
    as (X, y); every other form one DataError naming the accepted ones."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    clips = torch.rand(12, 4, 3, 16, 16)  # (N, T, C, H, W)
    labels = torch.arange(12) % 2
    train, val = TensorDataset(clips, labels), TensorDataset(clips[:4], labels[:4])
    data = cd.load_dataset(train, val=val, test=DataLoader(val, batch_size=2))
    assert data.classes == ["0", "1"] and str(data.layout) == "(T, C, H, W) float32"
    assert data.counts_total() == {"train": 12, "val": 4, "test": 4}
    assert data.batch_size == 2 and data.format == "dataloader"
    assert cd.load_dataset(data) is data
    X = np.stack([numbered_frames(6, (16, 16)) for _ in range(12)])
    assert len(cd.load_dataset((torch.from_numpy(X), labels)).samples) == 12
    with pytest.raises(cd.DataError, match="pass them by name"):
        cd.load_dataset((train, val))
    with pytest.raises(cd.DataError, match="accepted: a dataset path"):
        cd.load_dataset(TensorDataset(clips[:, 0], labels))  # (N, C, H, W): no time axis
    with pytest.raises(cd.DataError, match="torch Datasets"):
        cd.load_dataset(3.5)


_IDENTITY = """
import importlib, inspect, pkgutil, sys
order = sys.argv[1]
import clipdoctor as cd
first = {n: getattr(cd, n) for n in cd.__all__} if order == "api-first" else {}
for m in pkgutil.walk_packages(cd.__path__, "clipdoctor."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
for name in cd.__all__:
    for _ in range(2):
        obj = getattr(cd, name)
        assert not inspect.ismodule(obj), f"cd.{name} is the module {obj.__name__}"
        assert first.get(name, obj) is obj, f"cd.{name} changed after importing submodules"
        if name in cd._LAZY:
            module, attr = cd._LAZY[name]
            assert obj is getattr(importlib.import_module(module), attr), name
for _ in range(2):
    X = __import__("numpy").zeros((6, 3, 8, 8, 3), "uint8")
    assert len(cd.load_dataset((X, [0, 1] * 3)).samples) == 6
    assert inspect.signature(cd.diagnose).parameters["data"]
    assert inspect.signature(cd.train).parameters["config"]
print("ok")
"""


@pytest.mark.parametrize("order", ["api-first", "submodules-first"])
def test_public_names_stay_what_they_are_in_any_import_order(order):
    """`cd.diagnose`, `cd.train`, ... are the functions, however often they are used and
    whatever was imported before (issue 13: a subpackage of the same name used to replace
    them after the first use)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _IDENTITY, order], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
