"""The `clip_scan` probe: per clip, the file's frame count / size / fps and pixel statistics of
the decoded frames (brightness, flat frames, motion between sampled frames, temporal
smoothness), read by the corrupt, static, out-of-order, too-short and mixed-shape clip checks.

Measurements only, with the definitions of what a number means; the checks hold the decision
thresholds.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from clipdoctor.data.sources import Sample
from clipdoctor.doctor.probes import (Context, Probes, _need_index, datamodule,
                                        is_user_data, need_data, pick, probe, work_clock)

log = logging.getLogger(__name__)

# -- measurement definitions (what a number means; the checks hold the decision thresholds) --
SCAN_SIDE = 32  # clip_scan averages frames down to about this side: statistics, not detail
FLAT_STD = 3.0  # a frame whose pixel std (0..255) is below this is flat: black, blank, one colour
# a "detour": frame t is farther from both neighbours than they are from each other, i.e.
# d(t-1, t+1) < DETOUR_RATIO * min(d(t-1, t), d(t, t+1)). Smooth footage never does that by
# much; a frame read out of order (`f2` between `f19` and `f20`) does. Only steps above
# DETOUR_MIN_STEP (mean abs difference, 0..255) count, so codec noise on still frames (and
# keyframe flicker) does not: still synthetic clips step at most 1.05 (measured), moving ones
# 0.3-5 on average, so 1.5 judges ~10 triples per 20-frame moving clip
DETOUR_RATIO = 0.5
DETOUR_MIN_STEP = 1.5
# static clips: a moving thing changes a small part of the frame a lot, sensor and codec noise
# change all of it a little; the 99th percentile of the per-step change separates the two
MOTION_PERCENTILE = 99
THUMB = 8  # near-duplicates: each sampled frame as 8 x 8 block means (model-free, cheap)


def _shrink(frames: np.ndarray) -> np.ndarray:
    """(K, H, W, 3) uint8 -> (K, h, w, 3) float32 block means, h and w about SCAN_SIDE: block
    means keep what moves and average pixel noise away (striding would keep the noise)."""
    from PIL import Image

    b = max(1, min(frames.shape[1:3]) // SCAN_SIDE)
    if b == 1:
        return np.asarray(frames, np.float32)
    # Pillow's box reduce: ~1 ms for 24 frames of 128 px, numpy / torch pooling 9-16 ms
    small = [np.asarray(Image.fromarray(np.asarray(f)).reduce(b)) for f in frames]
    return np.stack(small).astype(np.float32)  # (K, H/b, W/b, C)


def _steps(f: np.ndarray, k: int) -> np.ndarray:
    """Mean abs difference between frames k apart: (K, h, w, 3) -> (K - k,)."""
    if len(f) <= k:
        return np.zeros(0, np.float32)
    return np.abs(f[k:] - f[:-k]).mean(axis=(1, 2, 3))


def _detours(d1: np.ndarray, d2: np.ndarray) -> tuple[int, int]:
    """(detours, triples judged): see DETOUR_RATIO. d1[t] = d(t, t+1), d2[t] = d(t, t+2)."""
    if len(d2) == 0:
        return 0, 0
    near = np.minimum(d1[:-1], d1[1:])  # min(d(t-1, t), d(t, t+1)) for the middle frame t
    judged = near >= DETOUR_MIN_STEP
    return int(np.sum(judged & (d2 < DETOUR_RATIO * near))), int(judged.sum())


def _sampled(dm: Any, num: int) -> np.ndarray:
    """The frame indices (into `num` kept frames) the evaluation sampler gives the model."""
    from clipdoctor.data.sampling import sample_indices

    c = dm.config
    kw: dict = dict(train=False, short=c.short)
    if c.sampler == "dense":
        kw.update(stride=c.stride, max_stride=c.max_stride)
    return np.asarray(sample_indices(c.sampler, num, c.frames, **kw).indices)


def _thumbnail(frames: np.ndarray) -> np.ndarray:
    """The sampled frames as THUMB x THUMB block means, centred and scaled to unit length:
    the dot product of two thumbnails is their pixel correlation (near-duplicate search)."""
    T, H, W, C = frames.shape
    b = max(1, min(H, W) // THUMB)
    t = frames[:, :THUMB * b, :THUMB * b].reshape(T, THUMB, b, THUMB, b, C).mean(axis=(2, 4))
    t = t.ravel() - t.mean()
    return (t / max(float(np.linalg.norm(t)), 1e-6)).astype(np.float32)


def _scan_one(dm: Any, sample: Sample) -> tuple[dict, np.ndarray]:
    """File facts and pixel statistics of one readable clip, and its thumbnail."""
    info = dm.frames.probe(sample)
    # the frames the data module keeps of the clip (the cache's, or the same decoded small)
    kept = dm.frames.kept(sample, min(dm.config.frame_size, 2 * SCAN_SIDE))
    f = _shrink(np.asarray(kept))  # (K, h, w, 3) float32, 0..255
    d1, d2 = _steps(f, 1), _steps(f, 2)
    idx = _sampled(dm, len(f))
    thumb = _thumbnail(f[idx])
    seen = f[np.unique(idx)]  # the distinct frames the model sees, in order
    motion, peak = 0.0, 0.0
    if len(seen) > 1:
        change = np.abs(seen[1:] - seen[:-1]).reshape(len(seen) - 1, -1)  # (steps, h*w*3)
        motion = float(change.mean())
        peak = float(np.percentile(change, MOTION_PERCENTILE, axis=1).mean())
    detours, judged = _detours(d1, d2)
    channels = None
    if sample.array is not None:
        channels = int(sample.array.shape[-1]) if sample.array.ndim == 4 else 1
    return {
        "name": sample.name, "split": sample.split, "label": sample.label,
        "frames": int(info.frames), "width": int(info.width), "height": int(info.height),
        "fps": info.fps, "channels": channels, "kept": int(len(f)),
        "frame_mean": [round(float(v), 2) for v in f.mean(axis=(1, 2, 3))],
        "frame_std": [round(float(v), 2) for v in f.std(axis=(1, 2, 3))],
        "motion": round(motion, 4),  # mean abs step between the frames the model sees, 0..255
        "motion_peak": round(peak, 4),  # its MOTION_PERCENTILE-th percentile over the frame
        "d1": round(float(d1.mean()), 4) if len(d1) else None,  # adjacent kept frames
        "d2": round(float(d2.mean()), 4) if len(d2) else None,  # kept frames two apart
        "detours": detours, "judged": judged,
        "coverage": round(float((idx.max() - idx.min() + 1) / len(f)), 4),  # sampled span / clip
        "sampled_gap_s": _gap_seconds(idx, len(f), info),
    }, thumb


def _gap_seconds(idx: np.ndarray, kept: int, info: Any) -> float | None:
    """Mean time between two sampled frames, in seconds of the original video."""
    if not info.fps or len(idx) < 2:
        return None
    span_frames = (idx.max() - idx.min()) * info.frames / max(kept, 1)
    return round(float(span_frames / (len(idx) - 1) / info.fps), 4)


def _scan_summary(clips: list[dict]) -> dict:
    """A few medians and counts of the per-clip values, for the report."""
    if not clips:
        return {}
    return {"frames_median": float(np.median([c["frames"] for c in clips])),
            "motion_peak_median": round(float(np.median([c["motion_peak"] for c in clips])), 3),
            "coverage_median": round(float(np.median([c["coverage"] for c in clips])), 3),
            "order_judged_clips": sum(c["judged"] > 0 for c in clips),
            "clips_with_detours": sum(c["detours"] > 0 for c in clips)}


@probe("clip_scan", min_s=2.0)  # ~3 ms a cached clip: 0.65 s for 320, 5.5 s for 1000 at 128 px
def clip_scan(ctx: Context, probes: Probes) -> dict:
    """Per-clip file facts and pixel statistics of (up to a budget) all readable clips.

    Reads the decoded-frame cache the data module filled (no decoding when it exists), frames
    box-averaged down to about SCAN_SIDE px. For the user's own Datasets: their clips as
    yielded, every frame (they are what the model sees), on a 0..255 scale (`_pixel_scale`)."""
    if is_user_data(need_data(ctx)):
        return _scan_user(ctx)
    _need_index(ctx)
    dm = datamodule(ctx)
    limit = ctx.budget.scale(3000, minimum=50)  # ~3 ms per cached clip: 3000 clips ~ 9 s
    samples = pick(dm.samples, limit, ctx.seed)
    from clipdoctor.errors import DecodeError

    def scan_one(i: int, s: Any) -> tuple[dict, np.ndarray] | str:
        try:
            return _scan_one(dm, s)
        except DecodeError as e:  # decoded once before: a file changed or vanished since
            return e.reason

    c = dm.config
    return _scanned(ctx, samples, scan_one, len(dm.samples),
                    {"sampler": c.sampler, "frames": c.frames, "stride": c.stride,
                     "max_stride": c.max_stride, "short": c.short,
                     "cache_frames": c.cache_frames, "cached": dm.frames.cache is not None})


def _scanned(ctx: Context, samples: list, scan_one: Callable[[int, Any], Any], readable: int,
             sampling: dict | Callable[[list[dict]], dict]) -> dict:
    """`clip_scan`'s value: `scan_one(i, sample)` -> (clip facts, thumbnail), or the reason
    it could not be read, over `samples` until the diagnosis's safety stop; `sampling` (or a
    function of the scanned clips giving it) says how the frames were sampled."""
    clips, thumbs, failed = [], [], []
    for i, s in enumerate(samples):
        if i >= 20 and work_clock() > ctx.budget.deadline():
            log.info("clip_scan: budget reached after %d of %d clips", i, len(samples))
            break
        out = scan_one(i, s)
        if isinstance(out, str):
            failed.append({"path": s.name, "reason": out})
            continue
        clips.append(out[0])
        thumbs.append(out[1])
    return {
        "clips": len(clips), "readable": readable, "failed": failed,
        "summary": _scan_summary(clips),
        "sampling": sampling(clips) if callable(sampling) else sampling,
        "definitions": {"flat_std": FLAT_STD, "detour_ratio": DETOUR_RATIO,
                        "detour_min_step": DETOUR_MIN_STEP, "scan_side": SCAN_SIDE},
        "_clips": clips,
        "_thumbs": np.stack(thumbs) if thumbs else np.zeros((0, 0), np.float32),  # (N, L)
    }


# =============================================================================================
# the user's own Datasets: the same measurements from the clips their items hold

THUMB_FRAMES = 8  # frames (evenly spaced) in a user clip's thumbnail: clips of any length compare


def _pixel_scale(sample_frames: list[np.ndarray]) -> tuple[float, float, str]:
    """(offset, factor, how) mapping the user's clip values onto 0..255, where the thresholds
    of the scan live: uint8 and raw 0..255 floats as they are, 0..1 floats times 255, anything
    else (normalised clips) the 0.5th..99.5th percentile range of a few clips onto 0..255. One
    map for the whole dataset, so clips keep their differences."""
    v = np.concatenate([f.ravel()[:: max(1, f.size // 200_000)] for f in sample_frames])
    lo, hi = (float(q) for q in np.percentile(v, [0.5, 99.5]))
    vmin, vmax = float(v.min()), float(v.max())
    if vmin >= 0 and vmax <= 255 and vmax > 1.5:
        return 0.0, 1.0, "0..255 as given"
    if vmin >= 0 and vmax <= 1.0:
        return 0.0, 255.0, "0..1 x 255"
    if hi - lo < 1e-9:
        return lo, 1.0, "constant"
    return lo, 255.0 / (hi - lo), f"{lo:.3g}..{hi:.3g} (0.5-99.5th percentile) onto 0..255"


def _shrink_float(f: np.ndarray) -> np.ndarray:
    """(K, H, W, C) float32 -> block means with sides about SCAN_SIDE (as `_shrink` does)."""
    import torch
    import torch.nn.functional as F

    b = max(1, min(f.shape[1:3]) // SCAN_SIDE)
    if b == 1:
        return f
    x = torch.from_numpy(np.ascontiguousarray(f)).permute(0, 3, 1, 2)  # (K, H, W, C) -> (K, C, H, W)
    return F.avg_pool2d(x, b).permute(0, 2, 3, 1).numpy()  # (K, C, h, w) -> (K, h, w, C)


def _thumbnail_any(f: np.ndarray) -> np.ndarray:
    """`_thumbnail` for clips of any length, size and channels: THUMB_FRAMES evenly spaced
    frames, THUMB x THUMB adaptive block means, grey repeated to 3 channels; unit length."""
    import torch
    import torch.nn.functional as F

    idx = np.linspace(0, len(f) - 1, THUMB_FRAMES).round().astype(int)
    x = torch.from_numpy(np.ascontiguousarray(f[idx])).permute(0, 3, 1, 2)  # (8, C, H, W)
    x = F.adaptive_avg_pool2d(x, THUMB)  # (8, C, H, W) -> (8, C, 8, 8)
    if x.shape[1] != 3:
        x = x[:, :1].repeat(1, 3, 1, 1)
    t = x.numpy().ravel().astype(np.float64)
    t = t - t.mean()
    return (t / max(float(np.linalg.norm(t)), 1e-6)).astype(np.float32)


def _scan_frames(name: str, split: str, label: int, f: np.ndarray) -> tuple[dict, np.ndarray]:
    """The per-clip values of `_scan_one` for frames (K, H, W, C) float on 0..255, all of
    which the model sees."""
    small = _shrink_float(f)
    d1, d2 = _steps(small, 1), _steps(small, 2)
    motion, peak = 0.0, 0.0
    if len(small) > 1:
        change = np.abs(small[1:] - small[:-1]).reshape(len(small) - 1, -1)
        motion = float(change.mean())
        peak = float(np.percentile(change, MOTION_PERCENTILE, axis=1).mean())
    detours, judged = _detours(d1, d2)
    return {
        "name": name, "split": split, "label": label,
        "frames": int(len(f)), "width": int(f.shape[2]), "height": int(f.shape[1]),
        "fps": None, "channels": int(f.shape[3]), "kept": int(len(f)),
        "frame_mean": [round(float(v), 2) for v in small.mean(axis=(1, 2, 3))],
        # the largest std within one channel: a black frame normalised per channel (ImageNet
        # mean / std) is flat in each channel but not over all three (bench: std 7.1 > 3)
        "frame_std": [round(float(v), 2) for v in small.std(axis=(1, 2)).max(axis=-1)],
        "motion": round(motion, 4), "motion_peak": round(peak, 4),
        "d1": round(float(d1.mean()), 4) if len(d1) else None,
        "d2": round(float(d2.mean()), 4) if len(d2) else None,
        "detours": detours, "judged": judged, "coverage": 1.0, "sampled_gap_s": None,
    }, _thumbnail_any(f)


def _scan_user(ctx: Context) -> dict:
    """`clip_scan` over the user's own Datasets (UserData): every frame of each clip as the
    Dataset yields it (the first `length` frames when items carry one)."""
    from clipdoctor.data.user import clip_frames

    data = ctx.data
    samples = pick(data.samples, ctx.budget.scale(3000, minimum=50), ctx.seed)

    def read(s: Any) -> tuple[np.ndarray | None, str | None]:
        try:
            return clip_frames(*_clip_of(data, s)), None
        except Exception as e:  # noqa: BLE001 — an item the Dataset cannot give as a clip
            return None, f"{type(e).__name__}: {str(e)[:120]}"

    first = [read(s) for s in samples[:16]]
    offset, factor, how = _pixel_scale([f for f, _ in first if f is not None]
                                       or [np.zeros(1, np.float32)])

    def scan_one(i: int, s: Any) -> tuple[dict, np.ndarray] | str:
        f, error = first[i] if i < len(first) else read(s)
        if f is None:
            return error
        return _scan_frames(s.name, s.split, s.label, (f - offset) * factor)

    return _scanned(ctx, samples, scan_one, len(data.samples), lambda clips: {
        "sampler": "your Dataset", "frames": max((c["frames"] for c in clips), default=0),
        "layout": str(data.layout), "pixel_scale": how, "cached": False})


def _clip_of(data: Any, sample: Any) -> tuple:
    """(clip, layout, length) of one user sample, for `clip_frames`."""
    clip, length = data.clip(sample)
    return clip, data.layout, length
