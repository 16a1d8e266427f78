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


# Output vs input (`input_dependence`): the logits ignore the clips when replacing them by other
# clips moves the logits by no more than INPUT_FACTOR x the noise floor (what numerical noise
# alone moves them by, at least 1e-6 x max|logit|), i.e. by under ~1e-5 of the logits' scale.
# Measured on CPU, fresh models in eval mode, 2-4 clips of 4 classes at 32 px replaced by clips of
# other classes, seeds 0-2: healthy user CNN-LSTMs 4.0e3-2.2e4x the floor (changes 8e-4..2e-3
# at logit scale 0.07-0.24), a mean-over-time user model 1.8e4-4.2e4x, a torchvision ResNet-18
# CNN-LSTM (frozen under no_grad, 64 px) 1.6e5-2.1e5x, the built-in model (test_resnet + LSTM)
# 6.5e3-8.2e3x; a zero-initialised last layer 0 fresh but 1.7e3-1.1e5x after 3 Adam steps; the
# weakest real dependence, a linear model on frame means under a bias of 6 (test_training_checks
# `_Prior`), 5.8e2x. The blind models (a learned bias broadcast, features multiplied by 0, a
# classifier fed zeros, a ReLU layer dead from the start) measured exactly 0, fresh and trained.
# The batch-reorder noise was exactly 0 on CPU (1 and 2 threads), so the float32 term set the
# floor. 10x keeps the weakest real dependence 58x clear of it (every CNN-LSTM 170x and more)
# while anything within ten float32 roundings of the logits is no dependence a classifier can
# use. (The blind model moved 1.9e-5 in the user's own measurement, in train mode;
# in eval mode such a model moves exactly 0.)
INPUT_FACTOR = 10.0
# A clip's logits moving by more than 1e-3 x max|logit| when only the other clips of its batch
# change order is no rounding: the model mixes clips across the batch (batch-time-swapped,
# measured: a (B*T) -> (T, B) view moved them 8e-2), so its output does depend on input, and a
# "noise floor" made of that says nothing about ignoring it.
MIXING = 1e-3


def _mixes_clips(stage: dict) -> bool:
    scale = stage.get("logit_scale") or 0.0
    return (stage.get("reorder_noise") or 0.0) > MIXING * max(scale, 1e-12)


def ignores_input(d: dict | None) -> bool:
    """The `input_dependence` measurement says the output does not depend on the clips: fresh,
    and (when it was measured) still after a few training steps, which tells a model that
    ignores its input from one whose last layer merely starts at zero. A model whose clips mix
    across the batch depends on its input by definition (`MIXING`)."""
    if not d or not d.get("fresh"):
        return False
    stages = [d["fresh"]] + ([d["trained"]] if d.get("trained") else [])
    return all(s["input_change"] <= INPUT_FACTOR * s["noise_floor"] and not _mixes_clips(s)
               for s in stages)


def skip_if_input_ignored(probes: Probes) -> None:
    """ProbeSkipped for a check whose verdict means nothing when the output ignores the clips
    (its order, its predictions, its curves are the constant's): output-ignores-input says it."""
    if ignores_input(get(probes, "input_dependence", optional=True)):
        raise ProbeSkipped("the model's output does not depend on its input "
                           "(output-ignores-input): nothing to judge until that is fixed")


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
