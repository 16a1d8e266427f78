"""Learning checks: the learning rate, the short run's curves and predictions, regularisation
and augmentation strength.

Pure functions of the training probes (`lr_range`, `short_run`, `overfit_batch`), with losses
compared with ln K and `effect` as in `checks/training.py` (where the shared helpers and the
origin of the thresholds are described).
"""

from __future__ import annotations

import math

from clipdoctor.diagnose.checks.training import _fmt, _get, _lnk, _skip_unless
from clipdoctor.diagnose.findings import Finding
from clipdoctor.diagnose.probes import Probes
from clipdoctor.diagnose.registry import check

# -- learning rate -----------------------------------------------------------------------------
LR_FACTOR = 10.0  # "well below": an order of magnitude under the range test (brief, fastai)
BLOWUP = 1.25  # the sweep's smoothed loss 25 % above its start: past the usable LRs (fastai
# stops at 4x; measured on the demo: flat at 2.07 up to ~1e-2, then rising)
DIVERGE_FACTOR = 1.5  # short run: last epoch's train loss above 1.5x the first step's = diverged
DIVERGE_HARD = 5.0  # ... above 5x: diverged beyond doubt, whatever a short (lagging) sweep says
# (`demo --broken`, lr 3: 2.1 -> 96.9 while a 31-step sweep's smoothed loss rose only at 5.4)
FLAT_DROP = 0.05  # short run: best epoch loss less than 5 % under the first step = barely moves
# -- the short run's curves --------------------------------------------------------------------
MIN_EPOCHS = 3  # fewer epochs show no trend
HIGH_LOSS = 0.9  # train and val loss above 0.9 ln K: still at a uniform guess
UNDERFIT_WARN_STEPS = 300  # a run this long that stays at a uniform guess is not just short
OVERFIT_RISE = 1.2  # val loss 20 % above its best epoch's ...
OVERFIT_MIN_RISE = 0.1  # ... by at least 0.1 ln K, while the train loss kept falling
OVERFIT_GAP = 0.3  # and val - train above 0.3 ln K at the end
MIN_VAL_CLIPS = 16  # fewer validation clips: curves too noisy for a warning
FALLING = 0.1  # still falling: the loss fell 10 % more after the configured run would stop ...
FALLING_WARN = 0.4  # ... a warning only when it fell by 40 %: our short run keeps a constant LR
# where the configured run decays it, so it falls further anyway (measured drops: demo with
# --epochs 1: 49 %; frozen tiny head with --epochs 1: 96 %; frozen random features: 10 %)
COLLAPSE_SHARE = 0.9  # one class gets >= 90 % of the predictions (brief; five-video #130)
COLLAPSE_EXCESS = 0.3  # ... at least 30 points more than its true share of the val clips
COLLAPSE_MIN_STEPS = 100  # early in training a healthy model predicts one class too: the demo
# starts to separate classes after ~50 steps and predicts all 8 classes by 128
# -- regularisation and augmentation ------------------------------------------------------------
REG_RATIO = 0.5  # without weight decay / dropout the train loss halves ...
REG_MIN_DROP = 0.2  # ... and drops by at least 0.2 ln K
AUG_RATIO = 1.5  # augmented loss above 1.5x the clean loss (brief) ...
AUG_MIN_GAP = 0.25  # ... and above it by at least 0.25 ln K (small losses make wild ratios)
AUG_MEMORISED_GAP = 0.5  # a fitted batch: augmented draws 0.5 ln K worse (demo default: +0.001,
# extreme scale 0.05-0.1 / 45 degrees / hue 0.5: +1.4..2.1 ln K)


def _blowup_lr(rng: dict) -> float | None:
    """The sweep's first LR where the smoothed loss is BLOWUP x above where it began. (Not the
    sweep's minimum: on the demo the loss moves 0.3 % before it rises, so where exactly the
    minimum falls is noise.)"""
    losses, lrs = rng["losses"], rng["lrs"]
    if not losses:
        return None
    return next((lr for lr, v in zip(lrs, losses) if v > BLOWUP * losses[0]), None)


