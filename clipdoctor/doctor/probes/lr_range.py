"""The `lr_range` probe: fastai's exponential LR sweep (1e-7 -> 10) on a fresh model and its
"valley" suggestion (Lightning's steepest fall is kept beside it)."""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from clipdoctor.doctor.probes import Context, Probes, probe, work_clock
from clipdoctor.doctor.probes.results import LRRange
from clipdoctor.doctor.probes.training import SHARE, _batches, _fresh_run, _train_step

LR_START, LR_END, LR_STEPS = 1e-7, 10.0, 100  # fastai lr_find's sweep
LR_MIN_STEPS = 20  # fewer points cannot show a valley
LR_STOP_FACTOR = 4.0  # fastai: stop once the smoothed loss exceeds 4x its minimum
LR_BETA = 0.98  # fastai's loss smoothing over 100 steps; scaled to keep the window's share


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


@probe("lr_range", min_s=3.0, share=SHARE["lr_range"], needs=("training_data",))
def lr_range(ctx: Context, probes: Probes) -> LRRange:
    """Exponential LR sweep 1e-7 -> 10 on a fresh model (fastai lr_find), stopped when the
    smoothed loss exceeds 4x its minimum; suggestion = "valley"."""
    d, allowance, steps, model, opt = _fresh_run(
        ctx, probes, "lr_range", ctx.budget.scale(LR_STEPS, minimum=LR_MIN_STEPS), LR_MIN_STEPS,
        "an LR sweep needs {n}+ steps of {s:.2f} s; only {left:.0f} s are left for it")
    x, y, cached, bs = d["_x_train"], d["_y_train"], d["cached"], d["batch_size"]
    base = [g["lr"] for g in opt.param_groups]
    config_lr = base[0]
    lrs = np.geomspace(LR_START, LR_END, steps).tolist()
    beta = LR_BETA ** (LR_STEPS / steps)
    deadline = ctx.budget.deadline()  # the plan decides; this is a guard
    batches: list[Tensor] = []
    raw, smooth, avg, best, stopped = [], [], 0.0, math.inf, "end"
    for i, lr in enumerate(lrs):
        if work_clock() > deadline:
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
    return LRRange(
        lrs=lrs[:len(smooth)], losses=smooth, raw_losses=raw, steps=len(smooth),
        planned_steps=steps, stopped=stopped, config_lr=config_lr,
        suggestion=lrs[valley] if valley is not None else None, method="valley",
        steepest=lrs[steep] if steep is not None else None,
        min_loss_lr=lrs[low] if low is not None else None,
        initial_loss=raw[0] if raw else None, min_loss=min(smooth) if smooth else None)
