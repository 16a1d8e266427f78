"""output-ignores-input, the noise floors of the invariance checks, and the steps a verdict
needs (issue 13, items 4 and 5).

User-style models (a per-frame conv + LSTM, written the way tutorials write them) on small
in-memory clips: one whose output ignores its input must get `output-ignores-input` first and
no downstream findings that say nothing; healthy ones (including one whose last layer starts
at zero, and an order-invariant mean-pool model) must not, over seeds. The threshold logic is
tested on scripted measurements at its boundaries.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import clipdoctor as cd
from clipdoctor.config import RunConfig, with_overrides
from clipdoctor.doctor.checks.common import INPUT_FACTOR
from clipdoctor.doctor.checks.temporal import NOISE_FACTOR, ORDER_REL, TEMPORAL_MIN_STEPS
from clipdoctor.doctor.checks.training import COLLAPSE_MIN_STEPS
from clipdoctor.doctor.probes import Probes
from clipdoctor.doctor.probes.model_behaviour import FLOAT_REL
from clipdoctor.doctor.probes.short_run import JUDGED_STEPS
from clipdoctor.doctor.registry import CHECKS, check
from clipdoctor.doctor.runner import diagnose, load_checks, run_checks
from test_model_checks import FrameCNN  # the same per-frame CNN

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

DOWNSTREAM = ["frame_order", "temporal_gain", "prediction_collapse", "fit_curves", "frozen_batchnorm"]


# ---------------------------------------------------------------------------------------------
# user-style models: (B, T, C, H, W) float -> (B, K)

class UserCNNLSTM(nn.Module):
    """A user's CNN-LSTM read at h_n. `mode`: "ok"; "bias" (the bug: returns a learned bias
    broadcast over the batch); "zero" (the bug: the features are multiplied by 0 before the
    classifier); "zero_head" (healthy: the last layer starts at zero); "meanpool" (healthy
    input use, but a mean over time: order-invariant by construction)."""

    def __init__(self, classes: int = 4, hidden: int = 32, mode: str = "ok") -> None:
        super().__init__()
        self.mode = mode
        self.cnn = FrameCNN()
        self.rnn = nn.LSTM(16, hidden, batch_first=True)
        self.fc = nn.Linear(16 if mode == "meanpool" else hidden, classes)
        self.bias = nn.Parameter(torch.zeros(classes))
        if mode == "zero_head":
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        B, T = clips.shape[:2]
        f = self.cnn(clips.flatten(0, 1)).view(B, T, -1)  # (B*T, 16) -> (B, T, 16)
        if self.mode == "meanpool":
            return self.fc(f.mean(1))
        _, (h, _) = self.rnn(f)
        z = h[-1]
        if self.mode == "zero":
            z = z * 0
        logits = self.fc(z)
        if self.mode == "bias":
            return self.bias.expand(B, -1)
        return logits


# ---------------------------------------------------------------------------------------------
# data and helpers

def clips(per_class: int = 12, classes: int = 4, t: int = 8, s: int = 32, seed: int = 0):
    """(X (N, T, H, W, C) uint8, y): a square moving in a direction given by the class."""
    rng = np.random.default_rng(seed)
    dirs = [(1, 0), (-1, 0), (0, 1), (0, -1)][:classes]
    x = rng.integers(60, 90, (per_class * classes, t, s, s, 3), dtype=np.uint8)
    y = np.repeat(np.arange(classes), per_class)
    for i, c in enumerate(y):
        r, q = rng.integers(10, s - 18, 2)
        for f in range(t):
            x[i, f, r + dirs[c][0] * f:r + dirs[c][0] * f + 8,
              q + dirs[c][1] * f:q + dirs[c][1] * f + 8] = (220, 200, 40)
    return x, y


@pytest.fixture(scope="module")
def four():
    return cd.load_dataset(clips(), val_fraction=0.25)




def config(seed: int = 0) -> RunConfig:
    return with_overrides(RunConfig(), {"data.frames": 8, "data.size": 32, "data.frame_size": 32,
                                        "data.batch_size": 8, "seed": seed})


def scripted(values: dict, names: list[str]) -> tuple[dict, dict]:
    """(code -> severity, check name -> skip reason) of the checks `names` on scripted values."""
    found, skipped, failures = run_checks(Probes(values=values), names)
    assert not failures, failures
    return {f.code: f.severity for f in found}, {s["name"]: s["reason"] for s in skipped}


def stage(change: float, floor: float = 1e-6, scale: float = 1.0) -> dict:
    """One `input_dependence` measurement: the change from other clips against a floor."""
    return {"input_change": change, "replaced_change": change, "shuffled_change": change,
            "constant_change": change, "noise_floor": floor, "reorder_noise": 0.0,
            "float_floor": floor, "logit_scale": scale, "clip_spread": change}


def dependence(change: float, floor: float = 1e-6, trained: dict | None = None) -> dict:
    return {"input": "clips", "clips": 8, "other_class_pairs": 8, "fresh": stage(change, floor),
            "trained": trained, "trained_steps": 3 if trained else None}


# ---------------------------------------------------------------------------------------------
# end to end: blind and healthy user models

@pytest.mark.parametrize("mode", ["bias", "zero"])
def test_a_user_model_that_ignores_its_input_gets_output_ignores_input_first(four, mode):
    torch.manual_seed(0)
    report = diagnose(four, config=config(), model=UserCNNLSTM(mode=mode), budget_s=10,
                      checks=["output_ignores_input", "cannot_overfit_batch", *DOWNSTREAM])
    assert not report.failures, report.failures
    assert report.findings and report.findings[0].code == "output-ignores-input", report.findings
    f = report.findings[0]
    assert f.severity == "error" and f.area == "model"
    assert f.evidence["input_change"] <= INPUT_FACTOR * f.evidence["noise_floor"]
    assert f.evidence["trained"] is not None  # still blind after a few training steps
    # nothing downstream that only restates it (the constant's order, curves, predictions)
    assert set(report.codes()) <= {"output-ignores-input", "cannot-overfit-batch"}
    reasons = {s["name"]: s["reason"] for s in report.skipped}
    for name in DOWNSTREAM:
        assert "output-ignores-input" in reasons.get(name, ""), report.skipped


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mode", ["ok", "zero_head", "meanpool"])
def test_healthy_user_models_do_not_ignore_their_input(four, mode, seed):
    torch.manual_seed(seed)
    report = diagnose(four, config=config(seed), model=UserCNNLSTM(mode=mode), budget_s=10,
                      checks=["output_ignores_input"])
    assert not report.failures and not report.skipped, (report.failures, report.skipped)
    assert report.findings == [], report.findings
    d = report.probes["input_dependence"]
    f = d["fresh"]
    if mode == "zero_head":  # blind at init, but not after its first updates
        assert f["input_change"] <= INPUT_FACTOR * f["noise_floor"]
        t = d["trained"]
        assert t["input_change"] > 30 * INPUT_FACTOR * t["noise_floor"], d  # measured 1.7e3x+
    else:  # clearly above the floor (measured 4.0e3x and more): the factor leaves a margin
        assert f["input_change"] > 100 * INPUT_FACTOR * f["noise_floor"], d


class BiasedMeans(nn.Module):
    """A weak but real input dependence: a linear layer on each clip's channel means under a
    bias of 6 toward class 0 (the weakest measured: 5.8e2x the floor)."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(3, k)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([6.0] + [0.0] * (k - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(1, 3, 4)))  # (B, T, C, H, W) -> (B, C) -> (B, K)