def _diverged(run: dict) -> bool:
    """The short run's last epoch ends above DIVERGE_FACTOR x its first step's loss."""
    return bool(run["train_loss"] and run["step_losses"]
                and run["train_loss"][-1] > DIVERGE_FACTOR * run["step_losses"][0])


def _short_run_shape(run: dict | None) -> dict:
    """Diverged / flat flags of the short run (empty when it is missing or too short)."""
    if run is None or not run["step_losses"]:
        return {}
    first = run["step_losses"][0]
    if run["nonfinite"]:
        return {"first_loss": first, "diverged": True, "flat": False, "nonfinite": True}
    if run["epochs"] < 1:
        return {}
    tr = run["train_loss"]
    return {"first_loss": first, "last_epoch_loss": tr[-1], "best_epoch_loss": min(tr),
            "epochs": run["epochs"], "diverged": tr[-1] > DIVERGE_FACTOR * first,
            "flat": run["epochs"] >= MIN_EPOCHS and (first - min(tr)) / first < FLAT_DROP}


def _overfit_lr_hint(o: dict | None) -> str | None:
    """'lower' / 'higher' when one batch failed at the config's LR but fit at the range
    test's LR, which is lower / higher."""
    if o is None or o["reached"] or not o.get("retry", {}).get("reached"):
        return None
    return "lower" if o["retry"]["lr"] < o["lr"] else "higher"


def _high_severity(shape: dict, high: bool, hint: str | None, has_range: bool) -> str | None:
    """lr-too-high: a diverged short run is an error when the range test (or the one-batch
    retry) agrees, or when there is no range test to disagree; range evidence with a stuck
    run is a warning; range evidence alone (a heuristic) is info."""
    if shape.get("diverged") and (high or hint == "lower" or not has_range
                                  or shape.get("last_epoch_loss", 0) > DIVERGE_HARD
                                  * shape.get("first_loss", float("inf"))):
        return "error"
    if (high and (shape.get("flat") or shape.get("diverged") or hint == "lower")) or (
            hint == "lower" and shape.get("flat")):
        return "warning"
    return "info" if high else None


def _low_severity(shape: dict, low: bool, hint: str | None) -> str | None:
    """lr-too-low: one batch that cannot be fit at this LR but can at the range test's is the
    strong sign (error with a flat short run); a flat run with range evidence is a warning;
    range evidence alone is info."""
    if hint == "higher":
        return "error" if shape.get("flat") else "warning"
    if low:
        return "warning" if shape.get("flat") else "info"
    return None


def _lr_evidence(lr: float, rng: dict | None, blowup: float | None, shape: dict,
                 o: dict | None) -> dict:
    retry = (o or {}).get("retry")
    return {"config_lr": lr, "range_suggestion": rng and rng["suggestion"],
            "range_min_loss_lr": rng and rng["min_loss_lr"], "range_blowup_lr": blowup,
            "short_run": shape,
            "overfit_batch": None if o is None else {
                "config_lr_reached": o["reached"],
                "retry": {k: retry[k] for k in ("lr", "reached", "final_loss")} if retry else None},
            "thresholds": {"lr_factor": LR_FACTOR, "blowup": BLOWUP,
                           "diverge_factor": DIVERGE_FACTOR, "flat_drop": FLAT_DROP}}


