"""fit / resume / two-stage training, and the run folder of DESIGN §2.

Stage 1 (frozen backbone): per-frame features are computed once and cached; the head trains
on them. Stage 2 (`finetune_epochs`): the last backbone blocks are unfrozen and the whole
model trains on clips, the backbone at a lower learning rate. A backbone that is not frozen
trains end to end from the start.

RUN/
  config.yaml           complete, re-runnable (`clipdoctor train DATA --config RUN/config.yaml`)
  classes.json          class names in index order
  checkpoints/          best.ckpt and last.ckpt of the final stage; stage1/ and stage2/ hold each stage's
  metrics.json          validation and test metrics of the best checkpoint, epochs, wall time
  logs/                 CSV and TensorBoard logs
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from clipdoctor.config import RunConfig, save_config
from clipdoctor.data.cache import FeatureCache
from clipdoctor.data.datamodule import ClipDataModule, make_loader
from clipdoctor.data.sources import Sample, SourceIndex
from clipdoctor.errors import ClipdoctorError
from clipdoctor.io import atomic_write_text
from clipdoctor.models.backbones import freeze
from clipdoctor.models.classifier import ClipClassifier, build_classifier
from clipdoctor.training import distributed
from clipdoctor.training.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from clipdoctor.training.features import FeatureDataset, compute_features
from clipdoctor.training.guards import (FAILURE_FILE, NonFiniteLoss, NonFiniteLossGuard,
                                     check_free_space, resource_faults)
from clipdoctor.training.module import FROZEN_KEY, ClipModule, complete_state

log = logging.getLogger(__name__)

# `progress(description)` -> a context manager giving a `(done, total)` callback that draws one
# stage's progress, e.g. `clipdoctor.report.terminal.progress_bar` (the CLI passes it)
ProgressFactory = Callable[[str], ContextManager[Callable[[int, int], None]]]


@dataclass
class Run:
    """A finished (or resumed and finished) training run."""

    path: Path
    model: ClipClassifier
    classes: list[str]
    config: RunConfig
    metrics: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)


class _RngState(Callback):
    """Saves and restores torch's global RNG in checkpoints, so a resumed run draws the same
    dropout masks as an uninterrupted one."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["clipdoctor_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if "clipdoctor_rng" in checkpoint:
            torch.set_rng_state(checkpoint["clipdoctor_rng"])