def test_a_weak_input_dependence_under_a_large_bias_is_not_blindness(four):
    torch.manual_seed(0)
    report = diagnose(four, config=config(), model=BiasedMeans(), budget_s=10,
                      checks=["output_ignores_input"])
    assert report.findings == [] and not report.skipped, (report.findings, report.skipped)
    f = report.probes["input_dependence"]["fresh"]
    assert f["input_change"] > 10 * INPUT_FACTOR * f["noise_floor"], f


def test_the_builtin_model_does_not_ignore_its_input(four):
    cfg = with_overrides(config(), {"model.backbone": "test_resnet", "model.pretrained": False,
                                    "model.proj_dim": 32, "model.hidden": 32})
    report = diagnose(four, config=cfg, budget_s=10, checks=["output_ignores_input"])
    assert report.findings == [] and not report.skipped, (report.findings, report.skipped)
    f = report.probes["input_dependence"]["fresh"]
    assert f["float_floor"] == pytest.approx(FLOAT_REL * f["logit_scale"])


# ---------------------------------------------------------------------------------------------
# scripted: the threshold of output-ignores-input at its boundary

def test_output_ignores_input_fires_within_the_factor_of_the_floor():
    at = INPUT_FACTOR * 1e-6
    found, _ = scripted({"input_dependence": dependence(at, trained=stage(at))},
                        ["output_ignores_input"])
    assert found == {"output-ignores-input": "error"}
    found, _ = scripted({"input_dependence": dependence(at * 1.01, trained=None)},
                        ["output_ignores_input"])
    assert found == {}
    # exactly constant logits (a bias broadcast): a change of 0 against a floor of 0
    found, _ = scripted({"input_dependence": dependence(0.0, 0.0, trained=stage(0.0, 0.0))},
                        ["output_ignores_input"])
    assert found == {"output-ignores-input": "error"}


