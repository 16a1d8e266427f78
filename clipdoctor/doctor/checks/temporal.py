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
"""

from __future__ import annotations

import math
from statistics import median

from clipdoctor.doctor.findings import Finding
from clipdoctor.doctor.probes import Probes
from clipdoctor.doctor.registry import check

ORDER_DROP = 0.05  # shuffling costs less than 5 points of accuracy: order unused (demo: 41 points)
TEMPORAL_GAIN = 0.03  # the sequence beats the best single frame by less than 3 points (demo: 47)
# -- sequence too short ---------------------------------------------------------------------
COVERAGE_MIN = 1 / 3  # sampled span / clip (FIELD-NOTES: keras.io takes the first 20 frames, ~0.1
# of an average UCF101 clip of 7 s at 25 fps); uniform sampling covers 1 - 1/T (0.94 at T=8)
MIN_STEPS = 4  # fewer sampled frames than this cannot show a motion's course (start, middle, end)


def _base_evidence(t: dict) -> dict:
    return {k: t[k] for k in ("clips", "frames", "chance", "above_chance_margin", "acc", "loss",
                              "shuffled_acc", "shuffled_loss", "max_logit_change",
                              "order_invariant", "best_single_frame", "best_single_acc")}


@check("temporal-order-ignored", order=80, requires=("temporal_eval",))
def frame_order(probes: Probes) -> list[Finding]:
    """Order-invariant output (exact), or a model above chance whose accuracy survives
    shuffled frames."""
    t = probes.get("temporal_eval")
    evidence = {**_base_evidence(t), "order_drop": ORDER_DROP}
    remedy = ("Give the model a view of frame order: a recurrent or positional temporal head "
              "(--head bilstm, or --head transformer) on position-keeping per-frame features "
              "(--pool grid).")
    if t["order_invariant"]:
        # an order-blind model that has not learned: if classes differ by motion (direction,
        # reversal), no amount of training helps; one that learned may not need order
        stuck = not t["above_chance"]
        return [Finding(
            "temporal-order-ignored", "warning" if stuck else "info",
            "The model's output is identical for any frame order"
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


@check("no-temporal-gain", order=81, requires=("temporal_eval",))
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
