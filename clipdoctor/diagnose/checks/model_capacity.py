"""Model capacity checks (DESIGN §4, area "model"): what the model starts from (loaded weights,
the loss at init) and what it can represent (trainable parameters per clip, the narrowest
feature width, motion left in the pooled features).

Pure decisions on the model probes' measurements, like the wiring checks in `model.py` (whose
`_get` they share); thresholds are named constants with where their numbers come from.
"""

from __future__ import annotations

import math

from clipdoctor.diagnose.checks.model import _get
from clipdoctor.diagnose.findings import Finding
from clipdoctor.diagnose.probes import Probes, ProbeSkipped
from clipdoctor.diagnose.registry import check

# Loss at init: Karpathy's recipe expects ln K (FIELD-NOTES). Above 2x ln K the first logits are
# confidently wrong; measured healthy: 0.99-1.10x for the built-in model (demo config, all six
# heads, gap / grid / attention pools) and 1.0-1.05x for small user CNN-LSTMs; a user model
# whose last layer starts 30x too large measured 1.6x, 100x too large 4.2x.
INIT_LOSS_RATIO = 2.0
# ...or the first predictions are already near one-hot on average (uniform would be 1/K).
INIT_MAX_PROB = 0.9
# Trainable parameters per training clip. The demo's healthy reference (test_resnet end to end,
# 687 k parameters, 256 training clips) sits at 2.7 k; the default frozen resnet10t head on
# UCF101 at ~170. Conservative on purpose (FIELD-NOTES only reports "far too small" datasets):
# info at 7x the demo, warning at 70x (e.g. an unfrozen resnet50, 25 M, on 120 clips).
PARAMS_PER_CLIP_INFO = 2e4
PARAMS_PER_CLIP_WARN = 2e5
# Motion: held-out accuracy of the linear probe over time on the features the model pools,
# below the same probe on 2x2-grid features. Measured with the demo CNN at 64 px, 12-16 clips
# per class, 3 seeds: move_left/right and move_up/down pairs 0.14-0.55 lower, flagged in 10 of
# 12 runs; grow/shrink, rotation and colour-defined classes at most 0.15 lower (usually gap is
# as good or better), flagged in 0 of 18 runs. 8 classes: 0.24 lower (demo data, 40 per class),
# 0.29 (resnet10t, 112 px). The gap must also clear twice its binomial standard error, so
# tiny datasets cannot raise it by noise alone.
MOTION_ACC_GAP = 0.15
MOTION_SIGMA = 2.0

def _builtin(probes: Probes) -> bool:
    try:
        return _get(probes, "model_summary").get("source") == "built-in"
    except ProbeSkipped:
        return False


@check("weights-not-loaded", order=10)
def weights_loaded(probes: Probes) -> list[Finding]:
    """Requested weights vs what reached the backbone (or the user model's parameters)."""
    w = _get(probes, "weights")
    if w.get("source") == "user":
        return _user_weights(w)
    frozen = w.get("backbone_frozen")
    ev = {k: w.get(k) for k in ("requested", "loaded", "backbone_tensors", "missing",
                                "unexpected", "missing_examples", "unexpected_examples",
                                "backbone_frozen")}
    if w["requested"] != "random" and w["loaded"] == "random":
        return [Finding(
            "weights-not-loaded", "error" if frozen else "warning",
            f"Pretrained weights were requested ({w['requested']}) but the backbone is random",
            ev, "Check the network / file and re-run; or pass a local file with --weights FILE.",
            1.0)]
    if w["missing"]:  # any missing tensor stays random (FIELD-NOTES: TDN #21, 3D-ResNets #256)
        share = w["missing"] / max(w["backbone_tensors"], 1)
        return [Finding(
            "weights-not-loaded", "warning",
            f"Weights loaded only partly: {w['missing']} of {w['backbone_tensors']} backbone "
            f"tensors missing ({share:.0%}), {w['unexpected']} unexpected",
            {**ev, "missing_share": share},
            f"Use a weights file made for '{w['backbone']}' (same timm name and variant); the "
            "missing tensors stay random.", share)]
    if w["requested"] == "random" and frozen:
        return [Finding(
            "weights-not-loaded", "warning",
            f"The frozen backbone '{w['backbone']}' has random weights: its features never learn",
            ev, "Load weights (--pretrained or --weights FILE), or train the backbone "
            "(--no-freeze-backbone).", 0.5)]
    if w["unexpected"]:
        return [Finding(
            "weights-not-loaded", "info",
            f"{w['unexpected']} tensors of the weights file found no place in the backbone",
            ev, "Harmless if the file also holds another head; otherwise check it belongs to "
            f"'{w['backbone']}'.", 0.0)]
    return []