def check_writable(out: Path) -> None:
    """Fail before any work when the run folder cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{socket.gethostname()}-{os.getpid()}"  # DDP ranks check at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ClipdoctorError(f"{out}: the disk is full ({e.strerror}); free space there or "
                                  "pass --out on another disk") from None
        raise ClipdoctorError(f"{out}: cannot write the run folder ({e.strerror or e}); "
                              "pass --out with a writable folder") from None


def _trainer(config: RunConfig, out: Path, stage: str, epochs: int, *,
             progress: bool) -> tuple[L.Trainer, ModelCheckpoint]:
    t = config.train
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints" / stage, filename="best", monitor="val_loss",
                           mode="min", save_top_k=1, enable_version_counter=False)
    # last.ckpt from its own callback: Lightning (2.6) refreshes `save_last`'s file only in
    # epochs that improve val_loss, and a resume must start from the latest epoch
    latest = ModelCheckpoint(dirpath=out / "checkpoints" / stage, filename="last", monitor=None,
                             save_top_k=1, enable_version_counter=False)
    callbacks: list[Callback] = [ckpt, latest,
                                 EarlyStopping("val_loss", patience=t.patience, mode="min"),
                                 _RngState(), NonFiniteLossGuard(stage, out / "checkpoints" / stage)]
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=False))
    loggers = [CSVLogger(out / "logs", name=stage, version=""),
               TensorBoardLogger(out / "logs", name=stage, version="", default_hp_metric=False)]
    precision = t.precision
    if precision == "auto":
        precision = "16-mixed" if torch.cuda.is_available() else "32-true"
    trainer = L.Trainer(max_epochs=epochs, accelerator=t.accelerator, devices=t.devices,
                        num_nodes=t.num_nodes, strategy=t.strategy, precision=precision,
                        gradient_clip_val=t.grad_clip or None, callbacks=callbacks,
                        logger=loggers, deterministic=True,
                        plugins=[AtomicCheckpointIO()],
                        enable_progress_bar=progress, enable_model_summary=False,
                        log_every_n_steps=1, num_sanity_val_steps=0)
    return trainer, ckpt


def _lengths(dm: ClipDataModule, samples: list[Sample]) -> list[int] | None:
    """Valid steps per clip when short clips are padded (the frames a clip offers vs T)."""
    if dm.config.short != "pad":
        return None
    t = dm.config.frames
    return [min(t, dm.frames.count(s)) for s in samples]


def _bar(progress: ProgressFactory | bool | None,
         description: str) -> ContextManager[Callable[[int, int], None] | None]:
    """The caller's progress bar for one stage; without a factory no callback (None), so a
    library call stays silent."""
    return progress(description) if callable(progress) else contextlib.nullcontext()


def _fit(trainer: L.Trainer, module: ClipModule, train_dl, val_dl, ckpt_dir: Path,
         resume: bool) -> None:
    last = ckpt_dir / "last.ckpt"
    if resume and last.exists():
        load_checkpoint_file(last)  # a damaged file is one line naming it, not torch's traceback
    try:
        with warnings.catch_warnings():
            # a frozen backbone is in eval mode on purpose (its BatchNorm statistics must not move)
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
            trainer.fit(module, train_dl, val_dl,
                        ckpt_path=str(last) if resume and last.exists() else None)
    except NonFiniteLoss as e:  # the run folder says where, for `diagnose --run`
        atomic_write_text(ckpt_dir.parent.parent / FAILURE_FILE,
                          json.dumps(e.record.to_dict(), indent=1))
        raise


def _load_best(module: ClipModule, ckpt: ModelCheckpoint) -> None:
    if ckpt.best_model_path and Path(ckpt.best_model_path).exists():
        state = load_checkpoint_file(ckpt.best_model_path)
        module.load_state_dict(complete_state(module, state, ckpt.best_model_path)["state_dict"])


def _publish(module: ClipModule, src: Path, dst: Path) -> None:
    """A stage's checkpoint as the run's, complete (stage 1 leaves the frozen backbone out)."""
    state = load_checkpoint_file(src)
    if FROZEN_KEY not in state:
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return
    AtomicCheckpointIO().save_checkpoint(complete_state(module, state, str(src)), dst)


def train(data: SourceIndex, config: RunConfig, out: str | Path, *, resume: bool = False,
          progress: ProgressFactory | bool | None = None,
          on_event: Callable[[str], None] | None = None) -> Run:
    """Train a ClipClassifier on `data`; writes and returns the run (see the module docstring).

    `progress`: a `ProgressFactory` draws the decoding and feature stages with it and shows
    Lightning's epoch bar; True shows the epoch bar alone; None or False: silent. Out of
    memory and a disk filling up mid-run become one ClipdoctorError line (guards.py)."""
    with resource_faults("training", config, Path(out)):
        return _train(data, config, out, resume=resume, progress=progress, on_event=on_event)


def _train(data: SourceIndex, config: RunConfig, out: str | Path, *, resume: bool,
           progress: ProgressFactory | bool | None, on_event: Callable[[str], None] | None) -> Run:
    started = time.perf_counter()
    out = Path(out)
    check_writable(out)
    if resume and not (out / "config.yaml").exists():
        raise ClipdoctorError(f"{out}: nothing to resume (no config.yaml); train without --resume")
    ranks = distributed.start(config.train)  # under DDP every process runs on from here
    (out / FAILURE_FILE).unlink(missing_ok=True)  # a record of an earlier attempt's failure
    say = on_event or (lambda msg: log.info(msg))
    if not ranks.is_main:  # rank 0 reports; the other ranks work quietly
        say, progress = log.debug, None
    L.seed_everything(config.seed, workers=True, verbose=False)
    classes = data.classes
    model = build_classifier(config.model, len(classes))
    check_free_space(out, model)
    save_config(config, out / "config.yaml")
    atomic_write_text(out / "classes.json", json.dumps(classes, ensure_ascii=False, indent=1))

    t = config.train
    dm = ClipDataModule(data, config.data, mean=model.info.mean, std=model.info.std,
                        balanced_sampler=t.class_weighting == "sampler", seed=config.seed)
    say("decoding clips into the frame cache")
    with _bar(progress, "decoding clips") as bar:
        dm.progress = bar
        dm.prepare(ranks=ranks)  # DDP: each rank decodes its shard into the shared cache
    weights = dm.class_weights() if t.class_weighting == "balanced" else None
    train_samples = [s for s in dm.samples if s.split == "train"]
    val_samples = [s for s in dm.samples if s.split == "val"]
    if not train_samples or not val_samples:
        raise ClipdoctorError(f"{data.root}: training needs clips in train and val; found "
                              f"{len(train_samples)} and {len(val_samples)} readable ones")
    bs = config.data.batch_size
    stage_epochs = []

    if config.model.freeze_backbone:
        say("computing per-frame features once (frozen backbone)")
        cache = FeatureCache(config.data.cache_dir) if config.data.cache else None
        with _bar(progress, "per-frame features") as bar:
            train_views = compute_features(model, dm, train_samples, views=t.feature_views,
                                           cache=cache, progress=bar, ranks=ranks)
            val_views = compute_features(model, dm, val_samples, views=1, cache=cache, progress=bar,
                                         ranks=ranks)
        train_ds = FeatureDataset(train_views, [s.label for s in train_samples],
                                  _lengths(dm, train_samples), train=True, seed=config.seed)
        val_ds = FeatureDataset(val_views, [s.label for s in val_samples], _lengths(dm, val_samples))
        train_dl = make_loader(train_ds, bs, shuffle=True, seed=config.seed,
                               weights=dm.item_weights(s.label for s in train_samples))
        val_dl = make_loader(val_ds, bs * 4)
        module = ClipModule(model, len(classes), t, class_weights=weights, cached=True,
                            steps_per_epoch=len(train_dl))
        say("stage 1: training the head on cached features")
        trainer, ckpt = _trainer(config, out, "stage1", t.epochs, progress=bool(progress))
        _fit(trainer, module, train_dl, val_dl, out / "checkpoints" / "stage1", resume)
        _load_best(module, ckpt)
        stage_epochs.append(trainer.current_epoch)
        final = out / "checkpoints" / "stage1"

    if not config.model.freeze_backbone or t.finetune_epochs > 0:
        stage = "stage2" if config.model.freeze_backbone else "stage1"
        epochs = t.finetune_epochs if config.model.freeze_backbone else t.epochs
        if config.model.freeze_backbone:
            for backbone in (model.backbone, model.diff_backbone):  # the RGB-diff one if separate
                if backbone is not None:
                    freeze(backbone, trainable_blocks=config.model.trainable_blocks)
        train_dl, val_dl = dm.train_dataloader(), dm.val_dataloader()
        mult = t.finetune_lr_mult if config.model.freeze_backbone else 1.0
        module = ClipModule(model, len(classes), t, class_weights=weights, cached=False,
                            epochs=epochs, steps_per_epoch=len(train_dl), backbone_lr_mult=mult)
        say(f"{stage}: training on clips" + (" (last blocks unfrozen)"
                                             if config.model.freeze_backbone else ""))
        trainer, ckpt = _trainer(config, out, stage, epochs, progress=bool(progress))
        _fit(trainer, module, train_dl, val_dl, out / "checkpoints" / stage, resume)
        _load_best(module, ckpt)
        stage_epochs.append(trainer.current_epoch)
        final = out / "checkpoints" / stage

    ranks.finish()  # from here rank 0 alone: checkpoint copies, final evaluation, metrics.json
    if not ranks.is_main:
        return Run(out, model, classes, config, {}, dm.skipped)
    for name in ("best.ckpt", "last.ckpt"):
        if (final / name).exists():
            _publish(module, final / name, out / "checkpoints" / name)

    from clipdoctor.training.evaluate import evaluate_samples

    model.eval()
    metrics: dict = {"epochs": stage_epochs, "skipped": len(dm.skipped)}
    for split in ("val", "test"):
        samples = [s for s in dm.samples if s.split == split]
        if samples:
            metrics[split] = evaluate_samples(model, dm, samples, classes)
    metrics["wall_s"] = round(time.perf_counter() - started, 2)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    return Run(out, model, classes, config, metrics, dm.skipped)
