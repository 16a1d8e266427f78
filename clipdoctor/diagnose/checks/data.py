"""Data checks: balance, size, corrupt files, splits, leakage, labels, frames, augmentation."""

from __future__ import annotations

from clipdoctor.diagnose.findings import Finding
from clipdoctor.diagnose.probes import Probes
from clipdoctor.diagnose.registry import check

IMBALANCE_WARN = 3.0  # largest / smallest training class: above this, an unweighted loss drifts
IMBALANCE_INFO = 1.5


@check("class-imbalance", "class-weights-unused", order=10)
def class_balance(probes: Probes) -> list[Finding]:
    """Largest / smallest training-class count, and whether the loss or sampler weights it."""
    d = probes.get("dataset")
    counts = d["counts"]["train"]
    present = [c for c in counts if c > 0]
    if len(present) < 2:
        return []
    ratio = max(present) / min(present)
    out: list[Finding] = []
    classes = d["classes"]
    big, small = counts.index(max(present)), counts.index(min(present))
    evidence = {"ratio": ratio, "largest": {classes[big]: counts[big]},
                "smallest": {classes[small]: counts[small]}, "train_counts": dict(zip(classes, counts))}
    weighted = d.get("class_weighting", "none") != "none"
    if ratio >= IMBALANCE_INFO:
        severity = "warning" if ratio >= IMBALANCE_WARN and not weighted else "info"
        out.append(Finding(
            "class-imbalance", severity,
            f"Training classes are imbalanced {ratio:.1f}:1 ('{classes[big]}' {counts[big]} clips, "
            f"'{classes[small]}' {counts[small]})",
            evidence,
            "Weight the loss by class (--class-weighting balanced) or sample classes evenly "
            "(--class-weighting sampler); collect more clips of the small classes.",
            effect=ratio))
    if ratio >= IMBALANCE_WARN and not weighted:
        out.append(Finding(
            "class-weights-unused", "warning",
            f"Classes are imbalanced {ratio:.1f}:1 but neither the loss nor the sampler weights them",
            {**evidence, "class_weighting": d.get("class_weighting")},
            "Use --class-weighting balanced (scikit-learn's n / (k * count) weights in the loss).",
            effect=ratio))
    return out
