"""Keras 3 models in the doctor (issue 14): tiny CNN-LSTM clip classifiers built, compiled and
saved with Keras on its torch backend, loaded back, and adapted. Each fact of the adapter is
checked on a model that has it and on a healthy one that does not; the wrapper's outputs,
the rebuilt loss and the rebuilt optimizer are checked against Keras itself."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"  # Keras reads its backend once, at its first import
keras = pytest.importorskip("keras", reason="Keras 3 is not installed: pip install clipdoctor[keras]")
if keras.backend.backend() != "torch":
    pytest.skip("keras was imported on another backend before these tests", allow_module_level=True)

from keras import layers  # noqa: E402

from clipdoctor.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from clipdoctor.errors import ClipdoctorError  # noqa: E402
from clipdoctor.interop.keras import (KerasAdapter, ProbabilityCrossEntropy,  # noqa: E402
                                      TorchOptimizerFactory, import_keras, is_keras_model,
                                      load_keras_model)

T, S, K, B = 4, 16, 3, 6  # frames, frame size, classes, clips per batch

pytestmark = [  # Keras' own noise: loading skips the saved optimizer state; numpy 2's copy=
    pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer:UserWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
]


# ---------------------------------------------------------------------------------------------
# tiny models, each saved to a .keras file once per module

def _seed() -> None:
    keras.utils.set_random_seed(0)


def recipe() -> keras.Model:
    """The classic recipe: per-frame conv, BatchNorm and global average pooling, two stacked
    bidirectional LSTMs, a softmax; Adam and categorical cross-entropy on one-hot labels."""
    _seed()
    inp = keras.Input((T, S, S, 3))
    x = layers.TimeDistributed(layers.Conv2D(4, 3, activation="relu", name="conv"), name="td_conv")(inp)
    x = layers.TimeDistributed(layers.BatchNormalization(name="bn"), name="td_bn")(x)
    x = layers.TimeDistributed(layers.GlobalAveragePooling2D(name="gap"), name="td_gap")(x)
    x = layers.Dropout(0.5, name="drop")(x)
    x = layers.Bidirectional(layers.LSTM(8, return_sequences=True), name="bi_seq")(x)
    x = layers.Bidirectional(layers.LSTM(4), name="bi_last")(x)
    out = layers.Dense(K, activation="softmax", name="head")(x)
    model = keras.Model(inp, out, name="recipe")
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def augmented() -> keras.Model:
    """A random rotation inside TimeDistributed (a new angle per frame); SGD with Nesterov
    momentum and sparse categorical cross-entropy on integer labels."""
    _seed()
    inp = keras.Input((T, S, S, 3))
    x = layers.TimeDistributed(layers.RandomRotation(0.2, name="rot"), name="td_aug")(inp)
    x = layers.TimeDistributed(layers.Conv2D(4, 3, name="conv"), name="td_conv")(x)
    x = layers.TimeDistributed(layers.GlobalMaxPooling2D(name="gmp"), name="td_gmp")(x)
    x = layers.LSTM(6, name="lstm")(x)
    out = layers.Dense(K, activation="softmax", name="head")(x)
    model = keras.Model(inp, out, name="augmented")
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True),
                  loss="sparse_categorical_crossentropy")
    return model


def logits_after_softmax() -> keras.Model:
    """A softmax output into a loss told it gets logits (softmax applied twice); RMSprop."""
    _seed()
    inp = keras.Input((T, S, S, 3))
    x = layers.TimeDistributed(layers.Conv2D(4, 3, strides=2, name="conv"), name="td_conv")(inp)
    x = layers.TimeDistributed(layers.Flatten(name="flat"), name="td_flat")(x)
    x = layers.Bidirectional(layers.GRU(6), name="bi")(x)
    out = layers.Dense(K, activation="softmax", name="head")(x)
    model = keras.Model(inp, out, name="double_softmax")
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3, rho=0.8, momentum=0.5),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    return model


def last_step_reads() -> keras.Model:
    """x[:, -1] of a bidirectional sequence, read by a Lambda and by a getitem op; logits
    into sparse cross-entropy from logits; AdamW."""
    _seed()
    inp = keras.Input((T, S, S, 3))
    x = layers.TimeDistributed(layers.Conv2D(4, 3, strides=2, name="conv"), name="td_conv")(inp)
    x = layers.TimeDistributed(layers.Flatten(name="flat"), name="td_flat")(x)
    seq = layers.Bidirectional(layers.LSTM(6, return_sequences=True), name="bi")(x)
    by_lambda = layers.Lambda(lambda t: t[:, -1], name="last")(seq)
    by_getitem = seq[:, -1]
    x = layers.Concatenate(name="cat")([by_lambda, by_getitem])
    out = layers.Dense(K, name="head")(x)
    model = keras.Model(inp, out, name="last_step")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def healthy() -> keras.Model:
    """Spatial features kept per frame (no global pool), a frozen BatchNorm forced into
    training mode in the graph, a bidirectional LSTM read as Keras joins it."""
    _seed()
    inp = keras.Input((T, S, S, 3))
    x = layers.TimeDistributed(layers.Conv2D(4, 3, strides=2, name="conv"), name="td_conv")(inp)
    bn = layers.BatchNormalization(name="fbn")
    x = bn(x, training=True)
    bn.trainable = False
    x = layers.TimeDistributed(layers.Flatten(name="flat"), name="td_flat")(x)
    x = layers.Bidirectional(layers.LSTM(6), name="bi")(x)
    out = layers.Dense(K, activation="softmax", name="head")(x)
    model = keras.Model(inp, out, name="healthy")
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


BUILDERS = {"recipe": recipe, "augmented": augmented, "logits_after_softmax": logits_after_softmax,
            "last_step_reads": last_step_reads, "healthy": healthy}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """Every tiny model saved once to its own .keras file: {name: path}."""
    folder = tmp_path_factory.mktemp("keras_models")
    paths = {}
    for name, build in BUILDERS.items():
        paths[name] = folder / f"{name}.keras"
        build().save(paths[name])
    return paths


@pytest.fixture(scope="module")
def adapters(saved) -> dict:
    """Every saved model loaded back with load_keras_model and adapted."""
    return {name: KerasAdapter(load_keras_model(path, safe_mode=name != "last_step_reads"))
            for name, path in saved.items()}


def clip_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels (B, T, H, W, 3) in 0..1, clipdoctor's normalised batch (B, T, 3, H, W), labels)."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(B, T, S, S, 3, generator=g)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    x = ((pixels - mean) / std).permute(0, 1, 4, 2, 3).contiguous()  # (B, T, H, W, C) -> (B, T, C, H, W)
    y = torch.arange(B) % K
    return pixels, x, y


# ---------------------------------------------------------------------------------------------
# facts

def test_recipe_facts(adapters):
    a = adapters["recipe"]
    f = a.facts()
    json.dumps(f)  # plain data
    assert a.input_shape == (T, S, S, 3) and a.frames == T and a.size == S and a.num_classes == K
    assert a.channels_last and a.pixel_scale == 1.0
    assert f["per_frame_global_pool"] == ["td_gap/gap"]
    assert f["per_frame_random_augmentation"] == []
    assert f["bidirectional_last_step"] == []  # bi_seq feeds an LSTM, bi_last is Keras' own join
    assert f["softmax_output"] is True and f["output_activation"] == "softmax"
    assert f["compile_from_logits"] is False
    assert f["frozen_layers"] == [] and f["frozen_bn_forced_training"] == []
    assert f["forced_training_calls"] == []  # Dropout's default training=False is not forcing
    assert [(r["name"], r["class"], r["units"], r["return_sequences"]) for r in f["recurrent_layers"]] == [
        ("bi_seq", "Bidirectional(LSTM)", 8, True), ("bi_last", "Bidirectional(LSTM)", 4, False)]
    model = a.model
    assert f["trainable_params"] == sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert f["total_params"] == model.count_params() > f["trainable_params"]  # + BN statistics


def test_recipe_loss_and_optimizer(adapters):
    a = adapters["recipe"]
    assert (a.loss_name, a.from_logits, a.label_format) == ("categorical_crossentropy", False, "one-hot")
    assert isinstance(a.loss_fn, ProbabilityCrossEntropy) and a.outputs_probabilities
    assert (a.optimizer_name, a.learning_rate) == ("Adam", 0.002)
    opt = a.make_optimizer(a.module.parameters())
    assert type(opt) is torch.optim.Adam
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (0.002, (0.9, 0.999), 1e-7)


def test_random_augmentation_inside_time_distributed(adapters):
    a = adapters["augmented"]
    f = a.facts()
    assert f["per_frame_random_augmentation"] == ["td_aug/rot"]
    assert f["per_frame_global_pool"] == ["td_gmp/gmp"]
    assert f["pixel_scale"] == 1.0 and "td_conv/conv" in f["pixel_scale_reason"]  # past the rotation
    assert (a.loss_name, a.label_format, a.from_logits) == ("sparse_categorical_crossentropy", "sparse", False)
    opt = a.make_optimizer(a.module.parameters())
    assert type(opt) is torch.optim.SGD
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"]) == (0.01, 0.9, True)
    # the training flag reaches the random layer: a new rotation per call in training only
    _, x, _ = clip_batch()
    m = a.module
    with torch.no_grad():
        m.train()
        assert not torch.allclose(m(x), m(x))
        m.eval()
        assert torch.equal(m(x), m(x))


def test_from_logits_after_softmax(adapters):
    a = adapters["logits_after_softmax"]
    f = a.facts()
    assert f["softmax_output"] is True and f["compile_from_logits"] is True  # softmax twice
    assert f["per_frame_global_pool"] == [] and f["bidirectional_last_step"] == []
    assert a.label_smoothing == pytest.approx(0.1)
    assert a.loss_fn.func is F.cross_entropy and a.loss_fn.keywords == {"label_smoothing": pytest.approx(0.1)}
    opt = a.make_optimizer(a.module.parameters())
    g = opt.param_groups[0]
    assert type(opt) is torch.optim.RMSprop
    assert (g["lr"], g["alpha"], g["momentum"], g["eps"]) == (1e-3, 0.8, 0.5, 1e-7)


def test_bidirectional_last_step_reads(saved, adapters):
    with pytest.raises(ClipdoctorError, match="safe_mode=False") as e:
        load_keras_model(saved["last_step_reads"])  # a Lambda: refused by default
    assert "\n" not in str(e.value) and str(saved["last_step_reads"]) in str(e.value)
    a = adapters["last_step_reads"]
    f = a.facts()
    assert f["bidirectional_last_step"] == [{"layer": "bi", "read_by": "last"},
                                            {"layer": "bi", "read_by": "get_item"}]
    assert f["softmax_output"] is False and f["output_activation"] == "linear"
    assert (a.loss_name, a.from_logits, a.label_format) == ("sparse_categorical_crossentropy", True, "sparse")
    assert a.loss_fn is F.cross_entropy
    opt = a.make_optimizer(a.module.parameters())
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.01


def test_healthy_facts_and_frozen_batchnorm(adapters):
    a = adapters["healthy"]
    f = a.facts()
    for fact in ("per_frame_global_pool", "per_frame_random_augmentation", "bidirectional_last_step"):
        assert f[fact] == [], fact
    assert f["frozen_layers"] == [{"name": "fbn", "contains_batchnorm": True}]
    assert f["forced_training_calls"] == ["fbn"] and f["frozen_bn_forced_training"] == ["fbn"]
    assert f["frozen_bn_uses_moving_statistics"] is True
    # the frozen layer's weights are torch Parameters without gradient, absent from the module
    fbn = a.model.get_layer("fbn")
    assert all(isinstance(v.value, torch.nn.Parameter) and not v.value.requires_grad
               for v in fbn.variables)
    names = [n for n, _ in a.module.named_parameters()]
    assert names and not any("fbn" in n for n in names)
    # and Keras 3 keeps a frozen BatchNorm on its moving statistics even in training mode
    before = fbn.moving_mean.value.detach().clone()
    a.module.train()
    with torch.no_grad():
        a.module(clip_batch()[1])
    assert torch.equal(fbn.moving_mean.value, before)


def test_efficientnet_recipe_pixel_scale_and_pool():
    """The user's recipe: EfficientNetB0 (no weights) per frame, frozen. It rescales raw 0..255
    pixels itself, and its squeeze-excitation pools are not the per-frame pool."""
    _seed()
    base = keras.applications.EfficientNetB0(include_top=False, weights=None,
                                             input_shape=(32, 32, 3), pooling="avg")
    base.trainable = False
    inp = keras.Input((2, 32, 32, 3))
    x = layers.TimeDistributed(base, name="td")(inp)
    x = layers.Bidirectional(layers.LSTM(4))(x)
    model = keras.Model(inp, layers.Dense(2, activation="softmax")(x))
    a = KerasAdapter(model)
    f = a.facts()
    assert a.pixel_scale == 255.0 and "Rescaling" in f["pixel_scale_reason"]
    assert f["per_frame_global_pool"] == ["td/efficientnetb0/avg_pool"]
    assert f["frozen_layers"] == [{"name": "td/efficientnetb0", "contains_batchnorm": True}]
    assert a.loss_fn is None and a.make_optimizer is None and f["compile_from_logits"] is None
    frozen = len(list(a.module.parameters()))
    base.trainable = True  # unfrozen later (fine-tuning): the module's parameters follow
    assert len(list(a.module.parameters())) == len(model.trainable_variables) > frozen
    assert a.module.to_keras_input(clip_batch()[1][:, :2]).shape == (B, 2, S, S, 3)
    _, x, _ = clip_batch()
    assert float(a.module.to_keras_input(x).max()) > 200  # 0..255 pixels


@pytest.mark.parametrize("mean, scale", [((123.7, 116.3, 103.5), 255.0), ((0.485, 0.456, 0.406), 1.0)])
def test_pixel_scale_from_a_normalization_layer(mean, scale):
    """A first Normalization with a mean in 0..255 units takes raw pixels, one in 0..1 units
    takes 0..1 pixels; pixel_scale= overrides what is read."""
    inp = keras.Input((T, S, S, 3))
    x = layers.TimeDistributed(layers.Normalization(mean=list(mean), variance=[0.05] * 3, name="norm"),
                               name="td_norm")(inp)
    x = layers.TimeDistributed(layers.Flatten())(x)
    model = keras.Model(inp, layers.Dense(K)(layers.LSTM(4)(x)))
    a = KerasAdapter(model)
    assert a.pixel_scale == scale and a.pixel_scale_reason.startswith("td_norm/norm")
    given = KerasAdapter(model, pixel_scale=2.0)
    assert given.pixel_scale == given.module.pixel_scale == 2.0 and given.pixel_scale_reason == "given"


def test_channels_first_input():
    """A model taking (T, 3, H, W) frames gets clipdoctor's layout as it is."""
    _seed()
    inp = keras.Input((T, 3, S, S))
    x = layers.TimeDistributed(layers.Conv2D(4, 3, data_format="channels_first"))(inp)
    x = layers.TimeDistributed(layers.GlobalAveragePooling2D(data_format="channels_first"))(x)
    model = keras.Model(inp, layers.Dense(K)(layers.LSTM(4)(x)))
    a = KerasAdapter(model)
    assert a.input_shape == (T, 3, S, S) and not a.channels_last and a.size == S
    pixels, x, _ = clip_batch()
    assert torch.allclose(a.module.to_keras_input(x), pixels.permute(0, 1, 4, 2, 3), atol=1e-5)
    with torch.no_grad():
        assert a.module.eval()(x).shape == (B, K)


