"""Data probes: what the dataset holds and what the model really receives.

Measurements only; the data checks (`checks/data.py`) decide. Raw per-clip values sit under
keys starting with `_` (kept out of the JSON report); public keys hold summaries.

- `dataset`: classes, clips per split and class, unreadable files, how classes are weighted,
  model capacity.
- `clip_scan`: per clip, the file's frame count / size / fps and pixel statistics of the
  decoded frames (brightness, flat frames, motion between sampled frames, temporal
  smoothness): corrupt, static, out-of-order, too-short and mixed-shape clips.
- `clip_shapes`: frame sizes, channels and lengths, from the files or from a user's Dataset.
- `clip_features`: per-frame pooled features of the frozen built-in backbone (shared).
- `leakage`, `label_issues`: source groups and near-duplicates across splits; cleanlab on a
  linear probe over `clip_features`.
- `input_stats`, `augmentation`: model inputs after the real transforms.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter, defaultdict
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipdoctor.data.sources import SPLITS, Sample, SourceIndex
from clipdoctor.diagnose.probes import (Context, Probes, ProbeSkipped, base_model, clip_batch,
                                        datamodule, need_data, pick, probe)

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
PROBE_C = 0.01  # inverse L2 strength of the label probe's logistic regression (see _oof_probs)
FEATURE_SHARE = 0.15  # clip_features may use this share of the whole budget (shared with the
# model checks); resnet10t at 112 px: ~50 ms a clip on 2 cores, so ~350 clips at 120 s
SCAN_SHARE = 0.1  # clip_scan may use this share of the whole budget (~3 ms a cached clip)


def _is_index(data: Any) -> bool:
    return isinstance(data, SourceIndex)


def _need_index(ctx: Context) -> SourceIndex:
    """The data as a clipdoctor SourceIndex; a user's own Dataset has no files to scan."""
    data = need_data(ctx)
    if not _is_index(data):
        raise ProbeSkipped(f"data is a {type(data).__name__}, not a clipdoctor dataset: files, "
                           "splits and the data pipeline are unknown")
    return data


# =============================================================================================
# dataset: counts, unreadable files, class weighting, capacity

def _weighted_tensor(weight: Any) -> bool:
    """True when a class-weight tensor gives the classes different weights."""
    if weight is None:
        return False
    w = torch.as_tensor(weight, dtype=torch.float32).flatten()
    return bool(w.numel() > 1 and (w.max() - w.min()) > 1e-6 * w.abs().max().clamp_min(1e-12))


