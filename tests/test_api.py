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
