"""Temporal checks (DESIGN §4, area "temporal"): does the model use frame order, does the
sequence beat one frame, and do the sampled frames cover the motion at all?

Order and gain are pure functions of `temporal_eval` (the short-run model on validation clips
as they are, with frames shuffled, and with one frame repeated T times). Whether a task
*needs* order is not known in general, so those findings are warnings only where the evidence
says the model is stuck: an order-blind model that has not learned; otherwise they are info.
The sequence length is judged on `clip_scan` (frames per clip, the span the sampler covers).

Measured on the demo data (8 classes in time-reversed pairs, `demo_config()`, short run of 8
epochs): val accuracy 0.69, frames shuffled 0.28, best single frame 0.22 (chance 0.125). With
`--head meanpool` the logits do not change at all under shuffling (order-invariant) and the
model stays at chance.

"Order-invariant" is judged against measured scales, never a fixed tolerance: the shuffle's
logit change must stay within NOISE_FACTOR x the noise floor (the same clips in another batch
order, at least float32 rounding at the logits' scale), or within ORDER_REL x the change from
replacing each clip by another clip. Both checks judge a trained model: they need
TEMPORAL_MIN_STEPS optimizer steps (a model after one step is its initialisation), and say
nothing when the output ignores its input altogether (output-ignores-input).
"""

from __future__ import annotations

import math
from statistics import median

from clipdoctor.doctor.checks.common import skip_if_input_ignored
from clipdoctor.doctor.findings import Finding
from clipdoctor.doctor.probes import Probes
from clipdoctor.doctor.registry import check

ORDER_DROP = 0.05  # shuffling costs less than 5 points of accuracy: order unused (demo: 41 points)
TEMPORAL_GAIN = 0.03  # the sequence beats the best single frame by less than 3 points (demo: 47)
# -- sequence too short ---------------------------------------------------------------------
COVERAGE_MIN = 1 / 3  # sampled span / clip (FIELD-NOTES: keras.io takes the first 20 frames, ~0.1
# of an average UCF101 clip of 7 s at 25 fps); uniform sampling covers 1 - 1/T (0.94 at T=8)
MIN_STEPS = 4  # fewer sampled frames than this cannot show a motion's course (start, middle, end)
# -- what counts as "the logits do not change" ------------------------------------------------
NOISE_FACTOR = 10.0  # a change within 10x the noise floor is noise. The floor is the batch-
# reorder noise (measured exactly 0 on CPU) or 1e-6 x max|logit| (8 float32 ulps), whichever is
# larger. Measured after an 80-step short run (user models of tests/doctor/test_input_dependence
# .py, 4 classes, 8 frames, seeds 0-2): a mean over time moved 0.1-0.33x the floor under
# shuffling (3e-8..4.5e-8: a reordered sum), a CNN-LSTM 6e4-1.3e5x (7e-3..2.4e-2); the issue's
# correct model moved 7.5e-5 after one step, hundreds of floors at any logit scale below 10
ORDER_REL = 1e-3  # ... or within 0.1 % of the change from replacing each clip by another clip
# (the signal's scale). Measured shuffle / replace ratios: CNN-LSTMs 0.37-0.74, the mean over
# time 4e-7..9e-7; 1e-3 sits over two decades from both
TEMPORAL_MIN_STEPS = 50  # optimizer steps before a verdict on order or gain: the demo starts to
# separate its classes after ~50 steps (checks/training.py); after 1-4 steps the model is its
# initialisation and "has not learned" says nothing about time


def order_scales(t: dict) -> dict:
    """Whether the shuffle's change is within noise (`order_invariant`) and the output depends
    on the frames at all (`content_dependent`: a saturated or constant model ignores order and
    content alike, which is no order finding), with the scales they were judged on."""
    floor = t.get("noise_floor", 0.0)
    replaced = t.get("replace_logit_change", t["content_logit_change"])
    content = max(replaced, t["content_logit_change"])
    noise_tol = NOISE_FACTOR * floor
    order_tol = max(noise_tol, ORDER_REL * replaced)
    dependent = content > noise_tol
    return {"noise_floor": floor, "noise_factor": NOISE_FACTOR, "replace_logit_change": replaced,
            "order_rel": ORDER_REL, "order_tolerance": order_tol, "content_dependent": dependent,
            "order_invariant": dependent and t["max_logit_change"] <= order_tol}


def _base_evidence(t: dict) -> dict:
    ev = {k: t[k] for k in ("clips", "frames", "chance", "above_chance_margin", "acc", "loss",
                            "shuffled_acc", "shuffled_loss", "max_logit_change",
                            "best_single_frame", "best_single_acc")}
    return {**ev, **order_scales(t), "steps": t.get("steps"),
            "min_steps": TEMPORAL_MIN_STEPS}


