"""Training checks (DESIGN §4, area "training"): can the model train at all (a non-finite
loss, exploding or vanishing gradients, dead or saturated units, a batch it cannot fit), the
learning rate, the short run's curves and predictions, regularisation, and classes left
unweighted.

Pure functions of the training probes (`lr_range`, `overfit_batch`, `grad_stats`,
`short_run`: typed results, `probes/results.py`), of `run_record` (`probes/run.py`) for a run
that already failed, and of `dataset` for the class weighting. Losses are compared with ln K
(the loss of a uniform guess over K classes), so one threshold serves any number of classes.
`effect` is the share of ln K that would move if the finding were fixed (about 0..2;
nan-loss, which blocks everything, is 3).

Where the thresholds come from: FIELD-NOTES (AUTOTRAINER, DeepDiagnosis, fastai) and runs on
the synthetic demo data (8 classes, 40 clips each, 64 px; `demo_config()` healthy, and with
`--lr 5`, `--lr 1e-7`, `--epochs 1`, `--head meanpool`, extreme augmentation planted), plus
tiny frozen-backbone runs for the cheap plants. The numbers measured are quoted beside each
constant. Healthy demo, 8-epoch short run: train loss 2.11 -> 0.91, val 2.10 -> 0.96, every
class predicted, one batch fit in 7 steps, first/last gradient ratio 0.5-1.1, 48 % of ReLU
outputs zero: no finding at all.

A short CPU run does not converge, so what it cannot show yet (underfitting, a collapse early
in training) is info; warnings need a long enough run or a second measurement that agrees
(the LR range test with the short run or the one-batch test).
"""

from __future__ import annotations

import math

from clipdoctor.doctor.checks.common import (HIGH_LOSS, IMBALANCE_WARN, WEIGHTED, get,
                                               imbalance, lnk, skip_if_input_ignored,
                                               skip_unless)
from clipdoctor.doctor.findings import Finding
from clipdoctor.doctor.probes import Probes, ProbeSkipped
from clipdoctor.doctor.probes.results import Curves, LRRange, OverfitBatch, ShortRun
from clipdoctor.doctor.registry import check

# -- gradients (AUTOTRAINER, FIELD-NOTES) ------------------------------------------------------
EXPLODE_RATIO = 70.0  # ||g_first|| / ||g_last|| above 70 (healthy demo: 0.5-1.1)
EXPLODE_GROWTH = 100.0  # total gradient norm grew 100x over a few steps (healthy: < 2x)
VANISH_RATIO = 1e-3  # ||g_first|| / ||g_last|| below 1e-3 ...
VANISH_NORM = 1e-4  # ... and ||g_first|| below 1e-4 (healthy first layer: ~0.2-0.6)
VANISH_MEAN = 1e-7  # DeepDiagnosis: mean |g| of the first layer below 1e-7
# -- activations (DeepDiagnosis; AUTOTRAINER's dying ReLU) --------------------------------------
DEAD_RELU = 0.7  # >= 70 % of ReLU outputs exactly zero (healthy demo: mean 0.48, max 0.53)
DEAD_CHANNELS = 0.5  # >= 50 % of ReLU channels zero for every input of a batch (healthy: 0)
SATURATED = 0.5  # > 50 % of tanh / sigmoid inputs with |x| >= 5 (healthy LSTM gates: 0)
# -- overfitting one batch ---------------------------------------------------------------------
OVERFIT_DECISIVE_STEPS = 100  # fewer steps (small budget) cannot rule the model out
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
UNDERFIT_WARN_STEPS = 300  # a run this long that stays at a uniform guess is not just short
OVERFIT_RISE = 1.2  # val loss 20 % above its best epoch's ...
OVERFIT_MIN_RISE = 0.1  # ... by at least 0.1 ln K, while the train loss kept falling
OVERFIT_GAP = 0.3  # and val - train above 0.3 ln K at the end
MIN_VAL_CLIPS = 16  # fewer validation clips: curves too noisy for a warning
FALLING = 0.1  # still falling: the loss fell 10 % more after the configured run would stop ...
FALLING_WARN = 0.3  # ... a warning when it fell by 30 %. The short run follows train's schedule
# for its own (longer) length: where the configured run has decayed to its lowest LR the short
# run's is still high, so it falls further anyway, and a bar above FALLING is needed. Measured
# drops: frozen tiny head (test_training_checks, 64 px) with --epochs 1: 39 % (at chance, 0.69,
# where the configured run stops; 0.42 after 34 epochs); at a constant LR, before the short run
# followed train's schedule (the bar was 0.4 then): demo with --epochs 1: 49 %; that frozen head
# with --epochs 1: 96 %; frozen random features: 10 %
COLLAPSE_SHARE = 0.9  # one class gets >= 90 % of the predictions (brief; five-video #130)
COLLAPSE_EXCESS = 0.3  # ... at least 30 points more than its true share of the val clips
COLLAPSE_MIN_STEPS = 100  # early in training a healthy model predicts one class too: the demo
# starts to separate classes after ~50 steps and predicts all 8 classes by 128. With fewer steps
# the check is skipped ("needs 100 optimizer steps, the budget allowed M"), never reported
CURVES_MIN_STEPS = 50  # the curves' verdicts (underfitting above all) before the demo starts to
# separate its classes (~50 steps) describe every model, healthy or not
# The other checks of the short run declare no minimum: a non-finite loss (nan-loss) or a
# divergence (lr-too-high) is evidence at any step, lr-too-low's "flat" needs MIN_EPOCHS and a
# range test that agrees, and over-regularized compares two runs of equal length
# -- regularisation --------------------------------------------------------------------------
REG_RATIO = 0.5  # without weight decay / dropout the train loss halves ...
REG_MIN_DROP = 0.2  # ... and drops by at least 0.2 ln K


