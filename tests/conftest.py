"""Shared fixtures: tiny real encoded videos whose frames carry their own frame number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipdoctor.data.synthetic import write_video



def numbered_frames(n: int, size: tuple[int, int] = (32, 40), offset: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8 frames that carry their number i + offset (0..255).

    The left half is lit at (i % 16) * 16 + 8, the right half at (i // 16) * 16 + 8, so the
    number survives lossy compression (each level is 16 grey steps from its neighbours)."""
    idx = np.arange(n) + offset
    if idx.max(initial=0) > 255:
        raise ValueError("numbered_frames encodes at most 256 frame numbers")
    out = np.empty((n, *size, 3), np.uint8)
    half = size[1] // 2
    out[:, :, :half] = ((idx % 16) * 16 + 8)[:, None, None, None]
    out[:, :, half:] = ((idx // 16) * 16 + 8)[:, None, None, None]
    return out


def frame_number(frame: np.ndarray) -> int:
    """Recover the number written by `numbered_frames` from a decoded (H, W, 3) RGB frame
    (any size: the halves are read away from their border)."""
    frame = np.asarray(frame, dtype=np.float64)
    w = frame.shape[1]
    low = frame[:, : w // 4].mean()
    high = frame[:, w - w // 4 :].mean()
    return int(round((high - 8) / 16)) * 16 + int(round((low - 8) / 16))


def make_video(path: str | Path, n: int = 20, size: tuple[int, int] = (32, 40), fps: float = 10.0,
               offset: int = 0) -> Path:
    return write_video(path, numbered_frames(n, size, offset), fps=fps)


@pytest.fixture
def video_factory(tmp_path):
    """Call with a path relative to tmp_path (and make_video's options); returns the path."""

    def factory(rel: str, **kw) -> Path:
        return make_video(tmp_path / rel, **kw)

    return factory


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache from tests: each test session gets its own cache."""
    monkeypatch.setenv("CLIPDOCTOR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine two threads spin against each other (a
    step measured 10x slower), which would starve budgeted probes and slow the tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