@check("lr-too-high", "lr-too-low", order=70)
def learning_rate(probes: Probes) -> list[Finding]:
    """The LR range test places the config's LR; the short run and the one-batch test confirm.
    (The range test's valley is a heuristic: on the healthy demo it sits 7x below the LR that
    trains well, so range evidence alone is info.)"""
    rng, run, o = _get(probes, "lr_range"), _get(probes, "short_run"), _get(probes, "overfit_batch")
    _skip_unless(probes, ("lr_range", rng), ("short_run", run))
    lr = rng["config_lr"] if rng else run["lr"]
    shape, hint = _short_run_shape(run), _overfit_lr_hint(o)
    sug = (rng or {}).get("suggestion") or (o or {}).get("retry", {}).get("lr")
    low_lr = (rng or {}).get("min_loss_lr")
    blowup = _blowup_lr(rng) if rng else None
    low = bool(sug and low_lr and sug >= LR_FACTOR * lr and low_lr >= LR_FACTOR * lr)
    evidence = _lr_evidence(lr, rng, blowup, shape, o)
    out: list[Finding] = []
    severity = _high_severity(shape, blowup is not None and lr >= blowup, hint, rng is not None)
    if severity:
        what = ("the short run's loss is not finite" if shape.get("nonfinite") else
                f"the short run's loss went {shape['first_loss']:.2f} -> "
                f"{shape['last_epoch_loss']:.2f}" if shape.get("diverged") else
                f"the LR range test's loss rises {BLOWUP:.2f}x from {_fmt(blowup)}")
        to = (f"to about {_fmt(sug)} (--lr {_fmt(sug)}, the LR range test's valley)" if sug
              else "(--lr)")
        out.append(Finding(
            "lr-too-high", severity, f"Learning rate {_fmt(lr)} is too high: {what}", evidence,
            f"Lower the learning rate {to}; keep a warm-up (--warmup-epochs 1) and gradient "
            "clipping (--grad-clip 1.0).",
            effect={"error": 2.0, "warning": 0.7, "info": 0.1}[severity]))
    severity = _low_severity(shape, low, hint)
    if severity:
        why = []
        if hint == "higher":
            why.append("it cannot fit one batch that the range test's LR fits")
        if shape.get("flat"):
            why.append(f"the loss barely moved ({shape['first_loss']:.2f} -> "
                       f"{shape['best_epoch_loss']:.2f})")
        out.append(Finding(
            "lr-too-low", severity,
            f"Learning rate {_fmt(lr)} is {sug / lr:.0f}x below the LR range test's suggestion "
            f"{_fmt(sug)}" + (": " + "; ".join(why) if why else ""),
            evidence, f"Raise the learning rate to about {_fmt(sug)} (--lr {_fmt(sug)}).",
            effect={"error": 1.5, "warning": 0.7, "info": 0.1}[severity]))
    return out


# ---------------------------------------------------------------------------------------------
# the short run's curves

def _overfitting(run: dict, lnk: float) -> Finding | None:
    """Validation loss rose well above its best epoch while the train loss kept falling."""
    tr, va = run["train_loss"], run["val_loss"]
    best = va.index(min(va))
    if best == len(va) - 1:
        return None
    rise, gap = va[-1] - va[best], va[-1] - tr[-1]
    if not (va[-1] >= OVERFIT_RISE * va[best] and rise >= OVERFIT_MIN_RISE * lnk
            and tr[-1] < tr[best] and gap >= OVERFIT_GAP * lnk):
        return None
    severity = "warning" if run["val_clips"] >= MIN_VAL_CLIPS else "info"
    return Finding(
        "overfitting", severity,
        f"Validation loss rose {va[best]:.2f} -> {va[-1]:.2f} after epoch {best + 1} while train "
        f"loss fell to {tr[-1]:.2f}",
        {"train_loss": tr, "val_loss": va, "best_val_epoch": best + 1,
         "train_clips": run["train_clips"], "val_clips": run["val_clips"],
         "thresholds": {"rise": OVERFIT_RISE, "min_rise_lnk": OVERFIT_MIN_RISE,
                        "gap_lnk": OVERFIT_GAP, "min_val_clips": MIN_VAL_CLIPS}},
        "Regularise or add data: keep early stopping (--patience), stronger weight decay "
        "(--weight-decay 0.05), dropout (--dropout 0.3), a frozen pretrained backbone "
        "(--freeze-backbone), more clips per class.",
        effect=min(2.0, rise / lnk))


