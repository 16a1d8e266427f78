"""The `short_run` probe: a few epochs at the config's LR and augmentation on a fresh model:
loss curves, validation predictions, the loss on augmented vs clean clips, and the same run
without weight decay / dropout when the budget allows and the train loss stays high. Its
final model is kept for `temporal_eval`."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from clipdoctor.doctor.probes import Context, Probes, base_model, probe, work_clock
from clipdoctor.doctor.probes.cost import load_s
from clipdoctor.doctor.probes.results import (AugmentationGap, Curves, NonFiniteLoss,
                                                ShortRun, Skipped)
from clipdoctor.doctor.probes.training import (SHARE, SHORT_MAIN_SHARE, SHORT_MIN_EPOCHS,
                                                 _augmented, _augments, _batches, _clip_value,
                                                 _has_dropout, _hist, _logits, _no_dropout,
                                                 _optimizer, _score, _train_step)
from clipdoctor.training.module import make_schedule, warmup_schedule

SHORT_MAX_EPOCHS = 30  # more epochs are not needed to show a trend ...
JUDGED_STEPS = 100  # ... unless they are too few steps for a verdict: the most optimizer steps a
# check declares (`@check(min_steps=...)`: prediction-collapse's 100; a test keeps them in step),
# so small data runs up to this many steps when the budget allows
VARIANT_TRIGGER = 0.5  # the unregularised variant runs only if the train loss ends above 0.5 ln K
# (measured from the loss's floor: above 0 with label smoothing)


def _schedule(ctx: Context, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The LR multiplier per step of a run of `epochs` epochs: for the built-in model `train`'s
    own schedule (`training.module.make_schedule`: warm-up, then cosine / one-cycle / constant)
    of a run of that length; for a user's model, whose schedule is unknown, a linear warm-up
    over the first epoch when the config warms up, then constant."""
    t = ctx.config.train
    if ctx.user_model:
        warm = round(min(t.warmup_epochs, 1.0) * steps_per_epoch)
        return warmup_schedule("constant", warm, epochs * steps_per_epoch)
    return make_schedule(t, steps_per_epoch, epochs)


def _fit(ctx: Context, d: dict, epochs: int, deadline: float, *, augment: bool,
         regularize: bool, schedule_epochs: int | None = None
         ) -> tuple[Curves, nn.Module, Tensor]:
    """A few epochs on the training subset at the config's LR, following `_schedule` for a run
    of `schedule_epochs` (default `epochs`) epochs, validation after each epoch -> (curves,
    the trained model, the last epoch's training inputs)."""
    cached, bs, k = d["cached"], d["batch_size"], d["classes"]
    x_tr, y_tr, x_va, y_va = d["_x_train"], d["_y_train"], d["_x_val"], d["_y_val"]
    torch.manual_seed(ctx.seed)
    model = ctx.make_model()
    if not regularize:
        _no_dropout(model)
    opt = _optimizer(ctx, model, weight_decay=regularize)
    base = [g["lr"] for g in opt.param_groups]
    factor = _schedule(ctx, len(_batches(len(y_tr), bs, 0)), schedule_epochs or epochs)
    rec: dict[str, list] = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": [],
                            "step_losses": [], "epoch_s": []}
    nonfinite, step, stopped, xs, val_logits = None, 0, "end", x_tr, None
    for epoch in range(epochs):
        started, work = time.perf_counter(), work_clock()
        xs = _augmented(ctx, d["_train_samples"], ctx.seed * 1000 + epoch + 1) if augment else x_tr
        model.train()
        losses, correct, seen = [], 0, 0
        for idx in _batches(len(y_tr), bs, ctx.seed + epoch):
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * factor(step)
            loss, _, logits = _train_step(model, opt, xs[idx], y_tr[idx], ctx.loss_fn, cached,
                                          _clip_value(ctx))
            step += 1
            if logits is None:
                nonfinite = NonFiniteLoss(epoch=epoch, step=step - 1, loss=loss)
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
        if epoch + 1 < epochs and 2 * work_clock() - work > deadline:  # another epoch: past it
            stopped = "budget"
            break
    curves = Curves(**rec, epochs=len(rec["train_loss"]), planned_epochs=epochs, stopped=stopped,
                    nonfinite=nonfinite, steps=step, lr=base[0], augmented=augment,
                    regularized=regularize,
                    val_pred_counts=None if val_logits is None else _hist(val_logits.argmax(1), k))
    return curves, model, xs