def _fmt(lr: float | None) -> str:
    return "n/a" if lr is None else f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


# ==== nan-loss ================================================================================

@check("nan-loss", order=60, requires=("run_record", "grad_stats", "short_run"))
def nan_loss(probes: Probes) -> list[Finding]:
    """A non-finite loss or gradient: recorded by the diagnosed run (`--run`), or met by the
    gradient monitor or the short run at the config's LR."""
    record = get(probes, "run_record", optional=True)
    grad = get(probes, "grad_stats", optional=True)
    run = get(probes, "short_run", optional=True)
    skip_unless(probes, run_record=record, grad_stats=grad, short_run=run)
    hits = []
    failure = (record or {}).get("failure") or {}
    if failure.get("error") == "non-finite loss":
        hits.append({"probe": "run", "run": record["run"], "config_lr": record.get("config_lr"),
                     "where": f"{failure.get('phase', 'training')} loss of the run, "
                              f"{failure.get('stage')} epoch {failure.get('epoch')}",
                     **{k: failure.get(k) for k in ("stage", "phase", "epoch", "step", "batch",
                                                    "loss", "lr", "inputs_finite",
                                                    "last_good_checkpoint")}})
    if grad is not None and grad.nonfinite:
        hits.append({"probe": "grad_stats", **grad.nonfinite.to_dict(), "lr": grad.lr})
    if run is not None and run.nonfinite:
        hits.append({"probe": "short_run", **run.nonfinite.to_dict(), "lr": run.lr})
    if not hits:
        return []
    first = hits[0]
    at_start = first.get("step") == 0
    if first.get("inputs_finite") is False:
        remedy = ("The input clips hold NaN / Inf values: check the decoding and normalisation "
                  "of the data (clipdoctor info DATA).")
    elif at_start:
        remedy = ("The loss is not finite before any update: the model or the loss produces "
                  "NaN / Inf on clean inputs (log of 0, division by 0, labels outside the output "
                  "range). Check the model's forward and the loss function.")
    else:
        remedy = (f"The loss became non-finite after {first.get('step')} updates: lower the "
                  f"learning rate (--lr, now {_fmt(first.get('config_lr') or first['lr'])}) and "
                  "keep gradient clipping on (--grad-clip 1.0).")
    if first.get("last_good_checkpoint"):
        remedy += f" The run kept its last good checkpoint: {first['last_good_checkpoint']}."
    where = first.get("where", "loss")
    return [Finding("nan-loss", "error",
                    f"Loss becomes NaN / Inf at step {first.get('step')} ({where})",
                    {"occurrences": hits}, remedy, effect=3.0)]


# ==== gradients and activations ===============================================================

