"""The compiled Keras loss rebuilt in torch on integer labels: read_loss (what compile
was given) and make_loss_fn (the torch function)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from clipdoctor.errors import ClipdoctorError

from .loading import import_keras

KERAS_EPSILON = 1e-7  # keras.config.epsilon(): Keras clips probabilities to [eps, 1 - eps]


class ProbabilityCrossEntropy:
    """Keras' cross-entropy on probabilities (``from_logits=False``), on integer labels.

    As Keras computes it: each row divided by its sum, clipped to [1e-7, 1 - 1e-7], logged,
    then the negative log-likelihood of the (label-smoothed) one-hot target, averaged over the
    batch. Labels may also be given one-hot / soft as (B, K) floats."""

    def __init__(self, label_smoothing: float = 0.0, epsilon: float = KERAS_EPSILON) -> None:
        self.label_smoothing = float(label_smoothing)
        self.epsilon = float(epsilon)

    def __call__(self, outputs: Tensor, y: Tensor) -> Tensor:
        p = outputs / outputs.sum(-1, keepdim=True)
        logp = p.clamp(self.epsilon, 1.0 - self.epsilon).log()
        if y.ndim == 1 and not self.label_smoothing:
            return F.nll_loss(logp, y.long().to(logp.device))
        target = _targets(y, outputs.shape[-1], self.label_smoothing).to(logp)
        return -(target * logp).sum(-1).mean()

    def describe(self) -> str:
        smoothing = f", label smoothing {self.label_smoothing:g}" if self.label_smoothing else ""
        return f"Keras cross-entropy on probabilities (clipped at {self.epsilon:g}{smoothing})"


class KerasLossFn:
    """Any other Keras loss, called as Keras calls it: on targets in `label_format`
    ('one-hot': (B, K) floats made from the integer labels; 'sparse': the integer labels)."""

    def __init__(self, loss: Any, label_format: str) -> None:
        self.loss = loss
        self.label_format = label_format

    def __call__(self, outputs: Tensor, y: Tensor) -> Tensor:
        target = y.long() if self.label_format == "sparse" else _targets(y, outputs.shape[-1], 0.0)
        value = self.loss(target.to(outputs.device), outputs)
        return value.mean() if value.ndim else value  # a loss function gives one value per clip

    def describe(self) -> str:
        name = getattr(self.loss, "name", None) or getattr(self.loss, "__name__", "loss")
        return f"Keras {name} ({self.label_format} targets)"


def _targets(y: Tensor, k: int, smoothing: float) -> Tensor:
    """(B,) integer labels -> (B, K) one-hot, smoothed as Keras does: y (1 - s) + s / K.
    (B, K) float labels pass through (smoothed the same way)."""
    t = y.float() if y.ndim == 2 else F.one_hot(y.long(), k).float()
    return t * (1.0 - smoothing) + smoothing / k if smoothing else t


def _snake(name: str) -> str:
    """'SparseCategoricalCrossentropy' -> 'sparse_categorical_crossentropy', 'KLDivergence'
    -> 'kl_divergence'; snake-case names stay as they are."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


@dataclass(frozen=True)
class LossSpec:
    """The compiled loss as read from the model: its Keras name (snake case), from_logits,
    label smoothing, the target format it takes, and the Keras object itself."""

    name: str
    from_logits: bool
    label_smoothing: float
    label_format: str
    keras_loss: Any
    plain: bool = True  # reduced by the batch mean, no ignore_class, classes on the last axis


def read_loss(model: Any) -> LossSpec | None:
    """The model's compiled loss (``model.loss``: a string, a Keras loss object or function, as
    ``compile`` was given it and as a ``.keras`` file's ``compile_config`` restores it); None
    when the model was not compiled. Multi-output losses (dicts, lists) are refused."""
    loss = getattr(model, "loss", None)
    if loss is None:
        return None
    if isinstance(loss, (dict, list, tuple)):
        raise ClipdoctorError("the Keras model has one loss per output; clipdoctor diagnoses "
                              "single-output classifiers")
    config: dict = {}
    if isinstance(loss, str):
        name = loss
    elif hasattr(loss, "get_config") and not isinstance(loss, type):
        config = dict(loss.get_config() or {})
        name = type(loss).__name__
    else:
        name = getattr(loss, "__name__", type(loss).__name__)
    name = _snake(name)
    # Keras' sparse_* losses take integer labels, the others one-hot targets
    label_format = "sparse" if name.startswith("sparse") else "one-hot"
    plain = (config.get("reduction") in (None, "sum_over_batch_size", "mean")
             and config.get("ignore_class") is None and config.get("axis", -1) == -1)
    return LossSpec(name=name, from_logits=bool(config.get("from_logits", False)),
                    label_smoothing=float(config.get("label_smoothing", 0.0) or 0.0),
                    label_format=label_format, keras_loss=loss, plain=plain)


def make_loss_fn(spec: LossSpec | None) -> Callable[[Tensor, Tensor], Tensor] | None:
    """`loss_fn(outputs, y_int)` for a compiled loss.

    Cross-entropy (categorical or sparse) on logits is ``F.cross_entropy`` (a
    ``functools.partial`` with ``label_smoothing``), the forms the doctor knows as
    cross-entropy; on probabilities it is :class:`ProbabilityCrossEntropy`. Any other Keras
    loss, and a cross-entropy with another reduction or an ignore_class, is called as Keras
    calls it (:class:`KerasLossFn`)."""
    if spec is None:
        return None
    if spec.plain and spec.name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        if spec.from_logits:
            if spec.label_smoothing:
                return functools.partial(F.cross_entropy, label_smoothing=spec.label_smoothing)
            return F.cross_entropy
        return ProbabilityCrossEntropy(spec.label_smoothing)
    if callable(spec.keras_loss):
        return KerasLossFn(spec.keras_loss, spec.label_format)
    keras = import_keras()
    return KerasLossFn(keras.losses.get(spec.keras_loss), spec.label_format)
