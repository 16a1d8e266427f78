"""Training probes: short, plain-PyTorch training runs on fresh models, read by the training
and temporal checks.

- `training_data`: the clips every probe below trains on (for the built-in model with a frozen
  backbone: their per-frame features, computed once), sized to the budget, and the cost of a step.
- `lr_range`: fastai's exponential LR sweep (1e-7 -> 10) and its "valley" suggestion.
- `overfit_batch`: can a tiny batch be driven to near-zero loss (Karpathy's recipe)? If so,
  how much worse is the fitted model on augmented draws of the same clips?
- `grad_stats`: per-layer gradient norms, zero ReLU outputs and saturated tanh / sigmoid inputs
  over a few steps at the config's LR (AUTOTRAINER, DeepDiagnosis); the first non-finite value.
- `short_run`: a few epochs at the config's LR and augmentation: loss curves, validation
  predictions, the loss on augmented vs clean clips, and the same run without weight decay /
  dropout when the budget allows and the train loss stays high.
- `temporal_eval`: the short-run model on validation clips as they are, with their frames
  shuffled, and with one frame repeated T times.

Every run starts from `ctx.make_model()` seeded with `ctx.seed`. Sizes follow the budget: each
probe may spend its `SHARE` of it and shrinks (fewer clips, steps or epochs) rather than overrun;
its value says how much it ran.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from clipdoctor.diagnose.probes import (Context, Probes, ProbeSkipped, base_model, clip_batch,
                                        datamodule, pick, probe)

log = logging.getLogger(__name__)

# Share of the whole diagnosis budget each probe may spend; the rest is for the data and model
# probes. Measured on the demo config (test_resnet end to end, 64 px): a batch-16 step takes
# 0.15 s on 2 cores, so 25 % of 120 s is about 10 epochs of 256 clips.
SHARE = {"training_data": 0.10, "lr_range": 0.08, "overfit_batch": 0.08, "grad_stats": 0.03,
         "short_run": 0.25, "temporal_eval": 0.04}
TRAIN_CLIPS = 256  # training clips at a 120 s budget: 16 batches of 16 per short-run epoch
VAL_CLIPS = 96  # validation clips: accuracy to about +-0.05 (binomial sd at p = 0.5)
MAX_INPUT_BYTES = 384 * 2**20  # clips held in memory at most (both splits)
LR_START, LR_END, LR_STEPS = 1e-7, 10.0, 100  # fastai lr_find's sweep
LR_MIN_STEPS = 20  # fewer points cannot show a valley
LR_STOP_FACTOR = 4.0  # fastai: stop once the smoothed loss exceeds 4x its minimum
LR_BETA = 0.98  # fastai's loss smoothing over 100 steps; scaled to keep the window's share
OVERFIT_CLIPS, OVERFIT_STEPS = 8, 200  # Karpathy's recipe: a handful of clips, a few hundred steps
NEAR_ZERO_FRAC = 0.05  # "near zero": 95 % of the initial loss gone (0.035 at 2 classes, 0.10 at 8)
AUG_DRAWS = 2  # augmented draws of the fitted batch
GRAD_STEPS = 8  # steps of the gradient / activation monitor
SATURATION_X = 5.0  # DeepDiagnosis: a tanh / sigmoid input with |x| >= 5 is saturated
SHORT_MIN_EPOCHS, SHORT_MAX_EPOCHS = 3, 30  # fewer epochs show no trend; more are not needed
SHORT_MAIN_SHARE = 0.7  # of short_run's allowance for the main run; the rest for a variant
VARIANT_TRIGGER = 0.5  # the unregularised variant runs only if the train loss ends above 0.5 ln K
DIVERGED = 1.5  # a short run ending above 1.5x its first loss diverged (checks: DIVERGE_FACTOR)


# ---------------------------------------------------------------------------------------------
# small helpers

def _allowance(ctx: Context, name: str) -> float:
    """Seconds probe `name` may spend: its share of the budget, never more than is left."""
    return max(0.0, min(SHARE[name] * ctx.budget.seconds, ctx.budget.remaining()))


def _cached(ctx: Context) -> bool:
    """Train on cached per-frame features: only the built-in model with its backbone frozen."""
    if ctx.user_model or not ctx.config.model.freeze_backbone:
        return False
    model = base_model(ctx)
    return hasattr(model, "forward_cached") and not any(
        p.requires_grad for p in model.backbone.parameters())


def _forward(model: nn.Module, x: Tensor, cached: bool) -> Tensor:
    return model.forward_cached(x) if cached else model(x)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _clip_value(ctx: Context) -> float | None:
    """The gradient clipping the built-in training applies; none for a user's model, whose
    training loop clipdoctor does not know."""
    return None if ctx.user_model else (ctx.config.train.grad_clip or None)


def _optimizer(ctx: Context, model: nn.Module, *, weight_decay: bool = True,
               lr: float | None = None) -> torch.optim.Optimizer:
    """The run's optimiser on the trainable parameters; optionally without weight decay or
    with every group's LR scaled so the first group's is `lr`."""
    if not _trainable(model):
        raise ProbeSkipped("the model has no trainable parameters")
    opt = ctx.make_optimizer(_trainable(model))
    if lr is not None:
        ref = opt.param_groups[0]["lr"]
        for g in opt.param_groups:
            g["lr"] = g["lr"] * lr / ref
    if not weight_decay:
        for g in opt.param_groups:
            if "weight_decay" in g:
                g["weight_decay"] = 0.0
    return opt


def _no_dropout(model: nn.Module) -> nn.Module:
    """Switch every dropout off (p = 0) while keeping train mode (BatchNorm keeps learning)."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        elif isinstance(m, (nn.RNNBase, nn.MultiheadAttention)):
            m.dropout = 0.0
    return model