def _median(values: list[float]) -> float:
    v = sorted(x for x in values if math.isfinite(x))
    return v[len(v) // 2] if v else math.nan


@check("exploding-gradients", "vanishing-gradients", order=62, requires=("grad_stats",))
def gradients(probes: Probes) -> list[Finding]:
    """AUTOTRAINER's rules on the first vs last layer's gradient norm over a few steps."""
    g = probes.get("grad_stats")
    out: list[Finding] = []
    ratio = _median(g.ratios)
    norms = [n for n in g.total_norms if math.isfinite(n)]
    growth = max(norms) / norms[0] if len(norms) > 1 and norms[0] > 0 else 1.0
    bad_grad = g.nonfinite is not None and g.nonfinite.where.startswith("gradient")
    evidence = {"first_layer": g.first_layer, "last_layer": g.last_layer,
                "first_norms": g.first_norms, "last_norms": g.last_norms,
                "median_ratio": ratio, "total_norms": g.total_norms, "growth": growth,
                "lr": g.lr, "steps": g.steps,
                "watched": "trained layers only (frozen parts get no gradient by design)",
                "thresholds": {"explode_ratio": EXPLODE_RATIO, "explode_growth": EXPLODE_GROWTH,
                               "vanish_ratio": VANISH_RATIO, "vanish_norm": VANISH_NORM}}
    if bad_grad or growth >= EXPLODE_GROWTH or ratio > EXPLODE_RATIO:
        severity = "error" if bad_grad or growth >= EXPLODE_GROWTH else "warning"
        what = ("a gradient became NaN / Inf" if bad_grad else
                f"gradient norms grew {growth:.0f}x in {len(norms)} steps"
                if growth >= EXPLODE_GROWTH else
                f"first-layer gradients are {ratio:.0f}x the last layer's")
        out.append(Finding(
            "exploding-gradients", severity, f"Gradients explode: {what}",
            {**evidence, "nonfinite": g.nonfinite and g.nonfinite.to_dict()},
            f"Lower the learning rate (--lr, now {_fmt(g.lr)}) and clip gradients "
            "(--grad-clip 1.0); normalisation layers in the model keep activations bounded.",
            effect=1.0 if severity == "error" else 0.5))
    # at initialisation AND over the steps: a first layer silenced later by saturation that a
    # huge LR caused is that LR's doing (measured: --lr 5 zeroes it after one step)
    first = _median(g.first_norms)
    first0 = g.first_norms[0] if g.first_norms else math.nan
    ratio0 = g.ratios[0] if g.ratios else math.nan
    mean_abs = g.first_mean_abs_grad
    tiny = first0 < VANISH_NORM and (
        (ratio < VANISH_RATIO and first < VANISH_NORM and ratio0 < VANISH_RATIO)
        or (mean_abs is not None and mean_abs < VANISH_MEAN))
    if tiny and not bad_grad:
        out.append(Finding(
            "vanishing-gradients", "warning",
            f"Early layers get almost no gradient: ||g_first|| {first:.1e}, "
            f"{ratio:.1e}x the last layer's",
            {**evidence, "first_mean_abs_grad": mean_abs, "vanish_mean": VANISH_MEAN},
            "Keep gradients flowing to the first layers: ReLU / GELU instead of sigmoid / tanh "
            "stacks, normalisation layers, residual connections; with the built-in model use a "
            "pretrained backbone (--pretrained) and keep it frozen (--freeze-backbone).",
            effect=0.5))
    return out


@check("dead-units", order=63, requires=("grad_stats",))
def dead_units(probes: Probes) -> list[Finding]:
    """DeepDiagnosis: most ReLU outputs zero, or most tanh / sigmoid inputs saturated."""
    g = probes.get("grad_stats")
    acts = g.activations.final or g.activations.init
    if acts is None:
        return []
    zero = acts.relu_zero_share_mean
    dead = acts.relu_dead_channel_share
    sat = acts.saturation_share_max
    evidence = {k: v for k, v in acts.to_dict().items() if not k.endswith("per_layer")}
    evidence.update(thresholds={"relu_zero_share": DEAD_RELU, "dead_channels": DEAD_CHANNELS,
                                "saturated": SATURATED}, lr=g.lr, steps=g.steps,
                    watched="units outside frozen parts")
    relu_dead = zero is not None and (zero >= DEAD_RELU or dead >= DEAD_CHANNELS)
    saturated = sat is not None and sat > SATURATED
    if not (relu_dead or saturated):
        return []
    if relu_dead:
        title = (f"{zero:.0%} of ReLU outputs are zero ({dead:.0%} of channels never fire) "
                 f"after {g.steps} steps")
        share = max(zero, dead)
    else:
        title = (f"{sat:.0%} of the inputs of {acts.saturation_worst_layer} are saturated "
                 "(|x| >= 5)")
        share = sat
    evidence["per_layer"] = {**acts.relu_per_layer, **acts.saturation_per_layer}
    return [Finding(
        "dead-units", "warning", title, evidence,
        f"Lower the learning rate (--lr, now {_fmt(g.lr)}); check the initialisation and "
        "input scale (normalised inputs, no large biases); prefer GELU / LeakyReLU over ReLU "
        "and normalise before tanh / sigmoid.",
        effect=share)]


# ==== one batch ===============================================================================

@check("cannot-overfit-batch", order=65, requires=("overfit_batch",))
def cannot_overfit_batch(probes: Probes) -> list[Finding]:
    """Karpathy: a model that cannot drive a handful of clips to ~0 loss has a bug. A failure
    at the config's LR that the range test's LR fixes is an LR problem (see lr checks)."""
    o = probes.get("overfit_batch")
    runs = o.runs()
    if any(r.reached for r in runs):
        return []
    steps = max(r.steps for r in runs)
    best = min((r.min_loss for r in runs if math.isfinite(r.min_loss)), default=math.nan)
    evidence = {"clips": o.clips, "classes_in_batch": o.classes_in_batch,
                "runs": [{k: getattr(r, k) for k in ("lr", "steps", "initial_loss", "final_loss",
                                                     "min_loss", "target", "nonfinite_step")}
                         for r in runs],
                "near_zero_frac": o.near_zero_frac, "decisive_steps": OVERFIT_DECISIVE_STEPS}
    init = o.initial_loss if math.isfinite(o.initial_loss) else math.nan
    severity = "error" if steps >= OVERFIT_DECISIVE_STEPS else "info"
    effect = best / init if init and math.isfinite(best) and math.isfinite(init) else 1.0
    lrs = " and ".join(_fmt(r.lr) for r in runs)
    lr_note = ("" if len(runs) > 1 else
               " No second LR could be tried (no LR range test): rule out --lr first.")
    return [Finding(
        "cannot-overfit-batch", severity,
        f"{o.clips} clips cannot be fitted: loss {init:.2f} -> {best:.2f} in {steps} steps "
        f"(LR {lrs})" + ("" if severity == "error" else "; too few steps to be sure"),
        evidence,
        "Find the bug before training longer: check that the output depends on the input (no "
        "detached or constant branch), that labels match the clips, that the output width and "
        "loss fit the labels; then try the built-in model (--head bilstm --pool grid) on the "
        "same data. Raise --budget if the run was cut short." + lr_note,
        effect=min(2.0, effect))]


# ==== learning rate ===========================================================================

def _blowup_lr(rng: LRRange) -> float | None:
    """The sweep's first LR where the smoothed loss is BLOWUP x above where it began. (Not the
    sweep's minimum: on the demo the loss moves 0.3 % before it rises, so where exactly the
    minimum falls is noise.)"""
    losses, lrs = rng.losses, rng.lrs
    if not losses:
        return None
    return next((lr for lr, v in zip(lrs, losses) if v > BLOWUP * losses[0]), None)


def _diverged(run: ShortRun) -> bool:
    """The short run's last epoch ends above DIVERGE_FACTOR x its first step's loss."""
    return bool(run.train_loss and run.step_losses
                and run.train_loss[-1] > DIVERGE_FACTOR * run.step_losses[0])


def _short_run_shape(run: ShortRun | None) -> dict:
    """Diverged / flat flags of the short run (empty when it is missing or too short)."""
    if run is None or not run.step_losses:
        return {}
    first = run.step_losses[0]
    if run.nonfinite:
        return {"first_loss": first, "diverged": True, "flat": False, "nonfinite": True}
    if run.epochs < 1:
        return {}
    tr = run.train_loss
    return {"first_loss": first, "last_epoch_loss": tr[-1], "best_epoch_loss": min(tr),
            "epochs": run.epochs, "diverged": tr[-1] > DIVERGE_FACTOR * first,
            "flat": run.epochs >= MIN_EPOCHS and (first - min(tr)) / first < FLAT_DROP}


def _overfit_lr_hint(o: OverfitBatch | None) -> str | None:
    """'lower' / 'higher' when one batch failed at the config's LR but fit at the range
    test's LR, which is lower / higher."""
    if o is None or o.reached or o.retry is None or not o.retry.reached:
        return None
    return "lower" if o.retry.lr < o.lr else "higher"


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


def _lr_evidence(lr: float, rng: LRRange | None, blowup: float | None, shape: dict,
                 o: OverfitBatch | None) -> dict:
    retry = o.retry if o is not None else None
    return {"config_lr": lr, "range_suggestion": rng.suggestion if rng else None,
            "range_min_loss_lr": rng.min_loss_lr if rng else None, "range_blowup_lr": blowup,
            "short_run": shape,
            "overfit_batch": None if o is None else {
                "config_lr_reached": o.reached,
                "retry": {"lr": retry.lr, "reached": retry.reached,
                          "final_loss": retry.final_loss} if retry else None},
            "thresholds": {"lr_factor": LR_FACTOR, "blowup": BLOWUP,
                           "diverge_factor": DIVERGE_FACTOR, "flat_drop": FLAT_DROP}}


@check("lr-too-high", "lr-too-low", order=70,
       requires=("lr_range", "short_run", "overfit_batch"))
def learning_rate(probes: Probes) -> list[Finding]:
    """The LR range test places the config's LR; the short run and the one-batch test confirm.
    (The range test's valley is a heuristic: on the healthy demo it sits 7x below the LR that
    trains well, so range evidence alone is info.)"""
    rng = get(probes, "lr_range", optional=True)
    run = get(probes, "short_run", optional=True)
    o = get(probes, "overfit_batch", optional=True)
    skip_unless(probes, lr_range=rng, short_run=run)
    lr = rng.config_lr if rng else run.lr
    shape, hint = _short_run_shape(run), _overfit_lr_hint(o)
    sug = (rng.suggestion if rng else None) or (o.retry.lr if o and o.retry else None)
    low_lr = rng.min_loss_lr if rng else None
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


# ==== the short run's curves ==================================================================

def _overfitting(run: ShortRun, ln_k: float) -> Finding | None:
    """Validation loss rose well above its best epoch while the train loss kept falling."""
    tr, va = run.train_loss, run.val_loss
    best = va.index(min(va))
    if best == len(va) - 1:
        return None
    rise, gap = va[-1] - va[best], va[-1] - tr[-1]
    if not (va[-1] >= OVERFIT_RISE * va[best] and rise >= OVERFIT_MIN_RISE * ln_k
            and tr[-1] < tr[best] and gap >= OVERFIT_GAP * ln_k):
        return None
    severity = "warning" if run.val_clips >= MIN_VAL_CLIPS else "info"
    return Finding(
        "overfitting", severity,
        f"Validation loss rose {va[best]:.2f} -> {va[-1]:.2f} after epoch {best + 1} while train "
        f"loss fell to {tr[-1]:.2f}",
        {"train_loss": tr, "val_loss": va, "best_val_epoch": best + 1,
         "train_clips": run.train_clips, "val_clips": run.val_clips,
         "thresholds": {"rise": OVERFIT_RISE, "min_rise_lnk": OVERFIT_MIN_RISE,
                        "gap_lnk": OVERFIT_GAP, "min_val_clips": MIN_VAL_CLIPS}},
        "Regularise or add data: keep early stopping (--patience), stronger weight decay "
        "(--weight-decay 0.05), dropout (--dropout 0.3), a frozen pretrained backbone "
        "(--freeze-backbone), more clips per class.",
        effect=min(2.0, rise / ln_k))


def _underfitting(run: ShortRun, ln_k: float) -> Finding | None:
    """Train and validation loss both still at a uniform guess (>= 0.9 ln K) at the end."""
    tr, va = run.train_loss, run.val_loss
    if min(tr[-2:]) < HIGH_LOSS * ln_k or min(va[-2:]) < HIGH_LOSS * ln_k:
        return None
    # a short CPU run of a healthy model may not have started to learn: info unless it was long
    severity = "warning" if run.steps >= UNDERFIT_WARN_STEPS else "info"
    return Finding(
        "underfitting", severity,
        f"Train and validation loss stay near a uniform guess ({tr[-1]:.2f} / {va[-1]:.2f}, "
        f"ln K = {ln_k:.2f}) after {run.steps} steps",
        {"train_loss": tr, "val_loss": va, "ln_k": ln_k, "steps": run.steps,
         "thresholds": {"high_loss_lnk": HIGH_LOSS, "warn_steps": UNDERFIT_WARN_STEPS}},
        "Let the model fit: check the LR findings first (--lr), then capacity (--hidden 256, "
        "--proj-dim 256, --trainable-blocks 1 with --finetune-epochs) and regularisation "
        "(--weight-decay, --dropout); train longer (--epochs).",
        effect=min(2.0, va[-1] / ln_k) * (1.0 if severity == "warning" else 0.2))


def _not_converged(run: ShortRun) -> Finding | None:
    """The configured training would stop while the short run's loss still falls clearly."""
    cfg_steps, per_epoch = run.config_steps, run.steps_per_epoch
    if not cfg_steps or not per_epoch:
        return None
    stop = math.ceil(cfg_steps / per_epoch) - 1  # short-run epoch where the config stops
    tr = run.train_loss
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
        {"config_steps": cfg_steps, "short_run_steps": run.steps, "train_loss": tr,
         "loss_at_config_end": tr[stop], "later_best": later, "drop": drop,
         "thresholds": {"falling": FALLING, "falling_warn": FALLING_WARN}},
        "Train longer (--epochs, e.g. double it) or with a higher peak LR and a schedule that "
        "ends low (--schedule cosine).",
        effect=min(2.0, drop))


