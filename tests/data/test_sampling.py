"""Frame-index samplers: segment (uniform) and dense sampling, multi-clip eval, short videos."""

from __future__ import annotations

import numpy as np
import pytest

from clipdoctor.data.sampling import SAMPLERS, ClipIndices, dense_clip, sample_indices, uniform_segments


def _dense_stride_start(ci: ClipIndices) -> tuple[int, int]:
    """(stride, start) of a dense clip, checking the steps are all equal."""
    steps = np.diff(ci.indices)
    assert np.all(steps == steps[0])
    return int(steps[0]), int(ci.indices[0])


@pytest.mark.parametrize("mode", sorted(SAMPLERS))
@pytest.mark.parametrize("train", [True, False])
def test_indices_in_range_sorted_int64(mode: str, train: bool) -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 8, 9, 16, 31, 100, 257):
        for t in (1, 4, 8, 16):
            for k in range(3):
                ci = sample_indices(mode, n, t, train=train, rng=rng, clip=k, num_clips=3)
                assert ci.indices.shape == (t,) and ci.indices.dtype == np.int64
                assert ci.indices.min() >= 0 and ci.indices.max() < n
                assert np.all(np.diff(ci.indices) >= 0)
                assert ci.length == t  # default short="repeat" never pads


def test_uniform_eval_picks_segment_centres() -> None:
    ci = uniform_segments(16, 4, train=False)
    assert ci.indices.tolist() == [2, 6, 10, 14]
    assert ci.length == 4
    assert uniform_segments(16, 16, train=False).indices.tolist() == list(range(16))


def test_uniform_train_one_frame_per_segment_and_jitters() -> None:
    rng = np.random.default_rng(1)
    seen = [set() for _ in range(4)]
    for _ in range(300):
        idx = uniform_segments(16, 4, train=True, rng=rng).indices
        for i, v in enumerate(idx):
            assert 4 * i <= v < 4 * i + 4  # inside segment i
            seen[i].add(int(v))
    assert seen == [set(range(4 * i, 4 * i + 4)) for i in range(4)]  # every frame of a segment is reachable

    a = uniform_segments(100, 8, train=True, rng=np.random.default_rng(5)).indices
    b = uniform_segments(100, 8, train=True, rng=np.random.default_rng(5)).indices
    c = uniform_segments(100, 8, train=True, rng=np.random.default_rng(6)).indices
    assert np.array_equal(a, b)  # same seed, same clip
    assert not np.array_equal(a, c)  # the rng drives the jitter


def test_uniform_multi_clip_covers_different_frames() -> None:
    clips = [uniform_segments(32, 4, train=False, clip=k, num_clips=4).indices for k in range(4)]
    for k, idx in enumerate(clips):
        assert idx.tolist() == [8 * i + 2 * k + 1 for i in range(4)]  # offset (k + 0.5) / 4 of 8 frames
        for i, v in enumerate(idx):
            assert 8 * i <= v < 8 * i + 8
    for j in range(4):
        for k in range(j + 1, 4):
            assert not np.any(clips[j] == clips[k])
    # eval ignores the rng entirely
    assert np.array_equal(uniform_segments(32, 4, train=False, rng=np.random.default_rng(3)).indices,
                          uniform_segments(32, 4, train=False).indices)


def test_dense_train_random_stride_and_start() -> None:
    rng = np.random.default_rng(2)
    strides, starts = set(), set()
    for _ in range(400):
        ci = dense_clip(64, 8, train=True, rng=rng, max_stride=4)
        stride, start = _dense_stride_start(ci)
        assert start + 7 * stride < 64
        strides.add(stride)
        starts.add(start)
    assert strides == {1, 2, 3, 4}
    assert len(starts) > 20

    # N=20, T=8: spans are 8, 15, 22, 29 -> only strides 1 and 2 fit
    fitting = {_dense_stride_start(dense_clip(20, 8, train=True, rng=rng))[0] for _ in range(200)}
    assert fitting == {1, 2}
    # exactly T frames: stride 1 from frame 0 is the only choice
    assert dense_clip(8, 8, train=True, rng=rng).indices.tolist() == list(range(8))


