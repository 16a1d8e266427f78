"""Shared measurements ("probes"), computed once, on demand, within a time budget.

A probe is a function `(ctx: Context, probes: Probes) -> value` registered with
`@probe(name, needs=...)`, where `needs` names the probes it reads. Checks ask
`probes.get(name)`; the first ask computes it, later asks reuse the value. A probe that
cannot run (no data, user model without the needed structure, budget spent) raises
`ProbeSkipped(reason)`; the check asking for it is then reported as skipped with that reason.
Checks and probes see only what they declare (`Probes.only`): reading anything else is a bug,
raised as `UndeclaredProbe`.

The training probes share the time budget by declared `share`s; `Budget.plan` hands the shares
of probes no selected check needs to the ones that are needed.

Tests (and anyone replaying a report) build `Probes(values={...})` from scripted numbers:
checks never compute anything themselves, so each can be tested on measurements alone. The
four probes the report plots return typed results (`results.py`); their dicts are read back
into them on the way in.

Probe implementations live beside this file: the data probes in `data.py`, `clip_scan.py` and
`features.py`; the model probes in `model.py`, `model_behaviour.py` and `model_features.py`;
the training probes in `training.py` (the shared training data) and `lr_range.py`,
`overfit_batch.py`, `grad_stats.py`, `short_run.py`, `temporal_eval.py`; what a run folder
recorded in `run.py`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from clipdoctor.config import RunConfig
from clipdoctor.data.sources import SourceIndex
from clipdoctor.data.user import UserData
from clipdoctor.doctor.probes.results import read_result

log = logging.getLogger(__name__)


class ProbeSkipped(Exception):
    """A measurement that was not taken; the message says why (shown in the report). `probe`
    names the probe that was skipped; None when a check declines on what it measured."""

    def __init__(self, reason: str, probe: str | None = None) -> None:
        super().__init__(reason)
        self.probe = probe


class UndeclaredProbe(Exception):
    """A check or probe read a probe it does not declare: a bug in that check or probe."""


def default_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss when none is given: plain cross-entropy on logits (unweighted)."""
    return torch.nn.functional.cross_entropy(logits, y)


class RunLoss:
    """The built-in model's loss in the doctor: `train`'s own (`training.module.clip_loss`:
    cross-entropy with the run's class weights and label smoothing). The class weights are
    those `train` computes (`data.datamodule.class_weights` of the training split's labels,
    under `class_weighting: balanced`), fetched by `weights()` at the first call: the data is
    only read (decoded) when a probe needs the loss. Under `class_weighting: sampler`, where
    `train` draws class-balanced batches, the probes (which train on fixed batches) weight
    the loss with the same balanced weights instead: equal in expectation."""

    def __init__(self, class_weighting: str, label_smoothing: float,
                 weights: Callable[[], torch.Tensor | None]) -> None:
        self.class_weighting = class_weighting
        self.label_smoothing = float(label_smoothing)
        self._weights = weights
        self._resolved = False
        self._class_weights: torch.Tensor | None = None

    @property
    def class_weights(self) -> torch.Tensor | None:
        """The class weights the loss applies (None: unweighted)."""
        if not self._resolved:
            if self.class_weighting in ("balanced", "sampler"):
                self._class_weights = self._weights()
            self._resolved = True
        return self._class_weights

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from clipdoctor.training.module import clip_loss

        w = self.class_weights
        if w is not None and w.device != logits.device:
            w = w.to(logits.device)
        return clip_loss(w, self.label_smoothing)(logits, y)

    def describe(self) -> str:
        """The loss as the report names it."""
        how = {"balanced": "balanced class weights",
               "sampler": "balanced class weights, standing in for train's class-balanced "
                          "sampler"}.get(
                   self.class_weighting, "unweighted")
        smoothing = f", label smoothing {self.label_smoothing:g}" if self.label_smoothing else ""
        return f"cross_entropy ({how}{smoothing}; train's loss)"


