"""Splits a layout does not give: seeded, stratified by label, keeping a source group (UCF101's
`v_<Class>_g<GG>`) on one side.

`finish` (`clipdoctor.data.layouts.registry`) calls these on every listing; they are pure
functions of the labels, group keys and seed, so the same seed always gives the same split.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import PurePosixPath

import numpy as np

UCF_GROUP = re.compile(r"^v_(.+)_g(\d+)_c(\d+)$")  # a UCF101 clip name: class, group, clip


def group_of(name: str) -> str | None:
    """`v_<Class>_g<GG>_c<CC>` -> `<Class>_g<GG>` (the UCF101 source group), else None."""
    match = UCF_GROUP.match(PurePosixPath(name).stem)
    return f"{match.group(1)}_g{match.group(2)}" if match else None


def assign_splits(labels: list[int], keys: list[str], given: list[str | None], seed: int,
                  val_fraction: float, test_fraction: float) -> list[str]:
    """Each clip's split: as given; with none given, seeded 80/10/10; without val, val from train.

    Clips without a given split, beside clips with one, go to train."""
    totals = Counter(labels)
    rng = np.random.default_rng(seed)
    if all(s is None for s in given):
        splits = ["train"] * len(labels)
        _carve(splits, labels, keys, totals, [("test", test_fraction), ("val", val_fraction)], rng)
        return splits
    splits = [s or "train" for s in given]
    if "val" not in splits:
        _carve(splits, labels, keys, totals, [("val", val_fraction)], rng)
    return splits


def _carve(splits: list[str], labels: list[int], keys: list[str], totals: Counter,
           targets: list[tuple[str, float]], rng: np.random.Generator) -> None:
    """Move whole groups of train clips into `targets` (split, fraction of the class), per class.

    Stratified: each class gives `fraction` of its clips to each target split (at least one group
    when it has >= 3 groups in train, and always keeps one group for train and for each later
    target). A class with 1-2 groups stays in train. Group order is a seeded permutation of the
    sorted group keys, so the same seed gives the same split. This is done by hand rather than
    with sklearn's StratifiedGroupKFold: k folds only approximate fractions that are not 1/k and
    give no clip to a split for classes with fewer groups than folds."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        if splits[i] == "train":
            members[key].append(i)
    by_class: dict[int, list[str]] = defaultdict(list)
    for key, idx in members.items():
        counts = Counter(labels[i] for i in idx)
        by_class[max(counts, key=lambda lab: (counts[lab], -lab))].append(key)
    active = [(s, f) for s, f in targets if f > 0]
    for label in sorted(by_class):
        groups = sorted(by_class[label])
        if len(groups) < 3:
            continue
        order = [groups[j] for j in rng.permutation(len(groups))]
        pos = 0
        for t, (split, fraction) in enumerate(active):
            target, taken, reserve = fraction * totals[label], 0, len(active) - t
            while pos < len(order) - reserve and taken < target:
                for i in members[order[pos]]:
                    splits[i] = split
                taken += len(members[order[pos]])
                pos += 1