def _user_weights(w: dict) -> list[Finding]:
    ev = {k: w.get(k) for k in ("requested", "file_tensors", "model_tensors", "matched", "equal",
                                "differ_examples")}
    if w["matched"] == 0:
        return [Finding(
            "weights-not-loaded", "warning",
            f"None of the {w['file_tensors']} tensors in {w['requested']} match the model's "
            "parameter names and shapes", ev,
            "Load the file with model.load_state_dict(torch.load(FILE), strict=True) to see "
            "the mismatching keys; strip wrapper prefixes such as 'module.'.", 1.0)]
    if w["equal"] < w["matched"]:
        share = 1 - w["equal"] / w["matched"]
        return [Finding(
            "weights-not-loaded", "warning",
            f"{w['matched'] - w['equal']} of {w['matched']} tensors in {w['requested']} differ "
            "from the model's parameters: the file was not loaded", {**ev, "differ_share": share},
            "Call model.load_state_dict(torch.load(FILE)) before training (and check its "
            "missing / unexpected keys).", share)]
    return []


@check("feature-bottleneck", order=35)
def feature_width(probes: Probes) -> list[Finding]:
    """A width on the way to the logits below K - 1: K class means need K - 1 dimensions to
    be linearly separable in general, so fewer forces classes to share directions."""
    w = _get(probes, "widths")
    K, narrow = w.get("classes"), w.get("narrowest")
    if K is None or narrow is None or narrow >= K - 1:
        return []
    ev = {"classes": K, "narrowest": narrow, "at": w.get("narrowest_at"),
          "widths": w.get("widths"), "needed": K - 1}
    for key in ("probe_full_accuracy", "probe_narrow_accuracy", "probe_clips"):
        if w.get(key) is not None:
            ev[key] = w[key]
    lost = (w.get("probe_full_accuracy") or 0) - (w.get("probe_narrow_accuracy") or 0)
    remedy = (f"Widen the features: --proj-dim {max(256, 2 * K)} --hidden {max(256, 2 * K)} "
              "(and --pool grid for a wider pooled feature)." if _builtin(probes) else
              f"Widen '{w.get('narrowest_at')}' to at least {K} units (2x K is a safe start).")
    return [Finding(
        "feature-bottleneck", "warning",
        f"Features narrow to {narrow} dimensions at {w.get('narrowest_at')} for {K} classes",
        ev, remedy, max(lost, 0.1))]


@check("motion-invisible-features", order=60)
def motion_visibility(probes: Probes) -> list[Finding]:
    """The pooled features lose the motion that 2x2-grid features of the same frames keep."""
    m = _get(probes, "motion_features")
    used, a_used, a_grid = m.get("used"), m.get("accuracy_used"), m.get("accuracy_grid")
    if used not in ("gap", "gap+rgbdiff") or a_used is None or a_grid is None:
        return []
    n = max(m["clips"], 1)
    se = math.sqrt(a_used * (1 - a_used) / n + a_grid * (1 - a_grid) / n)
    gap = a_grid - a_used
    if gap < max(MOTION_ACC_GAP, MOTION_SIGMA * se):
        return []
    ev = {"pool": m.get("pool"), "accuracy_model_features": a_used, "accuracy_grid_2x2": a_grid,
          "chance": m.get("chance"), "accuracy_gap": gap, "threshold": MOTION_ACC_GAP,
          "standard_error": se, "clips": m["clips"], "change_model_features": m.get("change_gap"),
          "change_grid_features": m.get("change_grid"),
          "probe": "logistic regression on per-frame PCA-32 features: clip mean and "
                   "late-minus-early difference, 3-fold CV"}
    with_diff = used == "gap+rgbdiff"
    remedy = ("Keep position in the per-frame features: --pool grid (measured on the demo's "
              "direction pairs: the RGB-difference stream under global pooling still cannot tell "
              "left from right; --pool grid --rgb-diff shared was the best row)." if with_diff else
              "Keep position in the per-frame features: --pool grid (or --pool attention), and "
              "add the RGB-difference stream (--rgb-diff shared) for direction; --rgb-diff alone "
              "with --pool gap recovered growth / rotation pairs but not left / right.")
    ev["rgb_diff"] = with_diff
    return [Finding(
        "motion-invisible-features", "warning",
        f"Global pooling hides the motion{' (frame differences included)' if with_diff else ''}: "
        f"a linear probe over time reads the classes at {a_grid:.0%} from 2x2-grid features but "
        f"{a_used:.0%} from the pooled ones", ev, remedy, gap)]