def test_a_zero_initialised_head_that_learns_is_not_blind():
    """Blind at init, clearly input-dependent after its first steps: no finding."""
    found, _ = scripted({"input_dependence": dependence(0.0, trained=stage(3e-3))},
                        ["output_ignores_input"])
    assert found == {}
    # blind at init and the trained measurement failed to run: the fresh one decides
    found, _ = scripted({"input_dependence": dependence(0.0, trained=None)},
                        ["output_ignores_input"])
    assert found == {"output-ignores-input": "error"}


def test_downstream_checks_skip_when_the_output_ignores_the_input():
    blind = dependence(0.0, trained=stage(0.0))
    values = {"input_dependence": blind, "temporal_eval": temporal(steps=500),
              "short_run": short_run(steps=500)}
    found, skipped = scripted(values, DOWNSTREAM)
    assert found == {}
    assert set(skipped) == set(DOWNSTREAM)
    assert all("output-ignores-input" in r for r in skipped.values()), skipped


# ---------------------------------------------------------------------------------------------
# scripted: temporal-order-ignored against the noise floor and the replace change

def temporal(**over) -> dict:
    """A temporal_eval of a model at chance (a shuffle would make it a warning if invariant)."""
    v = {"clips": 32, "frames": 8, "chance": 0.25, "above_chance_margin": 0.23, "acc": 0.25,
         "loss": 1.39, "above_chance": False, "shuffled_acc": 0.25, "shuffled_loss": 1.39,
         "max_logit_change": 7.5e-5, "content_logit_change": 1e-3,
         "replace_logit_change": 2e-3, "reorder_noise": 0.0, "float_floor": 5e-7,
         "noise_floor": 5e-7, "single_frame_acc": {"0": 0.25}, "best_single_frame": 0,
         "best_single_acc": 0.25, "best_single_loss": 1.39, "steps": 200, "epochs": 25,
         "steps_per_epoch": 8}
    v.update(over)
    return v


def test_a_small_but_real_order_effect_is_not_order_invariance():
    # the false alarm: 7.5e-5 against a fixed 1e-4 tolerance; here the floor is 5e-7
    found, _ = scripted({"temporal_eval": temporal()}, ["frame_order"])
    assert found == {}