def _cross_entropy_terms(fn: Callable) -> tuple[torch.Tensor | None, float] | None:
    """(class weights, label smoothing) of a loss known to be cross-entropy (the run's,
    clipdoctor's default, an nn.CrossEntropyLoss or a partial of F.cross_entropy on logits; a
    Keras cross-entropy on probabilities, `takes_probabilities`); None for any other loss."""
    import functools

    F = torch.nn.functional
    if isinstance(fn, RunLoss):
        return fn.class_weights, fn.label_smoothing
    if fn is default_loss or fn is F.cross_entropy:
        return None, 0.0
    if isinstance(fn, nn.CrossEntropyLoss):
        return fn.weight, float(fn.label_smoothing)
    if isinstance(fn, functools.partial) and fn.func is F.cross_entropy and not fn.args:
        return fn.keywords.get("weight"), float(fn.keywords.get("label_smoothing", 0.0))
    if takes_probabilities(fn):
        return None, float(fn.label_smoothing)
    return None


def takes_probabilities(fn: Callable) -> bool:
    """Is `fn` a cross-entropy on probabilities (a Keras loss compiled with
    from_logits=False, `interop.keras.ProbabilityCrossEntropy`), not on logits?"""
    from clipdoctor.interop.keras.losses import ProbabilityCrossEntropy

    return isinstance(fn, ProbabilityCrossEntropy)


def loss_input(loss_fn: Callable, logp: torch.Tensor) -> torch.Tensor:
    """What `loss_fn` takes for the log-probabilities `logp` (B, K): probabilities for a
    cross-entropy on probabilities, else `logp` itself (logits up to a constant)."""
    return logp.softmax(-1) if takes_probabilities(loss_fn) else logp


def loss_floor(loss_fn: Callable, y: torch.Tensor, k: int) -> float:
    """The lowest value `loss_fn` can take on labels `y` over `k` classes: 0 for cross-entropy,
    above 0 with label smoothing (the entropy of the smoothed targets; with class weights,
    PyTorch weights the smoothing term per class). Measured with the loss itself at its
    minimiser (per clip, p_c proportional to (1 - e) w_y [c = y] + e w_c / k). 0 for a loss
    that is not a known cross-entropy."""
    terms = _cross_entropy_terms(loss_fn)
    if terms is None or not terms[1] or len(y) == 0:
        return 0.0
    weight, eps = terms
    try:
        w = torch.ones(k) if weight is None else weight.detach().float().cpu()
        y = y.long().cpu()
        t = eps / k * w.expand(len(y), k).clone()
        t[torch.arange(len(y)), y] += (1 - eps) * w[y]
        with torch.no_grad():
            value = float(loss_fn(loss_input(loss_fn, t.clamp_min(1e-12).log()), y))
    except Exception:  # noqa: BLE001 — labels or weights that do not fit k: no floor known
        return 0.0
    return value if math.isfinite(value) else 0.0


def uniform_loss(loss_fn: Callable, y: torch.Tensor, k: int) -> float | None:
    """The loss of a uniform guess (equal logits, or probabilities 1/k for a loss on
    probabilities) on labels `y`: ln k for cross-entropy, with or without class weights or
    label smoothing (about ln k when both); None for a loss that is not a known cross-entropy
    (it may not take logits)."""
    if _cross_entropy_terms(loss_fn) is None or len(y) == 0:
        return None
    try:
        with torch.no_grad():
            value = float(loss_fn(loss_input(loss_fn, torch.zeros(len(y), k)), y.long().cpu()))
    except Exception:  # noqa: BLE001 — labels or weights that do not fit k
        return None
    return value if math.isfinite(value) else None


# The guard stops the diagnosis's probes SAFETY x its budget (GUARD_FLOOR_S at the least)
# after it started, on the work clock below. It only catches a plan far off (a model whose
# counted cost says nothing of its time, `cost.py`): one clock for the whole diagnosis, not
# one per probe, because a busy machine inflates the work clock of a small probe far more than
# the total (measured on 2 cores beside two busy loops: 6.7x for a 2.3 s LR sweep, 2x for the
# whole 15 s diagnosis), and a guard that cuts one probe early changes what the next is given.
SAFETY = 10.0
GUARD_FLOOR_S = 30.0