def _has_dropout(model: nn.Module) -> bool:
    return any((isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)
               or (isinstance(m, nn.RNNBase) and m.dropout > 0) for m in model.modules())


def _batches(n: int, batch_size: int, seed: int) -> list[Tensor]:
    """Index batches of a seeded permutation; a last batch of one is dropped (BatchNorm)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = list(perm.split(batch_size))
    if len(out) > 1 and len(out[-1]) < 2:
        out.pop()
    return out


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                loss_fn: Callable, cached: bool, clip: float | None
                ) -> tuple[float, float, Tensor | None]:
    """One optimiser step -> (loss, gradient norm before clipping, detached logits). A
    non-finite loss takes no step (its norm is nan)."""
    opt.zero_grad(set_to_none=True)
    logits = _forward(model, x, cached)
    loss = loss_fn(logits, y)
    value = float(loss.detach())
    if not math.isfinite(value):
        return value, float("nan"), None
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = float(torch.nn.utils.clip_grad_norm_(params, clip or float("inf")))
    opt.step()
    return value, norm, logits.detach()


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, cached: bool, batch_size: int = 64) -> Tensor:
    model.eval()
    return torch.cat([_forward(model, x[i:i + batch_size], cached)
                      for i in range(0, len(x), batch_size)])


def _score(logits: Tensor, y: Tensor, loss_fn: Callable) -> tuple[float, float]:
    """(loss, accuracy) of logits against labels."""
    with torch.no_grad():
        return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


def _hist(values: Tensor, k: int) -> list[int]:
    return torch.bincount(values.flatten().long(), minlength=k)[:k].tolist()


# ---------------------------------------------------------------------------------------------
# training_data

def _split(ctx: Context, n_train: int, n_val: int) -> tuple[list, list, bool, int]:
    """Stratified train / val samples, whether val was held out of train (no val split: a
    fifth of train), and how many training clips there are in all."""
    dm = datamodule(ctx)
    train = [s for s in dm.samples if s.split == "train"]
    val = [s for s in dm.samples if s.split == "val"]
    held_out = not val
    if held_out:
        val = pick(train, max(2, min(n_val, len(train) // 5)), ctx.seed + 1)
        ids = {id(s) for s in val}
        train = [s for s in train if id(s) not in ids]
    if len(train) < 2 or len(val) < 2:
        raise ProbeSkipped(f"training probes need 2+ readable clips in train and val; found "
                           f"{len(train)} and {len(val)}")
    return (_stratified(train, n_train, ctx.seed), _stratified(val, n_val, ctx.seed), held_out,
            len(train))


def _stratified(samples: list, n: int, seed: int) -> list:
    """Up to n samples, seeded, in round-robin class order: any prefix stays stratified."""
    rng = np.random.default_rng(seed)
    by_label: dict[int, list] = {}
    for i in rng.permutation(len(samples)):
        by_label.setdefault(samples[i].label, []).append(samples[i])
    out: list = []
    while len(out) < min(n, len(samples)):
        for label in sorted(by_label):
            if by_label[label] and len(out) < n:
                out.append(by_label[label].pop())
    return out


@torch.no_grad()
def _features(ctx: Context, samples: list, deadline: float) -> tuple[Tensor, Tensor]:
    """Frozen per-frame features of `samples`, in order, as many as fit before `deadline`."""
    model = base_model(ctx)
    model.eval()
    feats, labels = [], []
    for i in range(0, len(samples), 16):
        if feats and time.perf_counter() > deadline:
            break
        x, y = clip_batch(ctx, samples[i:i + 16], seed=ctx.seed)
        feats.append(model.frozen_features(x).float())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def _time_step(ctx: Context, x: Tensor, y: Tensor, cached: bool) -> float:
    """Seconds of one training step on (x, y) with a throwaway fresh model: the fastest of up
    to 3 steps after a warm-up (allocations), stopping once 0.5 s were spent timing. The
    fastest, because a busy machine only ever makes a step slower."""
    torch.manual_seed(ctx.seed)
    model = ctx.make_model()
    model.train()
    opt = _optimizer(ctx, model)
    _train_step(model, opt, x, y, ctx.loss_fn, cached, _clip_value(ctx))  # warm-up
    times: list[float] = []
    while len(times) < 3 and sum(times) < 0.5:
        started = time.perf_counter()
        _train_step(model, opt, x, y, ctx.loss_fn, cached, _clip_value(ctx))
        times.append(time.perf_counter() - started)
    return max(min(times), 1e-4)


def _feature_material(ctx: Context, train: list, val: list, deadline: float
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Frozen features of both splits; a backbone pass per clip, so the time is split
    between them in proportion and the lists shrink to what fits."""
    started = time.perf_counter()
    share = len(train) / (len(train) + len(val))
    x_tr, y_tr = _features(ctx, train, started + share * (deadline - started))
    x_va, y_va = _features(ctx, val, deadline)
    return x_tr, y_tr, x_va, y_va


