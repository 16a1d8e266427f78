"""Model checks (DESIGN §4, area "model"): pure decisions on how the model is put together
and fed (outputs vs labels and loss, a softmax before the loss, batch and time axes,
bidirectional read-outs, padding masks, frozen BatchNorm), what it starts from (loaded
weights, the loss at init) and what it can represent (trainable parameters per clip, the
narrowest feature width, motion left in the pooled features), and whether its output depends
on its input at all (other clips against the noise floor).

Each check reads the model probes' measurements only. Thresholds are named constants; the
comment on each says where the number comes from (FIELD-NOTES, a mathematical bound, or what
we measured on the synthetic demo data, sick vs healthy, with
`tests/doctor/test_model_checks.py`).
"""

from __future__ import annotations

import math

from clipdoctor.doctor.checks.common import INPUT_FACTOR, get, ignores_input, skip_if_input_ignored
from clipdoctor.doctor.findings import Finding
from clipdoctor.doctor.probes import Probes
from clipdoctor.doctor.registry import check

# Cross-sample leak: the input gradient of clip 0's output that lands on other clips, as a
# share of what lands on clip 0, in eval mode (BatchNorm cannot mix clips there). A correct
# model has no path at all between clips: exactly 0.0 measured for every built-in head and the
# correct user models; the planted `.view(T, B, D)` model gave inf (clip 0's output read only
# other clips' frames). 1e-6 only absorbs float noise.
LEAK_TOL = 1e-6
# Bidirectional read-out: the backward direction's share of output gradient at the LAST step.
# `output[:, -1]` puts all of it there (1.0); mean / attention read-outs spread it (about 1/T);
# final states h_n or a correct manual read-out (backward half at step 0) put none there.
LAST_STEP_SHARE = 0.9
# Padding: how far zero padding after the valid steps moves the outputs, as a share of how far
# outputs of two different clips lie apart. Masked models (all six built-in heads, a user model
# packing its sequences) measured 0 to 1e-5; unmasked user LSTMs measured 0.26-0.94 (padding
# moves the prediction about as far as swapping in another clip). 0.1 leaves a wide margin.
PAD_REL_CHANGE = 0.1
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


# ==== wiring: outputs, loss, axes, read-outs, padding, frozen BatchNorm ====================

@check("loss-output-mismatch", order=15, requires=("label_range",))
def loss_output_fit(probes: Probes) -> list[Finding]:
    """Output shape and width vs the labels and the loss (mmaction2 #2120, #1469)."""
    r = probes.get("label_range")
    shape, W, K = r.get("output_shape"), r.get("output_width"), r.get("num_classes")
    lo, hi = r["label_min"], r["label_max"]
    ev = {"output_shape": shape, "output_width": W, "classes": K, "label_min": lo, "label_max": hi}
    effect = math.log(max(K or 2, 2))  # nothing of the loss can move until it fits
    if shape is not None and (len(shape) != 2 or shape[0] != 2):
        return [Finding(
            "loss-output-mismatch", "error",
            f"The model returns shape {tuple(shape)} for 2 clips; the loss needs (batch, classes)",
            {**ev, "expected": [2, K]},
            "Make forward return one row of logits per clip, (B, K): read the temporal head at "
            "the clip level (e.g. h_n[-1] or a mean over time) instead of per step.", effect)]
    if W is None or K is None:
        return []
    if lo == 1 and hi == K:
        return [Finding(
            "loss-output-mismatch", "error",
            f"Labels run 1..{K} (1-based) but class indices must run 0..{K - 1}",
            ev, "Subtract 1 from every label (e.g. UCF101 classInd.txt is 1-based); "
            "clipdoctor's loaders do this for the layouts they know.", effect)]
    if W < K or hi >= W:
        return [Finding(
            "loss-output-mismatch", "error",
            f"The model outputs {W} logits but labels reach {hi} ({K} classes)",
            {**ev, "loss_error": r.get("loss_error")},
            f"Give the classifier {K} outputs (its last Linear: out_features={K}); with the "
            "built-in model the width follows the dataset's classes.", effect)]
    if r.get("loss_accepts_labels") is False:
        return [Finding(
            "loss-output-mismatch", "error",
            f"The loss rejects {W}-wide outputs with labels {lo}..{hi}",
            {**ev, "loss_error": r.get("loss_error")},
            "Use a loss that takes (B, K) logits and integer labels, e.g. "
            "torch.nn.CrossEntropyLoss().", effect)]
    if W > K:
        return [Finding(
            "loss-output-mismatch", "info",
            f"The model outputs {W} logits for {K} classes; {W - K} are never a target",
            ev, f"Set the classifier's out_features to {K}.", 0.0)]
    return []


