"""The doctor on models written the way tutorials write them (issue 13, item 3 and part of 4).

A CNN-LSTM whose per-frame CNN (with BatchNorm2d) plays the pretrained backbone, frozen by each
of the three idioms people use: `requires_grad_(False)`, `with torch.no_grad():` in forward,
or left out of the optimizer (a factory of the model, or a ready Optimizer). Faulty: the frozen
part stays in train mode after `model.train()`, so its BatchNorm statistics drift; fixed: the
frozen part is kept in eval mode (`train()` overridden). On in-memory arrays over seeds 0-2,
and on a user's own torch Dataset. Plus: the three `optimizer=` forms, `diagnose` leaves the
user's model and optimizer as they were, a BatchNorm1d head survives every probe, and a model
that raises shows up under the report's failures (JSON, terminal, HTML).
"""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

import clipdoctor as cd
import clipdoctor.data.datamodule  # noqa: F401 - import Lightning before any budget starts
from clipdoctor.config import RunConfig, with_overrides
from clipdoctor.doctor.runner import build_context, diagnose
from clipdoctor.errors import ClipdoctorError
from clipdoctor.report.terminal import print_report

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CLASSES, FRAMES, SIZE = 4, 8, 32
CONFIG = {"data.frames": FRAMES, "data.frame_size": SIZE, "data.size": SIZE,
          "data.batch_size": 8, "train.lr": 1e-3}
# what the frozen part decides: drift, and the checks a frozen part used to trip
FREEZE_CHECKS = ["frozen_batchnorm", "gradients", "dead_units", "model_size", "sample_size"]
CAPACITY = {"oversized-model", "too-few-samples"}
LOUD = ("error", "warning")


def config(seed: int = 0) -> RunConfig:
    return with_overrides(RunConfig(), {**CONFIG, "seed": seed})




