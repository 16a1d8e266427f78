"""Training checks that ask whether the model can train at all: a non-finite loss, exploding or
vanishing gradients, dead or saturated units, a batch it cannot fit. The learning rate and the
short run's curves are judged in `checks/learning.py`, which shares the helpers below.

Pure functions of the training probes (`clipdoctor/diagnose/probes/training.py` and its
siblings), and of `run_record` (`probes/run.py`) for a run that already failed. Losses are
compared with ln K (the loss of a uniform guess over K classes), so one threshold serves any
number of classes. `effect` is the share of ln K that would move if the finding were fixed
(about 0..2; nan-loss, which blocks everything, is 3).

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

from clipdoctor.diagnose.findings import Finding
from clipdoctor.diagnose.probes import Probes, ProbeSkipped
from clipdoctor.diagnose.registry import check

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


def _get(probes: Probes, name: str) -> dict | None:
    """A probe's value, or None when it was skipped (the check decides on what it has)."""
    try:
        return probes.get(name)
    except ProbeSkipped:
        return None


def _skip_unless(probes: Probes, *values: tuple[str, dict | None]) -> None:
    """Raise ProbeSkipped, with every probe's own reason, when none of `values` was measured."""
    if all(v is None for _, v in values):
        raise ProbeSkipped("; ".join(f"{name}: {probes.skipped.get(name, 'not measured')}"
                                     for name, _ in values))


def _lnk(k: int) -> float:
    return math.log(max(2, k))


def _fmt(lr: float | None) -> str:
    return "n/a" if lr is None else f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


# ---------------------------------------------------------------------------------------------
# nan-loss

@check("nan-loss", order=60)
def nan_loss(probes: Probes) -> list[Finding]:
    """A non-finite loss or gradient: recorded by the diagnosed run (`--run`), or met by the
    gradient monitor or the short run at the config's LR."""
    record = _get(probes, "run_record")
    grad, run = _get(probes, "grad_stats"), _get(probes, "short_run")
    _skip_unless(probes, ("run_record", record), ("grad_stats", grad), ("short_run", run))
    hits = []
    failure = (record or {}).get("failure") or {}
    if failure.get("error") == "non-finite loss":
        hits.append({"probe": "run", "run": record["run"], "config_lr": record.get("config_lr"),
                     "where": f"{failure.get('phase', 'training')} loss of the run, "
                              f"{failure.get('stage')} epoch {failure.get('epoch')}",
                     **{k: failure.get(k) for k in ("stage", "phase", "epoch", "step", "batch",
                                                    "loss", "lr", "inputs_finite",
                                                    "last_good_checkpoint")}})
    if grad is not None and grad["nonfinite"]:
        hits.append({"probe": "grad_stats", **grad["nonfinite"], "lr": grad["lr"]})
    if run is not None and run["nonfinite"]:
        hits.append({"probe": "short_run", **run["nonfinite"], "lr": run["lr"]})
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
                  "keep gradient clipping on "
                  "(--grad-clip 1.0).")
    if first.get("last_good_checkpoint"):
        remedy += f" The run kept its last good checkpoint: {first['last_good_checkpoint']}."
    where = first.get("where", "loss")
    return [Finding("nan-loss", "error",
                    f"Loss becomes NaN / Inf at step {first.get('step')} ({where})",
                    {"occurrences": hits}, remedy, effect=3.0)]


# ---------------------------------------------------------------------------------------------
# gradients and activations

def _median(values: list[float]) -> float:
    v = sorted(x for x in values if math.isfinite(x))
    return v[len(v) // 2] if v else math.nan


@check("exploding-gradients", "vanishing-gradients", order=62)
def gradients(probes: Probes) -> list[Finding]:
    """AUTOTRAINER's rules on the first vs last layer's gradient norm over a few steps."""
    g = probes.get("grad_stats")
    out: list[Finding] = []
    ratio = _median(g["ratios"])
    norms = [n for n in g["total_norms"] if math.isfinite(n)]
    growth = max(norms) / norms[0] if len(norms) > 1 and norms[0] > 0 else 1.0
    bad_grad = bool(g["nonfinite"]) and str(g["nonfinite"]["where"]).startswith("gradient")
    evidence = {"first_layer": g["first_layer"], "last_layer": g["last_layer"],
                "first_norms": g["first_norms"], "last_norms": g["last_norms"],
                "median_ratio": ratio, "total_norms": g["total_norms"], "growth": growth,
                "lr": g["lr"], "steps": g["steps"],
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
            {**evidence, "nonfinite": g["nonfinite"]},
            f"Lower the learning rate (--lr, now {_fmt(g['lr'])}) and clip gradients "
            "(--grad-clip 1.0); normalisation layers in the model keep activations bounded.",
            effect=1.0 if severity == "error" else 0.5))
    # at initialisation AND over the steps: a first layer silenced later by saturation that a
    # huge LR caused is that LR's doing (measured: --lr 5 zeroes it after one step)
    first = _median(g["first_norms"])
    first0 = g["first_norms"][0] if g["first_norms"] else math.nan
    ratio0 = g["ratios"][0] if g["ratios"] else math.nan
    mean_abs = g.get("first_mean_abs_grad")
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


