"""Training probes: short, plain-PyTorch training runs on fresh models, read by the training
and temporal checks. This module holds `training_data` and what every training probe shares;
each probe that trains has a module of its own beside it:

- `training_data` (here): the clips every probe trains on (for the built-in model with a frozen
  backbone: their per-frame features, computed once), sized to the budget, and the cost of a step.
- `lr_range.py`: fastai's exponential LR sweep (1e-7 -> 10) and its "valley" suggestion.
- `overfit_batch.py`: can a tiny batch be driven to near-zero loss (Karpathy's recipe)? If so,
  how much worse is the fitted model on augmented draws of the same clips?
- `grad_stats.py`: per-layer gradient norms, zero ReLU outputs and saturated tanh / sigmoid
  inputs over a few steps at the config's LR (AUTOTRAINER, DeepDiagnosis); the first
  non-finite value.
- `short_run.py`: a few epochs at the config's LR (the built-in model: `train`'s schedule
  for a run of that length) and augmentation: loss curves, validation
  predictions, the loss on augmented vs clean clips, and the same run without weight decay /
  dropout when the budget allows and the train loss stays high.
- `temporal_eval.py`: the short-run model on validation clips as they are, with their frames
  shuffled, and with one frame repeated T times.

Every run starts from `ctx.make_model()` seeded with `ctx.seed`. The built-in model trains
with `train`'s own loss and optimizer (`ctx.loss_fn`, `ctx.make_optimizer`: class weights,
label smoothing, AdamW's parameter groups; `runner.build_context`). Sizes follow the budget: each
probe may spend its `SHARE` of it (as planned by `Budget.plan` for the checks that run) and
shrinks (fewer clips, steps or epochs) rather than overrun; its value says how much it ran.
`lr_range`, `overfit_batch`, `grad_stats` and `short_run` return typed results (`results.py`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from clipdoctor.doctor.probes import (Context, work_clock, Probes, ProbeSkipped, base_model,
                                        clip_batch, data_classes, loss_floor, pick, probe,
                                        samples)
from clipdoctor.doctor.probes.cost import (forward_flops, nominal_forward_s, nominal_seconds,
                                           step_flops)

log = logging.getLogger(__name__)

# Share of the whole diagnosis budget each probe may spend (its `share` when registered); the
# rest is for the data and model probes. Measured on the demo config (test_resnet end to end,
# 64 px): a batch-16 step takes 0.15 s on 2 cores, so 25 % of 120 s is about 10 epochs of 256
# clips.
SHARE = {"training_data": 0.10, "lr_range": 0.08, "overfit_batch": 0.08, "grad_stats": 0.03,
         "short_run": 0.25, "temporal_eval": 0.04}
TRAIN_CLIPS = 256  # training clips at a 120 s budget: 16 batches of 16 per short-run epoch
VAL_CLIPS = 96  # validation clips: accuracy to about +-0.05 (binomial sd at p = 0.5)
MAX_INPUT_BYTES = 384 * 2**20  # clips held in memory at most (both splits)
SHORT_MIN_EPOCHS = 3  # fewer epochs show no trend
SHORT_MAIN_SHARE = 0.7  # of short_run's allowance for the main run; the rest for a variant


# ---------------------------------------------------------------------------------------------
# small helpers

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
    """The run's optimiser on `model` as the user builds it (`ctx.make_optimizer(model)`: the
    parameters and groups they train); optionally without weight decay or with every group's
    LR scaled so the first group's is `lr`."""
    if not _trainable(model):
        raise ProbeSkipped("the model has no trainable parameters")
    opt = ctx.make_optimizer(model)
    if not any(g["params"] for g in opt.param_groups):
        raise ProbeSkipped("the optimizer holds none of the model's parameters")
    if lr is not None:
        ref = opt.param_groups[0]["lr"]
        for g in opt.param_groups:
            g["lr"] = g["lr"] * lr / ref
    if not weight_decay:
        for g in opt.param_groups:
            if "weight_decay" in g:
                g["weight_decay"] = 0.0
    return opt


