"""The `overfit_batch` probe: can a tiny batch be driven to near-zero loss (Karpathy's recipe)?
If so, how much worse is the fitted model on augmented draws of the same clips; if not, does
the LR range test's suggestion fit it (the LR is wrong, not the model)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from clipdoctor.doctor.probes import (Context, Probes, ProbeSkipped, loss_floor, probe,
                                        work_clock)
from clipdoctor.doctor.probes.results import BatchFit, MemorisedGap, OverfitBatch, Skipped
from clipdoctor.doctor.probes.training import (SHARE, _augmented, _augments, _clip_value,
                                                 _forward, _no_dropout, _optimizer,
                                                 _train_step)

OVERFIT_CLIPS, OVERFIT_STEPS = 8, 200  # Karpathy's recipe: a handful of clips, a few hundred steps
NEAR_ZERO_FRAC = 0.05  # "near zero": 95 % of the initial loss gone (0.035 at 2 classes, 0.10 at 8);
# measured from the loss's floor, which label smoothing lifts above 0 (0.47 at 8 classes, 0.1)
AUG_DRAWS = 2  # augmented draws of the fitted batch


def _overfit(ctx: Context, x: Tensor, y: Tensor, cached: bool, most: int, deadline: float,
             lr: float | None) -> tuple[BatchFit, nn.Module]:
    """Train a fresh model, dropout and weight decay off, on one batch for up to `most`
    (at most OVERFIT_STEPS) steps; `deadline` (the work clock's, `Budget.deadline`) only guards a plan far off."""
    torch.manual_seed(ctx.seed)
    model = _no_dropout(ctx.make_model())
    model.train()
    opt = _optimizer(ctx, model, weight_decay=False, lr=lr)
    losses: list[float] = []
    reached = None
    target = None
    for i in range(min(most, OVERFIT_STEPS)):
        if i and work_clock() > deadline:
            break
        loss, _, logits = _train_step(model, opt, x, y, ctx.loss_fn, cached, _clip_value(ctx))
        losses.append(loss)
        if not math.isfinite(loss):
            break
        if target is None:  # from the loss's floor (above 0 with label smoothing)
            floor = loss_floor(ctx.loss_fn, y, int(logits.shape[-1]))
            target = floor + NEAR_ZERO_FRAC * (loss - floor)
        if loss <= target:
            reached = i
            break
    finite = [v for v in losses if math.isfinite(v)]
    return BatchFit(lr=opt.param_groups[0]["lr"], steps=len(losses), losses=losses,
                    initial_loss=losses[0], final_loss=losses[-1],
                    min_loss=min(finite) if finite else float("nan"), target=target,
                    reached=reached is not None, steps_to_near_zero=reached,
                    nonfinite_step=None if len(finite) == len(losses) else len(finite)), model


@torch.no_grad()
def _memorised_gap(ctx: Context, model: nn.Module, fit: BatchFit, x: Tensor, y: Tensor,
                   samples: list, cached: bool) -> MemorisedGap | Skipped:
    """Loss of the model that fit this batch on the clips as they are and on augmented draws
    of the same clips. A model that knows these clips still knows them under a mild
    augmentation (demo default: 0.004 vs 0.003) but not under one that destroys what
    identifies them (scale 0.05-0.1, 45 degrees, hue 0.5: 3-4). Train mode (batch statistics,
    as when it fit; dropout is off): after a few dozen steps BatchNorm's running statistics
    are not usable yet."""
    peak = max(fit.losses)
    if peak > 2 * fit.initial_loss:  # --lr 5 "fits" after the loss went to 500
        return Skipped(skipped=f"the fit was unstable (loss peaked at {peak:.1f})")
    model.train()
    clean = float(ctx.loss_fn(_forward(model, x, cached), y))
    draws = [float(ctx.loss_fn(_forward(model, _augmented(ctx, samples, ctx.seed + 101 + i,
                                                          cached), cached), y))
             for i in range(AUG_DRAWS)]
    return MemorisedGap(clean_loss=clean, augmented_loss=float(np.mean(draws)), draws=draws,
                        clips=len(y))


@probe("overfit_batch", min_s=3.0, share=SHARE["overfit_batch"],
       needs=("training_data", "lr_range"))
def overfit_batch(ctx: Context, probes: Probes) -> OverfitBatch:
    """Up to 200 steps on up to 8 clips, no augmentation, no dropout or weight decay, at the
    config's LR. If the batch is fit: the fitted model's loss on augmented draws of the same
    clips (augmentation strength). If not: again at the LR range test's suggestion (when it
    differs 3x+), which separates "the model cannot learn" from "the LR is wrong"."""
    d = probes.get("training_data")
    n = min(OVERFIT_CLIPS, d["train_clips"])
    x, y = d["_x_train"][:n], d["_y_train"][:n]  # round-robin over classes: stratified
    step_s = d["step_s"] * max(1.0, n / d["batch_size"])
    allowance = ctx.budget.allowance("overfit_batch", minimum=20 * step_s * 1.001)
    if allowance < 20 * step_s:
        raise ProbeSkipped(f"overfitting one batch needs 20+ steps of {step_s:.2f} s; only "
                           f"{allowance:.0f} s are left for it (raise --budget)")
    # half the allowance for the config's LR, the rest for a retry at the range test's LR
    most = int(0.5 * allowance / step_s)
    first, model = _overfit(ctx, x, y, d["cached"], max(20, most),
                            ctx.budget.deadline(), None)
    ctx.budget.charge("overfit_batch", first.steps * step_s)
    out = OverfitBatch(clips=n, classes_in_batch=len(set(y.tolist())),
                       near_zero_frac=NEAR_ZERO_FRAC, config_lr=first.lr, **vars(first))
    if first.reached:
        if _augments(ctx, d["cached"]):
            out.augmentation = _memorised_gap(ctx, model, first, x, y, d["_train_samples"][:n],
                                              d["cached"])
        return out
    left = allowance - first.steps * step_s
    try:  # the sweep's own time is its own, not this probe's
        suggestion = probes.get("lr_range").suggestion
    except ProbeSkipped:
        suggestion = None
    if suggestion and not 1 / 3 < suggestion / first.lr < 3 and left >= 10 * step_s:
        out.retry, _ = _overfit(ctx, x, y, d["cached"], int(left / step_s),
                                ctx.budget.deadline(), suggestion)
        ctx.budget.charge("overfit_batch", (first.steps + out.retry.steps) * step_s)
    return out
