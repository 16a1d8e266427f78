"""Findings -> remedies: run-config changes answering them (used by `repair`).

One planner per finding code, registered with `@plans(code, ...)`: (finding, config, number of
classes) -> (remedy name, {dotted config path: value}, why) or None when the config already
answers it or no setting can (a bug in the user's own model, leaked splits: advice). Findings
whose planners name the same remedy merge into it: dead units and exploding gradients join the
learning-rate remedy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from clipdoctor.config import RunConfig, with_overrides
from clipdoctor.doctor.findings import CODES, Finding, Report

MAX_FRAMES = 32  # "more frames" stops here: cost grows linearly with T

Changes = dict[str, Any]


@dataclass
class Remedy:
    """Config changes (dotted path -> value) answering the findings `codes`."""

    name: str
    codes: list[str]
    changes: Changes
    why: str

    def to_dict(self) -> dict:
        return {"name": self.name, "codes": self.codes, "changes": self.changes, "why": self.why}


# ---------------------------------------------------------------------------------------------
# findings -> remedies: one planner per code, (finding, config, classes) -> (name, changes, why)

Planner = Callable[[Finding, RunConfig, int], "tuple[str, Changes, str] | None"]
PLANNERS: dict[str, Planner] = {}


def plans(*codes: str) -> Callable[[Planner], Planner]:
    """Register a planner for finding `codes` (each must be in DESIGN §4's table)."""
    unknown = [c for c in codes if c not in CODES]
    if unknown:
        raise ValueError(f"plans() got unknown finding codes {unknown}")

    def add(fn: Planner) -> Planner:
        for c in codes:
            PLANNERS[c] = fn
        return fn

    return add


@plans("lr-too-high", "lr-too-low", "nan-loss")
def _lr(f: Finding, config: RunConfig, k: int):
    lr = config.train.lr
    suggestion = f.evidence.get("range_suggestion")
    if suggestion and math.isfinite(suggestion) and suggestion > 0:
        new, why = float(f"{suggestion:.2g}"), "the LR range test's valley"
    elif f.code == "lr-too-low":
        new, why = lr * 10, "10x higher (no range-test suggestion)"
    else:
        new, why = lr / 10, "10x lower (no range-test suggestion)"
    changes: Changes = {"train.lr": new}
    ceiling = f.evidence.get("range_min_loss_lr")  # past the range test's lowest loss it rises
    if ceiling and math.isfinite(ceiling) and ceiling > new:
        changes["_lr_ceiling"] = float(ceiling)
    if config.train.grad_clip == 0:
        changes["train.grad_clip"] = 1.0
    if config.train.warmup_epochs == 0:
        changes["train.warmup_epochs"] = 1.0
    return "learning-rate", changes, f"--lr {new:g}: {why}"


@plans("class-imbalance", "class-weights-unused", "prediction-collapse")
def _weights(f: Finding, config: RunConfig, k: int):
    if config.train.class_weighting != "none":
        return None
    return ("class-weights", {"train.class_weighting": "balanced"},
            "--class-weighting balanced: scikit-learn's n / (k * count) weights in the loss")


@plans("inconsistent-augmentation")
def _clip_consistent(f: Finding, config: RunConfig, k: int):
    if not config.data.augment.per_frame:
        return None
    return ("clip-consistent-augmentation", {"data.augment.per_frame": False},
            "one random draw per clip, shared by its frames")


@plans("augmentation-too-strong")
def _milder_augmentation(f: Finding, config: RunConfig, k: int):
    a = config.data.augment
    changes = {"data.augment.scale": [max(a.scale[0], 0.8), 1.0], "data.augment.degrees": 0.0,
               "data.augment.translate": min(a.translate, 0.02),
               "data.augment.brightness": a.brightness / 2, "data.augment.contrast": a.contrast / 2,
               "data.augment.saturation": a.saturation / 2, "data.augment.hue": 0.0}
    return "milder-augmentation", changes, "crops keep >= 80 % of the frame, no rotation"


@plans("unmasked-padding", "inconsistent-clip-shape")
def _masked_padding(f: Finding, config: RunConfig, k: int):
    if config.data.short == "pad":
        return None
    return ("masked-padding", {"data.short": "pad"},
            "short clips padded and masked (lengths reach the head) instead of repeated")


@plans("feature-bottleneck")
def _wider(f: Finding, config: RunConfig, k: int):
    width = max(256, 2 * k)
    changes = {k_: width for k_, v in (("model.proj_dim", config.model.proj_dim),
                                       ("model.hidden", config.model.hidden)) if v < width}
    return ("wider-projection", changes, f"--proj-dim / --hidden {width}") if changes else None


@plans("motion-invisible-features", "temporal-order-ignored", "no-temporal-gain")
def _see_motion(f: Finding, config: RunConfig, k: int):
    changes: Changes = {}
    if config.model.pool == "gap":
        changes["model.pool"] = "grid"
    if config.model.head == "meanpool":
        changes["model.head"] = "bilstm"
    if not config.model.feature_diff:  # the best cheap row of the README's motion table
        changes["model.feature_diff"] = True
    return ("see-motion", changes, "grid pooling keeps where things are, feature differences "
            "show what changed, a recurrent head sees frame order") if changes else None


@plans("sequence-too-short")
def _more_frames(f: Finding, config: RunConfig, k: int):
    frames = min(MAX_FRAMES, 2 * config.data.frames)
    changes: Changes = {"data.sampler": "uniform"} if config.data.sampler != "uniform" else {}
    if frames > config.data.frames:
        changes["data.frames"] = frames
    return ("more-frames", changes, "uniform segments over the whole clip"
            + (f", {frames} frames" if "data.frames" in changes else "")) if changes else None


@plans("corrupt-clips")
def _drop_corrupt(f: Finding, config: RunConfig, k: int):
    names = [n for n in f.evidence.get("_exclude", []) if n not in config.data.exclude]
    if not names:
        return None
    return ("drop-broken-clips", {"data.exclude": sorted(set(config.data.exclude) | set(names))},
            f"leave out {len(names)} unreadable, blank or too-short clips (data.exclude)")


@plans("label-noise")
def _smooth_labels(f: Finding, config: RunConfig, k: int):
    if config.train.label_smoothing >= 0.1:
        return None
    return ("label-smoothing", {"train.label_smoothing": 0.1},
            "softens the pull of wrong labels until they are fixed")


@plans("over-regularized")
def _less_regularisation(f: Finding, config: RunConfig, k: int):
    return ("less-regularisation", {"train.weight_decay": 0.0, "model.dropout": 0.0},
            "no weight decay, no dropout")


@plans("overfitting")
def _more_regularisation(f: Finding, config: RunConfig, k: int):
    return ("more-regularisation", {"train.weight_decay": max(0.05, config.train.weight_decay),
                                    "model.dropout": max(0.3, config.model.dropout)},
            "stronger weight decay and dropout")


@plans("dead-units", "exploding-gradients")
def _join_learning_rate(f: Finding, config: RunConfig, k: int):
    """Both usually follow a too-high LR: they join that remedy when there is one."""
    changes: Changes = {}
    if f.code == "exploding-gradients" and not 0 < config.train.grad_clip <= 1.0:
        changes["train.grad_clip"] = 1.0
    return "learning-rate", changes, "clip the gradient norm at 1"


@plans("weights-not-loaded")
def _train_backbone(f: Finding, config: RunConfig, k: int):
    m = config.model
    if not m.freeze_backbone or m.pretrained or m.weights:
        return None  # weights were asked for but did not load: a file to fix, not a setting
    return ("train-backbone", {"model.freeze_backbone": False},
            "a frozen random backbone never learns: train it end to end")


@plans("too-few-samples", "oversized-model")
def _freeze(f: Finding, config: RunConfig, k: int):
    m = config.model
    # a frozen *random* backbone gives weak features: only with real weights
    if m.freeze_backbone or not (m.pretrained or m.weights):
        return None
    return ("frozen-backbone", {"model.freeze_backbone": True, "train.feature_views": 4},
            "train the head on cached features of the pretrained backbone (4 augmented views)")


def plan(report: Report, config: RunConfig, num_classes: int
         ) -> tuple[list[Remedy], list[Finding]]:
    """Remedies for the report's error / warning findings, most severe first. Findings whose
    planners name the same remedy merge into it (dead units and exploding gradients join the
    learning-rate remedy); a config key set by an earlier remedy is not changed again. The rest
    is advice: no config change answers it, or the config already does."""
    grouped: dict[str, Remedy] = {}
    advice: list[Finding] = []
    for f in report.findings:
        if f.severity == "info":
            continue
        planner = PLANNERS.get(f.code)
        out = planner(f, config, num_classes) if planner else None
        if out is None:
            advice.append(f)
            continue
        name, changes, why = out
        if name in grouped:
            r = grouped[name]
            r.codes.append(f.code)
            if changes and not r.changes:
                r.why = why  # the planner that changes something says why
            r.changes = {**changes, **r.changes}
        else:
            grouped[name] = Remedy(name, [f.code], dict(changes), why)
    remedies: list[Remedy] = []
    taken: set[str] = set()
    for r in grouped.values():
        r.changes = {k: v for k, v in r.changes.items() if k not in taken}
        if not r.changes:
            advice += [f for f in report.findings if f.code in r.codes]
            continue
        taken |= set(r.changes)
        remedies.append(r)
    return remedies, advice


def apply(config: RunConfig, remedies: list[Remedy]) -> RunConfig:
    """The config with the remedies' changes (keys starting with "_" are notes, not settings)."""
    changes: Changes = {}
    for r in remedies:
        changes.update({k: v for k, v in r.changes.items() if not k.startswith("_")})
    return with_overrides(config, changes) if changes else config