@check("double-softmax", order=20, requires=("behaviour", "structure", "keras_graph"))
def double_softmax(probes: Probes) -> list[Finding]:
    """Probability outputs (rows in [0, 1] summing to 1) into a loss that applies its own
    softmax (shift-invariant, like cross-entropy) or expects log-probabilities (NLL). A Keras
    softmax into a loss compiled with from_logits=False is correct (that loss takes
    probabilities, and is not shift-invariant)."""
    b = probes.get("behaviour")
    keras = get(probes, "keras_graph", optional=True)
    final = (get(probes, "structure", optional=True) or {}).get("final_op")
    K = b["output_shape"][-1] if b.get("output_shape") else None
    ev = {"output_min": b.get("output_min"), "output_max": b.get("output_max"),
          "row_sum_max_dev": b.get("row_sum_max_dev"), "row_sum_tolerance": 1e-3,
          "loss_shift_invariant": b.get("loss_shift_invariant"),
          "loss_on_outputs": b.get("loss_on_outputs"), "final_op (torch.fx)": final}
    squashed = b.get("probabilities") or (b.get("unit_interval") and final == "sigmoid")
    if not squashed or "loss_error" in b:
        return []
    what = "probabilities" if b.get("probabilities") else "sigmoid outputs"
    if b.get("loss_shift_invariant"):
        floor = math.log1p((K - 1) / math.e) if K else None  # CE over inputs in [0, 1]
        return [Finding(
            "double-softmax", "error",
            f"The model outputs {what} into a loss that applies softmax again: the loss cannot "
            f"fall below {floor:.2f}" if floor is not None else
            f"The model outputs {what} into a loss that applies softmax again",
            {**ev, "loss_floor": floor, "classes": K, **_keras_loss_evidence(keras)},
            "Compile with from_logits=False (the Keras default) for the softmax output, or end "
            "the model with Dense(K) (no activation) and keep from_logits=True; apply softmax "
            "only when reading predictions." if keras is not None else
            "Remove the final softmax / sigmoid from the model (nn.CrossEntropyLoss takes raw "
            "logits); apply softmax only when reading predictions.", floor or 1.0)]
    if (b.get("loss_on_outputs") or 0.0) < 0:
        return [Finding(
            "double-softmax", "error",
            f"The model outputs {what} into NLL, which expects log-probabilities "
            f"(loss {b['loss_on_outputs']:.3f} < 0)",
            ev, "End the model with log_softmax instead of softmax for nn.NLLLoss, or return "
            "raw logits and use nn.CrossEntropyLoss.", 1.0)]
    return []


def _keras_loss_evidence(keras: dict | None) -> dict:
    """What the Keras graph and compile config say about the output and the loss."""
    if keras is None:
        return {}
    return {"keras_output_activation": keras.get("output_activation"),
            "keras_loss": keras.get("loss"),
            "compile_from_logits": keras.get("compile_from_logits")}


@check("batch-time-swapped", order=20, requires=("behaviour",))
def batch_time_axes(probes: Probes) -> list[Finding]:
    """Clip 0's output must not depend on other clips' frames (HHTseng #42), and RNNs must be
    fed (batch, time) the way they are declared."""
    b = probes.get("behaviour")
    leak = b.get("cross_sample_leak")
    swapped = [r for r in b.get("rnns", []) if r.get("fed") == "swapped"]
    ev = {"cross_sample_leak": leak, "leak_tolerance": LEAK_TOL, "batch": b.get("batch"),
          "frames": b.get("frames"), "own_frames_reached": b.get("own_frames_reached"),
          "batch_statistics_layers (bypassed)": b.get("batch_statistics_layers"),
          "rnn_inputs": [{k: r[k] for k in ("name", "batch_first", "input_shape", "fed")}
                         for r in b.get("rnns", [])]}
    if not (leak is not None and leak > LEAK_TOL) and not swapped:
        return []
    why = []
    if leak is not None and math.isinf(leak):
        why.append("clip 0's output depends only on other clips' frames")
    elif leak is not None and leak > LEAK_TOL:
        why.append(f"clip 0's output reaches other clips' frames (gradient {leak:.2g}x its own)")
    for r in swapped:
        why.append(f"RNN '{r['name']}' (batch_first={r['batch_first']}) is fed "
                   f"{tuple(r['input_shape'])} for B={b['batch']}, T={b['frames']}")
    return [Finding(
        "batch-time-swapped", "error",
        "Batch and time axes are mixed between the CNN and the RNN: " + "; ".join(why),
        ev, "Restore per-frame features with .view(B, T, -1) (the order they were flattened "
        "in), never .view(T, B, -1); for a time-major RNN use .transpose(0, 1), and give the "
        "RNN batch_first=True when it reads (B, T, D).",
        math.log(max((b.get("output_shape") or [0, 2])[-1], 2)))]  # the whole loss is at stake