def _clip_material(ctx: Context, train: list, val: list, bs: int
                   ) -> tuple[list, list, float, tuple[Tensor, ...]]:
    """Clips of both splits, as many training clips as SHORT_MIN_EPOCHS epochs of the short
    run's main share can cover at the measured step cost (and memory allows)."""
    x, y = clip_batch(ctx, train[:bs], seed=ctx.seed)
    per_clip = x[0].numel() * 4
    step_s = _time_step(ctx, x, y, False)
    fit = SHARE["short_run"] * SHORT_MAIN_SHARE * ctx.budget.seconds / (
        SHORT_MIN_EPOCHS * 1.5 * step_s / bs)
    keep = int(MAX_INPUT_BYTES * 0.75 / per_clip)
    train = train[:max(bs, min(keep, int(fit)))]
    val = val[:max(4, min(len(val), int(MAX_INPUT_BYTES * 0.25 / per_clip)))]
    return train, val, step_s, (*clip_batch(ctx, train, seed=ctx.seed),
                                *clip_batch(ctx, val, seed=ctx.seed))


@probe("training_data", min_s=2.0)
def training_data(ctx: Context, probes: Probes) -> dict:
    """The clips (or frozen features) the training probes use, and the cost of one step."""
    dm = datamodule(ctx)
    allowance = _allowance(ctx, "training_data")
    n_train = ctx.budget.scale(TRAIN_CLIPS, minimum=16)
    n_val = ctx.budget.scale(VAL_CLIPS, minimum=32)  # fewer: accuracy too coarse to judge
    train, val, held_out, total = _split(ctx, n_train, n_val)
    cached = _cached(ctx)
    bs = min(ctx.config.data.batch_size, len(train))
    if cached:
        x_tr, y_tr, x_va, y_va = _feature_material(ctx, train, val,
                                                   time.perf_counter() + allowance)
        train, val = train[:len(y_tr)], val[:len(y_va)]
        step_s = _time_step(ctx, x_tr[:bs], y_tr[:bs], True)
    else:
        train, val, step_s, (x_tr, y_tr, x_va, y_va) = _clip_material(ctx, train, val, bs)
    k = len(dm.classes)
    log.debug("training probes: %d train / %d val %s, %.3f s a step", len(y_tr), len(y_va),
              "feature sets" if cached else "clips", step_s)
    return {
        "cached": cached, "train_clips": len(y_tr), "val_clips": len(y_va),
        "val_held_out": held_out, "train_total": total, "classes": k, "batch_size": bs,
        "step_s": step_s, "input_shape": list(x_tr.shape[1:]),
        "train_counts": _hist(y_tr, k), "val_counts": _hist(y_va, k),
        "_x_train": x_tr, "_y_train": y_tr, "_x_val": x_va, "_y_val": y_va,
        "_train_samples": train, "_val_samples": val,
    }


# ---------------------------------------------------------------------------------------------
# lr_range

