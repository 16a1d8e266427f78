"""A verdict must not depend on how busy the machine is: the doctor plans its probes from
counted costs (`probes/cost.py`), not from the clock, so the same seed gives the same plan and
the same errors and warnings on an idle machine and on one whose cores are all taken."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.demo import demo_config
from clipdoctor.doctor.runner import diagnose


@contextmanager
def cpu_hog(processes: int):
    """`processes` busy loops, one per core, for the duration of the block."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(processes)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def _loud(report) -> list[tuple[str, str]]:
    return sorted((f.code, f.severity) for f in report.findings
                  if f.severity in ("error", "warning"))


def _plan(report) -> dict:
    p = report.probes
    return {"training_data": {k: p["training_data"][k]
                              for k in ("train_clips", "val_clips", "step_s")},
            "lr_range": ({k: p["lr_range"][k] for k in ("planned_steps", "steps")}
                         if "lr_range" in p else None),
            "overfit_batch": p["overfit_batch"]["steps"] if "overfit_batch" in p else None,
            "short_run": ({k: p["short_run"][k] for k in ("planned_epochs", "steps")}
                          if "short_run" in p else None),
            "skipped": sorted(s["name"] for s in report.skipped)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("busy") / "data"
    generate(root, clips_per_class=16, frames=8, size=32,
             classes=["move_left", "move_right", "grow", "shrink"], imbalance=4.0, seed=5)
    return load_source(root)


def test_the_same_verdicts_on_an_idle_and_a_busy_machine(data, tmp_path):
    config = demo_config(tmp_path / "cache", seed=0, **{"train.lr": 3.0, "data.size": 32,
                                                        "train.class_weighting": "none"})
    idle = diagnose(data, config=config, budget_s=15)
    with cpu_hog(os.cpu_count() or 2):
        busy = diagnose(data, config=config, budget_s=15)
    assert _loud(idle), "the planted faults (LR 3, unweighted imbalance) must be found"
    why = {"idle": (idle.wall_s, idle.skipped), "busy": (busy.wall_s, busy.skipped)}
    assert _loud(busy) == _loud(idle), why
    assert _plan(busy) == _plan(idle), why
    assert busy.wall_s > 0 and idle.wall_s > 0