def work_clock() -> float:
    """Seconds of work done by this process: its CPU time over torch's threads. Another job
    on the same cores makes the wall clock run on (measured: a 15 s diagnosis went from 6.5 s
    to over 75 s beside two busy loops on 2 cores, torch's threads waiting on each other) but
    not this one, so the guards that use it do not cut a probe short on a busy machine."""
    return time.process_time() / max(1, torch.get_num_threads())


class Budget:
    """The time budget shared by all probes, as a plan: probes shrink (fewer clips, fewer
    steps) rather than overrun. `scale()` sizes counts to the budget, `allowance()` is what a
    probe with a share may spend, in the counted seconds of `cost.py` (never the clock: a busy
    machine gets the same plan, hence the same verdicts, only later).

    What a probe with a share leaves unspent (it was skipped, failed, or needed less; it says
    so with `charge()`) goes to the probes with a share still to run, in proportion to their
    shares, so the budget is spent before a probe is skipped for lack of it. The work clock
    (`work_clock`) only guards against a plan far off: every probe stops at `deadline()`, and
    `remaining()` (used for probes' minimum times) counts down to it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.started = work_clock()
        self.share_scale = 1.0  # set by plan(): every declared share times this
        self.pending = {name for name, spec in PROBES.items() if spec.share}  # not run yet
        self.granted: dict[str, float] = {}  # allowance given to each probe that asked
        self.charged: dict[str, float] = {}  # what each finished probe spent of it

    def plan(self, needed: Iterable[str]) -> None:
        """Give the shares of the probes outside `needed` to the needed ones, in proportion:
        the probes of a few selected checks spend what all of them would; with every check
        selected each probe keeps its declared share."""
        needed = set(needed)
        shares = {name: spec.share for name, spec in PROBES.items() if spec.share}
        used = sum(v for name, v in shares.items() if name in needed)
        self.share_scale = sum(shares.values()) / used if used else 1.0
        self.pending = {name for name in shares if name in needed}

    def share(self, name: str) -> float:
        """The planned share of the whole budget for probe `name`."""
        return PROBES[name].share * self.share_scale

    def pool(self) -> float:
        """Seconds of the whole budget for the probes with a share."""
        return sum(spec.share for spec in PROBES.values()) * self.seconds

    def allowance(self, name: str, minimum: float = 0.0) -> float:
        """Seconds probe `name` may spend: of the pool not yet committed (granted to running
        probes, spent by finished ones), its part by shares among the probes still to run.
        With nothing left unspent that is its planned share. A probe that cannot run below
        `minimum` seconds gets them when the pool still holds them and half the planned
        shares of the probes after it (the budget is spent before anything is skipped for
        lack of it). Fixed at the first ask."""
        if name not in self.granted:
            committed = sum(self.charged.get(n, g) for n, g in self.granted.items())
            waiting = {n for n in self.pending if n not in self.granted} | {name}
            weight = sum(self.share(n) for n in waiting)
            left = max(0.0, self.pool() - committed)
            granted = left * self.share(name) / weight
            later = sum(self.share(n) for n in waiting if n != name) * self.seconds / 2
            if granted < minimum <= left - later:
                granted = minimum
            self.granted[name] = granted
        return self.granted[name]

    def charge(self, name: str, seconds: float) -> None:
        """Probe `name` spent `seconds` (counted) of its allowance."""
        self.charged[name] = max(0.0, float(seconds))

    def finished(self, name: str, measured: bool) -> None:
        """Probe `name` is done: one that took no measurement spent nothing, one that did and
        charged nothing spent its whole allowance."""
        self.pending.discard(name)
        if name in self.granted and name not in self.charged:
            self.charged[name] = self.granted[name] if measured else 0.0

    def elapsed(self) -> float:
        """Seconds of work (`work_clock`) since the diagnosis started."""
        return work_clock() - self.started

    def deadline(self) -> float:
        """The work clock's reading at which every probe stops: SAFETY x the budget
        (GUARD_FLOOR_S at the least) after the diagnosis started."""
        return self.started + SAFETY * max(self.seconds, GUARD_FLOOR_S)

    def remaining(self) -> float:
        """Seconds of work left before the safety stop (`deadline`)."""
        return max(0.0, self.deadline() - work_clock())

    def scale(self, full: int, minimum: int = 1) -> int:
        """`full` at a 120 s budget, proportionally less for a smaller one, never below `minimum`."""
        return max(minimum, int(round(full * min(1.0, self.seconds / 120.0))))


@dataclass
class Context:
    """What probes may use: the data, the run config, how to make a fresh model and train it.

    `make_model` returns a new, freshly initialised model each call (the built-in
    ClipClassifier from `config.model`, or a deep copy of the user's module with its initial
    weights). `user_model` tells probes that the model's structure is unknown to clipdoctor.
    `make_optimizer(model)` builds the run's (or the user's) optimizer on such a fresh model,
    holding what the user trains (`doctor/optimizers.py`); given a list of parameters instead,
    the same class and hyper-parameters on those.
    """

    config: RunConfig
    make_model: Callable[[], nn.Module]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    data: Any = None  # SourceIndex, or UserData (the user's own Datasets)
    user_model: bool = False
    budget: Budget = field(default_factory=lambda: Budget(120))
    seed: int = 0
    cache: dict = field(default_factory=dict)  # shared scratch between probes (e.g. a data module)
    run: Path | None = None  # a run folder (`diagnose --run`): what its training recorded
    augment: Callable | None = None  # the user's own clip augmentation (`diagnose(augment=)`)
    # a Keras model's architecture facts (`interop.keras.KerasAdapter.facts()`, read from its
    # graph where torch inspection cannot see inside Keras layers); None for torch models
    keras: dict | None = None


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    fn: Callable[[Context, "Probes"], Any]
    min_s: float  # below this much remaining budget the probe is skipped
    share: float  # of the whole budget it may spend (0: sized by Budget.scale alone)
    needs: tuple[str, ...]  # the probes it reads


PROBES: dict[str, ProbeSpec] = {}


def probe(name: str, *, min_s: float = 0.0, share: float = 0.0,
          needs: tuple[str, ...] = ()) -> Callable:
    """Register a probe under a unique name, with the probes it reads (`needs`)."""

    def deco(fn: Callable[[Context, "Probes"], Any]) -> Callable:
        if name in PROBES:
            raise ValueError(f"probe '{name}' registered twice ({PROBES[name].fn.__module__})")
        PROBES[name] = ProbeSpec(name, fn, min_s, share, tuple(needs))
        return fn

    return deco


def with_needs(names: Iterable[str]) -> set[str]:
    """`names` and every probe they need, directly or through other probes."""
    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo += PROBES[name].needs if name in PROBES else ()
    return out


class Probes:
    """Lazily computed, memoised measurements (or scripted `values` for tests)."""

    def __init__(self, ctx: Context | None = None, values: dict[str, Any] | None = None) -> None:
        self.ctx = ctx
        self.values: dict[str, Any] = {k: read_result(k, v) for k, v in (values or {}).items()}
        self.skipped: dict[str, str] = {}
        # probes that raised (not ProbeSkipped): name -> "Type: message (at file:line)"; they
        # are in `skipped` too, with a reason pointing here (the report's `failures`)
        self.failed: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self._allowed: frozenset[str] | None = None  # set on views made by only()
        self._root = self

    def only(self, names: Iterable[str]) -> Probes:
        """A view that may read `names` only (what a check or probe declares); values, skips
        and timings are shared with these probes."""
        view = copy.copy(self)
        view._allowed = frozenset(names)
        return view

    def get(self, name: str) -> Any:
        if self._allowed is not None and name not in self._allowed:
            raise UndeclaredProbe(f"'{name}' is read but not declared (declared: "
                                  f"{', '.join(sorted(self._allowed))})")
        if name in self.values:
            return self.values[name]
        if name not in self.skipped:
            self._measure(name)
        if name in self.skipped:
            raise ProbeSkipped(self.skipped[name], probe=name)
        return self.values[name]

    def _measure(self, name: str) -> None:
        """Take measurement `name` into `values`, or its reason into `skipped`."""
        if self.ctx is None or name not in PROBES:
            self.skipped[name] = f"'{name}' was not measured"
            return
        spec = PROBES[name]
        budget = self.ctx.budget
        if budget.seconds < spec.min_s or budget.remaining() < spec.min_s:
            self.skipped[name] = (
                f"time budget {budget.seconds:g} s is below the {spec.min_s:g} s '{name}' "
                "needs at least (raise --budget)" if budget.seconds < spec.min_s else
                f"the diagnosis did {SAFETY:g}x the work its time budget ({budget.seconds:g} s) "
                f"planned (its model's cost is far from what was counted); '{name}' needs "
                f"about {spec.min_s:g} s more")
            budget.finished(name, measured=False)
            return
        started = time.perf_counter()
        try:
            self.values[name] = spec.fn(self.ctx, self._root.only(spec.needs))
        except ProbeSkipped as e:
            self.skipped[name] = str(e)
        except Exception as e:  # a broken probe (or user model) must not sink the report
            log.debug("probe %s failed", name, exc_info=True)
            self.failed[name] = failure_text(e)
            self.skipped[name] = (f"probe '{name}' failed (see failures): "
                                  f"{type(e).__name__}: {str(e)[:200]}")
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)
            self.ctx.budget.finished(name, measured=name in self.values)


def failure_text(e: BaseException) -> str:
    """An exception as the report lists it: type, message, and the innermost frame it was
    raised in (often inside the user's model)."""
    import traceback

    text = f"{type(e).__name__}: {e}"
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        f = frames[-1]
        text += f" (at {Path(f.filename).name}:{f.lineno} in {f.name})"
    return text


# ---------------------------------------------------------------------------------------------
# helpers shared by the probe modules

def need_data(ctx: Context) -> Any:
    if ctx.data is None:
        raise ProbeSkipped("no dataset given")
    return ctx.data


def _is_index(data: Any) -> bool:
    return isinstance(data, SourceIndex)


def is_user_data(data: Any) -> bool:
    """True for the user's own Datasets (UserData): no files, no clipdoctor pipeline."""
    return isinstance(data, UserData)


def _need_index(ctx: Context) -> SourceIndex:
    """The data as a clipdoctor SourceIndex; a user's own Dataset has no files to scan."""
    data = need_data(ctx)
    if is_user_data(data):
        raise ProbeSkipped("the data is your own Dataset: this measurement needs clipdoctor's "
                           "file pipeline (decoding, frame sampling), which it does not go "
                           "through")
    if not _is_index(data):
        raise ProbeSkipped(f"data is a {type(data).__name__}, not a clipdoctor dataset: files, "
                           "splits and the data pipeline are unknown")
    return data


def samples(ctx: Context) -> list:
    """Every usable sample of the diagnosed data, each with `split`, `label` and `name`: the
    readable clips of clipdoctor's data module, or the items of the user's own Datasets less
    those whose read raised (`clip_scan` reads them first when a data check runs)."""
    data = need_data(ctx)
    if is_user_data(data):
        return data.readable()
    return datamodule(ctx).samples


def data_classes(ctx: Context) -> list[str]:
    """The class names of the diagnosed data."""
    data = need_data(ctx)
    return list(data.classes) if is_user_data(data) else list(datamodule(ctx).classes)


def datamodule(ctx: Context):
    """The ClipDataModule of the diagnosed data (built and prepared once per diagnosis).

    Normalisation follows the built-in model's backbone (timm data config); for a user's
    model, the config's ImageNet defaults."""
    if "dm" not in ctx.cache:
        from clipdoctor.data.datamodule import ClipDataModule

        data = _need_index(ctx)  # a user's own Dataset has no data module
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
    """(clips (N, T, C, H, W) float, labels (N,)) through the real data pipeline; for the
    user's own Datasets, their items collated as they are (the user's layout and dtype, padded
    by their collate), with `train` their `augment=` applied when given."""
    data = need_data(ctx)
    if is_user_data(data):  # the user's items, collated as their DataLoader would
        x, y, *_ = data.with_augment(ctx.augment or data.augment).batch(
            samples, augment=train, seed=seed)
        return x, y
    dm = datamodule(ctx)
    ds = dm.dataset("train", train=train, samples=samples, num_clips=1, seed=seed)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items])
