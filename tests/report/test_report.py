"""The doctor's report: terminal view, self-contained HTML page (opened in a real headless
Chromium), embedded JSON, plots that fail politely."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from clipdoctor.doctor.findings import CODES, Finding, Report
from clipdoctor.doctor.probes.results import (ActivationSteps, GradStats, LRRange,
                                                OverfitBatch, ShortRun)
from clipdoctor.report import html as report_html
from clipdoctor.report import plots
from clipdoctor.report.format import verdict
from clipdoctor.report.terminal import evidence_line, print_report

XSS = "<script>alert(1)</script>"
CLASSES = ["walk", "run", XSS, "日本"]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def moving_bar(n: int = 3, t: int = 6, h: int = 24, w: int = 32) -> np.ndarray:
    """(n, t, h, w, 3) uint8 clips: a bright bar moving right, one colour per clip."""
    out = np.full((n, t, h, w, 3), 30, np.uint8)
    for i in range(n):
        for j in range(t):
            x = j * (w - 4) // max(1, t - 1)
            out[i, j, :, x:x + 4, i % 3] = 230
    return out


def training_probes() -> dict:
    """The four plotted training probes as the runner stores them: their typed results' JSON,
    with the seconds each took."""
    lrs = list(np.geomspace(1e-6, 1.0, 40))
    losses = [2.3 - 0.02 * i if i < 30 else 2.3 + (i - 29) ** 2 for i in range(40)]
    lr = LRRange(lrs=lrs, losses=losses, raw_losses=losses, steps=40, planned_steps=40,
                 stopped="diverged", config_lr=0.1, suggestion=3e-4, method="valley",
                 steepest=1e-4, min_loss_lr=1.1e-2, initial_loss=2.3, min_loss=1.72)
    batch = [2.3 * 0.8 ** i for i in range(30)]
    fit = OverfitBatch(lr=0.1, steps=30, losses=batch, initial_loss=2.3, final_loss=batch[-1],
                       min_loss=batch[-1], target=0.115, reached=False, steps_to_near_zero=None,
                       nonfinite_step=None, clips=8, classes_in_batch=4, near_zero_frac=0.05,
                       config_lr=0.1)
    grads = GradStats(steps=3, planned_steps=3, lr=0.1, first_layer="backbone.conv1",
                      last_layer="head.fc", layers=3, losses=[2.3, 2.2, 2.1],
                      total_norms=[0.4, 0.3, 0.35], first_norms=[2e-6, 3e-6, 1e-6],
                      last_norms=[0.4, 0.3, 0.35], ratios=[5e-6, 1e-5, 3e-6],
                      group_norms={"backbone": [2e-6, 3e-6, 1e-6], "pool": [1e-3, 2e-3, 2e-3],
                                   "head": [0.4, 0.3, 0.35]},
                      first_mean_abs_grad=1e-8, activations=ActivationSteps(), nonfinite=None)
    run = ShortRun(train_loss=[2.3, 1.9, 1.6, 1.4, 1.3], train_acc=[0.3, 0.4, 0.5, 0.55, 0.6],
                   val_loss=[2.3, 2.0, 1.8, 1.7, 1.65], val_acc=[0.3, 0.35, 0.4, 0.45, 0.45],
                   step_losses=[2.31, 2.2, 2.0], epoch_s=[0.6] * 5, epochs=5, planned_epochs=5,
                   stopped="end", nonfinite=None, steps=40, lr=0.1, augmented=True,
                   regularized=True, val_pred_counts=[6, 3, 0, 2], classes=4, train_clips=77,
                   val_clips=11, val_counts=[5, 3, 1, 2], steps_per_epoch=8, config_steps=160,
                   weight_decay=0.01, dropout=False, augmentation_gap=None,
                   no_regularization=None)
    out = {name: result.to_dict() for name, result in
           (("short_run", run), ("lr_range", lr), ("overfit_batch", fit), ("grad_stats", grads))}
    out["short_run"]["seconds"], out["grad_stats"]["seconds"] = 3.2, 0.8
    return out


def sample_report(frames: bool = False) -> Report:
    """A report built by hand: one finding per severity (plus one more warning), every plot's
    data, hostile and non-ASCII class names, a skipped and a failed check."""
    train = [40, 20, 5, 12]
    findings = [
        Finding("class-imbalance", "warning",
                f"Training classes are imbalanced 8.0:1 ('walk' 40 clips, '{XSS}' 5)",
                {"ratio": 8.0, "largest": {"walk": 40}, "smallest": {XSS: 5},
                 "train_counts": dict(zip(CLASSES, train))},
                "Weight the loss by class (--class-weighting balanced).", effect=8.0),
        Finding("lr-too-high", "error",
                "Loss diverges at lr 0.1; the LR range test says about 3e-4",
                {"lr": 0.1, "suggested_lr": 3e-4, "loss_ratio": 12.4,
                 "losses": [2.3 + 0.5 * i for i in range(40)],
                 "per_epoch": [{"epoch": 1, "loss": 2.4}, {"epoch": 2, "loss": float("nan")}]},
                "Lower the learning rate to 3e-4 (--lr 3e-4).", effect=5.0),
        Finding("not-converged", "info", "Validation loss was still falling when training stopped",
                {"slope_per_epoch": -0.08, "epochs": 5}, "Train for more epochs (--epochs 20)."),
        Finding("static-clips", "warning", "3 of 12 clips barely change from frame to frame [bold]!",
                {"share": 0.25, "clips": ["walk/a [red]x[/red].mp4", "run/b.mp4", "日本/c.mp4"]},
                "Remove or re-cut the static clips.", effect=0.25),
    ]
    if frames:
        findings[-1].evidence.update({"_frames": moving_bar(3),
                                      "_frame_names": findings[-1].evidence["clips"]})
    probes = {
        **training_probes(),
        "evaluation": {"per_class_recall": dict(zip(CLASSES, [0.9, 0.6, 0.0, 0.4])),
                       "confusion": [[9, 1, 0, 0], [3, 6, 0, 1], [4, 1, 0, 0], [2, 1, 0, 2]]},
    }
    dataset = {"root": "/data/clips [bold]raw[/bold]", "format": "folder", "classes": CLASSES,
               "counts": {"train": train, "val": [5, 3, 1, 2], "test": [5, 3, 1, 2]},
               "skipped": [{"path": "run/broken [red]clip[/red].mp4", "reason": "no video stream"}]}
    return Report(findings=findings, probes=probes, dataset=dataset,
                  model={"backbone": "resnet18", "head": "lstm", "params": 11_700_000},
                  skipped=[{"name": "label_noise", "codes": ["label-noise"],
                            "reason": "time budget spent (120 s); raise --budget",
                            "probe": "label_issues"}],
                  skipped_probes=[{"name": "label_issues",
                                   "reason": "time budget spent (120 s); raise --budget",
                                   "checks": ["label_noise"]}],
                  failures=[{"name": "leakage", "error": "ValueError: boom [bold]x[/bold]"}],
                  wall_s=42.5, probe_seconds={"dataset": 0.4, "short_run": 21.3, "lr_range": 6.5,
                                              "grad_stats": 1.0, "behaviour": 0.2,
                                              "clip_scan": 2.0, "overfit_batch": 5.0})


def embedded_json(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert m, "no embedded report JSON"
    return json.loads(m.group(1))


def without_private(value):
    if isinstance(value, dict):
        return {k: without_private(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [without_private(v) for v in value]
    return value


def terminal_text(report: Report, width: int = 200) -> str:
    buf = io.StringIO()
    print_report(report, Console(file=buf, width=width, color_system=None, force_terminal=False))
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# terminal

def test_sample_uses_real_codes():
    assert all(f.code in CODES for f in sample_report().findings)


def test_terminal_lists_findings_most_severe_first_with_verdict():
    report = sample_report()
    out = terminal_text(report)
    for f in report.findings:
        assert f.code in out and f.title in out and f.remedy in out
    order = [out.index(c) for c in ("lr-too-high", "class-imbalance", "static-clips",
                                    "not-converged")]
    assert order == sorted(order)
    assert "1 error, 2 warnings — the loss cannot come down until the errors are fixed" in out
    assert "ratio=8 · largest=walk 40" in out  # the key evidence numbers in one line
    assert "label_noise (label_issues): time budget spent" in out and "leakage: ValueError" in out
    assert "not measured (1):" in out and "label_issues: time budget spent" in out
    assert "/data/clips [bold]raw[/bold]" in out and "clips: 99" in out and "42.5 s" in out
    assert ("time per probe: short_run 21.3 s, lr_range 6.5 s, overfit_batch 5.0 s, "
            "clip_scan 2.0 s, grad_stats 1.0 s (all 7 probes: 36.4 s)") in out


def test_terminal_prints_data_literally():
    """Class names, paths and errors holding rich markup are printed as they are."""
    out = terminal_text(sample_report())
    assert XSS in out
    assert "[bold]!" in out  # the title's markup, not bold text
    assert "boom [bold]x[/bold]" in out
    buf = io.StringIO()  # with colour on, the data's "[red]" must not become colour codes
    report = Report(findings=[Finding("corrupt-clips", "info", "clip [red]x[/red] :smile:")])
    print_report(report, Console(file=buf, width=120, force_terminal=True, color_system="truecolor"))
    assert "[red]x[/red] :smile:" in buf.getvalue()


def test_terminal_healthy_and_empty_reports():
    out = terminal_text(Report())
    assert "no errors or warnings: nothing found that keeps the loss high" in out
    info_only = Report(findings=[Finding("not-converged", "info", "still falling", {})])
    assert verdict(info_only).startswith("no errors or warnings")
    assert verdict(Report(findings=[Finding("overfitting", "warning", "t")])).startswith("1 warning —")


def test_evidence_line_is_short_and_skips_raw_values():
    ev = {"ratio": 3.14159, "_frames": np.zeros((2, 2)), "long": list(range(100)),
          "pair": {"a": 1, "b": 2.5}, "text": "x" * 500}
    assert evidence_line(ev) == "ratio=3.14 · pair=a 1, b 2.5"
    assert len(evidence_line({f"k{i}": i for i in range(100)})) <= 110


# ---------------------------------------------------------------------------------------------
# HTML

def test_html_has_every_finding_anchor_and_escapes_data(tmp_path):
    report = sample_report()
    path = report.to_html(tmp_path / "report.html")
    page = path.read_text("utf-8")
    for f in report.findings:
        assert f'id="{f.code}"' in page
    assert XSS not in page  # not even inside the JSON block
    assert page.count("<script") == 1  # only the JSON data block
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "日本" in page
    assert 'id="skipped-probes"' in page and "<code>label_issues</code>" in page
    assert "slowest probes: <b>short_run 21.3 s, lr_range 6.5 s" in page
    assert embedded_json(page)["probe_seconds"]["short_run"] == 21.3
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # atomic: no temp file left


def test_html_is_self_contained(tmp_path):
    page = sample_report(frames=True).to_html(tmp_path / "r.html").read_text("utf-8")
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:  # real PNGs
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # loss, LR range, one batch, gradients, counts, recall, confusion + a strip per flagged clip
    assert len(srcs) == 7 + 3


def test_embedded_json_round_trips(tmp_path):
    report = sample_report()
    page = report.to_html(tmp_path / "r.html").read_text("utf-8")
    assert embedded_json(page) == report.to_dict()
    report.to_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text("utf-8")) == embedded_json(page)
    # raw arrays (`_` keys) are drawn, not serialised
    framed = sample_report(frames=True)
    page = framed.to_html(tmp_path / "f.html").read_text("utf-8")
    assert embedded_json(page) == without_private(framed.to_dict())
    assert len(page) < 400_000


def test_json_block_cannot_be_closed_early():
    report = Report(findings=[Finding("label-noise", "warning", "</script><!-- & -->",
                                      {"note": "</SCRIPT>"})])
    page = report_html.render_html(report)
    assert page.lower().count("</script>") == 1
    assert embedded_json(page)["findings"][0]["title"] == "</script><!-- & -->"


def test_failing_plot_becomes_a_note_and_figures_are_closed(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        plots.plt.figure()  # opened, then the plot fails: it must still be closed
        raise RuntimeError("boom")

    monkeypatch.setattr(plots, "lr_range_figure", broken)
    before = len(plots.plt.get_fignums())
    page = sample_report(frames=True).to_html(tmp_path / "r.html").read_text("utf-8")
    assert "could not draw this plot (RuntimeError: boom)" in page
    assert page.count('src="data:image/png') == 6 + 3  # the other plots are all there
    assert 'id="lr-too-high"' in page
    assert len(plots.plt.get_fignums()) == before


@pytest.mark.parametrize("probes,dataset", [
    ({}, {}),
    ({"short_run": {"seconds": 1.0}, "lr_range": {"lrs": []}, "grad_stats": 5,
      "evaluation": {"confusion": "n/a", "per_class_recall": None}}, {"counts": {"train": None}}),
    ({"short_run": {"history": [{"train_loss": 2.0}, {"train_loss": float("nan"), "val_loss": 3}]},
      "lr_range": {"lrs": [1e-4, 1e-3], "losses": ["nan", 2.0], "suggestion": "n/a"},
      "grad_stats": {"backbone": [1e-3, 0.0, float("inf")], "head": [0.1, 0.2, 0.3]},
      "evaluation": {"per_class_recall": [0.5, 0.5], "confusion": [[1, 0], [0, 1]]},
      "odd": {"_frames": np.zeros((4, 8, 8, 1), np.float32)}},
     {"classes": ["a"], "counts": {"train": [3, 4]}, "root": None}),
    # a probe that counts its classes instead of naming them (seen in `demo --broken`)
    ({"label_issues": {"classes": 3, "per_class_recall": [0.1, 0.2, 0.3],
                       "confusion": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}},
     {"classes": ["a", "b", "c"]}),
])
def test_missing_or_odd_measurements_never_crash(tmp_path, probes, dataset):
    report = Report(findings=[Finding("nan-loss", "error", "loss is NaN", {"_frames": "bad"})],
                    probes=probes, dataset=dataset, model={"nested": {"a": {"b": {"c": {"d": 1}}}}})
    page = report.to_html(tmp_path / "r.html").read_text("utf-8")
    assert 'id="nan-loss"' in page
    assert embedded_json(page)["findings"][0]["code"] == "nan-loss"
    terminal_text(report)


def drawn_figures(report: Report, monkeypatch) -> dict:
    """The figures the HTML page draws, by the title of their axes."""
    figures = {}
    real = plots.figure_png_base64

    def keep(fig, dpi: int = 100) -> str:
        figures[fig.axes[0].get_title()] = fig
        return real(fig, dpi)

    monkeypatch.setattr(plots, "figure_png_base64", keep)
    report_html.render_html(report)
    return figures


def test_lr_range_plot_marks_the_suggested_and_the_configured_lr(monkeypatch):
    report = sample_report()
    lr = report.probes["lr_range"]
    ax = drawn_figures(report, monkeypatch)["LR range test"].axes[0]
    marks = {line.get_label(): line.get_xdata()[0] for line in ax.lines
             if len(set(line.get_xdata())) == 1}  # vertical lines
    assert marks == {f"suggested {lr['suggestion']:.2g}": lr["suggestion"],
                     f"configured {lr['config_lr']:.2g}": lr["config_lr"]}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(marks)


def test_gradient_plot_draws_each_layer_group_of_the_probe(monkeypatch):
    report = sample_report()
    ax = drawn_figures(report, monkeypatch)["gradient norm per layer group"].axes[0]
    groups = report.probes["grad_stats"]["group_norms"]
    assert [line.get_label() for line in ax.lines] == list(groups)
    assert [list(line.get_ydata()) for line in ax.lines] == list(groups.values())


def test_unreadable_training_measurements_become_a_note():
    report = Report(probes={"lr_range": {"lrs": [1e-4], "losses": [2.0]}, "grad_stats": 5,
                            "short_run": {**training_probes()["short_run"], "history": []}})
    notes = {p["title"]: p["note"] for p in report_html.context(report)["plots"]}
    assert "missing" in notes["lr_range"] and "config_lr" in notes["lr_range"]
    assert "int" in notes["grad_stats"] and "unknown keys ['history']" in notes["short_run"]


def test_long_and_nested_evidence_is_readable():
    page = report_html.render_html(sample_report())
    assert "… 28 more (40 in all)" in page  # the 40 losses, truncated with a count
    assert "<th>smallest</th>" in page  # a nested dict is its own small table


# ---------------------------------------------------------------------------------------------
# a real browser

@pytest.fixture
def chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs it "
                    "(apt-get install chromium chromium-driver)")
    if not Path(CHROMEDRIVER).exists():
        pytest.fail(f"{CHROMIUM} is there but {CHROMEDRIVER} is not: apt-get install chromium-driver "
                    "(or `make browser`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_in_headless_chromium(tmp_path, chromium):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    report = sample_report(frames=True)
    path = report.to_html(tmp_path / "report.html")
    driver = chromium
    driver.get(path.as_uri())

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 — no alert fired
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe

    for f in report.findings:
        title = driver.find_element(By.CSS_SELECTOR, f"#{f.code} .title")
        assert title.is_displayed() and title.text == f.title
    assert XSS in driver.find_element(By.TAG_NAME, "body").text  # shown literally
    assert "日本" in driver.find_element(By.TAG_NAME, "body").text
    assert len(driver.find_elements(By.TAG_NAME, "script")) == 1

    images = driver.find_elements(By.TAG_NAME, "img")
    assert len(images) == 10
    for img in images:
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)

    # no network: resources are data: URLs only, and the browser asked for nothing else
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(r.startswith("data:") for r in resources), resources
    requested = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    sent = [m["params"] for m in requested if m["method"] == "Network.requestWillBeSent"]
    ours = [p["request"]["url"] for p in sent if p.get("documentURL") == path.as_uri()]
    assert ours and all(u.startswith(("file:", "data:")) for u in ours), ours
    # nothing at all left the machine (chrome:// pages of the browser itself are local too)
    remote = [p["request"]["url"] for p in sent
              if p["request"]["url"].split(":")[0] in ("http", "https", "ws", "wss", "ftp")]
    assert not remote, remote

    data = driver.execute_script(
        "return JSON.parse(document.getElementById('report-data').textContent)")
    assert data == without_private(report.to_dict())

    # a full-page screenshot, to look at (kept when CLIPDOCTOR_SCREENSHOT names a file)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(height + 100, 8000))
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("CLIPDOCTOR_SCREENSHOT"):
        shutil.copy(shot, os.environ["CLIPDOCTOR_SCREENSHOT"])
