"""One training path (issue 13, item 6): the doctor trains the built-in model with `train`'s own
loss (class weights, label smoothing), optimizer groups and schedule, through the same
functions of `training/module.py`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipdoctor import load_dataset
from clipdoctor.config import RunConfig, with_overrides
from clipdoctor.data.datamodule import ClipDataModule
from clipdoctor.doctor.probes import Probes, RunLoss, default_loss, loss_floor, uniform_loss
from clipdoctor.doctor.probes.data import loss_weighting
from clipdoctor.doctor.runner import build_context, diagnose, load_checks
from clipdoctor.training.module import ClipModule, warmup_schedule

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY = {"model.backbone": "test_resnet", "model.pretrained": False, "model.proj_dim": 32,
        "model.hidden": 32, "data.frames": 4, "data.frame_size": 36, "data.size": 32,
        "data.batch_size": 8, "train.epochs": 5, "train.lr": 3e-3}


def tiny(**extra) -> RunConfig:
    return with_overrides(RunConfig(), {**TINY, **extra})


def _arrays(counts: list[int], seed: int = 0):
    """(X, y) clips whose colour tells the class; `counts` clips per class."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    x = rng.integers(90, 110, (len(y), 4, 32, 32, 3), dtype=np.uint8)
    for i, c in enumerate(y):
        x[i, :, 8:20, 8:20] = (60 + 70 * c, 200 - 60 * c, 120)
    return x, y


@pytest.fixture(scope="module")
def imbalanced():
    return load_dataset(_arrays([36, 18, 9]), val_fraction=0.2, test_fraction=0.0)




def _train_module(data, config: RunConfig, model) -> ClipModule:
    """The ClipModule `train` builds for stage 1 (class weights as `train` computes them)."""
    dm = ClipDataModule(data, config.data, mean=model.info.mean, std=model.info.std,
                        seed=config.seed)
    dm.prepare()
    weights = dm.class_weights() if config.train.class_weighting == "balanced" else None
    return ClipModule(model, len(data.classes), config.train, class_weights=weights,
                      cached=config.model.freeze_backbone, steps_per_epoch=4)


@pytest.mark.parametrize("frozen", [True, False])
def test_builtin_optimizer_has_the_param_groups_of_train(imbalanced, frozen):
    config = tiny(**{"model.freeze_backbone": frozen, "train.weight_decay": 0.05})
    ctx = build_context(imbalanced, config=config, budget_s=20)
    ours = ctx.make_optimizer(ctx.make_model())
    theirs = _train_module(imbalanced, config, ctx.make_model()).configure_optimizers()["optimizer"]
    assert type(ours) is type(theirs) is torch.optim.AdamW
    assert ours.defaults["fused"] == theirs.defaults["fused"]

    def groups(opt):  # the peak LR (train's scheduler has already scaled `lr` for step 0)
        return [(g.get("initial_lr", g["lr"]), g["weight_decay"],
                 [tuple(p.shape) for p in g["params"]]) for g in opt.param_groups]

    assert groups(ours) == groups(theirs)
    assert {g["weight_decay"] for g in ours.param_groups} == {0.0, 0.05}  # none on biases / norms
    if frozen:  # the frozen backbone is in neither
        assert sum(len(g["params"]) for g in ours.param_groups) < len(
            list(ctx.make_model().parameters()))


def test_builtin_loss_is_the_loss_of_train(imbalanced):
    config = tiny(**{"model.freeze_backbone": True, "train.label_smoothing": 0.1})
    ctx = build_context(imbalanced, config=config, budget_s=20)
    module = _train_module(imbalanced, config, ctx.make_model())
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 3, generator=g) * 2
    y = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0, 1, 0, 0])
    assert isinstance(ctx.loss_fn, RunLoss)
    assert float(ctx.loss_fn(logits, y)) == pytest.approx(float(module.loss(logits, y)), abs=1e-6)
    assert torch.allclose(ctx.loss_fn.class_weights, module.class_weights)
    plain = float(F.cross_entropy(logits, y))  # the weights and the smoothing are applied
    assert abs(float(ctx.loss_fn(logits, y)) - plain) > 1e-3


