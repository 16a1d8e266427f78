"""The doctor's report as ONE self-contained HTML file: no network, plots inline as PNG.

Every string from data (class names, paths, evidence) goes through Jinja's autoescape; the
report's JSON is embedded in `<script type="application/json" id="report-data">` so tools can
read it back (`json.loads` of that element's text equals `report.to_dict()`, minus `_raw`
keys). A Content-Security-Policy forbids every fetch and script, so the page stays offline.

Plots are drawn when their measurements are present and skipped when not; a plot that fails,
or a stored measurement that cannot be read back, becomes a one-line note, never a lost
report. What is read:

- the training probes, read back into their typed results (`doctor/probes/results.py`,
  `from_dict`): `short_run` (train / validation loss per epoch), `lr_range` (loss per LR, with
  the suggested LR `suggestion` and the configured one `config_lr` marked), `overfit_batch`
  (loss per step on one batch), `grad_stats` (`group_norms`: gradient norm per layer group
  and step)
- `dataset["counts"]`: `{"train": [...], "val": [...], "test": [...]}` by `dataset["classes"]`
- any probe's `per_class_recall` (`{class: recall}` or a list by class) and `confusion`
- `_frames` in a finding's evidence or a probe: uint8 (N, T, H, W, 3), names from
  `_frame_names` (or `_names`, `names`, `clips`, `paths`); one strip per clip
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined

from clipdoctor.doctor.findings import Report
from clipdoctor.doctor.probes.results import GradStats, LRRange, OverfitBatch, Result, ShortRun
from clipdoctor.report import plots
from clipdoctor.report.format import (fmt_number, run_facts, severity_counts, slowest_probes,
                                      verdict)

log = logging.getLogger(__name__)

MAX_ROWS = 20  # dict entries shown per evidence table
MAX_ITEMS = 12  # list items shown before "… N more"
MAX_TEXT = 400  # characters of one string value
MAX_DEPTH = 3  # nested tables deeper than this become one line of text
MAX_STRIPS = 8  # frame strips per finding or probe
MAX_CONFUSION = 40  # classes: beyond this the matrix is too big to read
_NAME_KEYS = ("_frame_names", "_names", "names", "clips", "paths")


def _env() -> Environment:
    env = Environment(loader=PackageLoader("clipdoctor", "report/templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt_number
    return env


# ---------------------------------------------------------------------------------------------
# values -> small trees the template renders as nested key/value tables

def _text(s: Any) -> dict:
    s = str(s)
    return {"t": "text", "text": s if len(s) <= MAX_TEXT else s[: MAX_TEXT - 1] + "…"}


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, np.generic))


def node(value: Any, depth: int = 0) -> dict:
    """A value as {"t": "text" | "table" | "list", ...}: readable, bounded in size."""
    if isinstance(value, np.ndarray):
        if value.size > 4 * MAX_ITEMS or value.ndim > 1:
            return _text(f"array {tuple(value.shape)} {value.dtype}")
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items() if not str(k).startswith("_")]
        if depth >= MAX_DEPTH:
            return _text(", ".join(f"{k}: {_flat(v)}" for k, v in items))
        return {"t": "table", "rows": [(k, node(v, depth + 1)) for k, v in items[:MAX_ROWS]],
                "more": max(0, len(items) - MAX_ROWS)}
    if isinstance(value, (list, tuple, set)):
        value = list(value)
        more = max(0, len(value) - MAX_ITEMS)
        tail = f" … {more} more ({len(value)} in all)" if more else ""
        if all(_is_scalar(v) for v in value) or depth >= MAX_DEPTH:
            return _text("[" + ", ".join(_flat(v) for v in value[:MAX_ITEMS]) + "]" + tail)
        return {"t": "list", "entries": [node(v, depth + 1) for v in value[:MAX_ITEMS]],
                "more": more}
    if value is None or isinstance(value, (bool, int, float)):
        return _text(fmt_number(value) if value is not None else "—")
    return _text(value)


def _flat(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_flat(x)}" for k, x in list(v.items())[:MAX_ITEMS]) + "}"
    if isinstance(v, (list, tuple)):
        return f"[{len(v)} items]"
    return fmt_number(v.item() if isinstance(v, np.generic) else v)


# ---------------------------------------------------------------------------------------------
# plots: each drawn in isolation; a failure is a note

def draw(title: str, make: Callable[[], Any], caption: str = "") -> dict:
    """{"title", "caption", "img" (base64 PNG) | "note"}; figures opened by `make` are closed."""
    before = set(plots.plt.get_fignums())
    try:
        with warnings.catch_warnings():  # a name in a script the font lacks: boxes, no noise
            warnings.filterwarnings("ignore", message="Glyph .* missing from")
            img = plots.figure_png_base64(make())
        return {"title": title, "caption": caption, "img": img, "note": ""}
    except Exception as e:  # noqa: BLE001 — a broken plot must not sink the report
        log.debug("plot %r failed", title, exc_info=True)
        return {"title": title, "caption": caption, "img": "",
                "note": f"could not draw this plot ({type(e).__name__}: {e})"}
    finally:
        for num in set(plots.plt.get_fignums()) - before:
            plots.plt.close(num)


def _seq(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray)) and len(v) > 0


def _by_class(values: Any, classes: list) -> dict[str, Any]:
    if isinstance(values, dict):
        return {str(k): v for k, v in values.items()}
    return {str(classes[i]) if i < len(classes) else str(i): v for i, v in enumerate(values)}


def _loss_plot(run: ShortRun) -> dict | None:
    curves = {k: v for k, v in (("train_loss", run.train_loss), ("val_loss", run.val_loss)) if v}
    if not curves:
        return None
    return draw("Loss per epoch", lambda: plots.loss_curves_figure(curves),
                "short training run: train and validation loss")


def _lr_plot(lr: LRRange) -> dict | None:
    if not lr.lrs:
        return None
    caption = (f"suggested learning rate {fmt_number(lr.suggestion)}, " if lr.suggestion
               else "") + f"configured {fmt_number(lr.config_lr)}"
    return draw("LR range test",
                lambda: plots.lr_range_figure(lr.lrs, lr.losses, lr.suggestion, lr.config_lr),
                caption)


def _batch_plot(o: OverfitBatch) -> dict | None:
    if not o.losses:
        return None
    return draw("Overfitting one batch",
                lambda: plots.loss_curves_figure({"batch loss": o.losses}, "loss on one batch",
                                                 xlabel="step"),
                "a healthy model drives this towards zero")


def _grad_plot(g: GradStats) -> dict | None:
    if not g.group_norms:
        return None
    return draw("Gradient norms", lambda: plots.grad_norms_figure(g.group_norms),
                "per layer group, log scale")


_TRAINING_PLOTS: tuple[tuple[str, type[Result], Callable[[Any], dict | None]], ...] = (
    ("short_run", ShortRun, _loss_plot), ("lr_range", LRRange, _lr_plot),
    ("overfit_batch", OverfitBatch, _batch_plot), ("grad_stats", GradStats, _grad_plot))


def _training_plots(probes: dict) -> list[dict]:
    """The plots of the typed training probes present in the report, each probe's stored JSON
    read back with its result class; one that cannot be read becomes a note."""
    out = []
    for name, kind, plot in _TRAINING_PLOTS:
        if name not in probes:
            continue
        try:
            if not isinstance(probes[name], dict):
                raise ValueError(f"expected a dict, got {type(probes[name]).__name__}")
            result = kind.from_dict(probes[name])
        except ValueError as e:
            out.append({"title": name, "caption": "", "img": "",
                        "note": f"could not read the '{name}' measurements: {e}"})
            continue
        if (drawn := plot(result)) is not None:
            out.append(drawn)
    return out


def _plots(report: Report) -> list[dict]:
    probes = report.probes or {}
    d = report.dataset or {}
    classes = list(d.get("classes") or [])
    out = _training_plots(probes)
    counts = d.get("counts")
    if isinstance(counts, dict) and classes:
        out.append(draw("Class counts", lambda: plots.class_counts_figure(counts, classes),
                        "clips per class in each split"))
    for name, value in probes.items():
        try:
            out += _class_plots(name, value, classes, draw)
        except Exception as e:  # odd probe values cost one note, never the report
            out.append({"title": name, "caption": "", "img": "",
                        "note": f"could not plot: {type(e).__name__}: {e}"})
    return out


def _class_plots(name: str, value: Any, classes: list, draw) -> list[dict]:
    """Recall-per-class and confusion-matrix plots of one probe value, when it has them."""
    out: list[dict] = []
    if not isinstance(value, dict):
        return out
    given = value.get("classes")
    names = [str(c) for c in given] if _seq(given) else list(classes)  # may be a count
    if _seq(value.get("per_class_recall")) or isinstance(value.get("per_class_recall"), dict):
        recall = _by_class(value["per_class_recall"], names)
        out.append(draw(f"Recall per class ({name})", lambda r=recall: plots.recall_figure(r)))
    conf = value.get("confusion")
    if _seq(conf):
        n = len(conf)
        labels = names if len(names) == n else [str(i) for i in range(n)]
        if n > MAX_CONFUSION:
            out.append({"title": f"Confusion matrix ({name})", "caption": "", "img": "",
                        "note": f"{n} classes: too many to draw; the matrix is in the JSON"})
        else:
            out.append(draw(f"Confusion matrix ({name})",
                            lambda c=conf, lb=labels: plots.confusion_figure(c, lb),
                            "rows: true class, columns: predicted"))
    return out


def _strips(holder: dict) -> list[dict]:
    """One frame strip per clip of `holder["_frames"]`, at most MAX_STRIPS."""
    frames = holder.get("_frames")
    if frames is None:
        return []
    try:
        clips = list(frames) if isinstance(frames, (list, tuple)) else list(np.asarray(frames))
        if isinstance(frames, np.ndarray) and frames.ndim == 4 and frames.shape[-1] in (1, 3):
            clips = [frames]  # one clip (T, H, W, C)
    except Exception as e:  # noqa: BLE001
        return [{"title": "frames", "caption": "", "img": "",
                 "note": f"could not read the frames ({type(e).__name__}: {e})"}]
    names = next((list(holder[k]) for k in _NAME_KEYS
                  if _seq(holder.get(k)) and len(holder[k]) == len(clips)), None)
    names = names or [f"clip {i + 1}" for i in range(len(clips))]
    out = [draw(str(n), lambda c=c: plots.frame_strip_figure(c))
           for c, n in zip(clips[:MAX_STRIPS], names)]
    if len(clips) > MAX_STRIPS:
        out.append({"title": "", "caption": "", "img": "",
                    "note": f"{len(clips) - MAX_STRIPS} more clips not shown"})
    return out


# ---------------------------------------------------------------------------------------------
# the page

def _public(value: Any) -> Any:
    """Without `_raw` keys (frames, models) at any depth: they are drawn, not serialised."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    return value