@check("temporal-order-ignored", order=80, requires=("temporal_eval", "input_dependence"),
       min_steps=TEMPORAL_MIN_STEPS, unless=skip_if_input_ignored)
def frame_order(probes: Probes) -> list[Finding]:
    """Order-invariant output (within the noise floor, or a negligible share of what other
    clips change), or a model above chance whose accuracy survives shuffled frames."""
    t = probes.get("temporal_eval")
    evidence = {**_base_evidence(t), "order_drop": ORDER_DROP}
    remedy = ("Give the model a view of frame order: a recurrent or positional temporal head "
              "(--head bilstm, or --head transformer) on position-keeping per-frame features "
              "(--pool grid).")
    if evidence["order_invariant"]:
        # an order-blind model that has not learned: if classes differ by motion (direction,
        # reversal), no amount of training helps; one that learned may not need order
        stuck = not t["above_chance"]
        return [Finding(
            "temporal-order-ignored", "warning" if stuck else "info",
            "The model's output does not change with frame order (shuffling moves the logits "
            f"by {t['max_logit_change']:.1e}, other clips by "
            f"{evidence['replace_logit_change']:.1e})"
            + (f" and it has not learned beyond chance (val accuracy {t['acc']:.2f} on "
               f"{t['clips']} clips, chance {t['chance']:.2f})" if stuck else ""),
            evidence, remedy, effect=0.5 if stuck else 0.05)]
    if t["above_chance"] and t["shuffled_acc"] >= t["acc"] - ORDER_DROP:
        return [Finding(
            "temporal-order-ignored", "info",
            f"Shuffling the frames leaves val accuracy at {t['shuffled_acc']:.2f} "
            f"(in order {t['acc']:.2f}): the model does not use frame order",
            evidence, remedy + " Fine if the classes differ by appearance alone.", effect=0.05)]
    return []


@check("no-temporal-gain", order=81, requires=("temporal_eval", "input_dependence"),
       min_steps=TEMPORAL_MIN_STEPS, unless=skip_if_input_ignored)
def temporal_gain(probes: Probes) -> list[Finding]:
    """The sequence model is no better than its best single frame repeated T times. Info only:
    a short run may not have learned the motion yet, and some tasks need no motion."""
    t = probes.get("temporal_eval")
    if not t["above_chance"] or t["best_single_acc"] < t["acc"] - TEMPORAL_GAIN:
        return []
    return [Finding(
        "no-temporal-gain", "info",
        f"One frame (#{t['best_single_frame']}) repeated gives val accuracy "
        f"{t['best_single_acc']:.2f}, the whole clip {t['acc']:.2f}",
        {**_base_evidence(t), "single_frame_acc": t["single_frame_acc"],
         "temporal_gain": TEMPORAL_GAIN},
        "If the classes differ by motion, keep position in the per-frame features (--pool "
        "grid), use a temporal head (--head bilstm) and more frames (--frames 16); otherwise a "
        "per-frame model (--head meanpool) is cheaper.",
        effect=0.05)]


@check("sequence-too-short", order=21, requires=("clip_scan",))
def sequence_length(probes: Probes) -> list[Finding]:
    """Too few frames sampled, or a sampled span far shorter than the clip."""
    scan = probes.get("clip_scan")
    clips, sampling = scan["_clips"], scan["sampling"]
    if not clips:
        return []
    t = sampling["frames"]
    coverage = median(c["coverage"] for c in clips)
    frames = median(c["frames"] for c in clips)
    problems = []
    if coverage < COVERAGE_MIN:
        problems.append(f"the {t} sampled frames span {coverage:.0%} of a typical clip "
                        f"({frames:.0f} frames)")
    if t < MIN_STEPS and frames > t:
        problems.append(f"only {t} frames are sampled per clip")
    if not problems:
        return []
    gaps = [c["sampled_gap_s"] for c in clips if c["sampled_gap_s"] is not None]
    return [Finding(
        "sequence-too-short", "warning", "; ".join(problems),
        {"frames_sampled": t, "median_clip_frames": frames, "median_coverage": coverage,
         "coverage_min": COVERAGE_MIN, "min_steps": MIN_STEPS, "sampler": sampling["sampler"],
         "stride": sampling["stride"],
         "median_gap_s": round(median(gaps), 3) if gaps else None},
        "Cover the whole clip: --sampler uniform (TSN segments), or a larger --stride with "
        "the dense sampler, and more steps (--frames 16).",
        effect=(1 - min(coverage, 1.0)) * math.log(2))]