def test_order_invariance_at_the_noise_floor_boundary():
    floor = 5e-7
    at = NOISE_FACTOR * floor
    t = temporal(max_logit_change=at, replace_logit_change=1e-4, content_logit_change=1e-4)
    assert ORDER_REL * 1e-4 < at  # the noise floor decides here
    found, _ = scripted({"temporal_eval": t}, ["frame_order"])
    assert found == {"temporal-order-ignored": "warning"}
    found, _ = scripted({"temporal_eval": {**t, "max_logit_change": at * 1.01}}, ["frame_order"])
    assert found == {}


def test_order_invariance_relative_to_the_change_from_other_clips():
    replaced = 2.0
    at = ORDER_REL * replaced  # far above the floor: the scale of the signal decides
    t = temporal(max_logit_change=at, replace_logit_change=replaced, content_logit_change=1.0,
                 noise_floor=1e-6)
    found, _ = scripted({"temporal_eval": t}, ["frame_order"])
    assert found == {"temporal-order-ignored": "warning"}
    found, _ = scripted({"temporal_eval": {**t, "max_logit_change": at * 1.01}}, ["frame_order"])
    assert found == {}


def test_an_output_that_ignores_frames_altogether_is_not_an_order_finding():
    t = temporal(max_logit_change=0.0, replace_logit_change=4e-6, content_logit_change=4e-6,
                 noise_floor=5e-7)  # other clips move it by less than 10x the floor
    found, _ = scripted({"temporal_eval": t}, ["frame_order"])
    assert found == {}


# ---------------------------------------------------------------------------------------------
# enough evidence: the steps each training-based check needs

def short_run(**over) -> dict:
    """A short run of 8 classes whose predictions collapsed onto class 0."""
    v = {"train_loss": [2.08, 2.08, 2.08], "train_acc": [0.12] * 3,
         "val_loss": [2.08, 2.08, 2.08], "val_acc": [0.125] * 3,
         "step_losses": [2.08, 2.08, 2.08], "epoch_s": [0.1] * 3, "epochs": 3,
         "planned_epochs": 3, "stopped": "end", "nonfinite": None, "steps": 3, "lr": 1e-3,
         "augmented": False, "regularized": True, "val_pred_counts": [32, 0, 0, 0, 0, 0, 0, 0],
         "classes": 8, "train_clips": 8, "val_clips": 32, "val_counts": [4] * 8,
         "steps_per_epoch": 1, "config_steps": None, "weight_decay": 0.0, "dropout": False,
         "no_regularization": None}
    v.update(over)
    return v


def test_prediction_collapse_after_3_steps_is_skipped_for_lack_of_steps():
    found, skipped = scripted({"short_run": short_run(steps=3)}, ["prediction_collapse"])
    assert found == {}
    reason = skipped["prediction_collapse"]
    assert f"needs {COLLAPSE_MIN_STEPS} optimizer steps, the budget allowed 3" in reason, reason
    # with the steps it needs, the same predictions are a warning
    found, _ = scripted({"short_run": short_run(steps=COLLAPSE_MIN_STEPS, epochs=4,
                                                train_loss=[2.08] * 4)},
                        ["prediction_collapse"])
    assert found == {"prediction-collapse": "warning"}


def test_temporal_checks_do_not_judge_a_model_trained_for_one_step():
    t = temporal(max_logit_change=0.0, steps=1, epochs=1, steps_per_epoch=1)
    found, skipped = scripted({"temporal_eval": t}, ["frame_order", "temporal_gain"])
    assert found == {}
    for name in ("frame_order", "temporal_gain"):
        assert (f"needs {TEMPORAL_MIN_STEPS} optimizer steps, the budget allowed 1"
                in skipped[name]), skipped
    found, _ = scripted({"temporal_eval": {**t, "steps": TEMPORAL_MIN_STEPS}}, ["frame_order"])
    assert found == {"temporal-order-ignored": "warning"}


