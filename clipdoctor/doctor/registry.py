"""The check registry: `@check` registers a check, `CHECKS` holds them by name.

A check is a pure function `(probes: Probes) -> list[Finding]`: it reads measurements and
decides. It never prints and never trains anything itself. It declares the finding codes it
may emit (each in DESIGN §4's table) and the probes it reads (`requires`); the runner
(`runner.py`) imports the check modules, plans the probes they require within the time budget
and runs them. This module imports no check module: the check modules import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from clipdoctor.doctor.findings import CODES, Finding
from clipdoctor.doctor.probes import Probes


@dataclass(frozen=True)
class Check:
    name: str  # the function's name: what `checks=[...]` and the report's lists use
    fn: Callable[[Probes], list[Finding]]
    codes: tuple[str, ...]
    order: int  # cheaper checks first, so a tight budget still gets them
    requires: tuple[str, ...]  # every probe the check reads


CHECKS: dict[str, Check] = {}


def check(*codes: str, order: int = 50, requires: tuple[str, ...] = ()) -> Callable:
    """Register a check emitting `codes` and reading the probes `requires`."""
    unknown = [c for c in codes if c not in CODES]
    if unknown or not codes:
        raise ValueError(f"check needs known finding codes, got unknown {unknown}")
    if not requires or isinstance(requires, str):
        raise ValueError(f"check {codes} must declare the probes it reads as a tuple of "
                         f"names (requires=(...)), got {requires!r}")

    def deco(fn: Callable[[Probes], list[Finding]]) -> Callable:
        name = fn.__name__
        if name in CHECKS:
            raise ValueError(f"check '{name}' registered twice")
        CHECKS[name] = Check(name, fn, tuple(codes), order, tuple(requires))
        return fn

    return deco