def _underfitting(run: dict, lnk: float) -> Finding | None:
    """Train and validation loss both still at a uniform guess (>= 0.9 ln K) at the end."""
    tr, va = run["train_loss"], run["val_loss"]
    if min(tr[-2:]) < HIGH_LOSS * lnk or min(va[-2:]) < HIGH_LOSS * lnk:
        return None
    # a short CPU run of a healthy model may not have started to learn: info unless it was long
    severity = "warning" if run["steps"] >= UNDERFIT_WARN_STEPS else "info"
    return Finding(
        "underfitting", severity,
        f"Train and validation loss stay near a uniform guess ({tr[-1]:.2f} / {va[-1]:.2f}, "
        f"ln K = {lnk:.2f}) after {run['steps']} steps",
        {"train_loss": tr, "val_loss": va, "ln_k": lnk, "steps": run["steps"],
         "thresholds": {"high_loss_lnk": HIGH_LOSS, "warn_steps": UNDERFIT_WARN_STEPS}},
        "Let the model fit: check the LR findings first (--lr), then capacity (--hidden 256, "
        "--proj-dim 256, --trainable-blocks 1 with --finetune-epochs) and regularisation "
        "(--weight-decay, --dropout); train longer (--epochs).",
        effect=min(2.0, va[-1] / lnk) * (1.0 if severity == "warning" else 0.2))


def _not_converged(run: dict) -> Finding | None:
    """The configured training would stop while the short run's loss still falls clearly."""
    cfg_steps, per_epoch = run.get("config_steps"), run.get("steps_per_epoch")
    if not cfg_steps or not per_epoch:
        return None
    stop = math.ceil(cfg_steps / per_epoch) - 1  # short-run epoch where the config stops
    tr = run["train_loss"]
    if stop >= len(tr) - 1:
        return None  # the short run never got past the configured length: cannot tell
    later = min(tr[stop + 1:])
    drop = (tr[stop] - later) / tr[stop]
    if drop < FALLING:
        return None
    return Finding(
        "not-converged", "warning" if drop >= FALLING_WARN else "info",
        f"The configured training ({cfg_steps} steps) stops while the loss still falls: "
        f"{tr[stop]:.2f} there, {later:.2f} {len(tr) - 1 - stop} epochs later in the short run",
        {"config_steps": cfg_steps, "short_run_steps": run["steps"], "train_loss": tr,
         "loss_at_config_end": tr[stop], "later_best": later, "drop": drop,
         "thresholds": {"falling": FALLING, "falling_warn": FALLING_WARN}},
        "Train longer (--epochs, e.g. double it) or with a higher peak LR and a schedule that "
        "ends low (--schedule cosine).",
        effect=min(2.0, drop))


@check("overfitting", "underfitting", "not-converged", order=75)
def fit_curves(probes: Probes) -> list[Finding]:
    """The short run's train / validation curves."""
    run = probes.get("short_run")
    if run["nonfinite"] or run["epochs"] < MIN_EPOCHS or _diverged(run):
        return []  # a diverged run says nothing about fitting: the LR findings cover it
    lnk = _lnk(run["classes"])
    return [f for f in (_overfitting(run, lnk), _underfitting(run, lnk), _not_converged(run)) if f]


@check("prediction-collapse", order=76)
def prediction_collapse(probes: Probes) -> list[Finding]:
    """One class takes (almost) all validation predictions of the short-run model."""
    run = probes.get("short_run")
    counts, true = run.get("val_pred_counts"), run["val_counts"]
    if not counts or run["epochs"] < 1 or _diverged(run):
        return []
    n, k = sum(counts), run["classes"]
    top = counts.index(max(counts))
    share, true_share = counts[top] / n, true[top] / max(1, sum(true))
    flat = min(run["train_loss"]) >= HIGH_LOSS * _lnk(k)
    if share < COLLAPSE_SHARE or share - true_share < COLLAPSE_EXCESS or (k < 3 and not flat):
        return []
    sure = (run["epochs"] >= MIN_EPOCHS and run["val_clips"] >= MIN_VAL_CLIPS
            and run["steps"] >= COLLAPSE_MIN_STEPS)
    return [Finding(
        "prediction-collapse", "warning" if sure else "info",
        f"{share:.0%} of validation clips are predicted as class {top} (its true share "
        f"{true_share:.0%})",
        {"val_pred_counts": counts, "val_counts": true, "top_class": top, "share": share,
         "true_share": true_share, "train_loss": run["train_loss"], "loss_flat_at_ln_k": flat,
         "steps": run["steps"], "thresholds": {"share": COLLAPSE_SHARE, "excess": COLLAPSE_EXCESS,
                                                "min_steps": COLLAPSE_MIN_STEPS}},
        "Weight the classes (--class-weighting balanced), check the LR findings (--lr) and "
        "that labels are right; a loss flat at ln K means the model outputs the class prior.",
        effect=0.5 * (share - true_share))]


