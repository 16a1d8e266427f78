"""Which frame indices a clip uses: pure functions of the video length and an explicit RNG.

A CNN-LSTM sees a clip as T frames picked from a video of N frames. Two samplers exist:

``uniform`` (TSN-style segments, :func:`uniform_segments`)
    [0, N) is split into T equal segments (segment i holds frames ``i*N//T`` up to, not
    including, ``(i+1)*N//T``) and one frame is taken from each, so the clip spans the whole
    video. Training takes a random frame inside each segment (temporal jitter, a cheap and
    strong augmentation). Evaluation takes the centre of each segment; with ``num_clips=K``
    clip ``k`` takes the frame at relative offset ``(k + 0.5) / K`` inside each segment, so
    the K clips look at different frames (e.g. N=16, T=4: eval gives 2, 6, 10, 14).

``dense`` (consecutive frames at a stride, :func:`dense_clip`)
    T frames ``start, start + s, ..., start + (T-1)*s`` spanning ``(T-1)*s + 1`` frames, which
    keeps short-range motion intact. Training draws a random stride in [1, max_stride] among
    the strides whose span fits in the video, and a random start. Evaluation uses the fixed
    ``stride`` (reduced until the span fits) and K starts evenly spaced over
    [0, N - span] (a single clip is centred).

Videos shorter than the clip (N < T), for both samplers, in training and evaluation alike:

* ``short="repeat"`` (default): every frame is repeated, in order and as evenly as possible,
  so the clip still covers the whole video exactly once: N=3, T=8 -> 0,0,0,1,1,1,2,2 and
  ``length == T``. The model sees slowed-down motion but no fake steps.
* ``short="pad"``: the real frames 0..N-1 followed by N-1 repeated to fill T:
  N=3, T=8 -> 0,1,2,2,2,2,2,2 and ``length == N``. The data loader returns ``length`` so the
  model can mask (or pack) the padded steps; without masking, the LSTM would read a frozen
  last frame as if it were motion.

Randomness comes only from the ``rng`` argument (a :class:`numpy.random.Generator`), never
from global state, so a sample can be reproduced from its seed. Training without an ``rng``
raises ``ValueError``. Indices are always int64, non-decreasing and in [0, N).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import numpy as np

SHORT_MODES = ("repeat", "pad")


@dataclass(frozen=True, eq=False)
class ClipIndices:
    """The frames one clip uses.

    ``eq=False`` because numpy arrays have no single truth value; compare ``indices`` with
    ``np.array_equal`` instead. The array is made read-only so the dataclass is truly frozen.
    """

    indices: np.ndarray  # (T,) int64, non-decreasing frame indices into a video of num_frames frames
    length: int  # number of real (not padded) steps; == T unless short="pad" and num_frames < T

    def __post_init__(self) -> None:
        indices = np.array(self.indices, dtype=np.int64)  # a private copy, (T,)
        if indices.ndim != 1 or indices.size == 0:
            raise ValueError(f"indices must be a non-empty 1-D array, got shape {indices.shape}")
        if np.any(np.diff(indices) < 0):
            raise ValueError(f"indices must be non-decreasing, got {indices.tolist()}")
        length = operator.index(self.length)
        if not 1 <= length <= indices.size:
            raise ValueError(f"length must be in [1, {indices.size}], got {length}")
        indices.setflags(write=False)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "length", length)


def _positive_int(value: int, name: str) -> int:
    """`value` as a plain int >= 1, or ValueError naming the argument."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {number}")
    return number


def _check_common(num_frames: int, num_samples: int, train: bool, rng: np.random.Generator | None,
                  clip: int, num_clips: int, short: str) -> tuple[int, int, int, int]:
    """Validate the arguments both samplers share; returns (num_frames, num_samples, clip, num_clips)."""
    num_frames = _positive_int(num_frames, "num_frames")
    num_samples = _positive_int(num_samples, "num_samples")
    num_clips = _positive_int(num_clips, "num_clips")
    try:
        clip = operator.index(clip)
    except TypeError:
        raise ValueError(f"clip must be an integer, got {clip!r}") from None
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip must be in [0, num_clips={num_clips}), got {clip}")
    if short not in SHORT_MODES:
        raise ValueError(f"short must be one of {', '.join(SHORT_MODES)}, got {short!r}")
    if train and rng is None:
        raise ValueError("training sampling is random: pass rng=np.random.default_rng(seed)")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return num_frames, num_samples, clip, num_clips


