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
                                        RunLoss, base_model, clip_batch, datamodule,
                                        default_loss, is_user_data, need_data, pick, probe,
                                        takes_probabilities)
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
    with `train`'s loss (`RunLoss`: the probes train with the class weights it applies under
    'balanced'; 'sampler' is how `train` samples batches), 'loss' / 'none' for a
    cross-entropy (module or partial) whose `weight` is or is not class-dependent, and
    'unknown' for any other callable: it is not guessed."""
    fn = ctx.loss_fn
    if isinstance(fn, RunLoss):
        return fn.class_weighting, "config", fn.describe()
    if fn is None or fn is default_loss:
        return "none", "default-loss", "cross_entropy (clipdoctor default, unweighted)"
    if isinstance(fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return ("loss" if _weighted_tensor(fn.weight) else "none"), "loss_fn", type(fn).__name__
    if isinstance(fn, functools.partial) and fn.func in (F.cross_entropy, F.nll_loss):
        weight = fn.keywords.get("weight")
        return ("loss" if _weighted_tensor(weight) else "none"), "loss_fn", fn.func.__name__
    if fn in (F.cross_entropy, F.nll_loss):
        return "none", "loss_fn", fn.__name__
    if takes_probabilities(fn):  # a Keras cross-entropy on probabilities: no class weights
        return "none", "loss_fn", fn.describe()
    return "unknown", "loss_fn", getattr(fn, "__name__", type(fn).__name__)


def _capacity(ctx: Context) -> dict:
    """Trainable / total parameters of the model as it trains (frozen parts excluded: measured
    by `trained_parameters`, which also counts parts under no_grad or left out of the
    optimizer)."""
    from clipdoctor.doctor.probes.model import trained_parameters

    try:
        trained = trained_parameters(ctx)
    except ProbeSkipped:  # the model could not be built: the data is summarised all the same
        return {"total_params": None, "trainable_params": None}
    out = {"total_params": int(trained.total), "trainable_params": int(trained.trainable)}
    if not ctx.user_model:
        m = ctx.config.model
        out.update(head=m.head, backbone=m.backbone, frozen_backbone=m.freeze_backbone,
                   pretrained=bool(m.pretrained or m.weights))
    return out


@probe("dataset", min_s=1.0)
def dataset_summary(ctx: Context, probes: Probes) -> dict:
    """Classes, clips per split and class (readable clips only), unreadable files, how the
    loss weights classes, and the model's trainable parameters. For the user's own Datasets:
    their items, the clip layout detected, and how val was made when it was not given."""
    if is_user_data(need_data(ctx)):
        return _user_dataset_summary(ctx)
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


def _user_dataset_summary(ctx: Context) -> dict:
    """The `dataset` probe's value for the user's own Datasets (UserData)."""
    data = ctx.data
    per_split = {s: Counter(x.label for x in data.samples if x.split == s) for s in SPLITS}
    weighting, source, loss = loss_weighting(ctx)
    return {
        **data.describe(),  # format, layout ("(T, C, H, W) float32"), collate, notes, ...
        "root": None,
        "classes": list(data.classes),
        "counts": {s: [per_split[s].get(i, 0) for i in range(len(data.classes))] for s in SPLITS},
        "listed": len(data.samples) + len(data.skipped),
        "skipped": list(data.skipped),  # items whose read raised before a label was known
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
    if not is_user_data(data):
        raise ProbeSkipped(f"data is a {type(data).__name__}: neither a clipdoctor dataset nor "
                           "a torch Dataset")
    chosen = pick(data.readable(), ctx.budget.scale(64, minimum=8), ctx.seed, stratify=False)
    shapes = [_item_shape(data.item(s)) for s in chosen]
    dims = [s for s, _ in shapes]
    ndims = {len(s) for s in dims}
    out = {"source": "dataset", "handled": False, "clips": len(dims), "layout": str(data.layout),
           "shapes": dict(Counter("x".join(map(str, s)) for s in dims).most_common(10)),
           "with_length": all(h for _, h in shapes), "ndim": sorted(ndims)}
    if ndims == {4}:  # (T, C, H, W) or (T, H, W, C), as detected
        c, (h, w) = data.layout.channel_axis, ((2, 3) if data.layout.order == "TCHW" else (1, 2))
        out.update(frames=_range([s[0] for s in dims]), channels=sorted({s[c] for s in dims}),
                   sizes=dict(Counter(f"{s[w]}x{s[h]}" for s in dims).most_common(10)),
                   distinct_sizes=len({(s[h], s[w]) for s in dims}))
        out["collated"] = _collates(data, chosen, dims)
    return out


def _collates(data: Any, chosen: list, dims: list[tuple]) -> bool | None:
    """Whether the data's collate batches two clips of different shapes (a padding or
    resizing collate handles them); None when every shape is the same."""
    first = dims[0]
    other = next((i for i, s in enumerate(dims) if s != first), None)
    if other is None:
        return None
    try:
        data.batch([chosen[0], chosen[other]])
    except Exception:  # noqa: BLE001 — torch.stack of unequal sizes: not handled
        return False
    return True


# =============================================================================================
# input_stats: what the model receives after the real evaluation transform

@probe("input_stats", min_s=1.0)  # 0.1-0.6 s measured (32 clips, 64-112 px)
def input_stats(ctx: Context, probes: Probes) -> dict:
    """Per-channel statistics of model inputs (evaluation transform) next to the
    normalisation the pipeline applies and the one the backbone's weights expect. For the
    user's own Datasets: what their items give the model and, for the user's model, what
    reaches its first layer with weights (see `_user_input_stats`)."""
    if is_user_data(need_data(ctx)):
        return _user_input_stats(ctx)
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
    of real clips after the evaluation transform: the signal the jitter competes with. With
    the user's own `augment=` (a callable on one clip), that callable is tested instead, on
    the user's clips (`_user_augmentation`); a Keras model's random augmentation layers inside
    TimeDistributed are tested the same way (`_keras_augmentation`), and of the two the one
    that jitters more is reported."""
    measured = [m for m in (_user_augmentation(ctx) if ctx.augment is not None else None,
                            _keras_augmentation(ctx)) if m is not None]
    if measured:
        return max(measured, key=lambda m: m["jitter"])
    if is_user_data(need_data(ctx)):
        raise ProbeSkipped("your Dataset augments inside __getitem__, where clipdoctor cannot "
                           "isolate it: pass the clip augmentation as augment=fn to test it")
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