def report_json(report: Report) -> str:
    """`report.to_dict()` (minus `_raw` keys) as JSON safe inside a <script> element."""
    public = Report(findings=[replace(f, evidence=_public(f.evidence)) for f in report.findings],
                    probes=_public(report.probes), dataset=_public(report.dataset),
                    model=_public(report.model), skipped=report.skipped,
                    skipped_probes=report.skipped_probes, failures=report.failures,
                    wall_s=report.wall_s, probe_seconds=report.probe_seconds)
    text = json.dumps(public.to_dict(), ensure_ascii=False, default=str)
    # "<" never occurs outside strings in JSON; as \u003c no "</script>" or "<!--" can close
    # the element early. > and & likewise, for parsers that look for them.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _dataset_rows(d: dict) -> list[tuple[str, dict]]:
    rows = []
    for key in ("root", "format"):
        if d.get(key):
            rows.append((key, _text(d[key])))
    classes = d.get("classes")
    if classes is not None:
        rows.append(("classes", node(list(classes))))
    counts = d.get("counts")
    if isinstance(counts, dict):
        per_split = {}
        for split, v in counts.items():
            try:
                per_split[split] = int(sum(v))
            except (TypeError, ValueError):
                continue
        rows.append(("clips", _text(", ".join(f"{s} {n}" for s, n in per_split.items() if n)
                                    or "none")))
    skipped = d.get("skipped")
    if isinstance(skipped, list) and skipped:
        lines = [f"{s.get('path', '?')}: {s.get('reason', '')}" if isinstance(s, dict) else str(s)
                 for s in skipped]
        listing = {"t": "list", "entries": [_text(x) for x in lines[:MAX_ITEMS]],
                   "more": max(0, len(lines) - MAX_ITEMS)}
        rows.append(("unreadable files", {"t": "details", "summary": f"{len(lines)} files",
                                          "inner": listing}))
    elif skipped:
        rows.append(("unreadable files", node(skipped)))
    for key, value in d.items():
        if key not in ("root", "format", "classes", "counts", "skipped"):
            rows.append((str(key), node(value)))
    return [(k, v) for k, v in rows if not k.startswith("_")]