@check("oversized-model", order=12)
def model_size(probes: Probes) -> list[Finding]:
    """Trainable parameters per training clip (a frozen backbone does not count)."""
    s = _get(probes, "model_summary")
    n, trainable = s.get("train_clips"), s.get("trainable")
    if not n or not trainable:
        return []
    per = trainable / n
    if per < PARAMS_PER_CLIP_INFO:
        return []
    severity = "warning" if per >= PARAMS_PER_CLIP_WARN else "info"
    ev = {"trainable_parameters": trainable, "frozen_parameters": s.get("frozen"),
          "train_clips": n, "per_clip": per, "info_at": PARAMS_PER_CLIP_INFO,
          "warning_at": PARAMS_PER_CLIP_WARN}
    remedy = ("Freeze the backbone (--freeze-backbone, with --pretrained weights), shrink the "
              "head (--hidden 128 --proj-dim 128), or collect more clips."
              if s.get("source") == "built-in" else
              "Freeze the pretrained part (requires_grad=False, kept in eval mode), use a "
              "smaller network, or collect more clips.")
    return [Finding(
        "oversized-model", severity,
        f"{trainable / 1e6:.1f} M trainable parameters for {n} training clips "
        f"({per:,.0f} per clip)", ev, remedy, math.log10(per / PARAMS_PER_CLIP_INFO) + 0.1)]


@check("bad-init-loss", order=40)
def init_loss(probes: Probes) -> list[Finding]:
    """Loss at initialisation vs ln K (Karpathy): far above means confidently wrong logits."""
    r = _get(probes, "loss_at_init")
    if "error" in r:
        return []  # the loss cannot run: loss-output-mismatch says why
    K, loss, ratio = r["classes"], r["loss"], r.get("ratio")
    ev = {"loss": loss, "ln_k": r["ln_k"], "ratio": ratio, "ratio_threshold": INIT_LOSS_RATIO,
          "mean_max_prob": r.get("mean_max_prob"), "max_prob_threshold": INIT_MAX_PROB,
          "top_class_share": r.get("top_class_share"), "logit_std": r.get("logit_std"),
          "clips": r.get("clips")}
    finite = r.get("finite", True) and math.isfinite(loss)
    high = ratio is not None and ratio > INIT_LOSS_RATIO
    peaked = K > 1 and (r.get("mean_max_prob") or 0) > INIT_MAX_PROB
    if finite and not high and not peaked:
        return []
    title = (f"Loss at initialisation is not finite ({loss})" if not finite else
             f"Loss at initialisation is {loss:.2f}, {ratio:.1f}x ln({K}) = {r['ln_k']:.2f}"
             if high else f"First predictions are already confident (mean top probability "
             f"{r['mean_max_prob']:.2f} for {K} classes)")
    return [Finding(
        "bad-init-loss", "warning", title, ev,
        "Start from near-uniform predictions: initialise the last layer small (e.g. "
        "nn.init.zeros_ on its bias, std 0.01 on its weight) and check the input scale "
        "(normalised clips, no 0-255 values).", (loss - r["ln_k"]) if finite else 10.0)]
