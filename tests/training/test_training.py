"""Training on Lightning: class weights reach the loss, a tiny run learns, resume repeats exactly,
and the run folder holds what DESIGN §2 promises."""

from __future__ import annotations

import json

import pytest
import torch

from clipdoctor.config import RunConfig, load_config, with_overrides
from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.training import run as run_mod
from clipdoctor.training.module import ClipModule, warmup_schedule
from clipdoctor.training.run import train

TINY = {
    "model.backbone": "test_resnet", "model.pretrained": False, "model.proj_dim": 32,
    "model.hidden": 32, "data.frames": 6, "data.frame_size": 36, "data.size": 32,
    "data.batch_size": 8, "train.epochs": 3, "train.patience": 50,
}


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    """move_left / move_right only: 24 clips per class at 32 px."""
    root = tmp_path_factory.mktemp("pair") / "data"
    generate(root, clips_per_class=24, frames=10, size=32, classes=["move_left", "move_right"])
    return load_source(root)


def _config(tmp_path, **extra) -> RunConfig:
    return with_overrides(RunConfig(), {**TINY, "data.cache_dir": tmp_path / "cache", **extra})


def test_run_folder_contract(tmp_path, pair_data):
    run = train(pair_data, _config(tmp_path, **{"train.epochs": 1}), tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    assert json.loads((tmp_path / "run" / "classes.json").read_text()) == ["move_left", "move_right"]
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved == run.config  # complete and re-runnable
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"val", "test", "epochs", "wall_s"} <= set(metrics)
    assert set(metrics["test"]) >= {"top1", "top5", "balanced_acc", "macro_f1", "confusion",
                                    "per_class_recall"}
    assert (tmp_path / "run" / "logs" / "stage1" / "metrics.csv").exists()


def test_class_weights_reach_the_loss(tmp_path, pair_data, monkeypatch):
    seen = {}
    real_init = ClipModule.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        seen["weights"] = self.class_weights.clone()

    monkeypatch.setattr(ClipModule, "__init__", spy)
    # drop most of one class from train: balanced weights must follow the counts
    samples = [s for s in pair_data.samples
               if not (s.label == 1 and s.split == "train" and hash(s.name) % 4)]
    data = type(pair_data)(pair_data.format, pair_data.root, pair_data.classes, samples)
    counts = torch.bincount(torch.tensor([s.label for s in samples if s.split == "train"]))
    train(data, _config(tmp_path, **{"train.epochs": 1}), tmp_path / "run")
    expected = counts.sum() / (2 * counts.float())
    assert torch.allclose(seen["weights"], expected)
    # and the loss uses them: a weighted loss differs from the unweighted one
    module = ClipModule(torch.nn.Identity(), 2, RunConfig().train, class_weights=expected)
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 0])
    manual = torch.nn.functional.cross_entropy(logits, y, weight=expected)
    assert torch.isclose(module.loss(logits, y), manual)
    assert not torch.isclose(manual, torch.nn.functional.cross_entropy(logits, y))


def test_warmup_then_cosine():
    f = warmup_schedule("cosine", warmup_steps=4, total_steps=20)
    assert f(0) < f(1) < f(3) <= 1.0
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.0, abs=1e-9)
    assert warmup_schedule("constant", 0, 10)(9) == 1.0


