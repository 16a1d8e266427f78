"""Non-finite loss: training stops at the first NaN / Inf loss with one line naming stage, epoch
and step and the likely cause, keeps the last good checkpoint, and records the failure so that
`diagnose --run RUN` reports `nan-loss` with that evidence."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clipdoctor.config import RunConfig, with_overrides
from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.doctor.checks.training import nan_loss
from clipdoctor.doctor.probes import Probes
from clipdoctor.training.checkpoint_io import load_checkpoint_file
from clipdoctor.training.features import FeatureDataset
from clipdoctor.training.guards import NonFiniteLoss
from clipdoctor.training.run import train

TINY = {
    "model.backbone": "test_resnet", "model.pretrained": False, "model.proj_dim": 32,
    "model.hidden": 32, "data.frames": 6, "data.frame_size": 36, "data.size": 32,
    "data.batch_size": 8, "train.patience": 50,
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("nan") / "data"
    generate(root, clips_per_class=12, frames=10, size=32, classes=["move_left", "move_right"])
    return root


def _config(tmp_path, **extra) -> RunConfig:
    return with_overrides(RunConfig(), {**TINY, "data.cache_dir": tmp_path / "cache", **extra})


def _finite(path) -> bool:
    state = load_checkpoint_file(path)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_huge_lr_stops_at_the_first_nonfinite_loss(pair, tmp_path):
    # AdamW's decoupled decay at lr 1e4 multiplies the weights by (1 - 1e4 * 0.01) = -99 a
    # step: they overflow to Inf, then the loss is NaN (measured: epoch 10, 19 updates in)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss) as err:
        train(load_source(pair), _config(tmp_path, **{"train.lr": 1e4, "train.epochs": 30}), run)
    message = str(err.value)
    record = err.value.record
    assert "\n" not in message
    # which loss goes first depends on the schedule: here the training or the validation loss
    assert message.startswith(f"stage1: {record.phase} loss became {record.loss} at epoch "
                              f"{record.epoch}, step {record.step}")
    assert "learning rate is too high" in message and "--lr" in message
    assert record.inputs_finite and record.step > 0 and 1 < record.epoch < 30

    # the last good checkpoint is kept: finite weights, from the epoch before the failure
    last = run / "checkpoints" / "stage1" / "last.ckpt"
    assert str(last) in message
    assert load_checkpoint_file(last)["epoch"] == record.epoch - 2  # 0-based, the epoch before
    assert _finite(last) and _finite(run / "checkpoints" / "stage1" / "best.ckpt")
    assert not (run / "metrics.json").exists()

    failure = json.loads((run / "failure.json").read_text())
    assert failure["error"] == "non-finite loss"
    assert {k: failure[k] for k in ("stage", "epoch", "step", "loss")} == {
        "stage": "stage1", "epoch": record.epoch, "step": record.step, "loss": record.loss}
    assert failure["lr"] == pytest.approx(record.lr) and failure["lr"] > 1e3


def test_planted_nan_input_names_the_inputs(pair, tmp_path, monkeypatch):
    real = FeatureDataset.__getitem__

    def poisoned(self, i):
        x, y, *rest = real(self, i)
        if self.train and self.epoch >= 1:  # epoch 0 is clean, so a good checkpoint exists
            x = x.clone()
            x[0, 0] = math.nan
        return (x, y, *rest)

    monkeypatch.setattr(FeatureDataset, "__getitem__", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"stage1: training loss became nan at epoch 2, step "
                                            r"\d+ \(batch 0\); likely cause: the input batch "
                                            r"holds NaN / Inf"):
        train(load_source(pair), _config(tmp_path, **{"train.epochs": 3}), run)
    assert json.loads((run / "failure.json").read_text())["inputs_finite"] is False
    assert _finite(run / "checkpoints" / "stage1" / "last.ckpt")


def test_a_successful_run_clears_an_old_failure_record(pair, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "failure.json").write_text('{"error": "non-finite loss"}')
    train(load_source(pair), _config(tmp_path, **{"train.epochs": 1}), run)
    assert not (run / "failure.json").exists()


def test_diagnose_run_reports_nan_loss_from_the_run(pair, tmp_path):
    from clipdoctor.cli import main

    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss):
        train(load_source(pair), _config(tmp_path, **{"train.lr": 1e4, "train.epochs": 30}), run)
    failure = json.loads((run / "failure.json").read_text())
    out = tmp_path / "report.json"
    assert main(["diagnose", str(pair), "--run", str(run), "--budget", "10",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    nan = [f for f in report["findings"] if f["code"] == "nan-loss"]
    assert nan and nan[0]["severity"] == "error"
    first = nan[0]["evidence"]["occurrences"][0]
    assert first["probe"] == "run" and first["run"] == str(run)
    assert (first["epoch"], first["step"], first["stage"]) == (
        failure["epoch"], failure["step"], failure["stage"])
    assert (f"at step {failure['step']} ({failure['phase']} loss of the run, stage1 epoch "
            f"{failure['epoch']})") in nan[0]["title"]
    assert "lower the learning rate (--lr, now 1e4)" in nan[0]["remedy"]
    assert "last good checkpoint" in nan[0]["remedy"]


# ---------------------------------------------------------------------------------------------
# the check on scripted measurements

def _record(**failure) -> dict:
    return {"run": "/runs/r1", "config_lr": 0.5,
            "failure": {"error": "non-finite loss", **failure} if failure else None}


def test_nan_loss_check_reads_the_run_record():
    probes = Probes(values={"run_record": _record(stage="stage2", phase="training", epoch=4,
                                                  step=37, batch=3,
                                                  loss="inf", lr=0.41, inputs_finite=True,
                                                  last_good_checkpoint="/runs/r1/last.ckpt")})
    (finding,) = nan_loss(probes)
    assert finding.code == "nan-loss" and finding.severity == "error"
    assert "step 37 (training loss of the run, stage2 epoch 4)" in finding.title
    assert "now 5e-1" in finding.remedy and "/runs/r1/last.ckpt" in finding.remedy


def test_nan_loss_check_blames_inputs_when_they_were_not_finite():
    probes = Probes(values={"run_record": _record(stage="stage1", phase="training", epoch=1,
                                                  step=5, batch=5,
                                                  loss="nan", lr=1e-3, inputs_finite=False)})
    (finding,) = nan_loss(probes)
    assert "input clips hold NaN" in finding.remedy


def test_nan_loss_check_is_quiet_for_a_healthy_run():
    assert nan_loss(Probes(values={"run_record": _record()})) == []
