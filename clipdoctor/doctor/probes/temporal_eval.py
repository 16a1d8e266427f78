"""The `temporal_eval` probe: the short-run model on validation clips as they are, with their
frames shuffled in time, and with one frame repeated T times (does the model use order? one
frame?), beside the two scales a shuffle's effect is judged against: the noise floor (the
same clips evaluated in another batch order; at least float32 rounding at the logits' scale)
and the change from replacing each clip by another clip."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from clipdoctor.doctor.probes import Context, Probes, ProbeSkipped, probe
from clipdoctor.doctor.probes.model_behaviour import FLOAT_REL
from clipdoctor.doctor.probes.training import SHARE, _hist, _logits, _score

DIVERGED = 1.5  # a short run ending above 1.5x its first loss diverged (checks: DIVERGE_FACTOR)


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


@probe("temporal_eval", min_s=1.0, share=SHARE["temporal_eval"],
       needs=("short_run", "training_data"))
def temporal_eval(ctx: Context, probes: Probes) -> dict:
    """The short-run model on validation clips as they are, with frames shuffled in time and
    with one frame repeated T times (first, middle and last frame; every frame when cheap)."""
    run = probes.get("short_run")
    d = probes.get("training_data")
    model = run.model
    if model is None or run.nonfinite is not None or not run.train_loss:
        raise ProbeSkipped("the short training run produced no usable model")
    if run.train_loss[-1] > DIVERGED * run.step_losses[0]:
        # measured with --lr 5: a saturated model ignores order, and that says nothing
        raise ProbeSkipped(f"the short run diverged (loss {run.step_losses[0]:.2f} -> "
                           f"{run.train_loss[-1]:.2f}): its model says nothing about time")
    x, y, cached = d["_x_val"], d["_y_val"], d["cached"]
    t = x.shape[1]
    if t < 2:
        raise ProbeSkipped("clips have a single frame: nothing temporal to evaluate")
    # a user's model runs 8 times over the clips, ours once (then only its head): an eval pass
    # costs about a third of a training step per clip
    passes = 8 if ctx.user_model else 1
    n = int(ctx.budget.allowance("temporal_eval")
            / (passes * d["step_s"] / (3 * d["batch_size"])))
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
    # the scales a shuffle's change is judged on (checks/temporal.py decides): numerical noise
    # (the same clips in reversed batch order; eval mode keeps clips independent) with float32
    # rounding at the logits' scale as its least value, and the change from other clips
    reorder = float((head(frames.flip(0)).flip(0) - normal).abs().max())
    float_floor = FLOAT_REL * float(normal.abs().max())
    replaced = float((head(frames.roll(1, 0)) - normal).abs().max())
    k = d["classes"]
    chance = max(1 / k, max(_hist(y, k)) / len(y))
    margin = 3 * math.sqrt(chance * (1 - chance) / len(y))  # 3 binomial sd at chance
    return {
        "clips": len(y), "frames": t, "chance": chance, "above_chance_margin": margin,
        "acc": acc, "loss": loss, "above_chance": acc >= chance + margin,
        "shuffled_acc": float(np.mean([a for _, a in s_scores])),
        "shuffled_loss": float(np.mean([lo for lo, _ in s_scores])),
        "max_logit_change": change, "content_logit_change": content,
        "replace_logit_change": replaced, "reorder_noise": reorder, "float_floor": float_floor,
        "noise_floor": max(reorder, float_floor),
        # how much training the judged model had (checks declare the steps they need)
        "steps": run.steps, "epochs": run.epochs, "steps_per_epoch": run.steps_per_epoch,
        "single_frame_acc": {str(p): a for p, (_, a) in single.items()},
        "best_single_frame": best, "best_single_acc": single[best][1],
        "best_single_loss": single[best][0],
    }
