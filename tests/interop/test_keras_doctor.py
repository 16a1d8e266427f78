"""The doctor on Keras 3 models (issue 14): tiny Keras CNN-LSTMs on the synthetic direction
pairs (move_left / move_right: only the position over time tells them apart), saved to
.keras files and diagnosed from a fresh process: through the CLI (`diagnose --keras`), or
`cd.diagnose(data, model=load_keras_model(file), checks=...)` with the checks each case is about
plus the cheap model checks, because Keras on its torch backend runs 20-40x slower than the
same torch model on CPU: a full diagnosis of every case would take minutes each).

Each diagnosis prints its wall time (`pytest -s` shows them)."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"  # Keras reads its backend once, at its first import
keras = pytest.importorskip("keras", reason="Keras 3 is not installed: pip install clipdoctor[keras]")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported on another backend before these tests", allow_module_level=True)

from keras import layers  # noqa: E402

import clipdoctor as cd  # noqa: E402
from clipdoctor.data.synthetic import clip_rng, render_clip  # noqa: E402
from clipdoctor.doctor.probes import loss_floor, uniform_loss  # noqa: E402
from clipdoctor.interop.keras import ProbabilityCrossEntropy  # noqa: E402

T, S, PER_CLASS = 4, 32, 16  # frames, frame size, clips per class
CLASSES = ("move_left", "move_right")
BUDGET = "5"  # seconds: the plan's smallest useful size; Keras' overhead sets the wall time

pytestmark = [  # Keras' own noise: loading skips the saved optimizer state; numpy 2's copy=
    pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer:UserWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# cheap model checks run beside the one each case is about, so "in the top 3" ranks
# it among findings that could compete with it
MODEL_CHECKS = ["loss_output_fit", "double_softmax", "bidirectional_readout", "init_loss",
                "output_ignores_input", "frozen_batchnorm", "augmentation_consistency"]


# ---------------------------------------------------------------------------------------------
# data and models

@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """X (N, T, H, W, C) uint8 and y of the direction pair, as a Keras user saves them."""
    X, y = [], []
    for k, c in enumerate(CLASSES):
        for i in range(PER_CLASS):
            X.append(render_clip(c, clip_rng(0, c, i), frames=T, size=S))
            y.append(k)
    path = tmp_path_factory.mktemp("keras_doctor") / "clips.npz"
    np.savez(path, X=np.stack(X), y=np.array(y))
    return path


def _frames(x, *per_frame: layers.Layer):
    """Each layer applied to every frame (TimeDistributed)."""
    for layer in per_frame:
        x = layers.TimeDistributed(layer, name=f"td_{layer.name}")(x)
    return x


def _compiled(inp, out, loss) -> keras.Model:
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    return model


def recipe() -> keras.Model:
    """The seed recipe, small: per-frame convs and global average pooling, two stacked
    bidirectional LSTMs, a softmax; Adam and sparse categorical cross-entropy."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((T, S, S, 3))
    x = _frames(inp, layers.Rescaling(1 / 255, name="scale"),
                layers.Conv2D(8, 3, activation="relu", name="conv1"),
                layers.Conv2D(8, 3, activation="relu", name="conv2"),
                layers.GlobalAveragePooling2D(name="gap"))
    x = layers.Bidirectional(layers.LSTM(16, return_sequences=True), name="bi_seq")(x)
    x = layers.Bidirectional(layers.LSTM(8), name="bi_last")(x)
    return _compiled(inp, layers.Dense(2, activation="softmax", name="head")(x),
                     "sparse_categorical_crossentropy")


def _frames_lstm_softmax(per_frame, loss="sparse_categorical_crossentropy") -> keras.Model:
    """The layers `per_frame()` makes (after seeding, so random layers draw alike each time) on
    every frame (TimeDistributed), one LSTM, a softmax head, compiled with `loss`."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((T, S, S, 3))
    x = layers.LSTM(16, name="lstm")(_frames(inp, *per_frame()))
    return _compiled(inp, layers.Dense(2, activation="softmax", name="head")(x), loss)


def per_frame_rotation() -> keras.Model:
    """Random rotation inside TimeDistributed: every frame of a clip turns its own way."""
    return _frames_lstm_softmax(lambda: [
        layers.RandomRotation(0.2, name="rotate"),
        layers.Conv2D(8, 3, strides=2, activation="relu", name="conv"),
        layers.Flatten(name="flat")])


def logits_after_softmax() -> keras.Model:
    """A softmax output into a loss compiled with from_logits=True: softmax twice."""
    return _frames_lstm_softmax(lambda: [
        layers.Conv2D(8, 3, strides=2, activation="relu", name="conv"),
        layers.Flatten(name="flat")], keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def healthy() -> keras.Model:
    """Spatial features kept (a strided conv and Flatten per frame, no global pooling), one
    LSTM, a softmax into Keras' default from_logits=False."""
    return _frames_lstm_softmax(lambda: [
        layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1"),
        layers.Conv2D(8, 3, strides=2, activation="relu", name="conv2"),
        layers.Flatten(name="flat")])