@check("dead-units", order=63)
def dead_units(probes: Probes) -> list[Finding]:
    """DeepDiagnosis: most ReLU outputs zero, or most tanh / sigmoid inputs saturated."""
    g = probes.get("grad_stats")
    acts = g["activations"].get("final") or g["activations"].get("init")
    if not acts:
        return []
    zero = acts["relu_zero_share_mean"]
    dead = acts["relu_dead_channel_share"]
    sat = acts["saturation_share_max"]
    evidence = {k: v for k, v in acts.items() if not k.endswith("per_layer")}
    evidence.update(thresholds={"relu_zero_share": DEAD_RELU, "dead_channels": DEAD_CHANNELS,
                                "saturated": SATURATED}, lr=g["lr"], steps=g["steps"])
    relu_dead = zero is not None and (zero >= DEAD_RELU or dead >= DEAD_CHANNELS)
    saturated = sat is not None and sat > SATURATED
    if not (relu_dead or saturated):
        return []
    if relu_dead:
        title = (f"{zero:.0%} of ReLU outputs are zero ({dead:.0%} of channels never fire) "
                 f"after {g['steps']} steps")
        share = max(zero, dead)
    else:
        title = (f"{sat:.0%} of the inputs of {acts['saturation_worst_layer']} are saturated "
                 "(|x| >= 5)")
        share = sat
    evidence["per_layer"] = {**acts["relu_per_layer"], **acts["saturation_per_layer"]}
    return [Finding(
        "dead-units", "warning", title, evidence,
        f"Lower the learning rate (--lr, now {_fmt(g['lr'])}); check the initialisation and "
        "input scale (normalised inputs, no large biases); prefer GELU / LeakyReLU over ReLU "
        "and normalise before tanh / sigmoid.",
        effect=share)]


# ---------------------------------------------------------------------------------------------
# one batch

@check("cannot-overfit-batch", order=65)
def cannot_overfit_batch(probes: Probes) -> list[Finding]:
    """Karpathy: a model that cannot drive a handful of clips to ~0 loss has a bug. A failure
    at the config's LR that the range test's LR fixes is an LR problem (see lr checks)."""
    o = probes.get("overfit_batch")
    runs = [o] + ([o["retry"]] if "retry" in o else [])
    if any(r["reached"] for r in runs):
        return []
    steps = max(r["steps"] for r in runs)
    best = min((r["min_loss"] for r in runs if math.isfinite(r["min_loss"])), default=math.nan)
    evidence = {"clips": o["clips"], "classes_in_batch": o["classes_in_batch"],
                "runs": [{k: r[k] for k in ("lr", "steps", "initial_loss", "final_loss",
                                            "min_loss", "target", "nonfinite_step")}
                         for r in runs],
                "near_zero_frac": o.get("near_zero_frac"), "decisive_steps": OVERFIT_DECISIVE_STEPS}
    init = o["initial_loss"] if math.isfinite(o["initial_loss"]) else math.nan
    severity = "error" if steps >= OVERFIT_DECISIVE_STEPS else "info"
    effect = best / init if init and math.isfinite(best) and math.isfinite(init) else 1.0
    lrs = " and ".join(_fmt(r["lr"]) for r in runs)
    lr_note = ("" if len(runs) > 1 else
               " No second LR could be tried (no LR range test): rule out --lr first.")
    return [Finding(
        "cannot-overfit-batch", severity,
        f"{o['clips']} clips cannot be fitted: loss {init:.2f} -> {best:.2f} in {steps} steps "
        f"(LR {lrs})" + ("" if severity == "error" else "; too few steps to be sure"),
        evidence,
        "Find the bug before training longer: check that the output depends on the input (no "
        "detached or constant branch), that labels match the clips, that the output width and "
        "loss fit the labels; then try the built-in model (--head bilstm --pool grid) on the "
        "same data. Raise --budget if the run was cut short." + lr_note,
        effect=min(2.0, effect))]
