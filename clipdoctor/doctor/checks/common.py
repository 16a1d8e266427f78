"""What more than one check module uses: reading probes, skipping with the probes' reasons,
losses relative to ln K, and the class-balance measures of the data and training checks.
Check modules import from here, never from each other."""

from __future__ import annotations

import math
from typing import Any

from clipdoctor.doctor.probes import Probes, ProbeSkipped

HIGH_LOSS = 0.9  # a loss above 0.9 ln K is still at a uniform guess over K classes
IMBALANCE_WARN = 3.0  # largest / smallest class above this: an unweighted loss drifts to the
# big classes (FIELD-NOTES: pytorchvideo #181, imbalance with no weighting);
# generate(imbalance=5) plants 5:1
WEIGHTED = ("balanced", "sampler", "loss")  # ways the loss or the sampler can weight classes


def get(probes: Probes, name: str, *, optional: bool = False) -> Any:
    """Probe `name`'s value. When it was not measured: ProbeSkipped (the check is skipped
    with the probe's reason), or None with `optional` (the check decides on what it has)."""
    try:
        return probes.get(name)
    except ProbeSkipped:
        if optional:
            return None
        raise


def skip_unless(probes: Probes, **values: Any) -> None:
    """ProbeSkipped, with every probe's own reason, when none of `values` (probe name ->
    its value, None when not measured) was measured."""
    if all(v is None for v in values.values()):
        raise ProbeSkipped("; ".join(f"{name}: {probes.skipped.get(name, 'not measured')}"
                                     for name in values), probe=next(iter(values)))


def lnk(k: int) -> float:
    """ln K: the loss of a uniform guess over K classes (at least 2)."""
    return math.log(max(2, k))


def imbalance(d: dict) -> dict | None:
    """Largest / smallest training class of the `dataset` probe and the evidence, or None
    when fewer than 2 classes have training clips."""
    counts, classes = d["counts"]["train"], d["classes"]
    present = [c for c in counts if c > 0]
    if len(present) < 2:
        return None
    big, small = counts.index(max(present)), counts.index(min(present))
    return {"ratio": max(present) / min(present), "largest": {classes[big]: counts[big]},
            "smallest": {classes[small]: counts[small]},
            "train_counts": dict(zip(classes, counts)), "big": classes[big],
            "small": classes[small], "n_big": counts[big], "n_small": counts[small]}