@check("bidirectional-last-step", order=25, requires=("behaviour", "structure", "keras_graph"))
def bidirectional_readout(probes: Probes) -> list[Finding]:
    """A bidirectional RNN read at output[:, -1]: its backward half there has seen one frame.
    For a Keras model (whose RNNs torch hooks cannot see) the graph says it: a Bidirectional
    with return_sequences=True whose output is read at x[:, -1]."""
    keras = get(probes, "keras_graph", optional=True)
    b = get(probes, "behaviour", optional=keras is not None) or {}
    fx_reads = (get(probes, "structure", optional=True) or {}).get("last_step_reads", [])
    hits = [r for r in b.get("rnns", []) if r.get("bidirectional")
            and (r.get("backward_last_share") or 0.0) >= LAST_STEP_SHARE]
    keras_reads = (keras or {}).get("bidirectional_last_step") or []
    names = sorted({r["name"] for r in hits} | set(fx_reads) | {r["layer"] for r in keras_reads})
    if not names:
        return []
    frames = b.get("frames") or ((keras or {}).get("input_shape") or [None])[0]
    ev = {"rnns": names, "backward_last_share": {r["name"]: r["backward_last_share"] for r in hits},
          "threshold": LAST_STEP_SHARE, "read_at_last_step (torch.fx)": fx_reads,
          "frames": frames}
    if keras is not None:
        ev["read_at_last_step (Keras graph)"] = keras_reads
    remedy = ("Use Bidirectional(LSTM(..., return_sequences=False)) (Keras joins the forward "
              "RNN's last step with the backward RNN's own), or concatenate the forward half at "
              "the last step with the backward half at step 0." if keras is not None else
              "Read the final states of both directions: torch.cat([h_n[-2], h_n[-1]], 1) (or "
              "output[:, -1, :H] with output[:, 0, H:]); the built-in --head bilstm does this.")
    return [Finding(
        "bidirectional-last-step", "warning",
        f"Bidirectional RNN '{names[0]}' is read at its last step: the backward direction "
        f"there has seen only the last of {frames} frames", ev, remedy, 0.5)]


@check("unmasked-padding", order=30, requires=("behaviour",))
def padding_mask(probes: Probes) -> list[Finding]:
    """Zero padding after the valid steps changes the outputs, and the pipeline pads clips."""
    p = probes.get("behaviour").get("padding") or {}
    rel = p.get("relative_change")
    if rel is None or rel <= PAD_REL_CHANGE or not p.get("pipeline_pads"):
        return []
    short = p.get("short_clips")
    if short == 0:
        return []  # data.short == "pad" but no clip is short enough to be padded
    ev = {"relative_change": rel, "threshold": PAD_REL_CHANGE, "valid_steps": p.get("valid_steps"),
          "steps": p.get("steps"), "reference": p.get("reference"),
          "takes_lengths": p.get("takes_lengths"), "short_clips": short,
          "clips_checked": p.get("clips_checked")}
    how = ("the model ignores the lengths it is given" if p.get("takes_lengths")
           else "the model takes no lengths")
    return [Finding(
        "unmasked-padding", "warning",
        f"Zero padding moves the outputs by {rel:.2f}x the gap between two clips ({how}); "
        f"{short if short is not None else 'some'} clips are padded",
        ev, "Accept forward(clips, lengths) and mask the padded steps (pack_padded_sequence, "
        "or masked mean / attention), or repeat frames instead of padding (--short repeat).",
        min(rel, 1.0))]


@check("frozen-batchnorm-drift", order=30, requires=("bn_drift", "structure", "input_dependence"),
       unless=skip_if_input_ignored)
