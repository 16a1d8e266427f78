"""Shared measurements ("probes"), computed once, on demand, within a time budget.

A probe is a function `(ctx: Context, probes: Probes) -> dict` registered with `@probe(name)`.
Checks ask `probes.get(name)`; the first ask computes it, later asks reuse the value. A probe
that cannot run (no data, user model without the needed structure, budget spent) raises
`ProbeSkipped(reason)`; the check asking for it is then reported as skipped with that reason.

Tests (and anyone replaying a report) build `Probes(values={...})` from scripted numbers:
checks never compute anything themselves, so each can be tested on measurements alone.

Probe implementations live beside this file: the data probes in `data.py`, `clip_scan.py` and
`features.py`; `model.py`; the training probes in `training.py` (the shared training data) and
`lr_range.py`, `overfit_batch.py`, `grad_stats.py`, `short_run.py`, `temporal_eval.py`; what a
run folder recorded in `run.py`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from clipdoctor.config import RunConfig
from clipdoctor.data.sources import SourceIndex

log = logging.getLogger(__name__)


class ProbeSkipped(Exception):
    """A measurement that was not taken; the message says why (shown in the report)."""


class Budget:
    """Wall-clock budget shared by all probes. Probes shrink (fewer clips, fewer steps)
    rather than overrun: `fraction()` says how much of the total is still left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return max(0.0, self.seconds - self.elapsed())

    def fraction(self) -> float:
        return self.remaining() / self.seconds if self.seconds > 0 else 0.0

    def scale(self, full: int, minimum: int = 1) -> int:
        """`full` at a 120 s budget, proportionally less for a smaller one, never below `minimum`."""
        return max(minimum, int(round(full * min(1.0, self.seconds / 120.0))))


@dataclass
class Context:
    """What probes may use: the data, the run config, how to make a fresh model and train it.

    `make_model` returns a new, freshly initialised model each call (the built-in
    ClipClassifier from `config.model`, or a deep copy of the user's module with its initial
    weights). `user_model` tells probes that the model's structure is unknown to clipdoctor.
    """

    config: RunConfig
    make_model: Callable[[], nn.Module]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    data: Any = None  # SourceIndex
    user_model: bool = False
    budget: Budget = field(default_factory=lambda: Budget(120))
    seed: int = 0
    cache: dict = field(default_factory=dict)  # shared scratch between probes (e.g. a data module)
    run: Path | None = None  # a run folder (`diagnose --run`): what its training recorded


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    fn: Callable[[Context, "Probes"], dict]
    min_s: float  # below this much remaining budget the probe is skipped


PROBES: dict[str, ProbeSpec] = {}


def probe(name: str, *, min_s: float = 0.0) -> Callable:
    """Register a probe under a unique name."""

    def deco(fn: Callable[[Context, "Probes"], dict]) -> Callable:
        if name in PROBES:
            raise ValueError(f"probe '{name}' registered twice ({PROBES[name].fn.__module__})")
        PROBES[name] = ProbeSpec(name, fn, min_s)
        return fn

    return deco


class Probes:
    """Lazily computed, memoised measurements (or scripted `values` for tests)."""

    def __init__(self, ctx: Context | None = None, values: dict[str, Any] | None = None) -> None:
        self.ctx = ctx
        self.values: dict[str, Any] = dict(values or {})
        self.skipped: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def get(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in self.skipped:
            raise ProbeSkipped(self.skipped[name])
        if self.ctx is None or name not in PROBES:
            self.skipped[name] = f"'{name}' was not measured"
            raise ProbeSkipped(self.skipped[name])
        spec = PROBES[name]
        if self.ctx.budget.remaining() < spec.min_s:
            self.skipped[name] = (f"time budget spent ({self.ctx.budget.seconds:.0f} s); "
                                  f"'{name}' needs about {spec.min_s:.0f} s more (raise --budget)")
            raise ProbeSkipped(self.skipped[name])
        started = time.perf_counter()
        try:
            value = spec.fn(self.ctx, self)
        except ProbeSkipped as e:
            self.skipped[name] = str(e)
            raise
        except Exception as e:  # a broken probe must not sink the report
            log.debug("probe %s failed", name, exc_info=True)
            self.skipped[name] = f"probe '{name}' failed: {type(e).__name__}: {e}"
            raise ProbeSkipped(self.skipped[name]) from e
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)
        self.values[name] = value
        return value

    def has(self, name: str) -> bool:
        """True when the measurement exists or can be taken (computes it)."""
        try:
            self.get(name)
            return True
        except ProbeSkipped:
            return False


# ---------------------------------------------------------------------------------------------
# helpers shared by the probe modules

def need_data(ctx: Context) -> Any:
    if ctx.data is None:
        raise ProbeSkipped("no dataset given")
    return ctx.data


def _is_index(data: Any) -> bool:
    return isinstance(data, SourceIndex)


def _need_index(ctx: Context) -> SourceIndex:
    """The data as a clipdoctor SourceIndex; a user's own Dataset has no files to scan."""
    data = need_data(ctx)
    if not _is_index(data):
        raise ProbeSkipped(f"data is a {type(data).__name__}, not a clipdoctor dataset: files, "
                           "splits and the data pipeline are unknown")
    return data


def datamodule(ctx: Context):
    """The ClipDataModule of the diagnosed data (built and prepared once per diagnosis).

    Normalisation follows the built-in model's backbone (timm data config); for a user's
    model, the config's ImageNet defaults."""
    if "dm" not in ctx.cache:
        from clipdoctor.data.datamodule import ClipDataModule

        data = need_data(ctx)
        mean = std = None
        if not ctx.user_model:
            try:
                info = getattr(base_model(ctx), "info", None)
            except Exception as e:  # e.g. pretrained weights unreachable: data probes go on
                log.info("model not built (%s); data probes use ImageNet statistics", e)
                info = None
            if info is not None:
                mean, std = info.mean, info.std
        dm = ClipDataModule(data, ctx.config.data, mean=mean, std=std, seed=ctx.seed)
        dm.prepare()
        ctx.cache["dm"] = dm
    return ctx.cache["dm"]


def base_model(ctx: Context) -> nn.Module:
    """One fresh model kept for read-only probes (structure, shapes); train on make_model()."""
    if "model" not in ctx.cache:
        ctx.cache["model"] = ctx.make_model()
    return ctx.cache["model"]


def pick(samples: list, n: int, seed: int = 0, *, stratify: bool = True) -> list:
    """Up to n samples, seeded, spread over classes (round-robin) when `stratify`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if len(samples) <= n:
        return list(samples)
    if not stratify:
        return [samples[i] for i in sorted(rng.choice(len(samples), n, replace=False))]
    by_label: dict[int, list] = {}
    for i in rng.permutation(len(samples)):
        by_label.setdefault(samples[i].label, []).append(samples[i])
    out: list = []
    while len(out) < n:
        for label in sorted(by_label):
            if by_label[label] and len(out) < n:
                out.append(by_label[label].pop())
    return out


def clip_batch(ctx: Context, samples: list, *, train: bool = False, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips (N, T, C, H, W) float, labels (N,)) through the real data pipeline."""
    dm = datamodule(ctx)
    ds = dm.dataset("train", train=train, samples=samples, num_clips=1, seed=seed)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])