def test_resume_matches_an_uninterrupted_run(tmp_path, pair_data, monkeypatch):
    cfg = _config(tmp_path, **{"train.epochs": 4})
    full = train(pair_data, cfg, tmp_path / "full")

    real_trainer = run_mod._trainer

    def stopping_trainer(*a, **kw):  # the first attempt stops after 2 epochs, as if killed
        from lightning.pytorch.callbacks import Callback

        trainer, ckpt = real_trainer(*a, **kw)

        class Stop(Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                if trainer.current_epoch >= 1:
                    trainer.should_stop = True

        trainer.callbacks.append(Stop())
        return trainer, ckpt

    monkeypatch.setattr(run_mod, "_trainer", stopping_trainer)
    train(pair_data, cfg, tmp_path / "resumed")
    last = torch.load(tmp_path / "resumed" / "checkpoints" / "stage1" / "last.ckpt",
                      weights_only=True)
    assert last["epoch"] == 1
    monkeypatch.setattr(run_mod, "_trainer", real_trainer)
    resumed = train(pair_data, cfg, tmp_path / "resumed", resume=True)
    assert resumed.metrics["epochs"] == full.metrics["epochs"]
    for split in ("val", "test"):
        assert resumed.metrics[split]["loss"] == pytest.approx(full.metrics[split]["loss"], abs=1e-6)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stage1_checkpoints_leave_the_frozen_backbone_out(tmp_path, pair_data):
    """Each stage-1 epoch checkpoint holds the head and a digest of the frozen backbone (the
    backbone cannot change on cached features); the run's published checkpoints are complete;
    a resume whose backbone no longer matches the digest is one line, not a wrong model."""
    from clipdoctor.errors import ClipdoctorError
    from clipdoctor.models.classifier import build_classifier
    from clipdoctor.training.evaluate import load_run
    from clipdoctor.training.module import FROZEN_KEY

    cfg = _config(tmp_path, **{"train.epochs": 2})
    run = train(pair_data, cfg, tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    stage = torch.load(ckpts / "stage1" / "last.ckpt", weights_only=True)
    published = torch.load(ckpts / "last.ckpt", weights_only=True)
    backbone = [k for k in published["state_dict"] if k.startswith("model.backbone.")]
    assert backbone and not any(k.startswith("model.backbone.") for k in stage["state_dict"])
    assert FROZEN_KEY in stage and FROZEN_KEY not in published
    assert set(published["state_dict"]) == {f"model.{k}" for k in run.model.state_dict()} | {
        "class_weights"}
    best_stage = torch.load(ckpts / "stage1" / "best.ckpt", weights_only=True)["state_dict"]
    best = torch.load(ckpts / "best.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(best[k], v) for k, v in best_stage.items())  # the head, unchanged
    assert (ckpts / "stage1" / "last.ckpt").stat().st_size < 0.5 * (ckpts / "last.ckpt").stat().st_size
    loaded = load_run(tmp_path / "run")  # strict load of the complete state
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                 run.model.state_dict().values()))

    with pytest.raises(ClipdoctorError, match="stage-1 epoch checkpoint"):  # not as --weights
        build_classifier(cfg.model.model_copy(update={"weights": ckpts / "stage1" / "best.ckpt"}), 2)

    stage[FROZEN_KEY] = "another backbone"
    torch.save(stage, ckpts / "stage1" / "last.ckpt")
    with pytest.raises(ClipdoctorError, match="frozen backbone differs"):
        train(pair_data, cfg, tmp_path / "run", resume=True)


def test_frozen_pass_matches_the_model_and_leaves_the_default_layout(tmp_path, pair_data):
    """The feature pass runs the backbone in channels-last layout: same features as the model
    gives on the same clips, and the weights are back in the default layout afterwards (so
    stage 2 and checkpoints see the model as built)."""
    from clipdoctor.data.datamodule import ClipDataModule
    from clipdoctor.models.classifier import build_classifier
    from clipdoctor.training.features import compute_features

    cfg = _config(tmp_path)
    model = build_classifier(cfg.model, 2).eval()
    dm = ClipDataModule(pair_data, cfg.data, mean=model.info.mean, std=model.info.std)
    dm.prepare()
    samples = dm.samples[:6]
    views = compute_features(model, dm, samples, batch_size=4)
    ds = dm.dataset("train", train=False, samples=samples)
    with torch.no_grad():
        direct = model.frozen_features(torch.stack([ds[i][0] for i in range(len(samples))]))
    got = torch.stack([torch.from_numpy(v[0]) for v in views])
    assert torch.allclose(got, direct, atol=1e-5)
    convs = [p for p in model.backbone.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous() for p in convs)


def test_seeded_runs_repeat_exactly(tmp_path, pair_data):
    cfg = _config(tmp_path, **{"train.epochs": 2})
    a = train(pair_data, cfg, tmp_path / "a").metrics
    b = train(pair_data, cfg, tmp_path / "b").metrics
    assert a["val"]["loss"] == b["val"]["loss"] and a["test"]["confusion"] == b["test"]["confusion"]


def test_unwritable_run_folder_fails_before_training(tmp_path, pair_data):
    from clipdoctor.errors import ClipdoctorError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ClipdoctorError, match="cannot write the run folder"):
        train(pair_data, _config(tmp_path), blocker / "run")


def test_a_tiny_run_learns_direction_well_above_chance(tmp_path_factory, tmp_path):
    """left vs right differ only in frame order: a CNN-LSTM trained end to end must get it."""
    root = tmp_path_factory.mktemp("learn") / "data"
    generate(root, clips_per_class=40, frames=10, size=64, classes=["move_left", "move_right"],
             seed=1)
    data = load_source(root)
    # 64 px: the backbone's last feature map must be at least 2 x 2 for grid pooling to see sides
    cfg = _config(tmp_path, **{"model.freeze_backbone": False, "train.epochs": 10,
                               "train.lr": 3e-3, "data.frame_size": 68, "data.size": 64})
    run = train(data, cfg, tmp_path / "run")
    m = run.metrics
    right = sum(m[s]["top1"] * m[s]["clips"] for s in ("val", "test"))
    total = sum(m[s]["clips"] for s in ("val", "test"))
    assert right / total >= 0.8, m


def test_stage2_finetunes_last_block_and_keeps_frozen_batchnorm(tmp_path, pair_data, monkeypatch):
    from clipdoctor.models import classifier as classifier_mod

    built = {}
    real_build = classifier_mod.build_classifier

    def spy(config, n):
        built["model"] = model = real_build(config, n)
        built["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    monkeypatch.setattr(run_mod, "build_classifier", spy)
    cfg = _config(tmp_path, **{"train.epochs": 1, "train.finetune_epochs": 1,
                               "model.trainable_blocks": 1})
    run = train(pair_data, cfg, tmp_path / "run")
    after, before = run.model.state_dict(), built["before"]
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    stats = [k for k in after if k.startswith("backbone.") and "running_" in k]
    last_block = run.model.backbone.block_names[-1]
    assert any(last_block in k for k in changed)  # the unfrozen block trained
    frozen_stats = [k for k in stats if last_block not in k]
    assert frozen_stats and not (set(frozen_stats) & changed)  # frozen BatchNorm did not move
    assert (tmp_path / "run" / "checkpoints" / "stage2" / "best.ckpt").exists()
    assert len(run.metrics["epochs"]) == 2
