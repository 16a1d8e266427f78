"""Data probes: what the dataset holds, per split and class, and what could not be read."""

from __future__ import annotations

from collections import Counter

from clipdoctor.data.sources import SPLITS
from clipdoctor.diagnose.probes import Context, Probes, datamodule, need_data, probe


@probe("dataset")
def dataset_summary(ctx: Context, probes: Probes) -> dict:
    """Classes, clips per split and class (readable clips only), unreadable files."""
    data = need_data(ctx)
    dm = datamodule(ctx)
    per_split = {s: Counter(x.label for x in dm.samples if x.split == s) for s in SPLITS}
    return {
        "format": data.format,
        "root": str(data.root),
        "classes": list(data.classes),
        "counts": {s: [per_split[s].get(i, 0) for i in range(len(data.classes))] for s in SPLITS},
        "listed": len(data.samples) + len(data.skipped),
        "skipped": [{"path": s.path, "reason": s.reason} for s in dm.skipped],
        "class_weighting": ctx.config.train.class_weighting,
    }
