"""Checks register themselves; `diagnose()` runs them within a time budget.

A check is a pure function `(probes: Probes) -> list[Finding]`: it reads measurements and
decides. It never prints and never trains anything itself. A check whose measurement could
not be taken is listed as skipped with the reason; a check that crashes becomes a reported
failure instead of sinking the whole report (cleanlab Datalab's rule).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from clipdoctor.config import RunConfig
from clipdoctor.diagnose.findings import CODES, Finding, Report
from clipdoctor.diagnose.probes import Budget, Context, ProbeSkipped, Probes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[[Probes], list[Finding]]
    codes: tuple[str, ...]
    order: int  # cheaper checks first, so a tight budget still gets them


CHECKS: dict[str, Check] = {}


def check(*codes: str, order: int = 50) -> Callable:
    """Register a check emitting `codes` (each must be in DESIGN §4's table)."""
    unknown = [c for c in codes if c not in CODES]
    if unknown or not codes:
        raise ValueError(f"check needs known finding codes, got unknown {unknown}")

    def deco(fn: Callable[[Probes], list[Finding]]) -> Callable:
        name = fn.__name__
        if name in CHECKS:
            raise ValueError(f"check '{name}' registered twice")
        CHECKS[name] = Check(name, fn, tuple(codes), order)
        return fn

    return deco


def _load_checks() -> None:
    """Import the check and probe modules (they register on import)."""
    from clipdoctor.diagnose.checks import (data, inputs, learning, model,  # noqa: F401
                                            model_capacity, temporal, training)
    from clipdoctor.diagnose.probes import (clip_scan, features, grad_stats,  # noqa: F401
                                            lr_range, overfit_batch, run, short_run,
                                            temporal_eval)
    from clipdoctor.diagnose.probes import data as _d, model as _m, training as _t  # noqa: F401
    from clipdoctor.diagnose.probes import model_behaviour, model_features  # noqa: F401


def run_checks(probes: Probes, names: list[str] | None = None
               ) -> tuple[list[Finding], list[dict], list[dict]]:
    """Run the registered checks (or `names`) -> (findings, skipped, failures)."""
    _load_checks()
    findings: list[Finding] = []
    skipped: list[dict] = []
    failures: list[dict] = []
    for c in sorted(CHECKS.values(), key=lambda c: (c.order, c.name)):
        if names is not None and c.name not in names:
            continue
        try:
            out = c.fn(probes) or []
        except ProbeSkipped as e:
            skipped.append({"name": c.name, "codes": list(c.codes), "reason": str(e)})
            continue
        except Exception as e:  # noqa: BLE001 — reported, never lost
            log.debug("check %s crashed", c.name, exc_info=True)
            failures.append({"name": c.name, "error": f"{type(e).__name__}: {e}"})
            continue
        bad = [f.code for f in out if f.code not in c.codes]
        if bad:
            failures.append({"name": c.name, "error": f"emitted undeclared codes {bad}"})
        findings += [f for f in out if f.code in c.codes]
    return findings, skipped, failures


def _default_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, y)


def build_context(data: Any = None, *, config: RunConfig | None = None,
                  model: nn.Module | None = None, loss_fn: Callable | None = None,
                  optimizer: Callable | None = None, budget_s: float = 120.0,
                  run: str | Path | None = None) -> Context:
    """The probes' context for the built-in model (from `config`) or the user's own module;
    `run` is a run folder whose recorded training (e.g. a non-finite loss) checks may read."""
    config = config or RunConfig()
    if model is not None:
        initial = copy.deepcopy(model).cpu()

        def make_model() -> nn.Module:
            return copy.deepcopy(initial)
    else:
        from clipdoctor.models.classifier import build_classifier

        num_classes = len(data.classes) if data is not None else 2

        def make_model() -> nn.Module:
            torch.manual_seed(config.seed)
            return build_classifier(config.model, num_classes)

    def make_optimizer(params) -> torch.optim.Optimizer:
        if optimizer is not None:
            return optimizer(params)
        return torch.optim.AdamW(params, lr=config.train.lr,
                                 weight_decay=config.train.weight_decay)

    return Context(config=config, make_model=make_model, loss_fn=loss_fn or _default_loss,
                   make_optimizer=make_optimizer, data=data, user_model=model is not None,
                   budget=Budget(budget_s), seed=config.seed,
                   run=Path(run) if run is not None else None)


def diagnose(data: Any = None, *, config: RunConfig | None = None, model: nn.Module | None = None,
             loss_fn: Callable | None = None, optimizer: Callable | None = None,
             budget_s: float = 120.0, checks: list[str] | None = None,
             run: str | Path | None = None) -> Report:
    """Run every check on `data` with the built-in model (`config`) or the user's `model`;
    with `run`, also what that run folder recorded (RUN/failure.json)."""
    started = time.perf_counter()
    ctx = build_context(data, config=config, model=model, loss_fn=loss_fn, optimizer=optimizer,
                        budget_s=budget_s, run=run)
    probes = Probes(ctx)
    findings, skipped, failures = run_checks(probes, checks)
    public = {name: ({k: v for k, v in value.items() if not str(k).startswith("_")}
                     if isinstance(value, dict) else value)
              for name, value in probes.values.items()}  # "_key": raw arrays, models
    for name, seconds in probes.seconds.items():
        if isinstance(public.get(name), dict):
            public[name]["seconds"] = seconds
    dataset = public.pop("dataset", {})
    model_info = public.pop("model_summary", {})
    return Report(findings=findings, probes=public,
                  dataset=dataset, model=model_info, skipped=skipped, failures=failures,
                  wall_s=time.perf_counter() - started)