def _fresh_model(ctx: Context) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A new model from `ctx.make_model()` seeded with `ctx.seed`, in train mode, and the
    run's optimiser on it: every probe's run starts from the same weights."""
    torch.manual_seed(ctx.seed)
    model = ctx.make_model()
    model.train()
    return model, _optimizer(ctx, model)


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
    return torch.cat([_forward(model, x[i:j], cached) for i, j in _chunks(len(x), batch_size)])


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive chunks of `size`, the last one never a batch of one (a
    BatchNorm using batch statistics raises on it, even in eval mode without running stats):
    it joins the chunk before."""
    bounds = [(i, min(i + size, n)) for i in range(0, n, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _score(logits: Tensor, y: Tensor, loss_fn: Callable) -> tuple[float, float]:
    """(loss, accuracy) of logits against labels."""
    with torch.no_grad():
        return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


def _hist(values: Tensor, k: int) -> list[int]:
    return torch.bincount(values.flatten().long(), minlength=k)[:k].tolist()


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


# ---------------------------------------------------------------------------------------------
# training_data

def _split(ctx: Context, n_train: int, n_val: int) -> tuple[list, list, bool, int]:
    """Stratified train / val samples, whether val was held out of train (no val split: a
    fifth of train), and how many training clips there are in all."""
    every = samples(ctx)  # clipdoctor's readable clips, or the user's items
    train = [s for s in every if s.split == "train"]
    val = [s for s in every if s.split == "val"]
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
        if feats and work_clock() > deadline:
            break
        x, y = clip_batch(ctx, samples[i:i + 16], seed=ctx.seed)
        feats.append(model.frozen_features(x).float())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def _time_step(ctx: Context, x: Tensor, y: Tensor, cached: bool) -> tuple[float, float]:
    """(planned, measured) seconds of one training step on (x, y) with a throwaway fresh model.

    The plan uses the counted cost (`cost.py`: the step's operations at the reference
    machine's rate), never the clock, so a busy machine gets the same plan, hence the same
    verdicts, only later. The measured time of one more step is reported beside it."""
    model, opt = _fresh_model(ctx)
    flops = step_flops(model, opt, x, y, ctx.loss_fn, lambda m, z: _forward(m, z, cached))
    started = time.perf_counter()
    _train_step(model, opt, x, y, ctx.loss_fn, cached, _clip_value(ctx))
    return nominal_seconds(flops), time.perf_counter() - started


def _feature_material(ctx: Context, train: list, val: list, allowance: float
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Frozen features of both splits; a backbone pass per clip (its counted cost, measured
    on one clip), so both lists shrink in proportion to what fits the allowance. The wall
    clock only guards a plan far off (`Budget.deadline`)."""
    model = base_model(ctx)
    model.eval()
    x, _ = clip_batch(ctx, train[:1], seed=ctx.seed)
    with torch.no_grad():
        per_clip = nominal_forward_s(forward_flops(model, lambda: model.frozen_features(x)))
    fit = allowance / per_clip / (len(train) + len(val))
    if fit < 1:
        train = train[:max(16, int(len(train) * fit))]  # prefixes stay stratified
        val = val[:max(8, int(len(val) * fit))]
    x_tr, y_tr = _features(ctx, train, ctx.budget.deadline())
    x_va, y_va = _features(ctx, val, ctx.budget.deadline())
    return x_tr, y_tr, x_va, y_va


def _clip_material(ctx: Context, train: list, val: list, bs: int
                   ) -> tuple[list, list, float, tuple[Tensor, ...]]:
    """Clips of both splits, as many training clips as SHORT_MIN_EPOCHS epochs of the short
    run's main share can cover at the measured step cost (and memory allows)."""
    x, y = clip_batch(ctx, train[:bs], seed=ctx.seed)
    per_clip = x[0].numel() * 4
    step_s, measured = _time_step(ctx, x, y, False)
    fit = ctx.budget.share("short_run") * SHORT_MAIN_SHARE * ctx.budget.seconds / (
        SHORT_MIN_EPOCHS * 1.5 * step_s / bs)
    keep = int(MAX_INPUT_BYTES * 0.75 / per_clip)
    train = train[:max(bs, min(keep, int(fit)))]
    val = val[:max(4, min(len(val), int(MAX_INPUT_BYTES * 0.25 / per_clip)))]
    return train, val, (step_s, measured), (*clip_batch(ctx, train, seed=ctx.seed),
                                *clip_batch(ctx, val, seed=ctx.seed))


@probe("training_data", min_s=2.0, share=SHARE["training_data"])
def training_data(ctx: Context, probes: Probes) -> dict:
    """The clips (or frozen features) the training probes use, and the cost of one step."""
    allowance = ctx.budget.allowance("training_data")
    n_train = ctx.budget.scale(TRAIN_CLIPS, minimum=16)
    n_val = ctx.budget.scale(VAL_CLIPS, minimum=32)  # fewer: accuracy too coarse to judge
    train, val, held_out, total = _split(ctx, n_train, n_val)
    cached = _cached(ctx)
    bs = max(2, min(ctx.config.data.batch_size, len(train)))  # never a batch of one (BatchNorm)
    if cached:
        x_tr, y_tr, x_va, y_va = _feature_material(ctx, train, val, allowance)
        train, val = train[:len(y_tr)], val[:len(y_va)]
        step_s, measured = _time_step(ctx, x_tr[:bs], y_tr[:bs], True)
    else:
        train, val, (step_s, measured), (x_tr, y_tr, x_va, y_va) = _clip_material(
            ctx, train, val, bs)
    k = len(data_classes(ctx))
    log.debug("training probes: %d train / %d val %s, %.3f s a step", len(y_tr), len(y_va),
              "feature sets" if cached else "clips", step_s)
    return {
        "cached": cached, "train_clips": len(y_tr), "val_clips": len(y_va),
        "val_held_out": held_out, "train_total": total, "classes": k, "batch_size": bs,
        "step_s": step_s, "step_s_measured": round(measured, 4),
        "loss_floor": loss_floor(ctx.loss_fn, y_tr, k),  # the loss's lowest value (smoothing)
        "input_shape": list(x_tr.shape[1:]),
        "train_counts": _hist(y_tr, k), "val_counts": _hist(y_va, k),
        "_x_train": x_tr, "_y_train": y_tr, "_x_val": x_va, "_y_val": y_va,
        "_train_samples": train, "_val_samples": val,
    }


def _fresh_run(ctx: Context, probes: Probes, name: str, steps: int, minimum: int, skip: str,
               step_cost: float = 1.0) -> tuple[dict, float, int, nn.Module,
                                                 torch.optim.Optimizer]:
    """The preamble of a probe that trains a fresh model for a number of steps: the training
    data, the probe's allowance, how many steps of `step_cost` x the measured step fit in it
    (at most `steps`), ProbeSkipped with `skip` (formatted with n, s, left) when fewer than
    `minimum` fit, then a fresh model and its optimiser -> (data, allowance, steps, model, opt)."""
    d = probes.get("training_data")
    allowance = ctx.budget.allowance(name, minimum=minimum * step_cost * d["step_s"] * 1.001)
    steps = min(steps, int(allowance / (step_cost * d["step_s"])))
    if steps < minimum:
        raise ProbeSkipped(skip.format(n=minimum, s=d["step_s"], left=allowance)
                           + " (raise --budget)")
    ctx.budget.charge(name, steps * step_cost * d["step_s"])  # the plan is what it spends
    return (d, allowance, steps, *_fresh_model(ctx))
