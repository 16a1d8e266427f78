"""Typed results of the four training probes the report plots: `lr_range`, `short_run`,
`grad_stats` and `overfit_batch`.

Checks read their fields; `to_dict()` is the probe's JSON in the report (raw fields, such as
the short run's trained model, left out; a key the probe leaves out when it has no value is
omitted) and `from_dict()` reads that JSON back, for scripted tests (`Probes(values=...)`
takes the dicts) and for the HTML report. Parts of a probe that can be skipped are their own
small classes (`Skipped`), not optional keys.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import Any, get_args, get_type_hints

from torch import nn

TIMING_KEY = "seconds"  # added to each probe's JSON by the runner: not part of the measurement
OPTIONAL = {"omit_none": True}  # the probe leaves the key out when it has no value
RAW = {"raw": True}  # kept in memory for other probes, never in the JSON


def _revive(value: Any) -> Any:
    """JSON's stand-ins for non-finite numbers ("nan", "inf", "-inf") back to floats."""
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, list):
        return [_revive(v) for v in value]
    if isinstance(value, dict):
        return {k: _revive(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _read(hint: Any, value: Any) -> Any:
    """A JSON value as its field's type says: a dict becomes the Result class of the hint
    (the one of `A | B | None` whose keys it has)."""
    if not isinstance(value, dict):
        return value
    options = [t for t in (get_args(hint) or (hint,))
               if isinstance(t, type) and issubclass(t, Result)]
    errors = []
    for option in options:
        try:
            return option.from_dict(value)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError(" / ".join(errors))
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


class Result:
    """Base of the typed probe results: JSON out (`to_dict`) and back in (`from_dict`)."""

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("raw") or (value is None and f.metadata.get("omit_none")):
                continue
            out[f.name] = _plain(value)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Any:
        """The result from its JSON; ValueError naming unknown or missing keys."""
        hints = _hints(cls)
        known = {f.name for f in fields(cls) if not f.metadata.get("raw")}
        unknown = set(d) - known - {TIMING_KEY}
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
        try:
            return cls(**{k: _read(hints[k], _revive(v)) for k, v in d.items() if k in known})
        except TypeError as e:  # a required field missing
            raise ValueError(f"{cls.__name__}: {e}") from None


@dataclass(kw_only=True)
class Skipped(Result):
    """A part of a probe that did not run; JSON `{"skipped": reason}`."""

    skipped: str


# ---------------------------------------------------------------------------------------------
# lr_range

@dataclass(kw_only=True)
class LRRange(Result):
    """fastai's exponential LR sweep on a fresh model (`lr_range.py`)."""

    lrs: list[float]  # the LR of each point of the sweep
    losses: list[float]  # smoothed loss at each point
    raw_losses: list[float]
    steps: int
    planned_steps: int
    stopped: str  # "end", "budget", "non-finite loss" or "diverged"
    config_lr: float  # the run's configured LR (first parameter group)
    suggestion: float | None  # fastai's "valley"
    method: str  # how `suggestion` was chosen
    steepest: float | None  # Lightning's steepest fall
    min_loss_lr: float | None
    initial_loss: float | None
    min_loss: float | None


# ---------------------------------------------------------------------------------------------
# grad_stats

@dataclass(kw_only=True)
class NonFiniteStep(Result):
    """The first non-finite value of the gradient monitor."""

    step: int
    where: str  # "output", "loss" or "gradient of LAYER"
    inputs_finite: bool


@dataclass(kw_only=True)
class Activations(Result):
    """Zero ReLU outputs and saturated tanh / sigmoid inputs at one step."""

    relu_layers: int
    relu_zero_share_mean: float | None
    relu_zero_share_max: float | None
    relu_worst_layer: str | None
    relu_dead_channel_share: float | None  # channels zero for every input of the batch
    relu_per_layer: dict[str, float]
    saturation_layers: int
    saturation_share_max: float | None
    saturation_worst_layer: str | None
    saturation_per_layer: dict[str, float]


@dataclass(kw_only=True)
class ActivationSteps(Result):
    """Activation statistics at the first step and at the last one (absent when not reached)."""

    init: Activations | None = field(default=None, metadata=OPTIONAL)
    final: Activations | None = field(default=None, metadata=OPTIONAL)


@dataclass(kw_only=True)
class GradStats(Result):
    """Gradient norms per step at the config's LR on a fresh model (`grad_stats.py`)."""

    steps: int
    planned_steps: int
    lr: float
    first_layer: str  # the first / last module owning trainable parameters
    last_layer: str
    layers: int
    losses: list[float]
    total_norms: list[float]  # per step, before clipping
    first_norms: list[float]
    last_norms: list[float]
    ratios: list[float]  # first / last layer's norm per step
    group_norms: dict[str, list[float]]  # top-level child (backbone, pool, proj, head) -> per step
    first_mean_abs_grad: float | None
    activations: ActivationSteps
    nonfinite: NonFiniteStep | None


# ---------------------------------------------------------------------------------------------
# overfit_batch

@dataclass(kw_only=True)
class BatchFit(Result):
    """One attempt to drive a batch to near-zero loss at one LR."""

    lr: float
    steps: int
    losses: list[float]
    initial_loss: float
    final_loss: float
    min_loss: float
    target: float | None  # NEAR_ZERO_FRAC x the first loss
    reached: bool
    steps_to_near_zero: int | None
    nonfinite_step: int | None


@dataclass(kw_only=True)
class MemorisedGap(Result):
    """The fitted model's loss on the batch as it is and on augmented draws of it."""

    clean_loss: float
    augmented_loss: float  # mean over the draws
    draws: list[float]
    clips: int


@dataclass(kw_only=True)
class OverfitBatch(BatchFit):
    """Karpathy's one-batch test at the config's LR (`overfit_batch.py`); when it fits, how
    augmentation changes the loss; when not, a retry at the LR range test's suggestion."""

    clips: int
    classes_in_batch: int
    near_zero_frac: float
    config_lr: float
    augmentation: MemorisedGap | Skipped | None = field(default=None, metadata=OPTIONAL)
    retry: BatchFit | None = field(default=None, metadata=OPTIONAL)

    def runs(self) -> list[BatchFit]:
        """The attempts: at the config's LR, then the retry if there was one."""
        return [self] + ([self.retry] if self.retry is not None else [])


# ---------------------------------------------------------------------------------------------
# short_run

@dataclass(kw_only=True)
class NonFiniteLoss(Result):
    """The first non-finite training loss of a short run."""

    epoch: int
    step: int
    loss: float


@dataclass(kw_only=True)
class AugmentationGap(Result):
    """The short-run model's loss on training clips as they are and on one augmented draw."""

    clean_loss: float
    augmented_loss: float
    clips: int


@dataclass(kw_only=True)
class Curves(Result):
    """One short training run, epoch by epoch."""

    train_loss: list[float]
    train_acc: list[float]
    val_loss: list[float]
    val_acc: list[float]
    step_losses: list[float]
    epoch_s: list[float]
    epochs: int  # epochs finished
    planned_epochs: int
    stopped: str  # "end", "budget" or "non-finite loss"
    nonfinite: NonFiniteLoss | None
    steps: int
    lr: float
    augmented: bool
    regularized: bool  # weight decay and dropout as configured
    # predictions per class after the last epoch; absent when no epoch finished
    val_pred_counts: list[int] | None = field(default=None, metadata=OPTIONAL)


@dataclass(kw_only=True)
class ShortRun(Curves):
    """A few epochs at the config's LR and augmentation (`short_run.py`); its model is kept
    for `temporal_eval`."""

    classes: int
    train_clips: int
    val_clips: int
    val_counts: list[int]
    steps_per_epoch: int
    config_steps: int | None  # steps of the configured training; None for a user's model
    weight_decay: float
    dropout: bool
    augmentation_gap: AugmentationGap | None = None  # None: training uses no augmentation
    no_regularization: Curves | Skipped | None  # None: nothing to switch off
    model: nn.Module | None = field(default=None, repr=False, compare=False, metadata=RAW)

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.nonfinite is not None or not self.epochs:
            del out["augmentation_gap"]  # measured only after a finished, finite run
        return out


RESULTS: dict[str, type[Result]] = {"lr_range": LRRange, "grad_stats": GradStats,
                                     "overfit_batch": OverfitBatch, "short_run": ShortRun}


def read_result(name: str, value: Any) -> Any:
    """Probe `name`'s value as its typed result when it is one of RESULTS given as a dict
    (scripted, or read back from a report); any other value as it is."""
    if name in RESULTS and isinstance(value, dict):
        return RESULTS[name].from_dict(value)
    return value

