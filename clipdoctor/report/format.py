"""Formatting shared by the terminal and the HTML report: numbers, the facts of a run, the
count of findings per severity and the one-line verdict."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipdoctor.doctor.findings import Report


def fmt_number(v: Any) -> str:
    """Numbers short and readable: ints as they are, floats to 3 significant digits."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 100_000 else str(v)
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    return str(v)


def severity_counts(report: Report) -> dict[str, int]:
    counts = {"error": 0, "warning": 0, "info": 0}
    for f in report.findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    return counts


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def verdict(report: Report) -> str:
    """One line: what the findings mean for the loss."""
    c = severity_counts(report)
    not_run = []
    if report.skipped:
        not_run.append(f"{_plural(len(report.skipped), 'check')} skipped")
    if report.failures:
        not_run.append(f"{len(report.failures)} failed")
    tail = f" ({', '.join(not_run)})" if not_run else ""
    if c["error"]:
        head = _plural(c["error"], "error") + (f", {_plural(c['warning'], 'warning')}"
                                               if c["warning"] else "")
        return f"{head} — the loss cannot come down until the errors are fixed{tail}"
    if c["warning"]:
        return (f"{_plural(c['warning'], 'warning')} — nothing blocks the loss, "
                f"but these cost accuracy{tail}")
    return f"no errors or warnings: nothing found that keeps the loss high{tail}"


def slowest_probes(report: Report, n: int = 5) -> str:
    """The probes that took longest, "short_run 12.3 s, lr_range 4.1 s, ...", with the share
    of the wall time all probes took."""
    seconds = getattr(report, "probe_seconds", None) or {}
    if not seconds:
        return ""
    top = sorted(seconds.items(), key=lambda kv: -kv[1])[:n]
    total = sum(seconds.values())
    return (", ".join(f"{name} {s:.1f} s" for name, s in top)
            + (f" (all {len(seconds)} probes: {total:.1f} s)" if len(seconds) > n else ""))


def run_facts(report: Report) -> dict[str, Any]:
    """Dataset root, clips, classes, wall time and budget, each only when known."""
    d = report.dataset or {}
    facts: dict[str, Any] = {}
    if d.get("root"):
        facts["dataset"] = str(d["root"])
    counts = d.get("counts")
    if isinstance(d.get("clips"), int):
        facts["clips"] = d["clips"]
    elif isinstance(counts, dict):
        try:
            facts["clips"] = int(sum(sum(v) for v in counts.values() if v is not None))
        except (TypeError, ValueError):
            pass
    if d.get("classes") is not None:
        try:
            facts["classes"] = len(d["classes"])
        except TypeError:
            pass
    budget = getattr(report, "budget_s", None) or d.get("budget_s") or (report.model or {}).get(
        "budget_s")
    if report.wall_s:
        facts["wall time"] = f"{report.wall_s:.1f} s"
    if budget:
        facts["budget"] = f"{fmt_number(budget)} s"
    return facts
