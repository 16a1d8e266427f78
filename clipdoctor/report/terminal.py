"""Terminal output (rich): dataset summaries and progress bars. Only this package and cli.py print."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


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