def loss_weighting(ctx: Context) -> tuple[str, str, str]:
    """(weighting, source, loss name): how the loss used in training weights classes.

    weighting is 'balanced' / 'sampler' / 'none' from the run config for the built-in model
    with its own loss, 'loss' / 'none' for a cross-entropy (module or partial) whose `weight`
    is or is not class-dependent, and 'unknown' for any other callable: it is not guessed."""
    from clipdoctor.diagnose.registry import _default_loss

    fn = ctx.loss_fn
    if fn is None or fn is _default_loss:
        if ctx.user_model:
            return "none", "default-loss", "cross_entropy (clipdoctor default, unweighted)"
        return ctx.config.train.class_weighting, "config", "cross_entropy (train.class_weighting)"
    if isinstance(fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return ("loss" if _weighted_tensor(fn.weight) else "none"), "loss_fn", type(fn).__name__
    if isinstance(fn, functools.partial) and fn.func in (F.cross_entropy, F.nll_loss):
        weight = fn.keywords.get("weight")
        return ("loss" if _weighted_tensor(weight) else "none"), "loss_fn", fn.func.__name__
    if fn in (F.cross_entropy, F.nll_loss):
        return "none", "loss_fn", fn.__name__
    return "unknown", "loss_fn", getattr(fn, "__name__", type(fn).__name__)


def _capacity(ctx: Context) -> dict:
    """Trainable / total parameters of the model as it trains (frozen parts excluded)."""
    model = base_model(ctx)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = {"total_params": int(total), "trainable_params": int(trainable)}
    if not ctx.user_model:
        m = ctx.config.model
        out.update(head=m.head, backbone=m.backbone, frozen_backbone=m.freeze_backbone,
                   pretrained=bool(m.pretrained or m.weights))
    return out


@probe("dataset", min_s=1.0)
def dataset_summary(ctx: Context, probes: Probes) -> dict:
    """Classes, clips per split and class (readable clips only), unreadable files, how the
    loss weights classes, and the model's trainable parameters."""
    data = _need_index(ctx)
    dm = datamodule(ctx)
    per_split = {s: Counter(x.label for x in dm.samples if x.split == s) for s in SPLITS}
    weighting, source, loss = loss_weighting(ctx)
    return {
        "format": data.format,
        "root": str(data.root),
        "classes": list(data.classes),
        "counts": {s: [per_split[s].get(i, 0) for i in range(len(data.classes))] for s in SPLITS},
        "listed": len(data.samples) + len(data.skipped),
        "skipped": [{"path": s.path, "reason": s.reason} for s in dm.skipped],
        "class_weighting": weighting,
        "weighting_source": source,
        "loss": loss,
        "user_model": ctx.user_model,
        **_capacity(ctx),
    }


# =============================================================================================
# clip_scan: per-clip file facts and pixel statistics

def _kept_frames(dm: Any, sample: Sample, info: Any) -> np.ndarray:
    """The frames the data module keeps of a clip, (K, S, S, 3) uint8: the cache's frames
    (uniform over the clip), or the same frames decoded small when the cache is off."""
    if dm.cache is not None:
        return dm.cache.frames(sample)
    from clipdoctor.data.cache import kept_indices, read_sample

    idx = kept_indices(info.frames, dm.config.cache_frames)
    return read_sample(sample, idx, min(dm.config.frame_size, 2 * SCAN_SIDE), info)


def _info(dm: Any, sample: Sample) -> Any:
    from clipdoctor.data.cache import probe_sample

    return dm.cache.probe(sample) if dm.cache is not None else probe_sample(sample)


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
    info = _info(dm, sample)
    f = _shrink(np.asarray(_kept_frames(dm, sample, info)))  # (K, h, w, 3) float32, 0..255
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
    box-averaged down to about SCAN_SIDE px."""
    _need_index(ctx)
    dm = datamodule(ctx)
    limit = ctx.budget.scale(3000, minimum=50)  # ~3 ms per cached clip: 3000 clips ~ 9 s
    samples = pick(dm.samples, limit, ctx.seed)
    deadline = time.perf_counter() + max(1.0, min(SCAN_SHARE * ctx.budget.seconds,
                                                  0.5 * ctx.budget.remaining()))
    clips, thumbs, failed = [], [], []
    from clipdoctor.errors import DecodeError

    for i, s in enumerate(samples):
        if i >= 20 and time.perf_counter() > deadline:
            log.info("clip_scan: budget reached after %d of %d clips", i, len(samples))
            break
        try:
            clip, thumb = _scan_one(dm, s)
        except DecodeError as e:  # decoded once before: a file changed or vanished since
            failed.append({"path": s.name, "reason": e.reason})
            continue
        clips.append(clip)
        thumbs.append(thumb)
    c = dm.config
    return {
        "clips": len(clips), "readable": len(dm.samples), "failed": failed,
        "summary": _scan_summary(clips),
        "sampling": {"sampler": c.sampler, "frames": c.frames, "stride": c.stride,
                     "max_stride": c.max_stride, "short": c.short, "cache_frames": c.cache_frames,
                     "cached": dm.cache is not None},
        "definitions": {"flat_std": FLAT_STD, "detour_ratio": DETOUR_RATIO,
                        "detour_min_step": DETOUR_MIN_STEP, "scan_side": SCAN_SIDE},
        "_clips": clips,
        "_thumbs": np.stack(thumbs) if thumbs else np.zeros((0, 0), np.float32),  # (N, L)
    }


# =============================================================================================
# clip_shapes: files (clipdoctor resizes and samples a fixed T) or a user's own Dataset

def _range(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    return {"min": min(values), "max": max(values)} if values else None


def _item_shape(item: Any) -> tuple[tuple[int, ...], bool]:
    """(clip shape, has a length) of a user Dataset item (clip, label[, length])."""
    clip = item[0] if isinstance(item, (tuple, list)) else item
    has_length = isinstance(item, (tuple, list)) and len(item) > 2
    return tuple(int(v) for v in torch.as_tensor(clip).shape), has_length


@probe("clip_shapes", min_s=1.0)
def clip_shapes(ctx: Context, probes: Probes) -> dict:
    """Frame counts, sizes and channels: from the files (clipdoctor resizes every frame and
    samples a fixed T, so variation is handled), or from items of a user's own Dataset."""
    data = need_data(ctx)
    if _is_index(data):
        clips = probes.get("clip_scan")["_clips"]
        sizes = Counter(f"{c['width']}x{c['height']}" for c in clips)
        return {"source": "files", "handled": True, "clips": len(clips),
                "frames": _range([c["frames"] for c in clips]),
                "sizes": dict(sizes.most_common(10)), "distinct_sizes": len(sizes),
                "channels": sorted({c["channels"] for c in clips if c["channels"] is not None}),
                "frames_sampled": probes.get("clip_scan")["sampling"]["frames"]}
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise ProbeSkipped(f"data is a {type(data).__name__}: neither a clipdoctor dataset nor "
                           "a torch Dataset")
    n = min(len(data), ctx.budget.scale(64, minimum=8))
    idx = np.random.default_rng(ctx.seed).choice(len(data), n, replace=False) if n < len(data) \
        else np.arange(len(data))
    shapes = [_item_shape(data[int(i)]) for i in idx]
    dims = [s for s, _ in shapes]
    ndims = {len(s) for s in dims}
    out = {"source": "dataset", "handled": False, "clips": len(dims),
           "shapes": dict(Counter("x".join(map(str, s)) for s in dims).most_common(10)),
           "with_length": all(h for _, h in shapes), "ndim": sorted(ndims)}
    if ndims == {4}:  # (T, C, H, W)
        out.update(frames=_range([s[0] for s in dims]), channels=sorted({s[1] for s in dims}),
                   sizes=dict(Counter(f"{s[3]}x{s[2]}" for s in dims).most_common(10)),
                   distinct_sizes=len({s[2:] for s in dims}))
    return out


# =============================================================================================
# clip_features: frozen per-frame features of the built-in backbone (shared with other areas)

def _backbone(ctx: Context) -> nn.Module:
    if ctx.user_model:
        raise ProbeSkipped("user model: clip_features needs the built-in model's backbone "
                           "(model.backbone); its structure is unknown here")
    model = base_model(ctx)
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ProbeSkipped("the model has no .backbone to take per-frame features from")
    return backbone


def _split_quota(dm: Any, total: int, seed: int) -> list[Sample]:
    """Up to `total` clips: every split gets its share of the readable clips (at least a few
    of each when it has them), stratified by class inside a split, in a seeded random order
    so that a run cut short by the budget still holds every split and class."""
    by_split = {s: [x for x in dm.samples if x.split == s] for s in SPLITS}
    n_all = max(1, sum(len(v) for v in by_split.values()))
    out: list[Sample] = []
    for split, items in by_split.items():
        if not items:
            continue
        want = max(min(len(items), 8), round(total * len(items) / n_all))
        out += pick(items, want, seed)
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


@torch.no_grad()
def _features(backbone: nn.Module, clips: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, T, C, H, W) -> grid (B, T, C*4) and gap (B, T, C) features, float32."""
    B, T = clips.shape[:2]
    f = backbone(clips.flatten(0, 1))  # (B, T, C, H, W) -> (B*T, C, H, W) -> (B*T, C', h, w)
    grid = F.adaptive_avg_pool2d(f, 2).flatten(1)  # (B*T, C', 2, 2) -> (B*T, C'*4)
    gap = F.adaptive_avg_pool2d(f, 1).flatten(1)  # (B*T, C', 1, 1) -> (B*T, C')
    return (grid.view(B, T, -1).float().numpy(),  # (B*T, C'*4) -> (B, T, C'*4)
            gap.view(B, T, -1).float().numpy())  # (B*T, C') -> (B, T, C')


@probe("clip_features", min_s=5.0)
def clip_features(ctx: Context, probes: Probes) -> dict:
    """Per-frame pooled features of up to a budget of clips per split, from the frozen
    built-in backbone in eval mode, through the real data pipeline (evaluation transform).

    Sized by the clock: batches stop once the next one would take the probe past
    FEATURE_SHARE of the whole budget (or half of what is left); clips come in a seeded
    order mixing splits and classes, so a cut run still covers them all."""
    _need_index(ctx)
    backbone = _backbone(ctx)
    dm = datamodule(ctx)
    samples = _split_quota(dm, ctx.budget.scale(600, minimum=16), ctx.seed)
    allowed = max(2.0, min(FEATURE_SHARE * ctx.budget.seconds, 0.5 * ctx.budget.remaining()))
    was_training = backbone.training
    backbone.eval()
    grids, gaps, used = [], [], []
    started, batch = time.perf_counter(), 8
    try:
        for i in range(0, len(samples), batch):
            part = samples[i:i + batch]
            clips, _ = clip_batch(ctx, part, train=False)  # (B, T, C, H, W)
            grid, gap = _features(backbone, clips)
            grids.append(grid)
            gaps.append(gap)
            used.extend(part)
            spent = time.perf_counter() - started
            if spent + spent / len(used) * batch > allowed:
                log.info("clip_features: budget reached after %d of %d clips", len(used),
                         len(samples))
                break
    finally:
        backbone.train(was_training)
    if not used:
        raise ProbeSkipped("no readable clips to take features from")
    return {
        "_grid": np.concatenate(grids).astype(np.float32),  # (N, T, C*4)
        "_gap": np.concatenate(gaps).astype(np.float32),  # (N, T, C)
        "labels": [s.label for s in used],
        "splits": [s.split for s in used],
        "names": [s.name for s in used],
        "groups": [s.group for s in used],
    }


# =============================================================================================
# leakage: source groups and near-duplicates across splits

def _group_sides(samples: list[Sample]) -> tuple[int, list[dict]]:
    """(groups seen, groups with clips in more than one split and their counts per split)."""
    sides: dict[str, Counter] = defaultdict(Counter)
    for s in samples:
        if s.group is not None:
            sides[s.group][s.split] += 1
    leaked = [{"group": g, "splits": dict(c)} for g, c in sorted(sides.items()) if len(c) > 1]
    return len(sides), leaked


def clip_embeddings(features: dict) -> np.ndarray:
    """One unit vector per clip: per-frame GAP features averaged over time, centred on the
    mean clip (random or generic features share a large common component) -> (N, C)."""
    e = np.asarray(features["_gap"], np.float64).mean(axis=1)  # (N, T, C) -> (N, C)
    e = e - e.mean(axis=0, keepdims=True)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def _nearest_pairs(vectors: np.ndarray, splits: np.ndarray, top: int
                   ) -> list[tuple[int, int, float]]:
    """Each clip's most similar clip in ANOTHER split (dot product of unit vectors): the
    `top` most similar such pairs (i < j), best first."""
    if len(set(splits.tolist())) < 2 or len(vectors) < 2:
        return []
    sim = vectors @ vectors.T  # (N, L) @ (L, N) -> (N, N)
    sim[splits[:, None] == splits[None, :]] = -np.inf  # only pairs across splits
    nearest = sim.argmax(axis=1)  # (N,)
    pairs = {tuple(sorted((i, int(j)))): float(sim[i, j]) for i, j in enumerate(nearest)
             if np.isfinite(sim[i, j])}
    return [(i, j, v) for (i, j), v in sorted(pairs.items(), key=lambda kv: -kv[1])[:top]]


def _feature_similarity(features: dict) -> Callable[[str, str], float | None]:
    """name, name -> cosine of the two clips' feature embeddings (None when not both sampled)."""
    e = clip_embeddings(features)
    where = {n: i for i, n in enumerate(features["names"])}

    def sim(a: str, b: str) -> float | None:
        if a not in where or b not in where:
            return None
        return round(float(e[where[a]] @ e[where[b]]), 5)

    return sim


@probe("leakage", min_s=1.0)
def leakage(ctx: Context, probes: Probes) -> dict:
    """Source groups (UCF101 `_gNN_`) with clips in several splits, and the most similar
    clip pairs across splits: pixel correlation of the sampled frames' thumbnails (from
    `clip_scan`; decides), and the cosine of frozen clip features (from `clip_features`, when
    they exist; evidence)."""
    _need_index(ctx)
    dm = datamodule(ctx)
    groups, leaked = _group_sides(dm.samples)
    scan = probes.get("clip_scan")
    clips = scan["_clips"]
    splits = np.asarray([c["split"] for c in clips])
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # a small product; BLAS threads only contend on 2 cores
        pairs = _nearest_pairs(np.asarray(scan["_thumbs"], np.float32), splits, top=200)
    feature_sim, skipped = (lambda a, b: None), None
    try:
        feature_sim = _feature_similarity(probes.get("clip_features"))
    except ProbeSkipped as e:
        skipped = str(e)
    nearest = [{"a": clips[i]["name"], "split_a": clips[i]["split"], "b": clips[j]["name"],
                "split_b": clips[j]["split"], "pixel": round(v, 5),
                "feature": feature_sim(clips[i]["name"], clips[j]["name"])} for i, j, v in pairs]
    return {"groups": groups, "leaked_groups": leaked[:50], "groups_leaked": len(leaked),
            "clips_in_leaked_groups": sum(sum(g["splits"].values()) for g in leaked),
            "eval_clips_in_leaked_groups": sum(n for g in leaked for split, n in g["splits"].items()
                                               if split != "train"),
            "compared": len(clips), "eval_clips": int(np.sum(splits != "train")),
            "nearest": nearest, "features_skipped": skipped}


# =============================================================================================
# label_issues: cleanlab on out-of-fold probabilities of a linear probe

def probe_inputs(features: dict) -> np.ndarray:
    """Clip vectors for the linear probe: grid features averaged over time, plus the change
    from the first to the last third (a linear model on a mean alone is blind to motion)."""
    g = np.asarray(features["_grid"], np.float64)  # (N, T, D)
    third = max(1, g.shape[1] // 3)
    change = g[:, -third:].mean(axis=1) - g[:, :third].mean(axis=1)  # (N, D)
    return np.concatenate([g.mean(axis=1), change], axis=1)  # (N, 2D)


def _oof_probs(X: np.ndarray, y: np.ndarray, seed: int, groups: np.ndarray | None = None
               ) -> np.ndarray:
    """Out-of-fold class probabilities (N, K) of standardise -> PCA -> logistic regression;
    folds keep source groups together when there are any (UCF101 `_gNN_`)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(5, np.bincount(y).min()))
    # PCA keeps lbfgs fast (thousands of raw dims cost minutes) and the probe from memorising
    dims = int(max(2, min(64, X.shape[1], (len(y) * (folds - 1)) // (folds * 4))))
    # strong L2 (C=PROBE_C): measured on planted 20 % noise, it flagged 93-100 % of the wrong
    # labels at 80-100 % precision where C=1 overfitted the noise (79-92 %, 57-75 %)
    clf = make_pipeline(StandardScaler(), PCA(dims, random_state=seed),
                        LogisticRegression(C=PROBE_C, max_iter=500))
    if groups is not None and len(set(groups.tolist())) >= folds:
        cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        return cross_val_predict(clf, X, y, groups=groups, cv=cv, method="predict_proba")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(clf, X, y, cv=cv, method="predict_proba")


def _cleaned_accuracy(X: np.ndarray, y: np.ndarray, flagged: np.ndarray, seed: int,
                      groups: np.ndarray | None) -> float | None:
    """Out-of-fold accuracy of the same probe on the clips cleanlab did NOT flag. When the
    flags are label errors, the rest is clean and a competent probe gets it (nearly) all right;
    when they are the probe's own mistakes, new ones appear. None if a class is left too small."""
    keep = ~flagged
    counts = np.bincount(y[keep], minlength=y.max() + 1)
    if keep.sum() < 6 or np.count_nonzero(counts) < 2 or counts[counts > 0].min() < 2:
        return None
    yk = np.unique(y[keep], return_inverse=True)[1]
    probs = _oof_probs(X[keep], yk, seed, None if groups is None else groups[keep])
    return round(float((probs.argmax(axis=1) == yk).mean()), 4)


@probe("label_issues", min_s=1.0)  # 0.5-0.7 s measured beyond clip_features
def label_issues(ctx: Context, probes: Probes) -> dict:
    """cleanlab's `find_label_issues` (prune_by_noise_rate) on out-of-fold probabilities of a
    linear probe over frozen clip features; classes with fewer than 3 sampled clips are left
    out (cross-validation needs them in every fold)."""
    import warnings

    from cleanlab.filter import find_label_issues

    feats = probes.get("clip_features")
    labels = np.asarray(feats["labels"])
    counts = Counter(labels.tolist())
    keep = np.array([counts[v] >= 3 for v in labels])
    present = sorted({int(v) for v in labels[keep]})
    if len(present) < 2:
        raise ProbeSkipped("fewer than 2 classes with 3+ clips: no cross-validated label check")
    remap = {c: i for i, c in enumerate(present)}
    y = np.array([remap[int(v)] for v in labels[keep]])
    X = probe_inputs(feats)[keep]
    groups = None
    if any(g is not None for g in feats["groups"]):  # clips without a group: a group each
        groups = np.array([g if g is not None else f"\0{i}"
                           for i, g in enumerate(feats["groups"])])[keep]
    from threadpoolctl import threadpool_limits

    # one BLAS thread: on 2 busy cores, threaded SVDs of this size ran 70x slower (measured)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # convergence chatter; the accuracy below says enough
        probs = _oof_probs(X, y, ctx.seed, groups)
        flagged = find_label_issues(y, probs, filter_by="prune_by_noise_rate")
        cleaned = _cleaned_accuracy(X, y, flagged, ctx.seed, groups)
    names = np.asarray(feats["names"])[keep]
    pred = probs.argmax(axis=1)
    classes = list(ctx.data.classes)
    margin = probs[np.arange(len(y)), pred] - probs[np.arange(len(y)), y]
    order = np.argsort(-margin)
    issues = [{"path": str(names[i]), "given": classes[present[y[i]]],
               "predicted": classes[present[pred[i]]], "p_given": round(float(probs[i, y[i]]), 4),
               "p_predicted": round(float(probs[i, pred[i]]), 4),
               "margin": round(float(margin[i]), 4)} for i in order if flagged[i]]
    info = getattr(base_model(ctx), "info", None)
    return {"clips": int(len(y)), "classes": len(present),
            "backbone_weights": getattr(info, "weights", None),  # "random" | "hub" | a file
            "probe_accuracy": round(float((pred == y).mean()), 4),
            "cleaned_accuracy": cleaned,
            "chance": round(float(np.bincount(y).max() / len(y)), 4),
            "flagged": int(flagged.sum()), "share": round(float(flagged.mean()), 4),
            "issues": issues}


# =============================================================================================
# input_stats: what the model receives after the real evaluation transform

@probe("input_stats", min_s=1.0)  # 0.1-0.6 s measured (32 clips, 64-112 px)
def input_stats(ctx: Context, probes: Probes) -> dict:
    """Per-channel statistics of model inputs (evaluation transform) next to the
    normalisation the pipeline applies and the one the backbone's weights expect."""
    _need_index(ctx)
    dm = datamodule(ctx)
    train = [s for s in dm.samples if s.split == "train"] or dm.samples
    clips, _ = clip_batch(ctx, pick(train, ctx.budget.scale(32, minimum=8), ctx.seed))
    x = clips.float().transpose(0, 2).flatten(1)  # (N, T, C, H, W) -> (C, T, N, H, W) -> (C, ...)
    from clipdoctor.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    expected = None
    info = None if ctx.user_model else getattr(base_model(ctx), "info", None)
    if info is not None:
        expected = {"mean": list(info.mean), "std": list(info.std), "backbone": info.name}
    q = torch.quantile(x.flatten()[:: max(1, x.numel() // 1_000_000)], torch.tensor([0.01, 0.99]))
    return {
        "clips": int(clips.shape[0]), "shape": list(clips.shape[1:]),
        "mean": [round(float(v), 4) for v in x.mean(dim=1)],
        "std": [round(float(v), 4) for v in x.std(dim=1)],
        "min": round(float(x.min()), 4), "max": round(float(x.max()), 4),
        "p01": round(float(q[0]), 4), "p99": round(float(q[1]), 4),
        "applied": {"mean": list(dm.mean or IMAGENET_MEAN), "std": list(dm.std or IMAGENET_STD)},
        "expected": expected,
    }


# =============================================================================================
# augmentation: does the training transform treat the frames of a clip alike?

@probe("augmentation", min_s=1.0)  # 0.03-0.9 s measured
def augmentation(ctx: Context, probes: Probes) -> dict:
    """A clip of one frame repeated T times through the training transform must come out as
    T identical frames; `jitter` is the mean abs difference of each output frame from the
    first (normalised units). `motion` is the same step measure between consecutive frames
    of real clips after the evaluation transform: the signal the jitter competes with."""
    _need_index(ctx)
    dm = datamodule(ctx)
    train = [s for s in dm.samples if s.split == "train"] or dm.samples
    chosen = pick(train, ctx.budget.scale(4, minimum=2), ctx.seed)  # deterministic: few suffice
    transform = dm.dataset("train", train=True, samples=chosen[:1]).transform
    jitter = []
    for k, s in enumerate(chosen):
        info = _info(dm, s)
        kept = np.asarray(_kept_frames(dm, s, info))  # (K, S, S, 3)
        still = torch.from_numpy(np.array(kept[len(kept) // 2]))  # (S, S, 3)
        still = still.permute(2, 0, 1)[None].repeat(dm.config.frames, 1, 1, 1)  # (T, 3, S, S)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed * 1000 + k)
            out = transform(still)  # (T, 3, size, size)
        jitter.append(float((out[1:] - out[:1]).abs().mean()) if len(out) > 1 else 0.0)
    clips, _ = clip_batch(ctx, chosen, train=False)  # (N, T, C, H, W)
    motion = float((clips[:, 1:] - clips[:, :-1]).abs().mean()) if clips.shape[1] > 1 else 0.0
    return {"clips": len(chosen), "jitter": round(float(np.mean(jitter)), 6),
            "jitter_max": round(float(np.max(jitter)), 6), "motion": round(motion, 6),
            "per_frame_setting": bool(dm.config.augment.per_frame)}