# ---------------------------------------------------------------------------------------------
# regularisation and augmentation

@check("over-regularized", order=78)
def over_regularized(probes: Probes) -> list[Finding]:
    """The same short run without weight decay / dropout reaches a far lower train loss at the
    same epoch. (Fitting one batch is no test: dropout 0.9 with weight decay 1 still fits 8
    demo clips, in 22 steps instead of 7.)"""
    run = probes.get("short_run")
    v = run.get("no_regularization")
    if not v or "skipped" in v or not v.get("epochs") or not run["train_loss"]:
        return []
    lnk = _lnk(run["classes"])
    e = min(v["epochs"], run["epochs"])
    with_reg, without = run["train_loss"][e - 1], v["train_loss"][e - 1]
    if without > REG_RATIO * with_reg or with_reg - without < REG_MIN_DROP * lnk:
        return []
    return [Finding(
        "over-regularized", "warning",
        f"Without weight decay / dropout the train loss reaches {without:.2f} instead of "
        f"{with_reg:.2f} after {e} epochs",
        {"train_loss": run["train_loss"][:e], "train_loss_unregularized": v["train_loss"][:e],
         "val_loss": run["val_loss"][:e], "val_loss_unregularized": v["val_loss"][:e],
         "weight_decay": run["weight_decay"], "dropout": run["dropout"],
         "thresholds": {"ratio": REG_RATIO, "min_drop_lnk": REG_MIN_DROP}},
        f"Regularise less: --weight-decay 0.01 (now {run['weight_decay']:g}) and --dropout 0.2 "
        "or lower.",
        effect=min(2.0, (with_reg - without) / lnk))]


def _augmentation_pairs(probes: Probes) -> tuple[list[tuple[str, float, float, float]], int]:
    """(how, augmented loss, clean loss, required gap in ln K) from the probes that ran, and K."""
    o, run = _get(probes, "overfit_batch"), _get(probes, "short_run")
    _skip_unless(probes, ("overfit_batch", o), ("short_run", run))
    pairs = []
    if o is not None and o.get("augmentation") and "skipped" not in o["augmentation"]:
        a = o["augmentation"]
        pairs.append((f"model that fit {a['clips']} clips, on augmented draws of them",
                      a["augmented_loss"], a["clean_loss"], AUG_MEMORISED_GAP))
    g = (run or {}).get("augmentation_gap")
    if g and g["clean_loss"] < HIGH_LOSS * _lnk(run["classes"]):  # the model learned something
        pairs.append(("short-run model, training clips", g["augmented_loss"], g["clean_loss"],
                      AUG_MIN_GAP))
    k = run["classes"] if run is not None else probes.get("training_data")["classes"]
    return pairs, k


@check("augmentation-too-strong", order=79)
def augmentation_strength(probes: Probes) -> list[Finding]:
    """Loss on augmented clips far above the loss on the same clips unaugmented: for the model
    that fit one batch (does augmentation destroy what identifies a clip?) and for the
    short-run model trained with the augmentation."""
    pairs, k = _augmentation_pairs(probes)
    lnk = _lnk(k)
    hits = [(how, a, c) for how, a, c, need in pairs
            if a >= AUG_RATIO * c and a - c >= need * lnk]
    if not hits:
        return []
    how, a, c = max(hits, key=lambda h: h[1] - h[2])
    return [Finding(
        "augmentation-too-strong", "warning",
        f"Loss on augmented clips is {a:.2f} against {c:.2f} on the same clips unaugmented ({how})",
        {"comparisons": [{"how": h, "augmented": x, "clean": y, "min_gap_lnk": n}
                         for h, x, y, n in pairs], "ln_k": lnk, "ratio": AUG_RATIO},
        "Augment less: a larger crop area (--scale 0.6 1.0), small rotations (--degrees 5), "
        "little hue change (--hue 0.02).",
        effect=min(2.0, (a - c) / lnk))]