def test_sequential_model_and_other_compile_forms():
    """A Sequential model (its graph is the Functional it builds from its input): Rescaling
    of raw pixels, a Lambda last-step read, a Softmax layer at the end; a loss function and
    a learning-rate schedule with clipping (both noted)."""
    _seed()
    model = keras.Sequential([
        keras.Input((T, S, S, 3)),
        layers.TimeDistributed(layers.Rescaling(1 / 255.0, name="scale"), name="td_scale"),
        layers.TimeDistributed(layers.Conv2D(4, 3, name="conv"), name="td_conv"),
        layers.TimeDistributed(layers.GlobalAveragePooling2D(name="gap"), name="td_gap"),
        layers.Bidirectional(layers.LSTM(5, return_sequences=True), name="bi"),
        layers.Lambda(lambda t: t[:, -1], name="last"),
        layers.Dense(K, name="head"), layers.Softmax(name="probs")])
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.9)
    model.compile(keras.optimizers.Adam(schedule, clipnorm=1.0),
                  loss=keras.losses.categorical_crossentropy)
    a = KerasAdapter(model)
    f = a.facts()
    assert a.pixel_scale == 255.0 and f["pixel_scale_reason"].startswith("td_scale/scale")
    assert f["per_frame_global_pool"] == ["td_gap/gap"]
    assert f["bidirectional_last_step"] == [{"layer": "bi", "read_by": "last"}]
    assert f["softmax_output"] is True and f["output_activation"] == "softmax"
    assert isinstance(a.loss_fn, ProbabilityCrossEntropy) and a.learning_rate == 0.01
    assert any("ExponentialDecay" in n for n in a.notes) and any("clipnorm" in n for n in a.notes)
    pixels, x, y = clip_batch()
    assert torch.allclose(a.module.to_keras_input(x), pixels * 255, atol=1e-3)
    # any other Keras loss runs as Keras' own function, reduced to the batch mean
    model.compile("sgd", loss="binary_crossentropy")
    a = KerasAdapter(model)
    assert (a.loss_name, a.label_format, a.optimizer_name) == ("binary_crossentropy", "one-hot", "SGD")
    with torch.no_grad():
        ours = float(a.loss_fn(a.module.eval()(x), y))
    theirs = model.evaluate(pixels.numpy() * 255, np.eye(K, dtype="float32")[y.numpy()],
                            batch_size=B, verbose=0, return_dict=True)["loss"]
    assert ours == pytest.approx(theirs, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# the torch module, the loss and the optimizer against Keras

def test_wrapper_input_and_outputs_match_keras(adapters):
    a = adapters["recipe"]
    pixels, x, _ = clip_batch()
    converted = a.module.to_keras_input(x)
    assert torch.allclose(converted, pixels, atol=1e-5)  # the normalisation undone, channels last
    a.module.eval()
    with torch.no_grad():
        out = a.module(x)
    assert out.shape == (B, K)
    direct = a.model(pixels, training=False)
    predicted = a.model.predict(pixels.numpy(), verbose=0, batch_size=B)
    assert torch.allclose(out, direct.detach(), atol=1e-6)
    assert np.allclose(out.numpy(), predicted, atol=1e-5)
    # a gradient reaches clip 0 and only clip 0 (the doctor's cross-clip and time-step probes
    # need it); random weights, as a softmax row's sum has no gradient
    xg = x.clone().requires_grad_(True)
    w = torch.randn(K, generator=torch.Generator().manual_seed(0))
    (a.module(xg)[0] * w).sum().backward()
    assert xg.grad is not None and float(xg.grad[0].abs().sum()) > 0
    assert float(xg.grad[1:].abs().sum()) == 0


@pytest.mark.parametrize("name", ["recipe", "augmented", "logits_after_softmax", "last_step_reads"])
def test_loss_matches_keras(adapters, name):
    """loss_fn on the wrapper's outputs == Keras' evaluate() on the same batch."""
    a = adapters[name]
    pixels, x, y = clip_batch(1)
    a.module.eval()
    with torch.no_grad():
        ours = float(a.loss_fn(a.module(x), y))
    targets = y.numpy() if a.label_format == "sparse" else np.eye(K, dtype="float32")[y.numpy()]
    theirs = a.model.evaluate(pixels.numpy(), targets, batch_size=B, verbose=0, return_dict=True)["loss"]
    assert ours == pytest.approx(theirs, abs=1e-4)


def test_parameters_are_exactly_the_trainable_variables(adapters):
    a = adapters["recipe"]
    params = list(a.module.parameters())
    assert {id(p) for p in params} == {id(v.value) for v in a.model.trainable_variables}
    assert len(params) == len(a.model.trainable_variables)
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params)
    # BatchNorm statistics and random-seed state: Parameters without gradient, left out
    left_out = [p for p in a.model.parameters() if id(p) not in {id(q) for q in params}]
    assert left_out and not any(p.requires_grad for p in left_out)
    assert {id(p) for p in left_out} == {id(v.value) for v in a.model.non_trainable_variables}