def frozen_batchnorm(probes: Probes) -> list[Finding]:
    """Frozen BatchNorm layers whose running statistics still move in training (HHTseng #49).
    Not judged when the output ignores the input: a part whose features are thrown away gets
    no gradient, so it counts as frozen, and its drift changes nothing the model outputs."""
    d = get(probes, "bn_drift", optional=True)
    static = d is None  # no training step measured: what the structure says
    if static:
        d = probes.get("structure")
        drifted, change = d.get("frozen_batchnorm_train_mode", []), None
    else:
        drifted, change = d.get("drifted", []), d.get("max_relative_change", 0.0)
    if not drifted:
        return []
    ev = {"drifted_layers": len(drifted), "frozen_batchnorm_layers": d.get("frozen_batchnorm"),
          "examples": drifted[:5], "max_relative_change": change,
          "measured": "layers in train mode after model.train()" if static else
          "running statistics before / after one training step",
          "frozen": "no update: requires_grad=False, no gradient (torch.no_grad() / .detach() "
                    "in forward) or not in the optimizer"}
    return [Finding(
        "frozen-batchnorm-drift", "warning",
        f"{len(drifted)} frozen BatchNorm layers still update their running statistics "
        "in training", ev,
        "Keep frozen parts in eval mode: override train() to call .eval() on the frozen "
        "backbone (clipdoctor's --freeze-backbone does), or freeze BatchNorm statistics "
        "with track_running_stats / momentum=0.", min(change, 1.0) if change else 0.3)]


# ==== what the model starts from and can represent ===========================================

def _builtin(probes: Probes) -> bool:
    return (get(probes, "model_summary", optional=True) or {}).get("source") == "built-in"


@check("weights-not-loaded", order=10, requires=("weights",))
def weights_loaded(probes: Probes) -> list[Finding]:
    """Requested weights vs what reached the backbone (or the user model's parameters)."""
    w = probes.get("weights")
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


@check("feature-bottleneck", order=35, requires=("widths", "model_summary"))
def feature_width(probes: Probes) -> list[Finding]:
    """A width on the way to the logits below K - 1: K class means need K - 1 dimensions to
    be linearly separable in general, so fewer forces classes to share directions."""
    w = probes.get("widths")
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


@check("motion-invisible-features", order=60, requires=("motion_features",))
def motion_visibility(probes: Probes) -> list[Finding]:
    """The pooled features lose the motion that 2x2-grid features of the same frames keep."""
    m = probes.get("motion_features")
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
    keras = m.get("framework") == "keras"
    if keras:
        ev.update(keras_pools=m.get("keras_pools"), features=m.get("features"))
    if keras:
        remedy = ("Keep spatial features: pooling=None on the backbone and a Conv2D / Reshape "
                  "per frame (inside TimeDistributed) instead of the global pooling "
                  f"('{m.get('pool')}'), or feed frame differences (x[:, 1:] - x[:, :-1]) "
                  "beside the frames.")
    elif with_diff:
        remedy = ("Keep position in the per-frame features: --pool grid (measured on the demo's "
                  "direction pairs: the RGB-difference stream under global pooling still cannot "
                  "tell left from right; --pool grid --rgb-diff shared was the best row).")
    else:
        remedy = ("Keep position in the per-frame features: --pool grid (or --pool attention), "
                  "and add the RGB-difference stream (--rgb-diff shared) for direction; "
                  "--rgb-diff alone with --pool gap recovered growth / rotation pairs but not "
                  "left / right.")
    ev["rgb_diff"] = with_diff
    return [Finding(
        "motion-invisible-features", "warning",
        f"Global pooling hides the motion{' (frame differences included)' if with_diff else ''}: "
        f"a linear probe over time reads the classes at {a_grid:.0%} from 2x2-grid features but "
        f"{a_used:.0%} from the pooled ones", ev, remedy, gap)]


@check("oversized-model", order=12, requires=("model_summary",))
def model_size(probes: Probes) -> list[Finding]:
    """Trained parameters per training clip (a frozen part does not count, however it is
    frozen: requires_grad, no_grad / detach in forward, or left out of the optimizer)."""
    s = probes.get("model_summary")
    n, trainable = s.get("train_clips"), s.get("trainable")
    if not n or not trainable:
        return []
    per = trainable / n
    if per < PARAMS_PER_CLIP_INFO:
        return []
    severity = "warning" if per >= PARAMS_PER_CLIP_WARN else "info"
    ev = {"trainable_parameters": trainable, "frozen_parameters": s.get("frozen"),
          "frozen_by": s.get("frozen_by"), "train_clips": n, "per_clip": per,
          "info_at": PARAMS_PER_CLIP_INFO, "warning_at": PARAMS_PER_CLIP_WARN}
    remedy = ("Freeze the backbone (--freeze-backbone, with --pretrained weights), shrink the "
              "head (--hidden 128 --proj-dim 128), or collect more clips."
              if s.get("source") == "built-in" else
              "Freeze the pretrained part (requires_grad=False, kept in eval mode), use a "
              "smaller network, or collect more clips.")
    return [Finding(
        "oversized-model", severity,
        f"{trainable / 1e6:.1f} M trainable parameters for {n} training clips "
        f"({per:,.0f} per clip)", ev, remedy, math.log10(per / PARAMS_PER_CLIP_INFO) + 0.1)]


