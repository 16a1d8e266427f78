"""Model wiring checks (DESIGN §4, area "model"): pure decisions on how the model is put
together and fed: outputs vs labels and loss, a softmax before the loss, batch and time axes,
bidirectional read-outs, padding masks, frozen BatchNorm.

Each check reads `probes.get(...)` only. Thresholds are named constants; the comment on each
says where the number comes from (FIELD-NOTES, a mathematical bound, or what we measured on
the synthetic demo data, sick vs healthy, with `tests/diagnose/test_model_checks.py`). The
checks of what the model starts from and can represent (weights, loss at init, size, feature
width, motion) are in `model_capacity.py`.
"""

from __future__ import annotations

import math

from clipdoctor.diagnose.findings import Finding
from clipdoctor.diagnose.probes import Probes, ProbeSkipped
from clipdoctor.diagnose.registry import check

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


def _get(probes: Probes, name: str) -> dict:
    value = probes.get(name)
    if not isinstance(value, dict):
        raise ProbeSkipped(f"'{name}' gave no measurements")
    return value


# ---------------------------------------------------------------------------------------------

@check("loss-output-mismatch", order=15)
def loss_output_fit(probes: Probes) -> list[Finding]:
    """Output shape and width vs the labels and the loss (mmaction2 #2120, #1469)."""
    r = _get(probes, "label_range")
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


@check("double-softmax", order=20)
def double_softmax(probes: Probes) -> list[Finding]:
    """Probability outputs (rows in [0, 1] summing to 1) into a loss that applies its own
    softmax (shift-invariant, like cross-entropy) or expects log-probabilities (NLL)."""
    b = _get(probes, "behaviour")
    try:
        s = _get(probes, "structure")
    except ProbeSkipped:
        s = {}
    final = s.get("final_op")
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
            {**ev, "loss_floor": floor, "classes": K},
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


@check("batch-time-swapped", order=20)
def batch_time_axes(probes: Probes) -> list[Finding]:
    """Clip 0's output must not depend on other clips' frames (HHTseng #42), and RNNs must be
    fed (batch, time) the way they are declared."""
    b = _get(probes, "behaviour")
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


@check("bidirectional-last-step", order=25)
def bidirectional_readout(probes: Probes) -> list[Finding]:
    """A bidirectional RNN read at output[:, -1]: its backward half there has seen one frame."""
    b = _get(probes, "behaviour")
    try:
        fx_reads = _get(probes, "structure").get("last_step_reads", [])
    except ProbeSkipped:
        fx_reads = []
    hits = [r for r in b.get("rnns", []) if r.get("bidirectional")
            and (r.get("backward_last_share") or 0.0) >= LAST_STEP_SHARE]
    names = sorted({r["name"] for r in hits} | set(fx_reads))
    if not names:
        return []
    ev = {"rnns": names, "backward_last_share": {r["name"]: r["backward_last_share"] for r in hits},
          "threshold": LAST_STEP_SHARE, "read_at_last_step (torch.fx)": fx_reads,
          "frames": b.get("frames")}
    return [Finding(
        "bidirectional-last-step", "warning",
        f"Bidirectional RNN '{names[0]}' is read at its last step: the backward direction "
        f"there has seen only the last of {b.get('frames')} frames",
        ev, "Read the final states of both directions: torch.cat([h_n[-2], h_n[-1]], 1) (or "
        "output[:, -1, :H] with output[:, 0, H:]); the built-in --head bilstm does this.", 0.5)]


@check("unmasked-padding", order=30)
def padding_mask(probes: Probes) -> list[Finding]:
    """Zero padding after the valid steps changes the outputs, and the pipeline pads clips."""
    p = _get(probes, "behaviour").get("padding") or {}
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


@check("frozen-batchnorm-drift", order=30)
def frozen_batchnorm(probes: Probes) -> list[Finding]:
    """Frozen BatchNorm layers whose running statistics still move in training (HHTseng #49)."""
    try:
        d = _get(probes, "bn_drift")
        drifted, change = d.get("drifted", []), d.get("max_relative_change", 0.0)
        static = False
    except ProbeSkipped:
        d = _get(probes, "structure")
        drifted, change = d.get("frozen_batchnorm_train_mode", []), None
        static = True
    if not drifted:
        return []
    ev = {"drifted_layers": len(drifted), "frozen_batchnorm_layers": d.get("frozen_batchnorm"),
          "examples": drifted[:5], "max_relative_change": change,
          "measured": "layers in train mode after model.train()" if static else
          "running statistics before / after one training step"}
    return [Finding(
        "frozen-batchnorm-drift", "warning",
        f"{len(drifted)} frozen BatchNorm layers still update their running statistics "
        "in training", ev,
        "Keep frozen parts in eval mode: override train() to call .eval() on the frozen "
        "backbone (clipdoctor's --freeze-backbone does), or freeze BatchNorm statistics "
        "with track_running_stats / momentum=0.", min(change, 1.0) if change else 0.3)]