def test_balanced_config_on_imbalanced_data_gives_the_doctor_a_weighted_loss(imbalanced):
    load_checks()
    ctx = build_context(imbalanced, config=tiny(), budget_s=20)  # class_weighting: balanced
    w = ctx.loss_fn.class_weights
    counts = np.bincount([s.label for s in imbalanced.samples if s.split == "train"], minlength=3)
    assert w is not None and w.tolist() == pytest.approx((counts.sum() / (3 * counts)).tolist())
    assert w[2] > w[1] > w[0]  # the rarest class weighs most
    assert loss_weighting(ctx)[:2] == ("balanced", "config")
    d = Probes(ctx).get("dataset")
    assert d["class_weighting"] == "balanced" and "balanced class weights" in d["loss"]
    # without weighting: unweighted, and said so; the check fires on the 4:1 imbalance
    none = build_context(imbalanced, config=tiny(**{"train.class_weighting": "none"}))
    assert none.loss_fn.class_weights is None and loss_weighting(none)[0] == "none"
    report = diagnose(imbalanced, config=tiny(**{"train.class_weighting": "none"}),
                      budget_s=20, checks=["class_weights"])
    assert [f.code for f in report.findings] == ["class-weights-unused"]
    quiet = diagnose(imbalanced, config=tiny(), budget_s=20, checks=["class_weights"])
    assert quiet.findings == [] and quiet.skipped == []


def test_user_model_and_user_loss_keep_their_own(imbalanced):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 32 * 32, 3))
    ctx = build_context(imbalanced, config=tiny(), model=model, budget_s=20)
    assert ctx.loss_fn is default_loss and ctx.make_optimizer.form() == "default"
    mine = torch.nn.CrossEntropyLoss()
    ctx = build_context(imbalanced, config=tiny(), loss_fn=mine, budget_s=20)
    assert ctx.loss_fn is mine and ctx.make_optimizer.form() == "run"


def test_short_run_lr_follows_the_schedule_of_train(imbalanced, monkeypatch):
    from clipdoctor.doctor.probes import short_run as sr

    config = tiny(**{"model.freeze_backbone": True, "train.warmup_epochs": 1.0})
    ctx = build_context(imbalanced, config=config, budget_s=20)
    lrs: list[float] = []
    real = sr._train_step

    def spy(model, opt, *args, **kw):
        lrs.append(opt.param_groups[0]["lr"])
        return real(model, opt, *args, **kw)

    monkeypatch.setattr(sr, "_train_step", spy)
    run = Probes(ctx).get("short_run")
    spe = run.steps_per_epoch
    main = lrs[:run.steps]
    expected = warmup_schedule("cosine", spe, run.planned_epochs * spe)
    assert main == pytest.approx([config.train.lr * expected(i) for i in range(run.steps)])
    assert main[0] < main[spe] and main[-1] < main[spe]  # warm-up, then the cosine decay


def test_floor_and_uniform_loss_with_class_weights_and_label_smoothing():
    w = torch.tensor([0.625, 2.5])
    loss = RunLoss("balanced", 0.1, lambda: w)
    y = torch.tensor([0, 0, 0, 0, 1])
    z = torch.zeros(5, 2, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(2000):
        opt.zero_grad()
        value = loss(z, y)
        value.backward()
        opt.step()
    assert loss_floor(loss, y, 2) == pytest.approx(float(value.detach()), abs=1e-4)
    assert loss_floor(default_loss, y, 2) == 0.0  # plain cross-entropy can reach 0
    assert uniform_loss(default_loss, y, 2) == pytest.approx(math.log(2))
    assert uniform_loss(RunLoss("balanced", 0.0, lambda: w), y, 2) == pytest.approx(math.log(2))
    assert uniform_loss(lambda o, t: o.sum(), y, 2) is None  # an unknown loss: no reference
