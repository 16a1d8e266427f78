"""Data probes: what the dataset holds and what the model really receives.

Measurements only; the checks decide (`checks/data.py`, and `checks/training.py` for how
classes are weighted). Raw per-clip values sit under keys starting with `_` (kept out of the
JSON report); public keys hold summaries.

- `dataset`: classes, clips per split and class, unreadable files, how classes are weighted,
  model capacity.
- `clip_shapes`: frame sizes, channels and lengths, from the files or from a user's Dataset.
- `input_stats`, `augmentation`: model inputs after the real transforms.

The per-clip pixel scan is in `clip_scan.py`; frozen clip features and what they show
(leakage, label issues) in `features.py`.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipdoctor.data.sources import SPLITS
from clipdoctor.doctor.probes import (Context, Probes, ProbeSkipped, _is_index, _need_index,
                                        base_model, clip_batch, datamodule, default_loss,
                                        need_data, pick, probe)
from clipdoctor.doctor.probes.clip_scan import SCAN_SIDE


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
    fn = ctx.loss_fn
    if fn is None or fn is default_loss:
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
# clip_shapes: files (clipdoctor resizes and samples a fixed T) or a user's own Dataset

def _range(values: list) -> dict | None:
    values = [v for v in values if v is not None]
    return {"min": min(values), "max": max(values)} if values else None


def _item_shape(item: Any) -> tuple[tuple[int, ...], bool]:
    """(clip shape, has a length) of a user Dataset item (clip, label[, length])."""
    clip = item[0] if isinstance(item, (tuple, list)) else item
    has_length = isinstance(item, (tuple, list)) and len(item) > 2
    return tuple(int(v) for v in torch.as_tensor(clip).shape), has_length


@probe("clip_shapes", min_s=1.0, needs=("clip_scan",))
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
        size = min(dm.config.frame_size, 2 * SCAN_SIDE)  # decoded small when not cached
        kept = np.asarray(dm.frames.kept(s, size))  # (K, S, S, 3)
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