def test_training_flag_reaches_keras(adapters):
    a = adapters["recipe"]
    _, x, _ = clip_batch(2)
    bn = a.model.get_layer("td_bn").layer
    before = bn.moving_mean.value.detach().clone()
    m = a.module
    with torch.no_grad():
        m.eval()
        assert torch.equal(m(x), m(x))  # Dropout off
        assert torch.equal(bn.moving_mean.value, before)  # moving statistics untouched
        m.train()
        assert not torch.allclose(m(x), m(x))  # Dropout on
    assert not torch.equal(bn.moving_mean.value, before)  # batch statistics accumulated
    m.eval()


def test_torch_optimizer_trains_the_keras_model(saved):
    """The compiled optimizer, rebuilt in torch on the module's parameters, lowers the loss,
    and Keras' own predict sees the new weights. (In eval mode: Dropout and batch statistics
    would make a 6-clip loss too noisy to compare.)"""
    a = KerasAdapter(load_keras_model(saved["recipe"]))  # its own copy: the weights change
    pixels, x, y = clip_batch(3)
    before = a.model.predict(pixels.numpy(), verbose=0, batch_size=B)
    opt = a.make_optimizer(a.module.parameters())  # torch Adam, lr 2e-3 as compiled
    a.module.eval()
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = a.loss_fn(a.module(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 1e-3 and all(b < a_ for a_, b in zip(losses, losses[1:]))
    after = a.model.predict(pixels.numpy(), verbose=0, batch_size=B)
    assert not np.allclose(before, after)  # Keras itself sees the new weights
    assert isinstance(a.make_optimizer, TorchOptimizerFactory)


@pytest.mark.parametrize("name", ["healthy", "last_step_reads"])
def test_deep_copy_is_independent(adapters, name, monkeypatch):
    """The doctor trains deep copies of the user's model: a copy is rebuilt from the Keras
    config (not through Keras' pickling, a save and reload of the whole file: made to fail
    here), Lambda layers and frozen layers included; its parameters are its own Keras
    model's variables, under the same names, and training it leaves the original as it was."""
    from keras.src.saving.keras_saveable import KerasSaveable

    def no_pickling(self):
        raise AssertionError("copied through Keras' pickling")

    monkeypatch.setattr(KerasSaveable, "__reduce__", no_pickling)
    a = adapters[name]
    m = a.module.eval()
    twin = copy.deepcopy(m)
    assert twin.keras_model is not m.keras_model and not twin.training
    _, x, y = clip_batch(4)
    with torch.no_grad():
        original = m(x)
        assert torch.equal(twin(x), original)
    ids = {id(p) for p in twin.parameters()}
    assert ids == {id(v.value) for v in twin.keras_model.trainable_variables}
    assert not ids & {id(p) for p in m.parameters()}
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in m.named_parameters()]
    opt = a.make_optimizer(twin)
    for g in opt.param_groups:
        g["lr"] = 0.05
    loss = a.loss_fn(twin(x), y)
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert torch.equal(m(x), original) and not torch.allclose(twin(x), original)


# ---------------------------------------------------------------------------------------------
# importing, loading, errors

def test_load_errors(tmp_path, saved):
    with pytest.raises(ClipdoctorError, match="no such file"):
        load_keras_model(tmp_path / "missing.keras")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ClipdoctorError, match="not a readable Keras model") as e:
        load_keras_model(junk)
    assert str(junk) in str(e.value) and "\n" not in str(e.value)
    # a custom class Keras cannot find
    custom = tmp_path / "custom.keras"
    with zipfile.ZipFile(saved["healthy"]) as src, zipfile.ZipFile(custom, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                cfg = json.loads(data)
                head = cfg["config"]["layers"][-1]
                head.update(class_name="MyHead", module="my_project.layers", registered_name="MyHead")
                data = json.dumps(cfg).encode()
            dst.writestr(item, data)
    with pytest.raises(ClipdoctorError, match="custom_objects") as e:
        load_keras_model(custom)
    assert str(custom) in str(e.value) and "\n" not in str(e.value)


def test_is_keras_model_and_errors(monkeypatch):
    assert is_keras_model(recipe()) and not is_keras_model(torch.nn.Linear(2, 2))
    assert not is_keras_model(None)
    with pytest.raises(ClipdoctorError, match="expected a keras.Model"):
        KerasAdapter(torch.nn.Linear(2, 2))
    flat = keras.Model(inp := keras.Input((8,)), layers.Dense(2)(inp))
    with pytest.raises(ClipdoctorError, match="clips"):
        KerasAdapter(flat)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ClipdoctorError, match="KERAS_BACKEND=torch"):
        import_keras()


