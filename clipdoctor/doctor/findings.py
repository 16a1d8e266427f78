"""Finding, Report and the stable finding codes of DESIGN §4.

A finding says which cause of high loss holds, how sure we are (severity), the numbers it
rests on (evidence) and what to change (remedy). Codes are stable: new ones may be added,
none renamed or removed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEVERITIES = ("error", "warning", "info")  # error: the loss cannot come down until fixed

# code -> (area, holds when) — DESIGN §4, in its order
CODES: dict[str, tuple[str, str]] = {
    "class-imbalance": ("data", "largest / smallest class count is high enough to bias training"),
    "too-few-samples": ("data", "clips per class too few for the model's capacity"),
    "label-noise": ("data", "a share of labels disagree with confident out-of-sample predictions"),
    "corrupt-clips": ("data", "some clips cannot be decoded, are empty or too short"),
    "unnormalized-input": ("data", "input range / statistics do not match what the backbone expects"),
    "train-val-leakage": ("data", "near-duplicate clips, or clips of one source group, sit on both sides"),
    "split-class-mismatch": ("data", "a class is missing from a split, or class shares differ sharply"),
    "static-clips": ("data", "frames of a clip barely differ: no temporal signal to learn"),
    "frame-order-corrupted": ("data", "frames are read out of temporal order"),
    "inconsistent-augmentation": ("data", "augmentation changes geometry differently across frames"),
    "augmentation-too-strong": ("data", "loss on augmented clips stays far above the unaugmented loss"),
    "inconsistent-clip-shape": ("data", "frame sizes, channels or lengths vary without being handled"),
    "double-softmax": ("model", "the model outputs probabilities into a loss that expects logits"),
    "loss-output-mismatch": ("model", "output width, label range and loss do not fit together"),
    "bidirectional-last-step": ("model", "a bidirectional RNN is read at its last step only"),
    "batch-time-swapped": ("model", "batch and time axes are exchanged between the CNN and the RNN"),
    "unmasked-padding": ("model", "padded time steps reach the RNN / pooling unmasked"),
    "frozen-batchnorm-drift": ("model", "a frozen backbone's BatchNorm statistics still update"),
    "weights-not-loaded": ("model", "pretrained / given weights were not loaded, or only partly"),
    "feature-bottleneck": ("model", "per-frame features too narrow to separate the classes"),
    "motion-invisible-features": ("model", "pooled per-frame features barely change while the "
                                           "pixels move: pooling discards the motion"),
    "oversized-model": ("model", "parameters far exceed what the data can fit"),
    "bad-init-loss": ("model", "loss at initialisation far from ln(classes)"),
    "output-ignores-input": ("model", "the logits move no more than the noise floor when the "
                                      "clips are replaced by other clips"),
    "model-not-built": ("model", "the model could not be built (e.g. pretrained weights "
                                 "out of reach): only the data was examined"),
    "lr-too-high": ("training", "loss diverges or oscillates; LR range test says lower"),
    "lr-too-low": ("training", "loss barely moves; LR range test says higher"),
    "exploding-gradients": ("training", "gradient norms spike or grow without bound"),
    "vanishing-gradients": ("training", "early layers receive near-zero gradients"),
    "dead-units": ("training", "most ReLU outputs are zero or most tanh/sigmoid units saturate"),
    "cannot-overfit-batch": ("training", "a single small batch cannot be driven to near-zero loss"),
    "overfitting": ("training", "train loss falls while validation loss rises"),
    "underfitting": ("training", "train and validation loss both stay high"),
    "prediction-collapse": ("training", "the model predicts one or few classes for almost every clip"),
    "over-regularized": ("training", "removing weight decay / dropout lowers train loss a lot"),
    "not-converged": ("training", "loss was still falling clearly when training stopped"),
    "class-weights-unused": ("training", "classes are imbalanced and neither loss nor sampler weights them"),
    "nan-loss": ("training", "loss becomes NaN or infinite"),
    "temporal-order-ignored": ("temporal", "shuffling frame order leaves accuracy unchanged though order matters"),
    "no-temporal-gain": ("temporal", "the sequence model is no better than the best single frame"),
    "sequence-too-short": ("temporal", "too few frames sampled to cover the motion"),
}


def _jsonable(value: Any) -> Any:
    """Evidence values as plain JSON: numbers rounded, non-finite as strings, arrays as lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else str(value)
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    return str(value)


@dataclass
class Finding:
    """One cause that holds. `effect` ranks findings of one severity (how much the loss would
    move if fixed, in any unit comparable within a report; bigger first)."""

    code: str
    severity: str
    title: str
    evidence: dict = field(default_factory=dict)
    remedy: str = ""
    effect: float = 0.0

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown finding code '{self.code}'; add it to CODES (DESIGN §4)")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got '{self.severity}'")

    @property
    def area(self) -> str:
        return CODES[self.code][0]

    def to_dict(self) -> dict:
        public = {k: v for k, v in self.evidence.items() if not str(k).startswith("_")}
        return {"code": self.code, "area": self.area, "severity": self.severity,
                "title": self.title, "evidence": _jsonable(public), "remedy": self.remedy}


def rank(findings: list[Finding]) -> list[Finding]:
    """Severity first, then the size of the measured effect."""
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), -f.effect))


@dataclass
class Report:
    """What `diagnose` returns: ranked findings plus the measurements they rest on."""

    findings: list[Finding] = field(default_factory=list)
    probes: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    # checks not run: {"name", "codes", "reason", "probe" (the required probe that was not
    # measured; None when the check itself declined)}
    skipped: list[dict] = field(default_factory=list)
    # probes not measured: {"name", "reason", "checks" (those that needed it)}
    skipped_probes: list[dict] = field(default_factory=list)
    # what crashed: checks {"name", "error"}, and probes that raised (often inside the user's
    # model) {"name", "kind": "probe", "error", "checks" (those it kept from running)}
    failures: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    # wall-clock seconds each probe took (measured, skipped on its own or failed), in the
    # order they ran; the plan they were sized by is in `cost.py` terms (DESIGN §1)
    probe_seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.findings = rank(self.findings)

    def worst(self) -> str | None:
        return self.findings[0].severity if self.findings else None

    def codes(self, severity: str | None = None) -> list[str]:
        return [f.code for f in self.findings if severity is None or f.severity == severity]

    def to_dict(self) -> dict:
        return {"version": 1, "findings": [f.to_dict() for f in self.findings],
                "probes": _jsonable(self.probes), "dataset": _jsonable(self.dataset),
                "model": _jsonable(self.model), "skipped": self.skipped,
                "skipped_probes": self.skipped_probes, "failures": self.failures,
                "wall_s": round(self.wall_s, 2), "probe_seconds": self.probe_seconds}

    def to_json(self, path: str | Path) -> Path:
        from clipdoctor.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1, ensure_ascii=False))
        return Path(path)

    def to_html(self, path: str | Path) -> Path:
        from clipdoctor.report.html import write_html

        return write_html(self, Path(path))
