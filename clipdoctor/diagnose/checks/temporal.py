"""Temporal checks: does the model use frame order, and does the sequence beat one frame?

Pure functions of `temporal_eval` (the short-run model on validation clips as they are, with
frames shuffled, and with one frame repeated T times). Whether a task *needs* order is not
known in general, so the findings are warnings only where the evidence says the model is
stuck: an order-blind model that has not learned; otherwise they are info.

Measured on the demo data (8 classes in time-reversed pairs, `demo_config()`, short run of 8
epochs): val accuracy 0.69, frames shuffled 0.28, best single frame 0.22 (chance 0.125). With
`--head meanpool` the logits do not change at all under shuffling (order-invariant) and the
model stays at chance.
"""

from __future__ import annotations

from clipdoctor.diagnose.findings import Finding
from clipdoctor.diagnose.probes import Probes
from clipdoctor.diagnose.registry import check

ORDER_DROP = 0.05  # shuffling costs less than 5 points of accuracy: order unused (demo: 41 points)
TEMPORAL_GAIN = 0.03  # the sequence beats the best single frame by less than 3 points (demo: 47)


def _base_evidence(t: dict) -> dict:
    return {k: t[k] for k in ("clips", "frames", "chance", "above_chance_margin", "acc", "loss",
                              "shuffled_acc", "shuffled_loss", "max_logit_change",
                              "order_invariant", "best_single_frame", "best_single_acc")}


@check("temporal-order-ignored", order=80)
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


@check("no-temporal-gain", order=81)
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
