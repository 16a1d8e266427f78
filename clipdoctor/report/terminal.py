"""Terminal output (rich): dataset summaries, progress bars and the doctor's report.

Only this package and cli.py print. Strings that come from data (class names, paths,
evidence) are never parsed as rich markup: they go into `Text` objects or are escaped.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from clipdoctor.report.format import fmt_number, run_facts, slowest_probes, verdict

if TYPE_CHECKING:
    from clipdoctor.doctor.findings import Report


@contextmanager
def progress_bar(description: str, console: Console | None = None
                 ) -> Iterator[Callable[[int, int], None]]:
    """A `progress(done, total)` callback drawing a rich bar (silent when not a terminal)."""
    console = console or Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _fmt_range(r: dict | None, unit: str = "") -> str:
    if not r:
        return "-"
    lo, hi = r["min"], r["max"]
    return f"{lo}{unit}" if lo == hi else f"{lo}{unit} .. {hi}{unit}"


def print_info(summary: dict, console: Console | None = None) -> None:
    """The human view of `clipdoctor info`."""
    console = console or Console(soft_wrap=True)
    console.print(f"[bold]{summary['root']}[/]  layout: [cyan]{summary['format']}[/]  "
                  f"classes: {len(summary['classes'])}  readable clips: {summary['clips']}")
    splits = [s for s, v in summary["splits"].items() if v["clips"]]
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
    for c in summary["classes"]:
        table.add_row(c, *(str(summary["splits"][s]["per_class"][c]) for s in splits))
    table.add_row("[bold]total[/]", *(f"[bold]{summary['splits'][s]['clips']}[/]" for s in splits))
    console.print(table)
    res = summary["resolution"]
    w, h = res["width"], res["height"]
    size = "-" if not w else (f"{w['min']}x{h['min']}" if res["distinct"] == 1 else
                              f"{res['distinct']} sizes, width {_fmt_range(w)}, height {_fmt_range(h)}")
    console.print(f"frames: {_fmt_range(summary['frames'])}   duration: "
                  f"{_fmt_range(summary['duration'], ' s')}   size: {size}   "
                  f"fps: {_fmt_range(summary['fps'])}")
    skipped = summary["skipped"]
    if skipped:
        console.print(f"[yellow]{len(skipped)} file(s) cannot be used:[/]")
        for s in skipped:
            console.print(f"  {s['path']}: {s['reason']}", markup=False, highlight=False)


# ---------------------------------------------------------------------------------------------
# the doctor's report (what the HTML page shares with it is in `format.py`)

SEVERITY_STYLE = {"error": "bold white on red", "warning": "bold black on yellow",
                  "info": "bold white on blue"}
_VERDICT_STYLE = {"error": "bold red", "warning": "bold yellow", None: "bold green"}


def _short(v: Any, limit: int = 40) -> str | None:
    """A scalar (or small flat dict / list of scalars) in a few characters; None when too big."""
    if hasattr(v, "tolist") and getattr(v, "ndim", 1) == 0:
        v = v.tolist()
    if v is None or isinstance(v, (bool, int, float)):
        return fmt_number(v)
    if isinstance(v, str):
        return v if len(v) <= limit else None
    if isinstance(v, dict) and 0 < len(v) <= 3 and all(_is_scalar(x) for x in v.values()):
        return ", ".join(f"{k} {fmt_number(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)) and 0 < len(v) <= 4 and all(_is_scalar(x) for x in v):
        return "[" + ", ".join(fmt_number(x) for x in v) + "]"
    return None


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 30)


def evidence_line(evidence: dict, width: int = 110) -> str:
    """The key numbers of a finding's evidence in one line (big values and `_raw` keys left out)."""
    parts = []
    for key, value in (evidence or {}).items():
        if str(key).startswith("_"):
            continue
        text = _short(value)
        if text is not None:
            parts.append(f"{key}={text}")
    line = " · ".join(parts)
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