def _valley(losses: list[float], skip_start: int, skip_end: int) -> int | None:
    """fastai's "valley": index about two thirds down the longest falling stretch."""
    idx = list(range(skip_start, max(skip_start, len(losses) - skip_end)))
    if len(idx) < 3:
        return None
    vals = [losses[i] for i in idx]
    n = len(vals)
    lds = [1] * n  # longest decreasing run ending at i
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if vals[i] < vals[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return idx[max_start + int(sections) + int(sections / 2)]


def _steepest(losses: list[float], skip_start: int) -> int | None:
    """Lightning's suggestion: the steepest fall after the first points."""
    if len(losses) - skip_start < 3:
        return None
    return skip_start + int(np.argmin(np.gradient(np.asarray(losses[skip_start:]))))


@probe("lr_range", min_s=3.0)
def lr_range(ctx: Context, probes: Probes) -> dict:
    """Exponential LR sweep 1e-7 -> 10 on a fresh model (fastai lr_find), stopped when the
    smoothed loss exceeds 4x its minimum; suggestion = "valley"."""
    d = probes.get("training_data")
    allowance = _allowance(ctx, "lr_range")
    steps = min(ctx.budget.scale(LR_STEPS, minimum=LR_MIN_STEPS), int(allowance / d["step_s"]))
    if steps < LR_MIN_STEPS:
        raise ProbeSkipped(f"an LR sweep needs {LR_MIN_STEPS}+ steps of {d['step_s']:.2f} s; "
                           f"only {allowance:.0f} s are left for it (raise --budget)")
    x, y, cached, bs = d["_x_train"], d["_y_train"], d["cached"], d["batch_size"]
    torch.manual_seed(ctx.seed)
    model = ctx.make_model()
    model.train()
    opt = _optimizer(ctx, model)
    base = [g["lr"] for g in opt.param_groups]
    config_lr = base[0]
    lrs = np.geomspace(LR_START, LR_END, steps).tolist()
    beta = LR_BETA ** (LR_STEPS / steps)
    deadline = time.perf_counter() + 1.5 * allowance  # planned from a step's cost: a margin
    batches: list[Tensor] = []
    raw, smooth, avg, best, stopped = [], [], 0.0, math.inf, "end"
    for i, lr in enumerate(lrs):
        if time.perf_counter() > deadline:
            stopped = "budget"
            break
        for g, b in zip(opt.param_groups, base):
            g["lr"] = lr * b / config_lr
        if not batches:
            batches = _batches(len(y), bs, ctx.seed + i)
        idx = batches.pop(0)
        loss, _, _ = _train_step(model, opt, x[idx], y[idx], ctx.loss_fn, cached, None)
        if not math.isfinite(loss):
            stopped = "non-finite loss"
            break
        avg = beta * avg + (1 - beta) * loss
        s = avg / (1 - beta ** (i + 1))
        raw.append(loss)
        smooth.append(s)
        best = min(best, s)
        if s > LR_STOP_FACTOR * best:
            stopped = "diverged"
            break
    skip_start, skip_end = steps // 10, max(1, round(5 * steps / LR_STEPS))
    valley = _valley(smooth, skip_start, skip_end)
    steep = _steepest(smooth, skip_start)
    low = int(np.argmin(smooth)) if smooth else None
    return {
        "lrs": lrs[:len(smooth)], "losses": smooth, "raw_losses": raw, "steps": len(smooth),
        "planned_steps": steps, "stopped": stopped, "config_lr": config_lr,
        "suggestion": lrs[valley] if valley is not None else None, "method": "valley",
        "steepest": lrs[steep] if steep is not None else None,
        "min_loss_lr": lrs[low] if low is not None else None,
        "initial_loss": raw[0] if raw else None, "min_loss": min(smooth) if smooth else None,
    }


# ---------------------------------------------------------------------------------------------
# overfit_batch

def _augments(ctx: Context, cached: bool) -> bool:
    """Whether training sees augmented clips: always end to end; with a frozen backbone only
    with several feature views or a fine-tuning stage."""
    t = ctx.config.train
    return not cached or t.feature_views > 1 or t.finetune_epochs > 0


def _augmented(ctx: Context, samples: list, seed: int, cached: bool = False) -> Tensor:
    """One augmented draw (the config's augmentation and random frame choice) of `samples`,
    as clips, or as frozen features when `cached`."""
    if not cached:
        return clip_batch(ctx, samples, train=True, seed=seed)[0]
    model = base_model(ctx)
    model.eval()
    with torch.no_grad():
        return torch.cat([model.frozen_features(clip_batch(ctx, samples[i:i + 16], train=True,
                                                           seed=seed)[0]).float()
                          for i in range(0, len(samples), 16)])


def _overfit(ctx: Context, x: Tensor, y: Tensor, cached: bool, deadline: float,
             lr: float | None) -> tuple[dict, nn.Module]:
    """Train a fresh model, dropout and weight decay off, on one batch for up to
    OVERFIT_STEPS steps or until `deadline`."""
    torch.manual_seed(ctx.seed)
    model = _no_dropout(ctx.make_model())
    model.train()
    opt = _optimizer(ctx, model, weight_decay=False, lr=lr)
    losses: list[float] = []
    reached = None
    target = None
    for i in range(OVERFIT_STEPS):
        if i and time.perf_counter() > deadline:
            break
        loss, _, _ = _train_step(model, opt, x, y, ctx.loss_fn, cached, _clip_value(ctx))
        losses.append(loss)
        if not math.isfinite(loss):
            break
        if target is None:
            target = NEAR_ZERO_FRAC * loss
        if loss <= target:
            reached = i
            break
    finite = [v for v in losses if math.isfinite(v)]
    return {"lr": opt.param_groups[0]["lr"], "steps": len(losses), "losses": losses,
            "initial_loss": losses[0], "final_loss": losses[-1],
            "min_loss": min(finite) if finite else float("nan"), "target": target,
            "reached": reached is not None, "steps_to_near_zero": reached,
            "nonfinite_step": None if len(finite) == len(losses) else len(finite)}, model


@torch.no_grad()
def _memorised_gap(ctx: Context, model: nn.Module, fit: dict, x: Tensor, y: Tensor,
                   samples: list, cached: bool) -> dict:
    """Loss of the model that fit this batch on the clips as they are and on augmented draws
    of the same clips. A model that knows these clips still knows them under a mild
    augmentation (demo default: 0.004 vs 0.003) but not under one that destroys what
    identifies them (scale 0.05-0.1, 45 degrees, hue 0.5: 3-4). Train mode (batch statistics,
    as when it fit; dropout is off): after a few dozen steps BatchNorm's running statistics
    are not usable yet."""
    peak = max(fit["losses"])
    if peak > 2 * fit["initial_loss"]:  # --lr 5 "fits" after the loss went to 500
        return {"skipped": f"the fit was unstable (loss peaked at {peak:.1f})"}
    model.train()
    clean = float(ctx.loss_fn(_forward(model, x, cached), y))
    draws = [float(ctx.loss_fn(_forward(model, _augmented(ctx, samples, ctx.seed + 101 + i,
                                                          cached), cached), y))
             for i in range(AUG_DRAWS)]
    return {"clean_loss": clean, "augmented_loss": float(np.mean(draws)), "draws": draws,
            "clips": len(y)}


@probe("overfit_batch", min_s=3.0)
def overfit_batch(ctx: Context, probes: Probes) -> dict:
    """Up to 200 steps on up to 8 clips, no augmentation, no dropout or weight decay, at the
    config's LR. If the batch is fit: the fitted model's loss on augmented draws of the same
    clips (augmentation strength). If not: again at the LR range test's suggestion (when it
    differs 3x+), which separates "the model cannot learn" from "the LR is wrong"."""
    d = probes.get("training_data")
    n = min(OVERFIT_CLIPS, d["train_clips"])
    x, y = d["_x_train"][:n], d["_y_train"][:n]  # round-robin over classes: stratified
    step_s = d["step_s"] * max(1.0, n / d["batch_size"])
    started = time.perf_counter()
    allowance = _allowance(ctx, "overfit_batch")
    if allowance < 20 * step_s:
        raise ProbeSkipped(f"overfitting one batch needs 20+ steps of {step_s:.2f} s; only "
                           f"{allowance:.0f} s are left for it (raise --budget)")
    # half the allowance for the config's LR, the rest for a retry at the range test's LR
    first, model = _overfit(ctx, x, y, d["cached"], started + 0.5 * allowance, None)
    out = {"clips": n, "classes_in_batch": len(set(y.tolist())),
           "near_zero_frac": NEAR_ZERO_FRAC, "config_lr": first["lr"], **first}
    if first["reached"]:
        if _augments(ctx, d["cached"]):
            out["augmentation"] = _memorised_gap(ctx, model, first, x, y,
                                                 d["_train_samples"][:n], d["cached"])
        return out
    left = allowance - (time.perf_counter() - started)
    try:  # the sweep's own time is its own, not this probe's
        suggestion = probes.get("lr_range")["suggestion"]
    except ProbeSkipped:
        suggestion = None
    if suggestion and not 1 / 3 < suggestion / first["lr"] < 3 and left >= 10 * step_s:
        out["retry"], _ = _overfit(ctx, x, y, d["cached"], time.perf_counter() + left, suggestion)
    return out


# ---------------------------------------------------------------------------------------------
# grad_stats

class _ActivationMonitor:
    """Forward hooks: share of exactly-zero ReLU outputs (and channels zero everywhere), and
    share of tanh / sigmoid inputs with |x| >= 5 (for RNNs: the input part of the gates)."""

    def __init__(self, model: nn.Module) -> None:
        self.active = False
        self.relu: dict[str, list[float]] = {}  # name -> [zero share, dead channel share, channels]
        self.saturation: dict[str, float] = {}
        self.handles = []
        for name, m in model.named_modules():
            if isinstance(m, (nn.ReLU, nn.ReLU6)):
                self.handles.append(m.register_forward_hook(self._relu_hook(name)))
            elif isinstance(m, (nn.Tanh, nn.Sigmoid)):
                self.handles.append(m.register_forward_hook(self._sat_hook(name)))
            elif isinstance(m, (nn.LSTM, nn.GRU)):
                self.handles.append(m.register_forward_hook(self._rnn_hook(name)))

    def _relu_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if not self.active or not isinstance(output, Tensor) or output.ndim < 2:
                return
            o = output.detach()
            cdim = 1 if o.ndim == 4 else o.ndim - 1  # (N, C, H, W) or (..., D)
            alive = (o != 0).transpose(0, cdim).flatten(1).any(1)  # (C,)
            self.relu[name] = [float((o == 0).float().mean()), float(1 - alive.float().mean()),
                               int(alive.numel())]
        return hook

    def _sat_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if self.active and inputs and isinstance(inputs[0], Tensor):
                self.saturation[name] = float((inputs[0].detach().abs() >= SATURATION_X)
                                              .float().mean())
        return hook

    def _rnn_hook(self, name: str) -> Callable:
        def hook(module: nn.RNNBase, inputs: tuple, output: Any) -> None:
            if not self.active or not inputs:
                return
            x = inputs[0]
            x = x.data if hasattr(x, "batch_sizes") else x  # PackedSequence -> (N, D)
            with torch.no_grad():
                z = x.detach() @ module.weight_ih_l0.detach().t()
                if module.bias:
                    z = z + module.bias_ih_l0.detach() + module.bias_hh_l0.detach()
            self.saturation[f"{name} (gate inputs, layer 0)"] = float(
                (z.abs() >= SATURATION_X).float().mean())
        return hook

    def summary(self) -> dict:
        layers = self.relu
        zero = [v[0] for v in layers.values()]
        channels = sum(v[2] for v in layers.values())
        dead = sum(v[1] * v[2] for v in layers.values())
        worst = max(layers, key=lambda n: layers[n][0]) if layers else None
        sat_worst = max(self.saturation, key=self.saturation.get) if self.saturation else None
        return {
            "relu_layers": len(layers),
            "relu_zero_share_mean": float(np.mean(zero)) if zero else None,
            "relu_zero_share_max": max(zero) if zero else None,
            "relu_worst_layer": worst,
            "relu_dead_channel_share": dead / channels if channels else None,
            "relu_per_layer": {n: round(v[0], 4) for n, v in layers.items()},
            "saturation_layers": len(self.saturation),
            "saturation_share_max": self.saturation[sat_worst] if sat_worst else None,
            "saturation_worst_layer": sat_worst,
            "saturation_per_layer": {n: round(v, 4) for n, v in self.saturation.items()},
        }

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _param_layers(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Modules owning trainable parameters directly, in registration order (input first)."""
    out = []
    for name, m in model.named_modules():
        ps = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if ps:
            out.append((name or type(m).__name__, ps))
    return out


def _norm(params: list[nn.Parameter]) -> float:
    grads = [p.grad.detach().flatten() for p in params if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


def _groups(layers: list[tuple[str, list]]) -> dict[str, list[nn.Parameter]]:
    """Layers grouped by top-level child (built-in: backbone, pool, proj, head)."""
    out: dict[str, list[nn.Parameter]] = {}
    for name, ps in layers:
        out.setdefault(name.split(".")[0], []).extend(ps)
    return out


def _record_norms(layers: list[tuple[str, list]], groups: dict[str, list], rec: dict,
                  group_norms: dict[str, list[float]]) -> str | None:
    """Append this step's gradient norms (total, first and last layer, per group); return the
    first layer whose gradient is not finite, if any."""
    norms = [_norm(ps) for _, ps in layers]
    rec["total_norms"].append(float(np.sqrt(np.sum(np.square(norms)))))
    rec["first_norms"].append(norms[0])
    rec["last_norms"].append(norms[-1])
    for g, ps in groups.items():
        group_norms[g].append(_norm(ps))
    return next((n for (n, _), v in zip(layers, norms) if not math.isfinite(v)), None)


@probe("grad_stats", min_s=2.0)
def grad_stats(ctx: Context, probes: Probes) -> dict:
    """A few steps at the config's LR on a fresh model: per-layer gradient norms before
    clipping, activation statistics at the first and last step, the first non-finite value."""
    d = probes.get("training_data")
    allowance = _allowance(ctx, "grad_stats")
    steps = min(GRAD_STEPS, int(allowance / (1.3 * d["step_s"])))  # cheap: not scaled down
    if steps < 2:
        raise ProbeSkipped(f"gradient statistics need 2+ steps of {d['step_s']:.2f} s; only "
                           f"{allowance:.0f} s are left for them (raise --budget)")
    x, y, cached, bs = d["_x_train"], d["_y_train"], d["cached"], d["batch_size"]
    torch.manual_seed(ctx.seed)
    model = ctx.make_model()
    model.train()
    opt = _optimizer(ctx, model)
    layers = _param_layers(model)
    groups = _groups(layers)
    monitor = _ActivationMonitor(model)
    rec: dict[str, list] = {"losses": [], "total_norms": [], "first_norms": [], "last_norms": []}
    group_norms: dict[str, list[float]] = {g: [] for g in groups}
    activations: dict[str, dict] = {}
    nonfinite = None
    batches = _batches(len(y), bs, ctx.seed)
    try:
        for step in range(steps):
            idx = batches[step % len(batches)]
            xb, yb = x[idx], y[idx]
            monitor.active = step in (0, steps - 1)
            opt.zero_grad(set_to_none=True)
            logits = _forward(model, xb, cached)
            loss = ctx.loss_fn(logits, yb)
            rec["losses"].append(float(loss.detach()))
            if monitor.active:
                activations["init" if step == 0 else "final"] = monitor.summary()
            if not _finite(loss):
                where = "output" if not _finite(logits.detach()) else "loss"
                nonfinite = {"step": step, "where": where, "inputs_finite": _finite(xb)}
                break
            loss.backward()
            bad = _record_norms(layers, groups, rec, group_norms)
            if bad is not None:
                nonfinite = {"step": step, "where": f"gradient of {bad}",
                             "inputs_finite": _finite(xb)}
                break
            torch.nn.utils.clip_grad_norm_(_trainable(model), _clip_value(ctx) or float("inf"))
            opt.step()
    finally:
        monitor.remove()
    ratios = [f / l if l > 0 else math.inf for f, l in zip(rec["first_norms"], rec["last_norms"])]
    grads = [p.grad.detach().abs().mean() for _, ps in layers[:1] for p in ps if p.grad is not None]
    return {
        "steps": len(rec["losses"]), "planned_steps": steps, "lr": opt.param_groups[0]["lr"],
        "first_layer": layers[0][0], "last_layer": layers[-1][0], "layers": len(layers),
        **rec, "ratios": ratios, "group_norms": group_norms,
        "first_mean_abs_grad": float(torch.stack(grads).mean()) if grads else None,
        "activations": activations, "nonfinite": nonfinite,
    }


# ---------------------------------------------------------------------------------------------
# short_run

def _fit(ctx: Context, d: dict, epochs: int, deadline: float, *, augment: bool,
         regularize: bool) -> dict:
    """A few epochs on the training subset at the config's LR (linear warm-up over the first
    epoch when the config warms up, then constant), validation after each epoch."""
    cached, bs, k = d["cached"], d["batch_size"], d["classes"]
    x_tr, y_tr, x_va, y_va = d["_x_train"], d["_y_train"], d["_x_val"], d["_y_val"]
    torch.manual_seed(ctx.seed)
    model = ctx.make_model()
    if not regularize:
        _no_dropout(model)
    opt = _optimizer(ctx, model, weight_decay=regularize)
    base = [g["lr"] for g in opt.param_groups]
    warm = round(min(ctx.config.train.warmup_epochs, 1.0) * len(_batches(len(y_tr), bs, 0)))
    rec: dict[str, list] = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": [],
                            "step_losses": [], "epoch_s": []}
    nonfinite, step, stopped, xs, val_logits = None, 0, "end", x_tr, None
    for epoch in range(epochs):
        started = time.perf_counter()
        xs = _augmented(ctx, d["_train_samples"], ctx.seed * 1000 + epoch + 1) if augment else x_tr
        model.train()
        losses, correct, seen = [], 0, 0
        for idx in _batches(len(y_tr), bs, ctx.seed + epoch):
            factor = (step + 1) / (warm + 1) if step < warm else 1.0
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * factor
            loss, _, logits = _train_step(model, opt, xs[idx], y_tr[idx], ctx.loss_fn, cached,
                                          _clip_value(ctx))
            step += 1
            if logits is None:
                nonfinite = {"epoch": epoch, "step": step - 1, "loss": loss}
                break
            losses.append(loss)
            correct += int((logits.argmax(1) == y_tr[idx]).sum())
            seen += len(idx)
        rec["step_losses"] += losses
        if nonfinite is not None:
            stopped = "non-finite loss"
            break
        rec["train_loss"].append(float(np.mean(losses)))
        rec["train_acc"].append(correct / max(1, seen))
        val_logits = _logits(model, x_va, cached)
        vl, va = _score(val_logits, y_va, ctx.loss_fn)
        rec["val_loss"].append(vl)
        rec["val_acc"].append(va)
        rec["epoch_s"].append(time.perf_counter() - started)
        if epoch + 1 < epochs and time.perf_counter() + rec["epoch_s"][-1] > deadline:
            stopped = "budget"
            break
    out = {**rec, "epochs": len(rec["train_loss"]), "planned_epochs": epochs, "stopped": stopped,
           "nonfinite": nonfinite, "steps": step, "lr": base[0], "augmented": augment,
           "regularized": regularize, "_model": model}
    if val_logits is not None:
        out["val_pred_counts"] = _hist(val_logits.argmax(1), k)
    out["_last_inputs"] = xs
    return out


def _plan_epochs(ctx: Context, d: dict, allowance: float, augment: bool) -> int:
    """Epochs of the main run that fit SHORT_MAIN_SHARE of the allowance (at least 3)."""
    steps = max(1, d["train_clips"] // d["batch_size"])
    # a step plus its share of validation (about a third of a step per clip) and, with
    # augmentation, of reloading the clips (measured: ~1/3 of a demo step)
    epoch_s = d["step_s"] * (steps * (1.4 if augment else 1.0)
                             + d["val_clips"] / (3 * d["batch_size"]))
    fit = int(SHORT_MAIN_SHARE * allowance / epoch_s)
    return max(SHORT_MIN_EPOCHS, min(SHORT_MAX_EPOCHS, fit))


def _public(run: dict) -> dict:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def _augmentation_gap(ctx: Context, d: dict, main: dict) -> dict | None:
    """Loss of the short-run model (eval mode) on the training clips as they are and on one
    augmented draw of the same clips; None when training uses no augmentation."""
    model, cached = main["_model"], d["cached"]
    if not _augments(ctx, cached):
        return None
    x, y = d["_x_train"], d["_y_train"]
    if cached:  # features of augmented clips cost a backbone pass: a subset
        n = min(len(y), ctx.budget.scale(64, minimum=16))
        x, y = x[:n], y[:n]
        xa = _augmented(ctx, d["_train_samples"][:n], ctx.seed + 7, cached=True)
    else:
        xa = main["_last_inputs"]  # the last epoch's draw
    clean, _ = _score(_logits(model, x, cached), y, ctx.loss_fn)
    aug, _ = _score(_logits(model, xa, cached), y, ctx.loss_fn)
    return {"clean_loss": clean, "augmented_loss": aug, "clips": len(y)}


def _config_steps(ctx: Context, d: dict) -> int | None:
    """Optimiser steps of the configured training on the whole training split (stage 1 plus
    fine-tuning); None for a user's model, whose training loop is unknown."""
    if ctx.user_model:
        return None
    t = ctx.config.train
    epochs = t.epochs + (t.finetune_epochs if ctx.config.model.freeze_backbone else 0)
    return epochs * math.ceil(d["train_total"] / ctx.config.data.batch_size)


def _unregularized(ctx: Context, d: dict, main: dict, deadline: float, weight_decay: float,
                   dropout: bool) -> dict | None:
    """The same run without weight decay and dropout, for as many epochs as the budget allows
    (compared epoch by epoch), when the model is regularised and its train loss stays high."""
    if not (weight_decay > 0 or dropout):
        return None
    tr = main["train_loss"]
    if main["nonfinite"] is not None or not tr:
        return {"skipped": "the short run did not finish an epoch"}
    if tr[-1] <= VARIANT_TRIGGER * math.log(max(2, d["classes"])):
        return {"skipped": f"the train loss is already low ({tr[-1]:.2f})"}
    epochs = min(main["epochs"], int((deadline - time.perf_counter()) / np.mean(main["epoch_s"])))
    if epochs < SHORT_MIN_EPOCHS:
        return {"skipped": f"no budget left for {SHORT_MIN_EPOCHS} more epochs (raise --budget)"}
    return _public(_fit(ctx, d, epochs, deadline, augment=main["augmented"], regularize=False))


@probe("short_run", min_s=5.0)
def short_run(ctx: Context, probes: Probes) -> dict:
    """A short training run at the config's LR and augmentation; the final model is kept
    (`_model`) for the temporal probes."""
    d = probes.get("training_data")
    started = time.perf_counter()
    allowance = _allowance(ctx, "short_run")
    augment = not d["cached"]  # stage 1 trains on the unaugmented view of cached features
    epochs = _plan_epochs(ctx, d, allowance, augment)
    main = _fit(ctx, d, epochs, started + SHORT_MAIN_SHARE * allowance, augment=augment,
                regularize=True)
    model = base_model(ctx)
    wd = max(g.get("weight_decay", 0.0) for g in _optimizer(ctx, model).param_groups)
    out = {**_public(main), "classes": d["classes"], "train_clips": d["train_clips"],
           "val_clips": d["val_clips"], "val_counts": d["val_counts"],
           "steps_per_epoch": len(_batches(d["train_clips"], d["batch_size"], 0)),
           "config_steps": _config_steps(ctx, d), "weight_decay": wd,
           "dropout": _has_dropout(model), "_model": main["_model"]}
    if main["nonfinite"] is None and main["epochs"]:
        out["augmentation_gap"] = _augmentation_gap(ctx, d, main)
    out["no_regularization"] = _unregularized(ctx, d, main, started + allowance, wd,
                                              out["dropout"])
    return out


# ---------------------------------------------------------------------------------------------
# temporal_eval

def _shuffle_time(x: Tensor, seed: int) -> Tensor:
    """Each clip's steps in its own random order (never the identity)."""
    n, t = x.shape[:2]
    g = torch.Generator().manual_seed(seed)
    perm = torch.argsort(torch.rand(n, t, generator=g), dim=1)  # (N, T)
    ident = (perm == torch.arange(t)).all(1)
    perm[ident] = perm[ident].flip(1)
    return x[torch.arange(n)[:, None], perm]  # (N, T, ...) gathered per clip


def _repeat_frame(x: Tensor, t: int) -> Tensor:
    """Step t of every clip repeated over all T steps."""
    return x[:, t:t + 1].expand(-1, x.shape[1], *x.shape[2:]).contiguous()


@probe("temporal_eval", min_s=1.0)
def temporal_eval(ctx: Context, probes: Probes) -> dict:
    """The short-run model on validation clips as they are, with frames shuffled in time and
    with one frame repeated T times (first, middle and last frame; every frame when cheap)."""
    run = probes.get("short_run")
    d = probes.get("training_data")
    model = run.get("_model")
    if model is None or run["nonfinite"] is not None or not run["train_loss"]:
        raise ProbeSkipped("the short training run produced no usable model")
    if run["train_loss"][-1] > DIVERGED * run["step_losses"][0]:
        # measured with --lr 5: a saturated model ignores order, and that says nothing
        raise ProbeSkipped(f"the short run diverged (loss {run['step_losses'][0]:.2f} -> "
                           f"{run['train_loss'][-1]:.2f}): its model says nothing about time")
    x, y, cached = d["_x_val"], d["_y_val"], d["cached"]
    t = x.shape[1]
    if t < 2:
        raise ProbeSkipped("clips have a single frame: nothing temporal to evaluate")
    # a user's model runs 6 times over the clips, ours once (then only its head): an eval pass
    # costs about a third of a training step per clip
    passes = 6 if ctx.user_model else 1
    n = int(_allowance(ctx, "temporal_eval") / (passes * d["step_s"] / (3 * d["batch_size"])))
    if n < 8:
        raise ProbeSkipped(f"too little budget left to evaluate 8 clips {passes} times "
                           "(raise --budget)")
    x, y = x[:n], y[:n]  # a prefix stays stratified
    model.eval()
    if ctx.user_model:  # unknown structure: run the whole model on re-ordered clips
        frames = x

        def head(z: Tensor) -> Tensor:
            return _logits(model, z, False)
        positions = sorted({0, t // 2, t - 1})
    else:  # per-frame features are independent in eval mode: reorder them, not the pixels
        with torch.no_grad():
            frames = x if cached else torch.cat([model.frame_features(x[i:i + 32])
                                                 for i in range(0, len(x), 32)])

        def head(z: Tensor) -> Tensor:
            return _logits(model, z, True)
        positions = list(range(t))
    normal = head(frames)
    loss, acc = _score(normal, y, ctx.loss_fn)
    shuffled = [head(_shuffle_time(frames, ctx.seed + i)) for i in range(2)]
    s_scores = [_score(s, y, ctx.loss_fn) for s in shuffled]
    change = max(float((s - normal).abs().max()) for s in shuffled)
    repeated = {p: head(_repeat_frame(frames, p)) for p in positions}
    content = max(float((r - normal).abs().max()) for r in repeated.values())
    single = {p: _score(r, y, ctx.loss_fn) for p, r in repeated.items()}
    best = max(single, key=lambda p: (single[p][1], -single[p][0]))
    tol = 1e-4 * (1 + float(normal.abs().max()))  # float32 noise of a reordered sum
    k = d["classes"]
    chance = max(1 / k, max(_hist(y, k)) / len(y))
    margin = 3 * math.sqrt(chance * (1 - chance) / len(y))  # 3 binomial sd at chance
    return {
        "clips": len(y), "frames": t, "chance": chance, "above_chance_margin": margin,
        "acc": acc, "loss": loss, "above_chance": acc >= chance + margin,
        "shuffled_acc": float(np.mean([a for _, a in s_scores])),
        "shuffled_loss": float(np.mean([lo for lo, _ in s_scores])),
        "max_logit_change": change, "content_logit_change": content,
        # exact invariance only means something when the output depends on the frames at all
        # (a saturated or constant model ignores order and content alike)
        "content_dependent": content > tol,
        "order_invariant": change <= tol < content,
        "single_frame_acc": {str(p): a for p, (_, a) in single.items()},
        "best_single_frame": best, "best_single_acc": single[best][1],
        "best_single_loss": single[best][0],
    }
