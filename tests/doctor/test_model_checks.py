"""Model checks: each code sick and healthy on scripted measurements, then for real on tiny
synthetic clips with deliberately broken user models (and their fixed twins) or planted
config faults. The built-in model with the demo's healthy settings must raise nothing."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.demo import demo_config
from clipdoctor.doctor.probes import Probes
from clipdoctor.doctor.runner import diagnose, run_checks
from clipdoctor.models.backbones import create_backbone

MODEL_CHECKS = ["loss_output_fit", "double_softmax", "batch_time_axes", "bidirectional_readout",
                "padding_mask", "frozen_batchnorm", "weights_loaded", "feature_width",
                "model_size", "init_loss", "motion_visibility"]


# ---------------------------------------------------------------------------------------------
# deliberately broken user models (B, T, C, H, W) -> (B, K), and their fixed twins

class FrameCNN(nn.Module):
    """Two strided conv blocks with BatchNorm, global average: (N, 3, H, W) -> (N, 16)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNNLSTM(nn.Module):
    """A user's CNN-LSTM; each flag plants one fault (all off: a correct model)."""

    def __init__(self, classes: int = 4, hidden: int = 32, *, bidirectional: bool = False,
                 softmax: bool = False, outputs: int | None = None, view_tb: bool = False,
                 last_step: bool = False, bottleneck: int | None = None,
                 init_scale: float = 1.0) -> None:
        super().__init__()
        self.cnn = FrameCNN()
        self.view_tb, self.last_step = view_tb, last_step
        self.rnn = nn.LSTM(self.cnn.out_dim, hidden, batch_first=True, bidirectional=bidirectional)
        d = hidden * (2 if bidirectional else 1)
        layers: list[nn.Module] = []
        if bottleneck:
            layers += [nn.Linear(d, bottleneck), nn.ReLU()]
            d = bottleneck
        layers.append(nn.Linear(d, outputs or classes))
        with torch.no_grad():
            layers[-1].weight.mul_(init_scale)
        if softmax:
            layers.append(nn.Softmax(dim=-1))
        self.fc = nn.Sequential(*layers)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        B, T = clips.shape[:2]
        f = self.cnn(clips.flatten(0, 1))  # (B, T, C, H, W) -> (B*T, C, H, W) -> (B*T, D)
        if self.view_tb:  # the bug: (B*T, D) viewed as (T, B, D), into a batch_first LSTM
            out, _ = self.rnn(f.view(T, B, -1))
            return self.fc(out[-1])
        out, (h, _) = self.rnn(f.view(B, T, -1))  # (B*T, D) -> (B, T, D)
        if self.last_step:
            z = out[:, -1]  # the bug for a bidirectional LSTM: backward half saw one frame
        elif self.rnn.bidirectional:
            z = torch.cat([h[-2], h[-1]], dim=1)
        else:
            z = h[-1]
        return self.fc(z)