@check("bad-init-loss", order=40, requires=("loss_at_init",))
def init_loss(probes: Probes) -> list[Finding]:
    """Loss at initialisation vs ln K (Karpathy): far above means confidently wrong logits."""
    r = probes.get("loss_at_init")
    if "error" in r:
        return []  # the loss cannot run: loss-output-mismatch says why
    K, loss, ratio = r["classes"], r["loss"], r.get("ratio")
    ev = {"loss": loss, "ln_k": r["ln_k"], "uniform_loss": r.get("uniform_loss"), "ratio": ratio,
          "ratio_threshold": INIT_LOSS_RATIO,
          "mean_max_prob": r.get("mean_max_prob"), "max_prob_threshold": INIT_MAX_PROB,
          "top_class_share": r.get("top_class_share"), "logit_std": r.get("logit_std"),
          "clips": r.get("clips")}
    finite = r.get("finite", True) and math.isfinite(loss)
    high = ratio is not None and ratio > INIT_LOSS_RATIO
    peaked = K > 1 and (r.get("mean_max_prob") or 0) > INIT_MAX_PROB
    if finite and not high and not peaked:
        return []
    # the reference is a uniform guess's loss: ln K, measured with the run's loss when it
    # weights classes or smooths labels (`uniform_loss`, about ln K)
    uniform = r.get("uniform_loss") or r["ln_k"]
    ref = (f"ln({K}) = {r['ln_k']:.2f}" if abs(uniform - r["ln_k"]) < 0.005 else
           f"a uniform guess's {uniform:.2f} (ln({K}) = {r['ln_k']:.2f})")
    title = (f"Loss at initialisation is not finite ({loss})" if not finite else
             f"Loss at initialisation is {loss:.2f}, {ratio:.1f}x {ref}"
             if high else f"First predictions are already confident (mean top probability "
             f"{r['mean_max_prob']:.2f} for {K} classes)")
    return [Finding(
        "bad-init-loss", "warning", title, ev,
        "Start from near-uniform predictions: initialise the last layer small (e.g. "
        "nn.init.zeros_ on its bias, std 0.01 on its weight) and check the input scale "
        "(normalised clips, no 0-255 values).", (loss - uniform) if finite else 10.0)]


# ==== does the output depend on the input at all ==============================================

@check("output-ignores-input", order=14, requires=("input_dependence",))
def output_ignores_input(probes: Probes) -> list[Finding]:
    """Replacing the clips by other clips (of other classes) moves the fresh model's logits by
    no more than INPUT_FACTOR x the noise floor, and still so after a few training steps (a
    zero-initialised last layer depends on the input from its first update on)."""
    d = probes.get("input_dependence")
    if not ignores_input(d):
        return []
    f, t = d["fresh"], d.get("trained")
    keys = ("input_change", "replaced_change", "shuffled_change", "constant_change",
            "noise_floor", "reorder_noise", "float_floor", "logit_scale")
    ev = {**{k: f.get(k) for k in keys}, "factor": INPUT_FACTOR, "clips": d.get("clips"),
          "other_class_pairs": d.get("other_class_pairs"), "input": d.get("input"),
          "trained_steps": d.get("trained_steps"),
          "trained_input_change": t["input_change"] if t else None,
          "trained_noise_floor": t["noise_floor"] if t else None,
          "trained": {k: t.get(k) for k in keys} if t else None,
          "measured": "largest |logit change| of a fresh model in eval mode; noise floor = the "
                      "same clips in another batch order / size, at least 1e-6 x max|logit|"}
    if d.get("trained_error"):
        ev["trained_error"] = d["trained_error"]
    after = f"; {t['input_change']:.1e} after {d['trained_steps']} training steps" if t else ""
    return [Finding(
        "output-ignores-input", "error",
        f"The output does not depend on the input: other clips move the logits by "
        f"{f['input_change']:.1e} ({d.get('clips')} clips replaced{after}), no more than "
        f"{INPUT_FACTOR:g}x the noise floor {f['noise_floor']:.1e}",
        ev, "Make the logits a function of the clips: look in forward for a branch that is "
        "multiplied by zero, replaced by a constant (torch.zeros_like(x), a parameter or "
        "buffer returned as it is) or overwritten before the classifier, and check that "
        "forward returns what the classifier computes from the clips; a layer whose units never "
        "fire (dead ReLUs, see dead-units) cuts the input off the same way. No training can "
        "lower the loss below the class prior until then.",
        2.5)]  # nothing else can be fixed first: above every training effect (<= 2), below
    # nan-loss (3)