def test_missing_keras_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` raises ImportError
    with pytest.raises(ClipdoctorError, match=r"pip install clipdoctor\[keras\]"):
        import_keras()


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, timeout=240)


def test_fresh_process_selects_the_torch_backend(saved):
    """keras never imported before: load_keras_model picks the torch backend itself, even
    over a KERAS_BACKEND naming another one; is_keras_model never imports keras."""
    code = (
        "import sys\n"
        "from clipdoctor.interop.keras import KerasAdapter, is_keras_model, load_keras_model\n"
        "assert not is_keras_model(object()) and 'keras' not in sys.modules\n"
        f"m = load_keras_model({str(saved['recipe'])!r})\n"
        "import keras\n"
        "print(keras.backend.backend(), is_keras_model(m), KerasAdapter(m).facts()['per_frame_global_pool'])\n")
    proc = _python(code, KERAS_BACKEND="jax")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[-2] == "torch True ['td_gap/gap']"


def test_keras_on_another_backend_is_one_clear_error():
    for backend in ("numpy", "jax"):
        if _python("import keras", KERAS_BACKEND=backend).returncode == 0:
            break
    else:
        pytest.skip("no other Keras backend importable here (numpy and jax both need jax; "
                    "tensorflow is not installed): the error itself is tested in "
                    "test_is_keras_model_and_errors with a patched keras.backend.backend")
    code = ("import keras\n"
            "from clipdoctor.errors import ClipdoctorError\n"
            "from clipdoctor.interop.keras import import_keras\n"
            "try:\n    import_keras()\nexcept ClipdoctorError as e:\n    print(e)\n")
    proc = _python(code, KERAS_BACKEND=backend)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "KERAS_BACKEND=torch" in lines[0] and "fresh process" in lines[0]