def test_every_declared_minimum_is_reachable_by_the_short_run():
    load_checks()
    declared = {c.name: c.min_steps for c in CHECKS.values() if c.min_steps}
    assert declared["prediction_collapse"] == COLLAPSE_MIN_STEPS
    assert {"frame_order", "temporal_gain", "fit_curves"} <= set(declared)
    assert JUDGED_STEPS >= max(declared.values())


def test_min_steps_needs_a_probe_that_counts_steps():
    with pytest.raises(ValueError, match="min_steps"):
        check("prediction-collapse", requires=("dataset",), min_steps=10)(lambda probes: [])


# ---------------------------------------------------------------------------------------------
# end to end: the temporal verdict of user models, trained long enough

@pytest.mark.parametrize("seed", [0])
def test_e2e_user_lstm_is_not_order_blind_and_meanpool_is(four, seed):
    """Measured (seeds 0-2, 80 steps): shuffling moved the LSTM's logits 6e4-1.3e5x the noise
    floor and 0.37-0.74x what other clips moved them; the mean over time 0.1-0.33x the floor."""
    torch.manual_seed(seed)
    lstm = diagnose(four, config=config(seed), model=UserCNNLSTM(), budget_s=20,
                    checks=["frame_order"])
    assert not lstm.failures, lstm.failures
    t = lstm.probes.get("temporal_eval")
    assert t is not None, (lstm.skipped, lstm.skipped_probes)
    assert t["steps"] >= TEMPORAL_MIN_STEPS, t
    assert "temporal-order-ignored" not in lstm.codes("warning"), lstm.findings
    torch.manual_seed(seed)
    mean = diagnose(four, config=config(seed), model=UserCNNLSTM(mode="meanpool"), budget_s=20,
                    checks=["frame_order"])
    assert "temporal-order-ignored" in mean.codes(), (mean.findings, mean.skipped)


class ClipDataset(torch.utils.data.Dataset):
    """A user's own Dataset: (clip (T, C, H, W) float in 0..1, label)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.x[i]).permute(0, 3, 1, 2).float() / 255, int(self.y[i])


def test_user_datasets_feed_the_input_dependence_probe():
    x, y = clips()
    data = cd.load_dataset(ClipDataset(x[1::2], y[1::2]), val=ClipDataset(x[::2], y[::2]))
    for mode, blind in (("bias", True), ("ok", False)):
        torch.manual_seed(0)
        report = diagnose(data, config=config(), model=UserCNNLSTM(mode=mode), budget_s=10,
                          checks=["output_ignores_input"])
        assert not report.skipped and not report.failures, (report.skipped, report.failures)
        assert ("output-ignores-input" in report.codes()) == blind, report.findings
        d = report.probes["input_dependence"]
        assert d["input"] == "clips" and d["other_class_pairs"] == d["clips"]


def test_clips_mixing_across_the_batch_are_not_an_ignored_input():
    """A (B*T) -> (T, B) view mixes clips: reordering the batch moves a clip's logits far above
    rounding (bench: 8.1e-2 at logits of ~0.5), which is input dependence, not a noise floor."""
    from clipdoctor.doctor.checks.common import ignores_input

    def stage(change, reorder, scale=0.5):
        return {"input_change": change, "reorder_noise": reorder, "float_floor": 1e-6 * scale,
                "noise_floor": max(reorder, 1e-6 * scale), "logit_scale": scale}

    assert not ignores_input({"fresh": stage(7.5e-2, 8.1e-2), "trained": stage(0.16, 8e-2)})
    assert ignores_input({"fresh": stage(0.0, 0.0)})  # blind: nothing moves at all
    assert ignores_input({"fresh": stage(2e-6, 1e-7)})  # within ten roundings of the logits
    assert not ignores_input({"fresh": stage(1e-2, 0.0)})  # a real dependence
