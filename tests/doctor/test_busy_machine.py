"""A verdict must not depend on how busy the machine is: the doctor plans its probes from
counted costs (`probes/cost.py`), not from the clock, so the same seed gives the same plan and
the same errors and warnings on an idle machine and on one whose cores are all taken."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

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


class CostlyCNNLSTM(nn.Module):
    """A user's CNN-LSTM whose forward also burns CPU in Python (say, a per-clip loop): its
    counted cost (`probes/cost.py`, operations) says almost nothing of its time."""

    def __init__(self, burn_s: float) -> None:
        super().__init__()
        self.burn_s = burn_s
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        until = time.process_time() + self.burn_s
        while time.process_time() < until:
            pass
        b, t = clips.shape[:2]
        f = self.conv(clips.flatten(0, 1)).mean((2, 3)).view(b, t, -1)
        return self.fc(self.rnn(f)[0][:, -1])


def test_the_safety_stop_ends_a_diagnosis_whose_model_costs_far_more_than_counted(
        monkeypatch, tmp_path):
    """The plan counts operations; the work clock stops every probe at SAFETY x the budget
    (GUARD_FLOOR_S at the least) after the diagnosis started. Lowered here to 1 x 4 s: the
    model below burns 0.1 s of CPU a forward, uncounted (unguarded, this diagnosis does 29 s of
    work; guarded, 8.5 s), so the guard must end it, and the report must say why probes were cut."""
    import clipdoctor.doctor.probes as probes

    monkeypatch.setattr(probes, "SAFETY", 1.0)
    monkeypatch.setattr(probes, "GUARD_FLOOR_S", 0.0)
    rng = np.random.default_rng(0)
    x = rng.random((32, 6, 3, 24, 24), dtype=np.float32)
    y = np.repeat(np.arange(4), 8)
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    started = time.process_time()
    report = diagnose(data, model=CostlyCNNLSTM(0.1), budget_s=4)
    work = time.process_time() - started
    cut = [p.get("stopped") for p in report.probes.values() if isinstance(p, dict)]
    reasons = " ".join(s["reason"] for s in report.skipped_probes)
    assert "budget" in cut or "did 1x the work" in reasons, (cut, reasons)
    assert work < 4 * 4, f"{work:.1f} s of CPU for a 4 s budget, guarded at 4 s"


def test_grouped_convolutions_count_at_their_cpu_cost():
    """A depthwise convolution's operation costs GROUPED_COST dense ones (memory-bound on a
    CPU): the same layer shapes count far more as depthwise than their raw operations say, so
    a plan on an EfficientNet (the reference backbone) is not several times short."""
    from clipdoctor.doctor.probes.cost import GROUPED_COST, forward_flops

    x = torch.randn(2, 16, 32, 32)
    dense, depthwise = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=16)
    raw_dense = 2 * 2 * 16 * 32 * 32 * 16 * 9  # 2 * output elements * (C_in / groups) * k * k
    assert forward_flops(dense, lambda: dense(x)) == pytest.approx(raw_dense, rel=0.01)
    assert forward_flops(depthwise, lambda: depthwise(x)) == pytest.approx(
        GROUPED_COST * raw_dense / 16, rel=0.01)
