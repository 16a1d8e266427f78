"""The frame cache: decode once, reuse across epochs and runs, invalidate on change, share safely."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from clipdoctor.data import decode
from clipdoctor.data.cache import FrameCache
from clipdoctor.data.frames import kept_indices
from clipdoctor.data.sources import Sample
from conftest import frame_number, make_video, numbered_frames


def _sample(path: Path, label: int = 0) -> Sample:
    return Sample(path=path, label=label, split="train", name=path.name)


@pytest.fixture
def count_opens(monkeypatch):
    """Counts every container PyAV opens through clipdoctor's decoder."""
    calls: list[str] = []
    real_open = decode.av.open

    def counting_open(path, *a, **kw):
        calls.append(str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(decode.av, "open", counting_open)
    return calls


def test_kept_indices_cover_the_whole_clip():
    assert list(kept_indices(5, 8)) == [0, 1, 2, 3, 4]
    k = kept_indices(100, 8)
    assert len(k) == 8 and k[0] == 0 and k[-1] == 99 and np.all(np.diff(k) > 0)


def test_entry_holds_resized_frames_in_order(tmp_path):
    cache = FrameCache(tmp_path / "c", frame_size=24, max_frames=8)
    s = _sample(make_video(tmp_path / "a.mp4", n=40, size=(32, 48)))
    frames = cache.frames(s)
    assert isinstance(frames, np.memmap) and frames.shape == (8, 24, 24, 3)
    assert [frame_number(f) for f in frames] == list(kept_indices(40, 8))


def test_take_reads_the_chosen_frames_and_follows_file_changes(tmp_path, count_opens):
    """`take` (what training reads) returns exactly the entry's frames at the indices, in
    the order asked (repeats included), without opening the video again; a changed video is
    decoded again even by the same cache object (its entry memo keys on size and mtime)."""
    cache = FrameCache(tmp_path / "c", frame_size=24, max_frames=8)
    path = make_video(tmp_path / "a.mp4", n=40, size=(32, 48))
    s = _sample(path)
    assert cache.count(s) == 8
    count_opens.clear()
    got = cache.take(s, [7, 0, 0, 3])
    assert got.shape == (4, 24, 24, 3) and got.dtype == np.uint8 and count_opens == []
    assert np.array_equal(got, np.asarray(cache.frames(s))[[7, 0, 0, 3]])
    with pytest.raises(IndexError, match="frame 8 of 8"):
        cache.take(s, [8])
    make_video(path, n=12, offset=50)
    os.utime(path, ns=(1, 1))
    assert cache.count(s) == 8 and frame_number(cache.take(s, [0])[0]) == 50


def test_take_names_a_truncated_entry(tmp_path):
    cache = FrameCache(tmp_path / "c", frame_size=24, max_frames=8)
    s = _sample(make_video(tmp_path / "a.mp4", n=12))
    cache.count(s)
    entry = next((tmp_path / "c" / "frames").rglob("*.npy"))
    entry.write_bytes(entry.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated; delete it"):
        cache.take(s, list(range(8)))


def test_second_read_opens_no_video_file(tmp_path, count_opens):
    cache = FrameCache(tmp_path / "c", frame_size=24)
    samples = [_sample(make_video(tmp_path / f"{i}.mp4", n=12)) for i in range(3)]
    failed = cache.fill(samples)
    assert failed == [] and len(count_opens) > 0
    count_opens.clear()
    for s in samples:
        cache.frames(s)
    # a fresh cache object on the same folder (a new run) reuses the entries too
    again = FrameCache(tmp_path / "c", frame_size=24)
    assert again.fill(samples) == []
    assert count_opens == []


def test_parameters_and_file_changes_make_new_entries(tmp_path, count_opens):
    path = make_video(tmp_path / "a.mp4", n=12)
    s = _sample(path)
    FrameCache(tmp_path / "c", frame_size=24).frames(s)
    count_opens.clear()
    FrameCache(tmp_path / "c", frame_size=32).frames(s)  # other size: new entry
    assert count_opens
    count_opens.clear()
    make_video(path, n=12, offset=50)  # the file changes (size / mtime)
    os.utime(path, ns=(1, 1))
    frames = FrameCache(tmp_path / "c", frame_size=24).frames(_sample(path))
    assert count_opens
    assert frame_number(frames[0]) == 50


def test_failures_are_returned_not_raised_and_not_cached(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    good = make_video(tmp_path / "good.mp4", n=8)
    cache = FrameCache(tmp_path / "c", frame_size=24)
    progress: list[tuple[int, int]] = []
    failed = cache.fill([_sample(good), _sample(bad)], progress=lambda d, t: progress.append((d, t)))
    assert [(s.path, "not a readable video" in e.reason) for s, e in failed] == [(bad, True)]
    assert progress[-1] == (2, 2)
    assert not cache.has(_sample(bad)) and cache.has(_sample(good))


def test_array_samples_are_cached_by_content(tmp_path):
    arr = numbered_frames(10, size=(20, 20))
    cache = FrameCache(tmp_path / "c", frame_size=16)
    a = Sample(path=None, label=0, split="train", array=arr, name="x.npz[0]")
    frames = cache.frames(a)
    assert frames.shape == (10, 16, 16, 3)
    assert [frame_number(f) for f in frames] == list(range(10))
    b = Sample(path=None, label=0, split="train", array=numbered_frames(10, (20, 20), 5), name="x.npz[1]")
    assert frame_number(cache.frames(b)[0]) == 5


def _fill_in_process(args):
    root, paths = args
    cache = FrameCache(root, frame_size=24)
    failed = cache.fill([_sample(Path(p)) for p in paths])
    return len(failed), [frame_number(cache.frames(_sample(Path(p)))[0]) for p in paths]


def test_two_processes_filling_one_cache(tmp_path):
    paths = [str(make_video(tmp_path / f"{i}.mp4", n=10, offset=i)) for i in range(6)]
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_fill_in_process, [(str(tmp_path / "c"), paths)] * 2)
    assert results == [(0, list(range(6)))] * 2
    leftovers = [p for p in (tmp_path / "c").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