class LengthsCNNLSTM(CNNLSTM):
    """Takes valid lengths; packs the padded sequence when `mask`, else ignores the lengths."""

    def __init__(self, mask: bool, **kw) -> None:
        super().__init__(**kw)
        self.mask = mask

    def forward(self, clips: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if not self.mask or lengths is None:
            return super().forward(clips)
        B, T = clips.shape[:2]
        f = self.cnn(clips.flatten(0, 1)).view(B, T, -1)  # (B*T, D) -> (B, T, D)
        packed = nn.utils.rnn.pack_padded_sequence(f, lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.fc(h[-1])


class FrozenCNNLSTM(CNNLSTM):
    """The CNN is frozen (requires_grad False); unless `eval_frozen`, its BatchNorm stays in
    train mode after model.train() and keeps updating its running statistics."""

    def __init__(self, eval_frozen: bool = False, **kw) -> None:
        super().__init__(**kw)
        for p in self.cnn.parameters():
            p.requires_grad_(False)
        self.eval_frozen = eval_frozen

    def train(self, mode: bool = True) -> FrozenCNNLSTM:
        super().train(mode)
        if self.eval_frozen:
            self.cnn.eval()
        return self


class ZeroFeatureCNNLSTM(CNNLSTM):
    """The bug: the LSTM's features are multiplied by 0 before the classifier (a mask or gate
    left at zero): the logits are the classifier's bias whatever the clips."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        B, T = clips.shape[:2]
        _, (h, _) = self.rnn(self.cnn(clips.flatten(0, 1)).view(B, T, -1))
        return self.fc(h[-1] * 0)


# ---------------------------------------------------------------------------------------------
# data and helpers

@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """4 classes x 8 clips of 8 frames at 32 px."""
    root = tmp_path_factory.mktemp("four")
    generate(root, clips_per_class=8, frames=8, size=32,
             classes=("move_left", "move_right", "grow", "shrink"))
    return load_source(root)


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """Clips of 4 frames, read at 6 frames: with data.short = "pad" every clip is padded."""
    root = tmp_path_factory.mktemp("short")
    generate(root, clips_per_class=6, frames=4, size=32, classes=("move_left", "grow"))
    return load_source(root)


@pytest.fixture(scope="module")
def left_right(tmp_path_factory):
    """move_left / move_right, 16 clips each at 64 px: only the position of the object over
    time tells them apart (seed 2 measured: grid probe 0.96, gap probe 0.55)."""
    root = tmp_path_factory.mktemp("lr")
    generate(root, clips_per_class=16, frames=8, size=64, classes=("move_left", "move_right"),
             seed=2)
    return load_source(root)


def small(**extra):
    """The demo's healthy configuration, shrunk: 6 frames at 32 px."""
    return demo_config(**{"data.size": 32, "data.frame_size": 36, "data.frames": 6, **extra})


def scripted(check: str, **values) -> list:
    findings, skipped, failures = run_checks(Probes(values=values), [check])
    assert not failures, failures
    return findings


def codes(findings: list) -> dict[str, str]:
    return {f.code: f.severity for f in findings}


# ---------------------------------------------------------------------------------------------
# scripted measurements: sick and healthy per code

def test_loss_output_mismatch_scripted():
    base = {"label_min": 0, "label_max": 3, "num_classes": 4, "output_shape": [2, 4],
            "output_width": 4, "loss_accepts_labels": True}
    assert scripted("loss_output_fit", label_range=base) == []
    fewer = {**base, "output_shape": [2, 3], "output_width": 3, "loss_accepts_labels": False,
             "loss_error": "IndexError: Target 3 is out of bounds."}
    (f,) = scripted("loss_output_fit", label_range=fewer)
    assert (f.code, f.severity) == ("loss-output-mismatch", "error")
    assert "3 logits" in f.title and f.evidence["label_max"] == 3
    per_step = {**base, "output_shape": [2, 6, 4]}
    assert codes(scripted("loss_output_fit", label_range=per_step)) == \
        {"loss-output-mismatch": "error"}
    one_based = {**base, "label_min": 1, "label_max": 4, "output_width": 5, "output_shape": [2, 5]}
    (f,) = scripted("loss_output_fit", label_range=one_based)
    assert f.severity == "error" and "1-based" in f.title
    wider = {**base, "output_width": 6, "output_shape": [2, 6]}
    assert codes(scripted("loss_output_fit", label_range=wider)) == {"loss-output-mismatch": "info"}


def test_double_softmax_scripted():
    sick = {"output_shape": [2, 4], "probabilities": True, "unit_interval": True,
            "loss_shift_invariant": True, "loss_on_outputs": 1.38, "output_min": 0.2,
            "output_max": 0.3, "row_sum_max_dev": 1e-7}
    (f,) = scripted("double_softmax", behaviour=sick, structure={"final_op": "softmax"})
    assert (f.code, f.severity) == ("double-softmax", "error")
    assert f.evidence["loss_floor"] == pytest.approx(np.log1p(3 / np.e))
    nll = {**sick, "loss_shift_invariant": False, "loss_on_outputs": -0.26}
    assert "NLL" in scripted("double_softmax", behaviour=nll)[0].title
    healthy = {**sick, "probabilities": False, "unit_interval": False, "output_min": -2.0}
    assert scripted("double_softmax", behaviour=healthy, structure={"final_op": None}) == []
    # a loss of the user's own that takes probabilities: nothing to say
    own_loss = {**sick, "loss_shift_invariant": False, "loss_on_outputs": 1.2}
    assert scripted("double_softmax", behaviour=own_loss) == []


def test_batch_time_swapped_scripted():
    rnn = {"name": "rnn", "batch_first": True, "input_shape": [2, 6, 16], "fed": "as declared"}
    healthy = {"cross_sample_leak": 0.0, "batch": 2, "frames": 6, "rnns": [rnn]}
    assert scripted("batch_time_axes", behaviour=healthy) == []
    leak = {**healthy, "cross_sample_leak": 0.8}
    assert codes(scripted("batch_time_axes", behaviour=leak)) == {"batch-time-swapped": "error"}
    fed = {**healthy, "rnns": [{**rnn, "input_shape": [6, 2, 16], "fed": "swapped"}]}
    (f,) = scripted("batch_time_axes", behaviour=fed)
    assert f.severity == "error" and "(6, 2, 16)" in f.title


def test_bidirectional_last_step_scripted():
    rnn = {"name": "rnn", "bidirectional": True, "backward_last_share": 1.0}
    (f,) = scripted("bidirectional_readout", behaviour={"rnns": [rnn], "frames": 8})
    assert (f.code, f.severity) == ("bidirectional-last-step", "warning")
    for share in (None, 0.125, 0.0):  # h_n read-out, mean over time, correct manual read-out
        ok = {"rnns": [{**rnn, "backward_last_share": share}], "frames": 8}
        assert scripted("bidirectional_readout", behaviour=ok, structure={}) == []
    fx_only = {"rnns": [], "frames": 8}
    assert scripted("bidirectional_readout", behaviour=fx_only,
                    structure={"last_step_reads": ["rnn"]})[0].code == "bidirectional-last-step"


def test_unmasked_padding_scripted():
    pad = {"relative_change": 0.7, "pipeline_pads": True, "short_clips": 5, "clips_checked": 12,
           "takes_lengths": False, "valid_steps": 3, "steps": 6, "reference": "unpadded"}
    (f,) = scripted("padding_mask", behaviour={"padding": pad})
    assert (f.code, f.severity) == ("unmasked-padding", "warning")
    for healthy in ({**pad, "relative_change": 1e-7},  # masked
                    {**pad, "pipeline_pads": False},  # the pipeline repeats frames instead
                    {**pad, "short_clips": 0}):  # nothing short enough to be padded
        assert scripted("padding_mask", behaviour={"padding": healthy}) == []


def test_frozen_batchnorm_drift_scripted():
    sick = {"drifted": ["cnn.net.1"], "max_relative_change": 0.4, "frozen_batchnorm": 2}
    (f,) = scripted("frozen_batchnorm", bn_drift=sick)
    assert (f.code, f.severity) == ("frozen-batchnorm-drift", "warning")
    assert scripted("frozen_batchnorm", bn_drift={**sick, "drifted": []}) == []
    static = {"frozen_batchnorm_train_mode": ["bn"], "frozen_batchnorm": 1}  # no bn_drift measured
    assert scripted("frozen_batchnorm", structure=static)[0].code == "frozen-batchnorm-drift"


def test_weights_not_loaded_scripted():
    ok = {"source": "built-in", "requested": "w.safetensors", "loaded": "w.safetensors",
          "backbone_tensors": 100, "missing": 0, "unexpected": 0, "missing_examples": [],
          "unexpected_examples": [], "backbone_frozen": True, "backbone": "resnet10t"}
    assert scripted("weights_loaded", weights=ok) == []
    (f,) = scripted("weights_loaded", weights={**ok, "missing": 30, "missing_examples": ["fc.w"]})
    assert (f.code, f.severity) == ("weights-not-loaded", "warning") and "30 of 100" in f.title
    random_frozen = {**ok, "requested": "random", "loaded": "random"}
    assert scripted("weights_loaded", weights=random_frozen)[0].severity == "warning"
    assert scripted("weights_loaded", weights={**random_frozen, "backbone_frozen": False}) == []
    lost = {**ok, "requested": "hub", "loaded": "random"}
    assert scripted("weights_loaded", weights=lost)[0].severity == "error"
    user = {"source": "user", "requested": "w.pt", "file_tensors": 10, "model_tensors": 10,
            "matched": 10, "equal": 10}
    assert scripted("weights_loaded", weights=user) == []
    assert scripted("weights_loaded", weights={**user, "equal": 0})[0].severity == "warning"


def test_feature_bottleneck_scripted():
    sick = {"classes": 10, "narrowest": 4, "narrowest_at": "fc.0 input (classifier)",
            "widths": {"rnn output": 32, "fc.0 input (classifier)": 4}}
    (f,) = scripted("feature_width", widths=sick)
    assert (f.code, f.severity) == ("feature-bottleneck", "warning")
    assert scripted("feature_width", widths={**sick, "narrowest": 9}) == []  # K - 1 suffices


def test_motion_invisible_features_scripted():
    sick = {"used": "gap", "pool": "gap", "accuracy_used": 0.55, "accuracy_gap": 0.55,
            "accuracy_grid": 0.96, "clips": 32, "chance": 0.5, "change_gap": 0.03,
            "change_grid": 0.08}
    (f,) = scripted("motion_visibility", motion_features=sick)
    assert (f.code, f.severity) == ("motion-invisible-features", "warning")
    assert "--pool grid" in f.remedy
    assert scripted("motion_visibility", motion_features={**sick, "used": "grid",
                                                          "accuracy_used": 0.96}) == []
    close = {**sick, "accuracy_used": 0.85}  # 0.11 apart: appearance / growth classes
    assert scripted("motion_visibility", motion_features=close) == []
    noisy = {**sick, "accuracy_used": 0.6, "accuracy_grid": 0.8, "clips": 12}  # within 2 se
    assert scripted("motion_visibility", motion_features=noisy) == []
    assert "--rgb-diff shared" in f.remedy  # both remedies by their real flag names
    # global pooling with the RGB-difference stream is judged on what it measures
    (d,) = scripted("motion_visibility", motion_features={**sick, "used": "gap+rgbdiff"})
    assert d.evidence["rgb_diff"] and "--pool grid" in d.remedy
    assert scripted("motion_visibility", motion_features={**sick, "used": "gap+rgbdiff",
                                                          "accuracy_used": 0.9}) == []


def test_oversized_model_scripted():
    demo = {"source": "built-in", "trainable": 687_188, "frozen": 0, "train_clips": 256}
    assert scripted("model_size", model_summary=demo) == []
    assert codes(scripted("model_size", model_summary={**demo, "train_clips": 20})) == \
        {"oversized-model": "info"}
    huge = {**demo, "trainable": 25_000_000, "train_clips": 100}
    assert codes(scripted("model_size", model_summary=huge)) == {"oversized-model": "warning"}


def test_bad_init_loss_scripted():
    ok = {"loss": 1.39, "ln_k": float(np.log(4)), "classes": 4, "ratio": 1.0,
          "mean_max_prob": 0.27, "top_class_share": 0.5, "finite": True, "clips": 32}
    assert scripted("init_loss", loss_at_init=ok) == []
    hot = {**ok, "loss": 9.0, "ratio": 6.5, "mean_max_prob": 0.98}
    (f,) = scripted("init_loss", loss_at_init=hot)
    assert (f.code, f.severity) == ("bad-init-loss", "warning") and "6.5x" in f.title
    assert scripted("init_loss", loss_at_init={"error": "IndexError", "ln_k": 1.4}) == []


def test_output_ignores_input_scripted():
    def stage(change: float, floor: float = 2e-7) -> dict:
        return {"input_change": change, "replaced_change": change, "shuffled_change": change,
                "constant_change": change, "noise_floor": floor, "reorder_noise": 0.0,
                "float_floor": floor, "logit_scale": 0.2}

    blind = {"input": "clips", "clips": 8, "other_class_pairs": 8, "fresh": stage(0.0),
             "trained": stage(0.0), "trained_steps": 3}
    (f,) = scripted("output_ignores_input", input_dependence=blind)
    assert (f.code, f.severity, f.area) == ("output-ignores-input", "error", "model")
    assert f.evidence["noise_floor"] == 2e-7 and "zero" in f.remedy
    # measured on a healthy CNN-LSTM at init: other clips move the logits ~1e-2
    assert scripted("output_ignores_input", input_dependence={
        **blind, "fresh": stage(1e-2), "trained": None}) == []
    # a last layer that starts at zero: blind at init, not after three steps
    assert scripted("output_ignores_input", input_dependence={
        **blind, "trained": stage(4e-3)}) == []


# ---------------------------------------------------------------------------------------------
# end to end: planted faults in user models, and their fixed twins

USER_CASES = [  # (check, code, severity, broken model, fixed twin)
    ("double_softmax", "double-softmax", "error",
     lambda: CNNLSTM(softmax=True), lambda: CNNLSTM()),
    ("batch_time_axes", "batch-time-swapped", "error",
     lambda: CNNLSTM(view_tb=True), lambda: CNNLSTM()),
    ("bidirectional_readout", "bidirectional-last-step", "warning",
     lambda: CNNLSTM(bidirectional=True, last_step=True), lambda: CNNLSTM(bidirectional=True)),
    ("loss_output_fit", "loss-output-mismatch", "error",
     lambda: CNNLSTM(outputs=3), lambda: CNNLSTM()),
    ("frozen_batchnorm", "frozen-batchnorm-drift", "warning",
     lambda: FrozenCNNLSTM(), lambda: FrozenCNNLSTM(eval_frozen=True)),
    ("feature_width", "feature-bottleneck", "warning",
     lambda: CNNLSTM(bottleneck=2), lambda: CNNLSTM(bottleneck=8)),
    ("init_loss", "bad-init-loss", "warning",
     lambda: CNNLSTM(init_scale=300.0), lambda: CNNLSTM()),
    ("model_size", "oversized-model", "warning",
     lambda: CNNLSTM(hidden=1200), lambda: CNNLSTM()),
    ("output_ignores_input", "output-ignores-input", "error",
     lambda: ZeroFeatureCNNLSTM(), lambda: CNNLSTM()),
]


@pytest.mark.parametrize("check,code,severity,broken,fixed", USER_CASES,
                         ids=[c[1] for c in USER_CASES])
def test_user_model_fault_found_and_twin_clean(four, check, code, severity, broken, fixed):
    torch.manual_seed(0)
    sick = diagnose(four, config=small(), model=broken(), budget_s=20, checks=[check])
    assert not sick.failures, sick.failures
    assert codes(sick.findings).get(code) == severity, (sick.findings, sick.skipped)
    torch.manual_seed(0)
    healthy = diagnose(four, config=small(), model=fixed(), budget_s=20, checks=[check])
    assert not healthy.failures, healthy.failures
    assert code not in healthy.codes(), healthy.findings
    assert not healthy.skipped, healthy.skipped


def test_unpadded_pipeline_does_not_warn_about_padding(four):
    """The same unmasked model: no warning while data.short = "repeat" (nothing is padded)."""
    report = diagnose(four, config=small(), model=CNNLSTM(), budget_s=20, checks=["padding_mask"])
    assert report.probes["behaviour"]["padding"]["relative_change"] > 0.1  # it is unmasked
    assert report.findings == []


def test_unmasked_padding_found_for_user_models_and_not_for_masking_ones(short):
    config = small(**{"data.short": "pad"})
    sick = diagnose(short, config=config, model=CNNLSTM(classes=2), budget_s=20,
                    checks=["padding_mask"])
    assert codes(sick.findings) == {"unmasked-padding": "warning"}
    assert sick.findings[0].evidence["short_clips"] > 0
    ignores = diagnose(short, config=config, model=LengthsCNNLSTM(mask=False, classes=2),
                       budget_s=20, checks=["padding_mask"])
    assert codes(ignores.findings) == {"unmasked-padding": "warning"}
    masks = diagnose(short, config=config, model=LengthsCNNLSTM(mask=True, classes=2),
                     budget_s=20, checks=["padding_mask"])
    assert masks.findings == [] and not masks.skipped
    builtin = diagnose(short, config=config, budget_s=20, checks=["padding_mask"])
    assert builtin.findings == [] and not builtin.skipped
    assert builtin.probes["behaviour"]["padding"]["relative_change"] < 1e-4


# ---------------------------------------------------------------------------------------------
# end to end: the built-in model

def test_builtin_demo_config_raises_nothing(four):
    report = diagnose(four, config=small(), budget_s=20, checks=MODEL_CHECKS)
    assert not report.failures, report.failures
    bad = [f for f in report.findings if f.severity in ("error", "warning")]
    assert bad == [], bad
    assert report.model["source"] == "built-in" and report.model["output_width"] == 4
    assert not report.skipped, report.skipped


def test_builtin_partial_weights_file_is_reported(four, tmp_path):
    backbone, _ = create_backbone("test_resnet", pretrained=False)
    state = backbone.model.state_dict()
    full, partial = tmp_path / "full.safetensors", tmp_path / "partial.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, full)
    kept = {k: v.contiguous() for k, v in state.items() if not k.startswith("layer")}
    safetensors.torch.save_file(kept, partial)
    sick = diagnose(four, config=small(**{"model.weights": partial}), budget_s=20,
                    checks=["weights_loaded"])
    (f,) = sick.findings
    assert (f.code, f.severity) == ("weights-not-loaded", "warning") and f.evidence["missing"] > 0
    healthy = diagnose(four, config=small(**{"model.weights": full}), budget_s=20,
                       checks=["weights_loaded"])
    assert healthy.findings == []


def test_builtin_gap_pooling_hides_left_right_but_grid_does_not(left_right):
    extra = {"data.size": 64, "data.frame_size": 68, "data.frames": 8}
    sick = diagnose(left_right, config=demo_config(**extra, **{"model.pool": "gap"}),
                    budget_s=30, checks=["motion_visibility"])
    assert codes(sick.findings) == {"motion-invisible-features": "warning"}, sick.probes.get(
        "motion_features", sick.skipped)
    healthy = diagnose(left_right, config=demo_config(**extra), budget_s=30,
                       checks=["motion_visibility"])
    assert healthy.findings == [] and not healthy.skipped
    # grid with the RGB-difference stream keeps position: healthy
    both = diagnose(left_right, config=demo_config(**extra, **{"model.rgb_diff": "shared"}),
                    budget_s=30, checks=["motion_visibility"])
    assert both.findings == [] and not both.skipped


def test_builtin_gap_with_rgb_difference_still_hides_left_right(left_right):
    """Measured, not assumed: the difference stream under global pooling reads left / right no
    better than gap alone (probe 0.48 vs 0.89 for the grid here; trained on the demo data,
    direction accuracy on the move pairs 0.50 over 4 seeds, bench/results/motion_table.md)."""
    extra = {"data.size": 64, "data.frame_size": 68, "data.frames": 8, "model.pool": "gap",
             "model.rgb_diff": "shared"}
    report = diagnose(left_right, config=demo_config(**extra), budget_s=30,
                      checks=["motion_visibility"])
    (f,) = report.findings
    assert f.code == "motion-invisible-features" and f.evidence["rgb_diff"]
    assert report.probes.get("motion_features")["used"] == "gap+rgbdiff"


@pytest.mark.slow
def test_gap_pooling_on_appearance_classes_is_not_flagged():
    """Classes told apart by colour (each clip moves left or right at random): gap loses
    nothing a grid keeps, so there is nothing to report."""
    from clipdoctor import load_dataset
    from clipdoctor.data.synthetic import clip_rng, render_clip

    rng = np.random.default_rng(0)
    X, y = [], []
    for i in range(32):
        clip = render_clip(("move_left", "move_right")[rng.integers(2)],
                           clip_rng(0, "move_left", i), 8, 64).astype(np.float32)
        clip[..., 0 if i % 2 else 2] *= 0.4  # class 0 loses blue, class 1 red
        X.append(clip.astype(np.uint8))
        y.append(i % 2)
    data = load_dataset((np.stack(X), np.array(y)), classes=["reddish", "bluish"])
    config = demo_config(**{"data.size": 64, "data.frame_size": 68, "data.frames": 8,
                            "model.pool": "gap"})
    report = diagnose(data, config=config, budget_s=30, checks=["motion_visibility"])
    assert report.findings == [] and not report.skipped


def test_batch_statistics_in_eval_are_not_mistaken_for_swapped_axes(four):
    """BatchNorm without running statistics mixes clips in eval mode by design: not a swap."""
    model = CNNLSTM()
    for i in (1, 4):
        model.cnn.net[i] = nn.BatchNorm2d(16, track_running_stats=False)
    report = diagnose(four, config=small(), model=model, budget_s=20, checks=["batch_time_axes"])
    assert report.findings == [] and not report.skipped
    assert report.probes["behaviour"]["batch_statistics_layers"] == ["cnn.net.1", "cnn.net.4"]


def test_user_model_weights_file_not_loaded(four, tmp_path):
    """model.weights promised for a user model: its parameters must be the file's."""
    torch.manual_seed(1)
    trained = CNNLSTM()
    path = tmp_path / "user.pt"
    torch.save(trained.state_dict(), path)
    config = small(**{"model.weights": path})
    torch.manual_seed(2)
    sick = diagnose(four, config=config, model=CNNLSTM(), budget_s=20, checks=["weights_loaded"])
    (f,) = sick.findings
    assert (f.code, f.severity) == ("weights-not-loaded", "warning")
    assert f.evidence["equal"] < f.evidence["matched"]
    healthy = diagnose(four, config=config, model=trained, budget_s=20, checks=["weights_loaded"])
    assert healthy.findings == [] and not healthy.skipped


def test_builtin_narrow_projection_for_many_classes():
    """12 classes through an 8-wide projection and head: fewer than K - 1 dimensions."""
    from clipdoctor import load_dataset

    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, (36, 6, 32, 32, 3), dtype=np.uint8)
    y = np.arange(36) % 12
    data = load_dataset((X, y))
    narrow = diagnose(data, config=small(**{"model.proj_dim": 8, "model.hidden": 8}),
                      budget_s=20, checks=["feature_width"])
    (f,) = narrow.findings
    assert (f.code, f.severity) == ("feature-bottleneck", "warning")
    assert f.evidence["narrowest"] == 8 and f.evidence["needed"] == 11
    assert "--proj-dim" in f.remedy
    wide = diagnose(data, config=small(), budget_s=20, checks=["feature_width"])
    assert wide.findings == [] and not wide.skipped