@check("overfitting", "underfitting", "not-converged", order=75,
       requires=("short_run", "input_dependence"), min_steps=CURVES_MIN_STEPS,
       unless=skip_if_input_ignored)
def fit_curves(probes: Probes) -> list[Finding]:
    """The short run's train / validation curves (of a model whose output depends on its
    input: a constant output's curves are output-ignores-input's consequence)."""
    run = probes.get("short_run")
    if run.nonfinite or run.epochs < MIN_EPOCHS or _diverged(run):
        return []  # a diverged run says nothing about fitting: the LR findings cover it
    ln_k = lnk(run.classes)
    return [f for f in (_overfitting(run, ln_k), _underfitting(run, ln_k), _not_converged(run))
            if f]


@check("prediction-collapse", order=76, requires=("short_run", "input_dependence", "dataset"),
       min_steps=COLLAPSE_MIN_STEPS, unless=skip_if_input_ignored)
def prediction_collapse(probes: Probes) -> list[Finding]:
    """One class takes (almost) all validation predictions of the short-run model (trained
    COLLAPSE_MIN_STEPS steps at least; a model that ignores its input predicts one class by
    construction: output-ignores-input says so)."""
    run = probes.get("short_run")
    counts, true = run.val_pred_counts, run.val_counts
    if not counts or run.epochs < 1 or _diverged(run):
        return []
    n, k = sum(counts), run.classes
    top = counts.index(max(counts))
    share, true_share = counts[top] / n, true[top] / max(1, sum(true))
    flat = min(run.train_loss) >= HIGH_LOSS * lnk(k)
    if share < COLLAPSE_SHARE or share - true_share < COLLAPSE_EXCESS or (k < 3 and not flat):
        return []
    sure = (run.epochs >= MIN_EPOCHS and run.val_clips >= MIN_VAL_CLIPS
            and run.steps >= COLLAPSE_MIN_STEPS)
    return [Finding(
        "prediction-collapse", "warning" if sure else "info",
        f"{share:.0%} of validation clips are predicted as class {top} (its true share "
        f"{true_share:.0%})",
        {"val_pred_counts": counts, "val_counts": true, "top_class": top, "share": share,
         "true_share": true_share, "train_loss": run.train_loss, "loss_flat_at_ln_k": flat,
         "steps": run.steps, "thresholds": {"share": COLLAPSE_SHARE, "excess": COLLAPSE_EXCESS,
                                                "min_steps": COLLAPSE_MIN_STEPS}},
        _collapse_remedy(get(probes, "dataset", optional=True) or {}),
        effect=0.5 * (share - true_share))]