def bidirectional_read_at_last_step() -> keras.Model:
    """A Bidirectional LSTM's full sequence read at x[:, -1] (a getitem op, no Lambda)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((T, S, S, 3))
    x = _frames(inp, layers.Conv2D(8, 3, strides=2, activation="relu", name="conv"),
                layers.Flatten(name="flat"))
    x = layers.Bidirectional(layers.LSTM(8, return_sequences=True), name="bi_seq")(x)
    x = x[:, -1]
    return _compiled(inp, layers.Dense(2, activation="softmax", name="head")(x),
                     "sparse_categorical_crossentropy")


FRESH = """
import json, sys
import clipdoctor as cd
from clipdoctor.interop.keras import load_keras_model
data, path, budget, checks, out = sys.argv[1:]
model = load_keras_model(path, safe_mode=False)  # the test's own file
report = cd.diagnose(data, model=model, budget_s=float(budget), checks=json.loads(checks))
report.to_json(out)
"""


def _diagnose(data: Path, model: keras.Model, checks: list[str] | None, what: str):
    """Save `model` to a .keras file and diagnose that file from a fresh Python process, where
    keras was not imported before (the backend is chosen there), running the checks named (None:
    all) -> the report, read back from its JSON."""
    from clipdoctor.doctor.findings import Finding, Report

    folder = Path(tempfile.mkdtemp(prefix="keras_doctor_"))
    path, out = folder / "model.keras", folder / "report.json"
    model.save(path)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", FRESH, str(data), str(path), BUDGET,
                           json.dumps(checks), str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    print(f"\n{what}: saved, diagnosed in a fresh process in "
          f"{time.perf_counter() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(out.read_text())
    findings = [Finding(f["code"], f["severity"], f["title"], f["evidence"], f["remedy"])
                for f in d["findings"]]
    return Report(findings=findings, probes=d["probes"], dataset=d["dataset"],
                  model=d["model"], skipped=d["skipped"], skipped_probes=d["skipped_probes"],
                  failures=d["failures"], wall_s=d["wall_s"])


def _top(report, n: int = 3) -> list[str]:
    return [f.code for f in report.findings[:n]]


# ---------------------------------------------------------------------------------------------
# through the CLI, from a fresh process

def test_cli_double_softmax_first(clips, tmp_path):
    """`clipdoctor diagnose DATA --keras model.keras` in a fresh process: a softmax output
    compiled with from_logits=True is the first finding, worded in Keras terms, and the
    report's model section holds the Keras facts."""
    path = tmp_path / "m.keras"
    logits_after_softmax().save(path)
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # the CLI picks torch
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "clipdoctor", "diagnose", str(clips),
                           "--keras", str(path), "--json", str(out), "--budget", BUDGET],
                          capture_output=True, text=True, env=env, timeout=600)
    print(f"\nCLI double-softmax: {time.perf_counter() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    first = report["findings"][0]
    assert first["code"] == "double-softmax", [f["code"] for f in report["findings"]]
    assert "from_logits" in first["remedy"]
    assert report["model"]["framework"] == "keras"
    facts = report["model"]["keras"]
    assert facts["softmax_output"] is True and facts["compile_from_logits"] is True
    assert facts["input_shape"] == [T, S, S, 3]


AUGMENT = """
import numpy as np

def per_frame_shift(clip):
    # the seed recipe's augmentation: ImageDataGenerator.random_transform frame by frame,
    # here a random shift drawn for every frame of a (T, H, W, C) uint8 clip
    return np.stack([np.roll(f, tuple(np.random.randint(-4, 5, 2)), axis=(0, 1)) for f in clip])
"""


def test_cli_numpy_augmentation_of_a_keras_user(clips, tmp_path):
    """`--augment file.py:function` for a Keras model: the function gets clips as the model
    takes them ((T, H, W, C), here floats in 0..1: the model has no Rescaling layer; uint8
    0..255 for one that rescales) and its per-frame draws are inconsistent-augmentation, in
    Keras terms; a function that is not there is one line and exit 2."""
    path, aug = tmp_path / "m.keras", tmp_path / "my_aug.py"
    healthy().save(path)
    aug.write_text(AUGMENT)
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run([sys.executable, "-m", "clipdoctor", "diagnose", str(clips),
                           "--keras", str(path), "--augment", f"{aug}:per_frame_shift",
                           "--json", str(out), "--budget", BUDGET],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    codes = [f["code"] for f in report["findings"]]
    assert "inconsistent-augmentation" in codes[:3], codes
    f = next(f for f in report["findings"] if f["code"] == "inconsistent-augmentation")
    assert "per_frame_shift" in f["title"] and "ImageDataGenerator" in f["remedy"]
    bad = subprocess.run([sys.executable, "-m", "clipdoctor", "diagnose", str(clips),
                          "--augment", f"{aug}:nope"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "has no function nope" in bad.stderr.strip().splitlines()[-1]


def test_cli_bad_keras_file_is_one_line(clips, tmp_path):
    """A file Keras cannot read: exit 2 and one line naming the file, for diagnose and
    repair alike."""
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    for command in ("diagnose", "repair"):
        proc = subprocess.run([sys.executable, "-m", "clipdoctor", command, str(clips),
                               "--keras", str(junk), "--out", str(tmp_path / "o")]
                              if command == "repair" else
                              [sys.executable, "-m", "clipdoctor", command, str(clips),
                               "--keras", str(junk)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(junk) in lines[0] and "model.save" in lines[0]


# ---------------------------------------------------------------------------------------------
# saved, then diagnosed from a fresh process (the checks each case is about)

def test_seed_recipe_motion_invisible(clips):
    """The seed recipe (per-frame global pooling) on direction pairs: the pooled features
    lose where the object is, measured on the reference backbone's features."""
    report = _diagnose(clips, recipe(), MODEL_CHECKS + ["motion_visibility"], "recipe")
    assert "motion-invisible-features" in _top(report), _top(report, 10)
    f = next(f for f in report.findings if f.code == "motion-invisible-features")
    assert "pooling=None" in f.remedy and "--pool" not in f.remedy
    assert f.evidence["keras_pools"] == ["td_gap/gap"]
    assert report.model["keras"]["per_frame_global_pool"] == ["td_gap/gap"]
    # a softmax into from_logits=False is correct Keras: no double softmax
    assert "double-softmax" not in report.codes()


def test_per_frame_random_rotation(clips):
    """RandomRotation inside TimeDistributed draws one rotation per frame: measured by the
    augmentation probe on the model's own layer, named in the finding."""
    report = _diagnose(clips, per_frame_rotation(), MODEL_CHECKS, "per-frame rotation")
    assert "inconsistent-augmentation" in _top(report), _top(report, 10)
    f = next(f for f in report.findings if f.code == "inconsistent-augmentation")
    assert "td_rotate/rotate" in f.title and "whole clip" in f.remedy
    assert f.evidence["keras_layers"] == ["td_rotate/rotate"]


def test_bidirectional_last_step_from_the_graph(clips):
    """x[:, -1] of a Bidirectional LSTM's sequence: found in the Keras graph (torch hooks see
    no Keras RNN), with the Keras remedy."""
    report = _diagnose(clips, bidirectional_read_at_last_step(), ["bidirectional_readout"],
                       "bidirectional last step")
    f = next(f for f in report.findings if f.code == "bidirectional-last-step")
    assert "bi_seq" in f.title and "return_sequences=False" in f.remedy


def test_healthy_keras_model_has_no_warning(clips):
    """Spatial features kept, softmax into from_logits=False, no per-frame randomness: every
    check runs and none warns."""
    report = _diagnose(clips, healthy(), None, "healthy")
    bad = [(f.code, f.title) for f in report.findings if f.severity in ("error", "warning")]
    assert not bad, bad
    assert report.model["framework"] == "keras"
    assert not report.failures, report.failures
    assert "motion_features" in report.probes  # measured, and found nothing to compare


def test_frozen_batchnorm_is_not_drift(clips):
    """A frozen (trainable=False) per-frame part holding a BatchNormalization: Keras keeps it
    on its moving statistics, and torch's BatchNorm probes see no torch BatchNorm inside the
    wrapper, so no frozen-batchnorm-drift; the facts list the frozen part."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((T, S, S, 3))
    cnn = keras.Sequential([layers.Conv2D(8, 3, strides=2, name="conv"),
                            layers.BatchNormalization(name="bn"), layers.ReLU(name="relu"),
                            layers.Flatten(name="flat")], name="cnn")
    cnn.trainable = False
    x = layers.TimeDistributed(cnn, name="td_cnn")(inp)
    x = layers.LSTM(16, name="lstm")(x)
    model = _compiled(inp, layers.Dense(2, activation="softmax", name="head")(x),
                      "sparse_categorical_crossentropy")
    report = _diagnose(clips, model, ["frozen_batchnorm", "model_size"], "frozen BatchNorm")
    assert "frozen-batchnorm-drift" not in report.codes()
    # a saved file keeps each layer's trainable flag, not the container's: after loading the
    # frozen part is listed layer by layer
    frozen = {f["name"]: f["contains_batchnorm"] for f in report.model["keras"]["frozen_layers"]}
    assert frozen == {"td_cnn/cnn/conv": False, "td_cnn/cnn/bn": True, "td_cnn/cnn/relu": False,
                      "td_cnn/cnn/flat": False}
    assert report.probes["bn_drift"].get("drifted", []) == []


# ---------------------------------------------------------------------------------------------
# pieces

def test_probability_cross_entropy_in_the_loss_helpers():
    """A Keras cross-entropy on probabilities: a uniform guess is ln K, the floor with label
    smoothing is the smoothed targets' entropy, as for cross-entropy on logits."""
    y = torch.tensor([0, 1, 2, 1])
    assert uniform_loss(ProbabilityCrossEntropy(), y, 3) == pytest.approx(math.log(3), abs=1e-5)
    assert loss_floor(ProbabilityCrossEntropy(), y, 3) == 0.0
    smoothed = loss_floor(ProbabilityCrossEntropy(0.1), y, 3)
    on_logits = loss_floor(functools.partial(torch.nn.functional.cross_entropy,
                                             label_smoothing=0.1), y, 3)
    assert smoothed == pytest.approx(on_logits, rel=1e-3) and smoothed > 0


def test_uncompiled_model_trains_with_adam_at_the_config_lr():
    """A model saved without a compile config: cross-entropy on its probabilities and Adam at
    the run config's lr, each said in the facts' notes."""
    from clipdoctor.config import RunConfig
    from clipdoctor.doctor.runner import keras_inputs

    model = healthy()
    bare = keras.Model(model.inputs, model.outputs)  # same graph, never compiled
    config = RunConfig()
    config = config.model_copy(update={"train": config.train.model_copy(update={"lr": 3e-4})})
    k = keras_inputs(bare, config, None, None)
    assert isinstance(k.loss_fn, ProbabilityCrossEntropy)
    assert k.optimizer.describe() == "torch.optim.Adam(lr=0.0003)"
    assert any("Adam at lr 0.0003" in n for n in k.facts["notes"])
    assert (k.config.data.frames, k.config.data.size) == (T, S)
    assert keras_inputs(torch.nn.Linear(2, 2), config, None, None) is None


def test_repair_advises_instead_of_retraining(clips, tmp_path, monkeypatch):
    """`repair` on a Keras model: no re-training, the findings' advice written and returned."""
    from clipdoctor.doctor import runner
    from clipdoctor.doctor.findings import Finding, Report
    from clipdoctor.doctor.repair import advise

    seen = {}

    def fake(data, **kw):
        seen.update(kw)
        return Report(findings=[Finding("double-softmax", "error", "twice", {}, "do this", 1.0)])

    monkeypatch.setattr(runner, "diagnose", fake)
    model = healthy()
    report, advice = advise(str(clips), model, out=tmp_path / "r", budget_s=1.0)
    assert seen["model"] is model
    assert advice == [{"code": "double-softmax", "severity": "error", "title": "twice",
                       "remedy": "do this"}]
    written = json.loads((tmp_path / "r" / "advice.json").read_text())
    assert written["retrained"] is False and written["advice"] == advice
