"""The check registry: `@check` registers a check, `CHECKS` holds them by name.

A check is a pure function `(probes: Probes) -> list[Finding]`: it reads measurements and
decides. It never prints and never trains anything itself. It declares the finding codes it
may emit (each in DESIGN §4's table) and the probes it reads (`requires`); the runner
(`runner.py`) imports the check modules, plans the probes they require within the time budget
and runs them. This module imports no check module: the check modules import it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from clipdoctor.doctor.findings import CODES, Finding
from clipdoctor.doctor.probes import Probes, ProbeSkipped

# The probes that record how many optimizer steps trained the model they hand on: the short
# run (`ShortRun.steps`) and the temporal evaluation of its model (`temporal_eval["steps"]`).
# A check declaring `min_steps` must require one of them; the first one it requires counts.
STEP_PROBES = ("short_run", "temporal_eval")


@dataclass(frozen=True)
class Check:
    name: str  # the function's name: what `checks=[...]` and the report's lists use
    fn: Callable[[Probes], list[Finding]]
    codes: tuple[str, ...]
    order: int  # cheaper checks first, so a tight budget still gets them
    requires: tuple[str, ...]  # every probe the check reads
    # optimizer steps of training the check needs before its verdict means anything; with
    # fewer it is skipped ("needs N optimizer steps, the budget allowed M"). 0: no minimum
    min_steps: int = 0


CHECKS: dict[str, Check] = {}


def steps_trained(value: Any) -> tuple[int | None, str]:
    """(optimizer steps, how they were spent) recorded by a STEP_PROBES value: a ShortRun (or
    its dict) or `temporal_eval`'s dict; (None, "") when it records none (e.g. a run stopped
    by a non-finite loss, which the checks judge on their own)."""
    get = value.get if isinstance(value, dict) else (lambda k, d=None: getattr(value, k, d))
    if get("nonfinite") is not None:
        return None, ""
    steps = get("steps")
    if steps is None:
        return None, ""
    epochs, per_epoch = get("epochs"), get("steps_per_epoch")
    how = (f"{epochs} epochs of {per_epoch} steps" if epochs is not None and per_epoch
           else f"{epochs} epochs" if epochs is not None else "")
    return int(steps), how


def require_steps(probes: Probes, min_steps: int, requires: tuple[str, ...]) -> None:
    """ProbeSkipped when the model a check judges was trained for fewer than `min_steps`
    optimizer steps. A step probe that was not measured is left to the check (it is skipped
    with that probe's own reason, or decides on what it has)."""
    source = next(p for p in STEP_PROBES if p in requires)
    try:
        value = probes.get(source)
    except ProbeSkipped:
        return
    steps, how = steps_trained(value)
    if steps is not None and steps < min_steps:
        raise ProbeSkipped(
            f"needs {min_steps} optimizer steps, the budget allowed {steps}"
            + (f" ({source}: {how})" if how else "") + "; raise --budget for a verdict")


def check(*codes: str, order: int = 50, requires: tuple[str, ...] = (), min_steps: int = 0,
          unless: Callable[[Probes], None] | None = None) -> Callable:
    """Register a check emitting `codes` and reading the probes `requires`. `min_steps`: the
    optimizer steps of training its verdict needs (read from the first of STEP_PROBES it
    requires); with fewer the check is skipped, never judged on too little evidence.
    `unless(probes)` raises ProbeSkipped when the check has nothing to judge at all (e.g. the
    output ignores the input); it runs first, so its reason wins over the steps rule."""
    unknown = [c for c in codes if c not in CODES]
    if unknown or not codes:
        raise ValueError(f"check needs known finding codes, got unknown {unknown}")
    if not requires or isinstance(requires, str):
        raise ValueError(f"check {codes} must declare the probes it reads as a tuple of "
                         f"names (requires=(...)), got {requires!r}")
    if min_steps and not any(p in STEP_PROBES for p in requires):
        raise ValueError(f"check {codes} declares min_steps={min_steps} but requires none of "
                         f"the probes that count steps {STEP_PROBES}")

    def deco(fn: Callable[[Probes], list[Finding]]) -> Callable:
        name = fn.__name__
        if name in CHECKS:
            raise ValueError(f"check '{name}' registered twice")
        run = fn
        if min_steps or unless is not None:
            @functools.wraps(fn)
            def run(probes: Probes) -> list[Finding]:
                if unless is not None:
                    unless(probes)
                if min_steps:
                    require_steps(probes, min_steps, tuple(requires))
                return fn(probes)
        CHECKS[name] = Check(name, run, tuple(codes), order, tuple(requires), int(min_steps))
        return fn

    return deco