def _collapse_remedy(d: dict) -> str:
    """What to do about a collapse: weight the classes (as this run can: its config or its
    loss) unless they already are, check the LR and the labels."""
    rest = ("check the LR findings and that labels are right; a loss flat at ln K means the "
            "model outputs the class prior")
    weighting = d.get("class_weighting", "none")
    if weighting in WEIGHTED:
        return (f"The classes are already weighted ({weighting}), so weighting is not the "
                f"cause: {rest}.")
    if d.get("weighting_source") == "config":
        return f"Weight the classes (--class-weighting balanced), {rest}."
    return ("Weight the classes (nn.CrossEntropyLoss(weight=n / (k * counts)) or a "
            f"WeightedRandomSampler), {rest}.")


# ==== regularisation and class weighting ======================================================

@check("over-regularized", order=78, requires=("short_run",))
def over_regularized(probes: Probes) -> list[Finding]:
    """The same short run without weight decay / dropout reaches a far lower train loss at the
    same epoch. (Fitting one batch is no test: dropout 0.9 with weight decay 1 still fits 8
    demo clips, in 22 steps instead of 7.)"""
    run = probes.get("short_run")
    v = run.no_regularization
    if not isinstance(v, Curves) or not v.epochs or not run.train_loss:
        return []
    ln_k = lnk(run.classes)
    e = min(v.epochs, run.epochs)
    with_reg, without = run.train_loss[e - 1], v.train_loss[e - 1]
    if without > REG_RATIO * with_reg or with_reg - without < REG_MIN_DROP * ln_k:
        return []
    return [Finding(
        "over-regularized", "warning",
        f"Without weight decay / dropout the train loss reaches {without:.2f} instead of "
        f"{with_reg:.2f} after {e} epochs",
        {"train_loss": run.train_loss[:e], "train_loss_unregularized": v.train_loss[:e],
         "val_loss": run.val_loss[:e], "val_loss_unregularized": v.val_loss[:e],
         "weight_decay": run.weight_decay, "dropout": run.dropout,
         "thresholds": {"ratio": REG_RATIO, "min_drop_lnk": REG_MIN_DROP}},
        f"Regularise less: --weight-decay 0.01 (now {run.weight_decay:g}) and --dropout 0.2 "
        "or lower.",
        effect=min(2.0, (with_reg - without) / ln_k))]