# =============================================================================================
# the user's own Datasets: input statistics and their augment= callable

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
               nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


def _stats(x: torch.Tensor, channel_dim: int | None) -> dict:
    """mean / std per channel (one value for all when `channel_dim` is None), min, max and
    the 1st / 99th percentiles of a float tensor."""
    x = x.detach().float()
    flat = x.movedim(channel_dim, 0).flatten(1) if channel_dim is not None else x.reshape(1, -1)
    q = torch.quantile(x.flatten()[:: max(1, x.numel() // 1_000_000)], torch.tensor([0.01, 0.99]))
    return {"mean": [round(float(v), 4) for v in flat.mean(dim=1)],
            "std": [round(float(v), 4) for v in flat.std(dim=1)],
            "min": round(float(x.min()), 4), "max": round(float(x.max()), 4),
            "p01": round(float(q[0]), 4), "p99": round(float(q[1]), 4)}


@torch.no_grad()
def _first_layer_input(ctx: Context, x: torch.Tensor) -> dict | None:
    """What the user's model hands its first module with weights (a fresh copy, eval mode, two
    clips): that module's name and type, whether it normalises its input itself (BatchNorm,
    LayerNorm, ...), and the statistics of its input. None when the model does not run."""
    model = ctx.make_model()
    model.eval()
    seen: dict = {}

    def hook(name: str):
        def pre(module: nn.Module, args: tuple) -> None:
            if not seen and args and isinstance(args[0], torch.Tensor) \
                    and args[0].is_floating_point():
                seen.update(name=name, module=module, input=args[0].detach().clone())
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if any(True for _ in m.parameters(recurse=False))]
    try:
        model(x[:2])
    except Exception as e:  # noqa: BLE001 — the model's own probes report it
        return {"error": f"{type(e).__name__}: {str(e)[:160]}"} if not seen else _described(seen)
    finally:
        for h in handles:
            h.remove()
    return _described(seen) if seen else None


def _described(seen: dict) -> dict:
    m, inp = seen["module"], seen["input"]
    conv = isinstance(m, nn.modules.conv._ConvNd)
    return {"name": seen["name"], "type": type(m).__name__,
            "normalises": isinstance(m, NORM_LAYERS), "shape": list(inp.shape[1:]),
            **_stats(inp, 1 if conv and inp.dim() > 2 else None)}


def _user_input_stats(ctx: Context) -> dict:
    """Model inputs of the user's own Datasets, as collated (their layout and dtype), per
    channel; for the user's model also the input of its first layer with weights, which is
    what the statistics are judged on (a model may scale or normalise inside `forward`). A
    first layer that normalises its input (BatchNorm, ...) accepts any scale."""
    data = ctx.data
    train = data.readable("train") or data.readable()
    clips, _ = clip_batch(ctx, pick(train, ctx.budget.scale(32, minimum=8), ctx.seed))
    raw = _stats(clips, 2 if data.layout.order == "TCHW" else 4)  # (N, T, C, H, W) | (N, T, H, W, C)
    expected, first = None, None
    if not ctx.user_model:
        info = getattr(base_model(ctx), "info", None)
        if info is not None:
            expected = {"mean": list(info.mean), "std": list(info.std), "backbone": info.name}
    else:
        first = _first_layer_input(ctx, clips)
    judged, on = raw, "the model input"
    if first is not None and "error" not in first:
        where = f"the input of the model's first layer with weights, '{first['name']}' " \
                f"({first['type']})"
        if not first["normalises"]:
            judged, on = {k: first[k] for k in ("mean", "std", "min", "max", "p01", "p99")}, where
    return {"clips": int(clips.shape[0]), "shape": list(clips.shape[1:]),
            "layout": str(data.layout), "dtype": str(clips.dtype).replace("torch.", ""),
            **judged, "judged_on": on, "raw": raw, "first_layer": first,
            "self_normalising": bool(first and first.get("normalises")),
            "applied": None, "expected": expected}


def _frames_of(out: Any) -> np.ndarray:
    """A clip (tensor or array, frames first) as float64 numpy."""
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().double().numpy()
    return np.asarray(out, np.float64)


def _still(clip: Any, t: int) -> Any:
    """The clip's middle frame repeated t times, in the clip's own type, layout and dtype."""
    mid = clip[t // 2:t // 2 + 1]
    if isinstance(clip, torch.Tensor):
        return mid.repeat(t, *([1] * (clip.dim() - 1)))
    return np.repeat(np.asarray(mid), t, axis=0)


def _step(frames: np.ndarray) -> float:
    """Mean abs change between consecutive frames, in units of the clip's pixel std."""
    if len(frames) < 2:
        return 0.0
    return float(np.abs(frames[1:] - frames[:-1]).mean() / max(frames.std(), 1e-12))


def _user_augmentation(ctx: Context) -> dict:
    """The user's `augment=` callable on a clip of one frame repeated T times (the clip as
    their Dataset yields it, or clipdoctor's pipeline clip for file data): `jitter` is the
    mean abs difference of each output frame from the first, `motion` the mean step between
    consecutive frames of the real clips; both in units of the clip's pixel std."""
    fn, data = ctx.augment, need_data(ctx)
    if is_user_data(data):
        train = data.readable("train") or data.readable()
        chosen = pick(train, ctx.budget.scale(4, minimum=2), ctx.seed)
        clips = [data.clip(s) for s in chosen]  # (clip as yielded, length or None)
    else:
        clips = _pipeline_clips(ctx)
        if ctx.keras is not None:  # a Keras user's augmentation takes what their model takes
            clips = _as_keras_clips(ctx, clips)
    name = getattr(fn, '__name__', type(fn).__name__)
    return _callable_jitter(ctx, fn, clips, f"augment={name}", "augment=")


def _as_keras_clips(ctx: Context, clips: list) -> list[tuple[np.ndarray, None]]:
    """Pipeline clips as a Keras model receives them (`KerasModule.to_keras_input`): numpy
    (T, H, W, C) at the model's pixel scale, uint8 when that is 0..255 (what a numpy
    augmentation written for the model's training data takes)."""
    x = base_model(ctx).to_keras_input(torch.stack([c for c, _ in clips]))  # (N, T, H, W, C)
    arr = x.detach().float().cpu().numpy()
    if float((ctx.keras or {}).get("pixel_scale") or 1.0) >= 255:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return [(a, None) for a in arr]


def _pipeline_clips(ctx: Context) -> list[tuple[torch.Tensor, None]]:
    """A few training clips as the model receives them ((T, C, H, W), evaluation transform),
    each with no length."""
    dm = datamodule(ctx)
    train = [s for s in dm.samples if s.split == "train"] or dm.samples
    chosen = pick(train, ctx.budget.scale(4, minimum=2), ctx.seed)
    batch, _ = clip_batch(ctx, chosen, train=False)  # (N, T, C, H, W)
    return [(c, None) for c in batch]


def _keras_augmentation(ctx: Context) -> dict | None:
    """A Keras model's random augmentation layers inside TimeDistributed (`ctx.keras`), on a
    fresh copy of the model, as one callable on the clips the model receives
    (`interop.keras.frame_augmenter`); None for any other model or when it has none."""
    if not (ctx.keras or {}).get("per_frame_random_augmentation"):
        return None
    from clipdoctor.interop.keras import frame_augmenter

    fn = frame_augmenter(ctx.make_model())
    if fn is None:
        return None
    data = need_data(ctx)
    if is_user_data(data):
        train = data.readable("train") or data.readable()
        batch, _ = clip_batch(ctx, pick(train, ctx.budget.scale(4, minimum=2), ctx.seed))
        clips = [(c, None) for c in batch]
    else:
        clips = _pipeline_clips(ctx)
    layers = ", ".join(f"'{n}'" for n in fn.names)
    out = _callable_jitter(ctx, fn, clips, f"Keras layer {layers} inside TimeDistributed",
                           "the Keras augmentation layers")
    out["keras_layers"] = list(fn.names)
    return out


def _callable_jitter(ctx: Context, fn: Any, clips: list[tuple[Any, int | None]], source: str,
                     what: str) -> dict:
    """`fn` (a callable on one clip, frames first) on each clip's middle frame repeated T
    times: the jitter between its output frames and the motion of the real clips, in units
    of the clip's pixel std. `source` names `fn` in the report, `what` in errors."""
    from clipdoctor.data.user import seeded_call

    jitter, motion = [], []
    for k, (clip, length) in enumerate(clips):
        t = int(length or clip.shape[0])
        if t < 2:
            continue
        clip = clip[:t]
        try:
            out = _frames_of(seeded_call(fn, _still(clip, t), ctx.seed * 1000 + k))
        except Exception as e:  # noqa: BLE001 — a callable that cannot take one clip
            raise ProbeSkipped(f"{what} raised on one clip of shape {tuple(clip.shape)}: "
                               f"{type(e).__name__}: {str(e)[:160]}") from e
        if out.ndim < 2 or len(out) < 2:
            raise ProbeSkipped(f"{what} returned shape {out.shape}; it must return the clip "
                               "with its frames first")
        jitter.append(float(np.abs(out[1:] - out[:1]).mean() / max(out.std(), 1e-12)))
        motion.append(_step(_frames_of(clip)))
    if not jitter:
        raise ProbeSkipped(f"no clip of 2+ frames to test {what} on")
    return {"clips": len(jitter), "jitter": round(float(np.mean(jitter)), 6),
            "jitter_max": round(float(np.max(jitter)), 6),
            "motion": round(float(np.mean(motion)), 6), "per_frame_setting": None,
            "source": source, "units": "pixel std of the clip"}