def test_dense_eval_centred_and_stride_reduced() -> None:
    ci = dense_clip(40, 8, train=False, stride=2)  # span 15, room 25 -> start 12
    assert ci.indices.tolist() == list(range(12, 27, 2))
    ci = dense_clip(10, 8, train=False, stride=2)  # span 15 does not fit -> stride 1, span 8, start 1
    assert ci.indices.tolist() == list(range(1, 9))
    ci = dense_clip(22, 8, train=False, stride=4)  # 29 > 22 -> stride 3 (span 22) fits exactly
    assert ci.indices.tolist() == list(range(0, 22, 3))


def test_dense_eval_multi_clip_evenly_spaced() -> None:
    # N=39, T=8, stride 2: span 15, starts over [0, 24] -> 0, 12, 24
    starts = [_dense_stride_start(dense_clip(39, 8, train=False, clip=k, num_clips=3)) for k in range(3)]
    assert starts == [(2, 0), (2, 12), (2, 24)]
    clips = [dense_clip(100, 4, train=False, clip=k, num_clips=5).indices for k in range(5)]
    firsts = [int(c[0]) for c in clips]
    assert firsts[0] == 0 and firsts[-1] == 100 - 7
    assert len(set(np.diff(firsts).tolist()) - {23, 24}) == 0  # even gaps up to rounding


@pytest.mark.parametrize("mode", sorted(SAMPLERS))
@pytest.mark.parametrize("train", [True, False])
def test_short_videos_repeat_and_pad(mode: str, train: bool) -> None:
    rng = np.random.default_rng(0)
    rep = sample_indices(mode, 3, 8, train=train, rng=rng)
    assert rep.indices.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert rep.length == 8
    pad = sample_indices(mode, 3, 8, train=train, rng=rng, short="pad")
    assert pad.indices.tolist() == [0, 1, 2, 2, 2, 2, 2, 2]
    assert pad.length == 3
    one = sample_indices(mode, 1, 4, train=train, rng=rng, short="pad")
    assert one.indices.tolist() == [0, 0, 0, 0] and one.length == 1
    # repeat covers every frame, as evenly as possible
    counts = np.bincount(sample_indices(mode, 5, 16, train=train, rng=rng).indices, minlength=5)
    assert counts.min() >= 3 and counts.max() <= 4 and counts.sum() == 16


def test_clip_indices_is_read_only() -> None:
    ci = uniform_segments(16, 4, train=False)
    with pytest.raises(ValueError):
        ci.indices[0] = 5
    with pytest.raises(ValueError):
        ClipIndices(np.array([3, 1]), 2)  # decreasing
    with pytest.raises(ValueError):
        ClipIndices(np.array([0, 1]), 3)  # length beyond T


@pytest.mark.parametrize("call", [
    lambda: uniform_segments(0, 4, train=False),
    lambda: uniform_segments(-3, 4, train=False),
    lambda: dense_clip(0, 4, train=False),
    lambda: uniform_segments(16, 0, train=False),
    lambda: uniform_segments(16, 4, train=True),  # training needs an rng
    lambda: dense_clip(16, 4, train=True),
    lambda: uniform_segments(16, 4, train=True, rng=np.random.RandomState(0)),  # legacy global-style rng
    lambda: uniform_segments(16, 4, train=False, clip=2, num_clips=2),
    lambda: uniform_segments(16, 4, train=False, clip=-1),
    lambda: uniform_segments(16, 4, train=False, num_clips=0),
    lambda: uniform_segments(16, 4, train=False, short="loop"),
    lambda: dense_clip(16, 4, train=False, stride=0),
    lambda: dense_clip(16, 4, train=False, max_stride=0),
    lambda: uniform_segments(16.5, 4, train=False),
])
def test_bad_arguments_raise(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_unknown_mode_lists_choices() -> None:
    with pytest.raises(ValueError, match="dense, uniform"):
        sample_indices("random", 16, 4, train=False)
    assert sample_indices("uniform", 16, 4, train=False).indices.tolist() == [2, 6, 10, 14]