@check("class-weights-unused", order=10, requires=("dataset", "keras_graph"))
def class_weights(probes: Probes) -> list[Finding]:
    """Imbalanced classes while neither the loss nor the sampler weights them. A user loss
    that is not a (weighted or plain) cross-entropy is not guessed at: the check is skipped.
    A Keras model's file holds no class weights (Keras takes them in fit, not compile)."""
    d = probes.get("dataset")
    weighting = d.get("class_weighting", "none")
    im = imbalance(d)
    if im is None or im["ratio"] < IMBALANCE_WARN or weighting in WEIGHTED:
        return []
    if weighting == "unknown":
        raise ProbeSkipped(f"the loss function '{d.get('loss')}' is not an nn.CrossEntropyLoss: "
                           "whether it weights classes is unknown")
    if get(probes, "keras_graph", optional=True) is not None:
        remedy = ("Pass class weights to fit: model.fit(..., class_weight={i: n / (k * "
                  "count_i)}) (scikit-learn's 'balanced'); Keras does not use class weights "
                  "given to compile, and a saved model does not record those given to fit.")
    elif d.get("weighting_source") == "config":
        remedy = ("Use --class-weighting balanced (scikit-learn's n / (k * count) weights in "
                  "the loss).")
    else:
        remedy = ("Give the loss class weights: nn.CrossEntropyLoss(weight=n / (k * counts)) "
                  "(scikit-learn's 'balanced'), or sample classes evenly (WeightedRandomSampler).")
    return [Finding(
        "class-weights-unused", "warning",
        f"Classes are imbalanced {im['ratio']:.1f}:1 but neither the loss nor the sampler "
        "weights them",
        {"ratio": im["ratio"], "train_counts": im["train_counts"], "class_weighting": weighting,
         "weighting_source": d.get("weighting_source"), "loss": d.get("loss"),
         "warn_at": IMBALANCE_WARN},
        remedy, effect=math.log(im["ratio"]))]