def _epoch_s(d: dict, augment: bool) -> float:
    """Planned seconds of one epoch: its steps, validation (about a third of a step per
    clip) and, with augmentation, reloading the clips through the data pipeline (`cost.py`:
    a counted cost per frame, the same on any machine)."""
    steps = max(1, d["train_clips"] // d["batch_size"])
    reload = d["train_clips"] * load_s(d["input_shape"]) if augment else 0.0
    return d["step_s"] * (steps + d["val_clips"] / (3 * d["batch_size"])) + reload


def _plan_epochs(ctx: Context, d: dict, allowance: float, augment: bool) -> int:
    """Epochs of the main run that fit SHORT_MAIN_SHARE of the allowance (at least 3)."""
    steps = max(1, d["train_clips"] // d["batch_size"])
    fit = int(SHORT_MAIN_SHARE * allowance / _epoch_s(d, augment))
    most = max(SHORT_MAX_EPOCHS, math.ceil(JUDGED_STEPS / steps))
    return max(SHORT_MIN_EPOCHS, min(most, fit))


def _augmentation_gap(ctx: Context, d: dict, model: nn.Module, last_inputs: Tensor
                      ) -> AugmentationGap | None:
    """Loss of the short-run model (eval mode) on the training clips as they are and on one
    augmented draw of the same clips; None when training uses no augmentation."""
    cached = d["cached"]
    if not _augments(ctx, cached):
        return None
    x, y = d["_x_train"], d["_y_train"]
    if cached:  # features of augmented clips cost a backbone pass: a subset
        n = min(len(y), ctx.budget.scale(64, minimum=16))
        x, y = x[:n], y[:n]
        xa = _augmented(ctx, d["_train_samples"][:n], ctx.seed + 7, cached=True)
    else:
        xa = last_inputs  # the last epoch's draw
    clean, _ = _score(_logits(model, x, cached), y, ctx.loss_fn)
    aug, _ = _score(_logits(model, xa, cached), y, ctx.loss_fn)
    return AugmentationGap(clean_loss=clean, augmented_loss=aug, clips=len(y))


def _config_steps(ctx: Context, d: dict) -> int | None:
    """Optimiser steps of the configured training on the whole training split (stage 1 plus
    fine-tuning); None for a user's model, whose training loop is unknown."""
    if ctx.user_model:
        return None
    t = ctx.config.train
    epochs = t.epochs + (t.finetune_epochs if ctx.config.model.freeze_backbone else 0)
    return epochs * math.ceil(d["train_total"] / ctx.config.data.batch_size)


def _unregularized(ctx: Context, d: dict, main: Curves, left: float, weight_decay: float,
                   dropout: bool) -> Curves | Skipped | None:
    """The same run without weight decay and dropout, for as many epochs as the budget allows
    (compared epoch by epoch), when the model is regularised and its train loss stays high."""
    if not (weight_decay > 0 or dropout):
        return None
    tr = main.train_loss
    if main.nonfinite is not None or not tr:
        return Skipped(skipped="the short run did not finish an epoch")
    floor = d.get("loss_floor", 0.0)  # above 0 with label smoothing
    if tr[-1] <= floor + VARIANT_TRIGGER * (math.log(max(2, d["classes"])) - floor):
        return Skipped(skipped=f"the train loss is already low ({tr[-1]:.2f})")
    epochs = min(main.epochs, int(left / _epoch_s(d, main.augmented)))
    if epochs < SHORT_MIN_EPOCHS:
        return Skipped(skipped=f"no budget left for {SHORT_MIN_EPOCHS} more epochs "
                               "(raise --budget)")
    return _fit(ctx, d, epochs, ctx.budget.deadline(), augment=main.augmented,
                regularize=False, schedule_epochs=main.planned_epochs)[0]  # the main run's LRs


@probe("short_run", min_s=5.0, share=SHARE["short_run"], needs=("training_data",))
def short_run(ctx: Context, probes: Probes) -> ShortRun:
    """A short training run at the config's LR and augmentation; the final model is kept
    (`model`, not in the JSON) for the temporal probes."""
    d = probes.get("training_data")
    allowance = ctx.budget.allowance("short_run")
    augment = not d["cached"]  # stage 1 trains on the unaugmented view of cached features
    epochs = _plan_epochs(ctx, d, allowance, augment)
    main, trained, last_inputs = _fit(ctx, d, epochs, ctx.budget.deadline(), augment=augment,
                                      regularize=True)
    model = base_model(ctx)
    wd = max(g.get("weight_decay", 0.0) for g in _optimizer(ctx, model).param_groups)
    dropout = _has_dropout(model)
    gap = (_augmentation_gap(ctx, d, trained, last_inputs)
           if main.nonfinite is None and main.epochs else None)
    epoch_s = _epoch_s(d, augment)
    variant = _unregularized(ctx, d, main, allowance - main.epochs * epoch_s, wd, dropout)
    ctx.budget.charge("short_run", epoch_s * (
        main.epochs + (variant.epochs if isinstance(variant, Curves) else 0)))
    return ShortRun(
        **vars(main), classes=d["classes"], train_clips=d["train_clips"],
        val_clips=d["val_clips"], val_counts=d["val_counts"],
        steps_per_epoch=len(_batches(d["train_clips"], d["batch_size"], 0)),
        config_steps=_config_steps(ctx, d), weight_decay=wd, dropout=dropout,
        augmentation_gap=gap,
        no_regularization=variant,
        model=trained)