def _short_clip(num_frames: int, num_samples: int, short: str) -> ClipIndices:
    """Indices for a video with fewer frames than the clip (num_frames < num_samples)."""
    if short == "repeat":
        # frame j fills steps [j*T/N, (j+1)*T/N): each frame once, in order, as evenly as possible
        indices = np.arange(num_samples, dtype=np.int64) * num_frames // num_samples  # (T,)
        return ClipIndices(indices, num_samples)
    indices = np.full(num_samples, num_frames - 1, dtype=np.int64)  # (T,)
    indices[:num_frames] = np.arange(num_frames)
    return ClipIndices(indices, num_frames)


def uniform_segments(num_frames: int, num_samples: int, *, train: bool, rng: np.random.Generator | None = None,
                     clip: int = 0, num_clips: int = 1, short: str = "repeat") -> ClipIndices:
    """One frame from each of ``num_samples`` equal segments of the video (TSN sampling).

    Training: a random frame inside each segment (needs ``rng``). Evaluation: the frame at
    relative offset ``(clip + 0.5) / num_clips`` inside each segment (the centre for one
    clip). ``clip``/``num_clips`` only matter in evaluation. See the module docstring for
    videos shorter than the clip.
    """
    n, t, clip, num_clips = _check_common(num_frames, num_samples, train, rng, clip, num_clips, short)
    if n < t:
        return _short_clip(n, t, short)
    bounds = np.arange(t + 1, dtype=np.int64) * n // t  # (T+1,) segment i = [bounds[i], bounds[i+1])
    starts, ends = bounds[:-1], bounds[1:]  # (T,), (T,); every segment holds >= 1 frame since N >= T
    if train:
        indices = rng.integers(starts, ends)  # (T,) one uniform draw per segment
    else:
        # floor(len * (2k + 1) / (2K)) in integers: the frame at relative offset (k + 0.5) / K
        indices = starts + (ends - starts) * (2 * clip + 1) // (2 * num_clips)  # (T,)
    return ClipIndices(indices.astype(np.int64), t)


def _span(num_samples: int, stride: int) -> int:
    """Frames covered by ``num_samples`` steps at ``stride``."""
    return (num_samples - 1) * stride + 1


def dense_clip(num_frames: int, num_samples: int, *, train: bool, rng: np.random.Generator | None = None,
               clip: int = 0, num_clips: int = 1, stride: int = 2, max_stride: int = 4,
               short: str = "repeat") -> ClipIndices:
    """``num_samples`` consecutive frames at a stride (dense sampling: keeps local motion).

    Training: a random stride in [1, ``max_stride``] whose span fits the video and a random
    start (needs ``rng``). Evaluation: ``stride`` (reduced until the span fits) and clip
    ``clip`` of ``num_clips`` starts evenly spaced over [0, num_frames - span]; one clip is
    centred. See the module docstring for videos shorter than the clip.
    """
    n, t, clip, num_clips = _check_common(num_frames, num_samples, train, rng, clip, num_clips, short)
    stride = _positive_int(stride, "stride")
    max_stride = _positive_int(max_stride, "max_stride")
    if n < t:
        return _short_clip(n, t, short)
    if train:
        # never empty: stride 1 spans T <= N frames (shorter videos were handled above)
        fitting = [s for s in range(1, max_stride + 1) if _span(t, s) <= n]
        step = int(rng.choice(fitting))
        start = int(rng.integers(0, n - _span(t, step) + 1))
    else:
        step = stride
        while step > 1 and _span(t, step) > n:
            step -= 1
        room = n - _span(t, step)  # last valid start
        if num_clips == 1:
            start = room // 2
        else:
            # round(clip * room / (K - 1)), half up, in integers: evenly spaced, both ends included
            start = (2 * clip * room + num_clips - 1) // (2 * (num_clips - 1))
    indices = start + step * np.arange(t, dtype=np.int64)  # (T,)
    return ClipIndices(indices, t)


SAMPLERS: dict[str, Callable[..., ClipIndices]] = {"uniform": uniform_segments, "dense": dense_clip}


def sample_indices(mode: str, num_frames: int, num_samples: int, **kw: object) -> ClipIndices:
    """Dispatch to the sampler named ``mode`` (a key of :data:`SAMPLERS`) with the other arguments."""
    try:
        sampler = SAMPLERS[mode]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampling mode {mode!r}; choose one of: {', '.join(sorted(SAMPLERS))}") from None
    return sampler(num_frames, num_samples, **kw)