def print_report(report: "Report", console: Console | None = None) -> None:
    """The human view of `clipdoctor diagnose`: facts, findings most severe first, checks that
    did not run (with the probe they missed), measurements not taken, and a one-line verdict."""
    console = console or Console()
    header = Text("clipdoctor diagnosis", style="bold")
    for key, value in run_facts(report).items():
        header.append(f"   {key}: ", style="dim")
        header.append(str(value), style="cyan" if key == "dataset" else "")
    console.print(header)

    if report.findings:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column()
        for f in report.findings:  # already ranked: severity, then effect
            body = Text()
            body.append(f.code, style="bold")
            body.append(f"  ({f.area})  ", style="dim")
            body.append(f.title)
            line = evidence_line(f.evidence)
            if line:
                body.append("\nevidence  ", style="dim")
                body.append(line)
            if f.remedy:
                body.append("\nremedy    ", style="dim")
                body.append(f.remedy, style="green")
            grid.add_row(Text(f" {f.severity.upper()} ", style=SEVERITY_STYLE[f.severity]), body)
            grid.add_row("", "")
        console.print()
        console.print(grid)
    else:
        console.print()

    if report.skipped:
        console.print(Text(f"skipped ({len(report.skipped)}):", style="dim bold"))
        for s in report.skipped:
            probe = f" ({s['probe']})" if s.get("probe") else ""
            console.print(Text(f"  {s.get('name', '?')}{probe}: {s.get('reason', '')}",
                               style="dim"))
    if report.skipped_probes:
        console.print(Text(f"not measured ({len(report.skipped_probes)}):", style="dim bold"))
        for s in report.skipped_probes:
            console.print(Text(f"  {s['name']}: {s['reason']}", style="dim"))
    if report.failures:
        console.print(Text(f"failures ({len(report.failures)}): what they cover was not "
                           "examined", style="red bold"))
        for s in report.failures:
            if s.get("kind") == "probe":
                stopped = ", ".join(s.get("checks") or []) or "none"
                console.print(Text(f"  probe {s.get('name', '?')}: {s.get('error', '')} "
                                   f"(checks not run: {stopped})", style="red"))
            else:
                console.print(Text(f"  {s.get('name', '?')}: {s.get('error', '')}", style="red"))
    slowest = slowest_probes(report)
    if slowest:
        console.print(Text(f"time per probe: {slowest}", style="dim"))
    worst = report.worst() if report.worst() in ("error", "warning") else None
    console.print(Text(verdict(report), style=_VERDICT_STYLE[worst]))


def _acc_loss(summary: dict) -> str:
    loss = summary["val_loss"]
    loss = f"{loss:.3f}" if isinstance(loss, (int, float)) else str(loss)
    failed = f", {summary['failed']} diverged" if summary.get("failed") else ""
    return f"{summary['balanced_acc']:.3f} ± {summary['balanced_acc_std']:.3f}  loss {loss}{failed}"


def _changes(changes: dict) -> str:
    return ", ".join(f"--{k.split('.')[-1].replace('_', '-')} "
                     + (f"[{len(v)} clips]" if k == "data.exclude" else
                        " ".join(map(str, v)) if isinstance(v, list) else str(v))
                     for k, v in changes.items())


def print_repair(result: Any, console: Console | None = None) -> None:
    """The remedies `repair` tried, each next to the trial that left it out, then before and
    after: validation balanced accuracy (mean ± sd over seeds) and loss."""
    console = console or Console()
    d = result.to_dict()
    seeds = len(result.before.runs)
    table = Table(title=f"repair: validation balanced accuracy (mean ± sd, {seeds} seeds) / loss",
                  title_justify="left")
    table.add_column("configuration", ratio=2)
    table.add_column("changes", ratio=2)
    table.add_column("balanced acc / loss", no_wrap=True)
    table.add_column("kept", no_wrap=True)
    table.add_row("before (as given)", "", Text(_acc_loss(d["before"])), "")
    if d["all"] and len(d["remedies"]) > 1:
        table.add_row("every remedy", "", Text(_acc_loss(d["all"])), "")
    for r in d["remedies"]:
        name = Text(r["name"])
        name.append("\n" + ", ".join(r["codes"]), style="dim")
        without = Text("without: " + _acc_loss(r["without"]), style="dim") if r["without"] else ""
        table.add_row(name, Text(_changes(r["changes"])), without,
                      Text("yes", style="green") if r["kept"] else Text("no", style="dim"))
    table.add_row(Text("after (kept remedies)", style="bold"), "",
                  Text(_acc_loss(d["after"]), style="bold"), "")
    console.print(table)
    for a in d["advice"]:
        console.print(Text(f"advice ({a['code']}): {a['remedy']}", style="dim"))
    change = d["change"]
    loss = "n/a" if change["val_loss"] is None else f"{change['val_loss']:+.3f}"
    style = "bold green" if d["improved"] else "bold yellow"
    console.print(Text(f"balanced accuracy {change['balanced_acc']:+.3f}, validation loss {loss}"
                       f" (chance {d['chance']:.3f}); repaired config: {d['config']}", style=style))
    if d["improved"]:
        console.print(Text(f"next: clipdoctor train DATA --config {d['config']}", style="dim"))