@pytest.fixture(scope="module")
def data():
    """4 classes x 16 clips, 8 frames of 32 x 32 (uint8, N T H W C): a coloured square moving
    left, right, up or down over a noisy background of a random tint (clips differ, so the
    frozen CNN's features do too)."""
    rng = np.random.default_rng(0)
    n = CLASSES * 16
    y = np.arange(n) % CLASSES
    tint = rng.integers(0, 140, (n, 1, 1, 1, 3))
    x = (tint + rng.integers(0, 60, (n, FRAMES, SIZE, SIZE, 3))).astype(np.uint8)
    moves = [(0, -2), (0, 2), (-2, 0), (2, 0)]
    colours = [(250, 40, 40), (40, 250, 40), (40, 40, 250), (250, 250, 40)]
    for i in range(n):
        r, c = rng.integers(10, 18, 2)
        dr, dc = moves[y[i]]
        for t in range(FRAMES):
            rr, cc = r + dr * (t - FRAMES // 2), c + dc * (t - FRAMES // 2)
            x[i, t, max(rr, 0):rr + 6, max(cc, 0):cc + 6] = colours[y[i]]
    return cd.load_dataset((x, y), val_fraction=0.2, test_fraction=0.0)


# ---------------------------------------------------------------------------------------------
# models as tutorials write them: (B, T, C, H, W) float -> (B, K)

class Backbone(nn.Module):
    """The 'pretrained' per-frame CNN: two conv / BatchNorm2d / ReLU blocks, global average.
    Its BatchNorm statistics are calibrated on normalised images (as a pretrained network's
    are), so in eval mode its features are on a sensible scale."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = width
        bns = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.momentum = None  # a cumulative average over the calibration batches
        with torch.no_grad():
            for _ in range(4):
                self.features(torch.randn(16, 3, SIZE, SIZE))
        for m in bns:
            m.momentum = 0.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class TutorialCNNLSTM(nn.Module):
    """A frozen CNN per frame, an LSTM read at its last step, a linear classifier.

    `freeze`: "requires_grad" (flags off), "no_grad" (the CNN runs under torch.no_grad() in
    forward) or "optimizer" (nothing in the model: the optimizer leaves the CNN out).
    `eval_frozen`: the fix, the frozen CNN kept in eval mode whatever `train()` is called with.
    `bn1d`: a BatchNorm1d after the CNN (it raises on a training batch of one)."""

    def __init__(self, freeze: str, eval_frozen: bool = False, bn1d: bool = False,
                 hidden: int = 32) -> None:
        super().__init__()
        self.freeze, self.eval_frozen = freeze, eval_frozen
        self.cnn = Backbone()
        self.embed = nn.Sequential(nn.Linear(self.cnn.out_dim, 32),
                                   *([nn.BatchNorm1d(32)] if bn1d else []), nn.ReLU())
        self.rnn = nn.LSTM(32, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, CLASSES)
        if freeze == "requires_grad":
            self.cnn.requires_grad_(False)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        steps = []
        for t in range(clips.shape[1]):  # frame by frame, as the tutorials loop
            if self.freeze == "no_grad":
                with torch.no_grad():
                    f = self.cnn(clips[:, t])  # (B, C, H, W) -> (B, D)
            else:
                f = self.cnn(clips[:, t])
            steps.append(self.embed(f))  # (B, 32): BatchNorm1d sees B values per channel
        out, _ = self.rnn(torch.stack(steps, dim=1))  # (B, T, 32)
        return self.fc(out[:, -1])

    def train(self, mode: bool = True) -> TutorialCNNLSTM:
        super().train(mode)
        if self.eval_frozen:
            self.cnn.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.embed.parameters(), *self.rnn.parameters(), *self.fc.parameters()]


def head_size(model: TutorialCNNLSTM) -> int:
    return sum(p.numel() for p in model.head_parameters())


def optimizer_for(freeze: str, form: str, model: TutorialCNNLSTM):
    """What the user passes as optimizer= for the optimizer-subset idiom (and a plain
    parameter factory for the others)."""
    if freeze != "optimizer":
        return lambda params: torch.optim.Adam(params, lr=1e-3)
    if form == "model":
        return lambda model: torch.optim.Adam(model.head_parameters(), lr=1e-3)
    return torch.optim.Adam(model.head_parameters(), lr=1e-3)  # a ready Optimizer


IDIOMS = [("requires_grad", "params"), ("no_grad", "params"), ("optimizer", "model"),
          ("optimizer", "instance")]
IDS = ["requires_grad", "no_grad", "optimizer-factory", "optimizer-instance"]


def run(data, freeze: str, form: str, eval_frozen: bool, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = TutorialCNNLSTM(freeze, eval_frozen=eval_frozen)
    report = diagnose(data, config=config(seed), model=model,
                      optimizer=optimizer_for(freeze, form, model),
                      budget_s=kw.pop("budget_s", 15), checks=kw.pop("checks", FREEZE_CHECKS),
                      **kw)
    assert not report.failures, report.failures
    return model, report


def check_faulty(report) -> None:
    top3 = [f.code for f in report.findings[:3]]
    assert "frozen-batchnorm-drift" in top3, (top3, report.skipped)
    (f,) = [f for f in report.findings if f.code == "frozen-batchnorm-drift"]
    assert f.evidence["drifted_layers"] == 2  # both BatchNorm2d of the frozen CNN


def check_fixed(report, model: TutorialCNNLSTM) -> None:
    loud = {f.code: f.severity for f in report.findings if f.severity in LOUD}
    assert "frozen-batchnorm-drift" not in report.codes(), report.findings
    assert not {"vanishing-gradients", "dead-units"} & set(loud), loud
    assert not CAPACITY & set(loud), loud
    ran = {s["name"] for s in report.skipped}
    assert not {"frozen_batchnorm", "gradients", "dead_units", "model_size"} & ran, report.skipped
    # the frozen CNN is counted as frozen, however it is frozen
    assert report.model["trainable"] == head_size(model), report.model
    assert report.model["frozen"] == sum(p.numel() for p in model.cnn.parameters())
    assert report.dataset["trainable_params"] == head_size(model)
    assert report.probes["grad_stats"]["first_layer"] == "embed.0"  # the CNN is not watched


# ---------------------------------------------------------------------------------------------
# each freezing idiom: faulty found, fixed clean

@pytest.mark.parametrize("freeze,form", IDIOMS, ids=IDS)
def test_frozen_part_in_train_mode_is_found(data, freeze, form):
    _, report = run(data, freeze, form, eval_frozen=False)
    check_faulty(report)


@pytest.mark.parametrize("freeze,form", IDIOMS, ids=IDS)
def test_frozen_part_in_eval_mode_raises_no_alarm(data, freeze, form):
    model, report = run(data, freeze, form, eval_frozen=True)
    check_fixed(report, model)


@pytest.mark.parametrize("seed", [1, 2])  # seed 0: the two tests above; about 1 s a run
@pytest.mark.parametrize("freeze,form", IDIOMS, ids=IDS)
def test_freezing_idioms_over_seeds(data, freeze, form, seed):
    _, faulty = run(data, freeze, form, eval_frozen=False, seed=seed)
    check_faulty(faulty)
    model, fixed = run(data, freeze, form, eval_frozen=True, seed=seed)
    check_fixed(fixed, model)


class ClipDataset(torch.utils.data.Dataset):
    """A user's own Dataset of (clip (T, C, H, W) float, label): noise clips whose class
    lifts one colour channel."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % CLASSES
        self.x = torch.randn(n, FRAMES, 3, SIZE, SIZE, generator=g)
        for i in range(n):
            self.x[i, :, int(self.y[i]) % 3] += 1.0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


@pytest.mark.parametrize("freeze,form", IDIOMS, ids=IDS)
def test_freezing_idioms_with_a_user_dataset(freeze, form):
    data = cd.load_dataset(ClipDataset(48, 0), val=ClipDataset(16, 1))
    _, faulty = run(data, freeze, form, eval_frozen=False)
    check_faulty(faulty)
    model, fixed = run(data, freeze, form, eval_frozen=True)
    check_fixed(fixed, model)


def test_measured_freezing_says_why(data):
    """model_summary counts the frozen elements by reason, and the gradient probe sees only the
    trained layers."""
    for freeze, form, reason in (("requires_grad", "params", "requires_grad"),
                                 ("no_grad", "params", "no_gradient"),
                                 ("optimizer", "model", "not_in_optimizer"),
                                 ("optimizer", "instance", "not_in_optimizer")):
        model, report = run(data, freeze, form, eval_frozen=True, checks=["model_size"])
        cnn = sum(p.numel() for p in model.cnn.parameters())
        assert report.model["frozen_by"] == {reason: cnn}, (freeze, form, report.model)
        assert report.model["trained_from"].startswith("measured"), report.model


# ---------------------------------------------------------------------------------------------
# the optimizer forms, and nothing of the user's changes

def test_optimizer_forms_build_what_the_user_trains(data):
    model = TutorialCNNLSTM("optimizer")
    head = {id(p) for p in model.head_parameters()}
    ready = torch.optim.SGD([{"params": list(model.rnn.parameters()), "lr": 0.05},
                             {"params": [*model.embed.parameters(), *model.fc.parameters()]}],
                            lr=0.01, momentum=0.9)
    forms = {"params": lambda p: torch.optim.Adam(p, lr=1e-3),
             "model": lambda model: torch.optim.Adam(model.head_parameters(), lr=1e-3),
             "by trying": lambda x: torch.optim.Adam(x.head_parameters(), lr=1e-3),
             "class": torch.optim.Adam, "instance": ready}
    for name, opt in forms.items():
        ctx = build_context(data, config=config(), model=model, optimizer=opt)
        copy_ = ctx.make_model()
        built = ctx.make_optimizer(copy_)
        held = {n for n, p in copy_.named_parameters()
                if any(p is q for g in built.param_groups for q in g["params"])}
        expect = ({n for n, _ in copy_.named_parameters()} if name in ("params", "class")
                  else {n for n, p in model.named_parameters() if id(p) in head})
        assert held == expect, name
        assert not any(p is q for p in model.parameters()
                       for g in built.param_groups for q in g["params"])  # on the copy only
    groups = built.param_groups  # the ready SGD, rebuilt: same class, groups, hyper-parameters
    assert type(built) is torch.optim.SGD and [g["lr"] for g in groups] == [0.05, 0.01]
    assert all(g["momentum"] == 0.9 for g in groups)
    with pytest.raises(ClipdoctorError, match="holds none"):
        build_context(data, config=config(), model=model,
                      optimizer=torch.optim.Adam(TutorialCNNLSTM("optimizer").parameters()))
    with pytest.raises(ClipdoctorError, match="optimizer="):
        build_context(data, config=config(), model=model, optimizer=0.1)
    with pytest.raises(ClipdoctorError, match="not those of the model"):  # a closure over
        build_context(data, config=config(), model=model,  # the user's own model, which
                      optimizer=lambda m: torch.optim.Adam(model.head_parameters()))  # it'd step


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "flags": [p.requires_grad for p in model.parameters()],
            "modes": [m.training for m in model.modules()],
            "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "opt": copy.deepcopy(opt.state_dict())}


def _same(a: dict, b: dict) -> bool:
    def eq(x, y):
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and torch.equal(x, y)
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(eq(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(eq(u, v) for u, v in zip(x, y))
        return x == y
    return all(eq(a[k], b[k]) for k in a)


def test_diagnose_leaves_the_users_model_and_optimizer_as_they_were(data):
    """Weights, BatchNorm running statistics, requires_grad flags, train / eval modes,
    gradients and the optimizer's state (after a step of the user's own training)."""
    torch.manual_seed(0)
    model = TutorialCNNLSTM("requires_grad", bn1d=True)
    model.rnn.requires_grad_(False)  # a second frozen part, by flag
    opt = torch.optim.Adam(model.head_parameters(), lr=1e-3)
    x = torch.randn(4, FRAMES, 3, SIZE, SIZE)
    nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
    opt.step()  # the user trained a step: moments in the state, gradients left on the model
    model.eval()
    model.fc.train()  # a mix of modes
    before = _snapshot(model, opt)
    report = diagnose(data, config=config(), model=model, optimizer=opt, budget_s=20,
                      checks=FREEZE_CHECKS + ["double_softmax", "init_loss"])
    assert not report.failures, report.failures
    assert _same(before, _snapshot(model, opt))
    assert report.model["optimizer"].startswith("the user's Optimizer")


# ---------------------------------------------------------------------------------------------
# batches of one, and models that raise

def test_batchnorm1d_after_the_cnn_crashes_no_probe(data):
    """Every probe that runs the model gets 2+ clips in train mode (BatchNorm1d raises on a
    training batch of one); an odd clip count and batch size 1 in the config included."""
    torch.manual_seed(0)
    model = TutorialCNNLSTM("no_grad", eval_frozen=True, bn1d=True)
    cfg = with_overrides(config(), {"data.batch_size": 1})
    report = diagnose(data, config=cfg, model=model, budget_s=10,
                      checks=FREEZE_CHECKS + ["double_softmax", "batch_time_axes", "init_loss",
                                              "cannot_overfit_batch", "learning_rate",
                                              "fit_curves", "padding_mask"])
    assert not report.failures, report.failures
    crashed = [p for p in report.skipped_probes if "failed" in p["reason"]]
    assert not crashed, crashed
    ran = {"training_data", "loss_at_init", "lr_range", "overfit_batch", "grad_stats",
           "short_run", "bn_drift", "behaviour", "structure"}
    assert ran <= set(report.probes), (ran - set(report.probes), report.skipped_probes)
    assert report.probes["training_data"]["batch_size"] == 2  # not the configured 1


class Raises(TutorialCNNLSTM):
    """A model whose forward raises inside the user's code."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("shapes do not line up in my_model.forward")


def test_a_model_that_raises_is_listed_under_failures(data, tmp_path):
    report = diagnose(data, config=config(), model=Raises("requires_grad"), budget_s=10,
                      checks=["frozen_batchnorm", "double_softmax"])
    failed = {f["name"]: f for f in report.failures if f.get("kind") == "probe"}
    assert {"bn_drift", "behaviour"} <= set(failed), report.failures
    assert "RuntimeError: shapes do not line up" in failed["behaviour"]["error"]
    assert "double_softmax" in failed["behaviour"]["checks"]
    skipped = {s["name"]: s for s in report.skipped}
    assert "see failures" in skipped["double_softmax"]["reason"]
    as_json = json.loads(json.dumps(report.to_dict()))
    assert {"name": "behaviour", "kind": "probe"}.items() <= next(
        f for f in as_json["failures"] if f["name"] == "behaviour").items()
    buf = io.StringIO()
    print_report(report, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert "probe behaviour: RuntimeError: shapes do not line up" in text
    assert "failures (" in text
    page = report.to_html(tmp_path / "report.html").read_text("utf-8")
    table = page[page.index('id="failures"'):]
    table = table[:table.index("</table>")]
    assert "<code>behaviour</code>" in table and "RuntimeError: shapes do not line up" in table