def _row(entry: Any) -> dict[str, str]:
    """A skipped / failed entry as text cells (lists joined, None empty)."""
    if not isinstance(entry, dict):
        return {"name": str(entry)}
    return {str(k): ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else
            "" if v is None else str(v) for k, v in entry.items()}


def context(report: Report) -> dict:
    """Everything the template shows, built here so the template never touches raw data."""
    findings, seen = [], set()
    for f in report.findings:
        anchor = f.code if f.code not in seen else f"{f.code}-{len(seen)}"
        seen.add(anchor)
        ev = f.evidence if isinstance(f.evidence, dict) else {"value": f.evidence}
        findings.append({"anchor": anchor, "code": f.code, "area": f.area,
                         "severity": f.severity, "title": f.title, "remedy": f.remedy,
                         "evidence": node(ev),
                         "strips": _strips(ev)})
    probe_strips = [(name, _strips(v)) for name, v in (report.probes or {}).items()
                    if isinstance(v, dict) and "_frames" in v]
    measurements = [(str(name), node(v if isinstance(v, dict) else {"value": v}))
                    for name, v in (report.probes or {}).items()]
    facts = run_facts(report)
    if slowest_probes(report):
        facts["slowest probes"] = slowest_probes(report)
    return {
        "verdict": verdict(report),
        "worst": report.worst() or "none",
        "counts": severity_counts(report),
        "facts": [(k, str(v)) for k, v in facts.items()],
        "dataset": _dataset_rows(report.dataset or {}),
        "model": node(report.model or {})["rows"] if isinstance(report.model, dict) else [],
        "findings": findings,
        "plots": _plots(report),
        "probe_strips": probe_strips,
        "measurements": measurements,
        "skipped": [_row(s) for s in report.skipped],
        "skipped_probes": [_row(s) for s in report.skipped_probes],
        "failures": [_row(s) for s in report.failures],
        "report_json": report_json(report),
        "written": datetime.now().isoformat(timespec="seconds"),
    }


def render_html(report: Report) -> str:
    return _env().get_template("report.html.j2").render(**context(report))


def write_html(report: Report, path: str | Path) -> Path:
    """Write the report page to `path` atomically (temp file + rename)."""
    from clipdoctor.io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, render_html(report))
    return path
