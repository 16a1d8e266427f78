"""The LightningModule: loss, metrics (torchmetrics), AdamW with warm-up and a schedule.

It receives a built model. On cached features (stage 1) the model's `forward_cached` runs;
on clips (stage 2, or an unfrozen backbone) its full `forward` does.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from clipdoctor.config import TrainConfig
from clipdoctor.errors import ClipdoctorError

FROZEN = ("model.backbone.", "model.diff_backbone.")  # state-dict keys a stage-1 epoch cannot change
FROZEN_KEY = "clipdoctor_frozen"  # in a stage-1 checkpoint: the digest of the weights left out


def unpack(batch: tuple | list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, y) or (x, y, lengths) -> (x, y, lengths or None)."""
    x, y = batch[0], batch[1]
    lengths = batch[2] if len(batch) > 2 else None
    return x, y, lengths


def warmup_schedule(kind: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimiser step: linear warm-up, then cosine to 0 / one-cycle / constant."""

    def factor(step: int) -> float:
        if kind == "onecycle":
            peak = max(1, warmup_steps or int(0.3 * total_steps))
            if step < peak:
                return 0.04 + 0.96 * step / peak  # from lr/25, as torch's OneCycleLR
            progress = min(1.0, (step - peak) / max(1, total_steps - peak))
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def clip_loss(class_weights: torch.Tensor | None = None,
              label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss, `(logits, labels) -> loss`: cross-entropy with the run's class weights
    (`data.datamodule.class_weights` of the training labels under `class_weighting: balanced`,
    else None) and label smoothing. `ClipModule.loss` and the doctor's probes of the built-in
    model both call it."""
    return functools.partial(F.cross_entropy, weight=class_weights,
                             label_smoothing=label_smoothing)


BACKBONES = ("backbone.", "diff_backbone.")  # parameter names of the backbone(s): a lower LR in stage 2


def param_groups(model: nn.Module, config: TrainConfig,
                 backbone_lr_mult: float = 1.0) -> list[dict]:
    """AdamW's parameter groups over the parameters of `model` that require a gradient: no
    weight decay on biases and norms (1-d tensors), the backbone at `backbone_lr_mult` x the
    LR; ordered (head before backbone, no-decay before decay)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((name.startswith(BACKBONES), p.ndim > 1), []).append(p)
    lr, wd = config.lr, config.weight_decay
    return [{"params": ps, "lr": lr * (backbone_lr_mult if bb else 1.0),
             "weight_decay": wd if decay else 0.0}
            for (bb, decay), ps in sorted(groups.items(), key=lambda kv: kv[0])]


def make_optimizer(model: nn.Module, config: TrainConfig,
                   backbone_lr_mult: float = 1.0) -> torch.optim.AdamW:
    """The training optimizer on `model`: AdamW over `param_groups`, fused where every
    parameter is on a CPU or CUDA device."""
    groups = param_groups(model, config, backbone_lr_mult)
    return adamw(groups, config)


def adamw(groups: Iterable, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW at the config's LR and weight decay over `groups` (param groups or parameters).
    fused: one kernel for all parameters; measured on 2 CPU cores for the default head
    (1.6 M parameters) 0.5 ms a step against 6 ms for the per-tensor default."""
    groups = list(groups)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay,
                             fused=fused or None)


def make_schedule(config: TrainConfig, steps_per_epoch: int,
                  epochs: int) -> Callable[[int], float]:
    """The LR multiplier per optimizer step of a run of `epochs` epochs of `steps_per_epoch`
    steps: `warmup_schedule` with the config's schedule and warm-up epochs."""
    steps_per_epoch = max(1, steps_per_epoch)
    return warmup_schedule(config.schedule, round(config.warmup_epochs * steps_per_epoch),
                           epochs * steps_per_epoch)


def frozen_digest(model: nn.Module) -> str:
    """Identity of the frozen backbone weights (and a separate RGB-difference backbone's)."""
    from clipdoctor.training.features import state_hash

    parts = [getattr(model, name, None) for name in ("backbone", "diff_backbone")]
    return "+".join(state_hash(m) for m in parts if m is not None)


def complete_state(module: nn.Module, checkpoint: dict, source: str = "checkpoint") -> dict:
    """Put the frozen backbone weights that a stage-1 checkpoint leaves out back into its
    state_dict, from `module` (rebuilt from the run's config: the same pretrained / given /
    seeded weights), after checking they are the ones the checkpoint was made with."""
    digest = checkpoint.get(FROZEN_KEY)
    if digest is None:
        return checkpoint
    model = getattr(module, "model", module)
    if frozen_digest(model) != digest:
        raise ClipdoctorError(f"{source}: the frozen backbone differs from the one this "
                              "checkpoint was trained on (other --weights, timm version or "
                              "seed); train without --resume")
    state = checkpoint["state_dict"]
    for key, value in module.state_dict().items():
        if key.startswith(FROZEN):
            state.setdefault(key, value)
    del checkpoint[FROZEN_KEY]
    return checkpoint


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
    }, prefix=prefix)


class ClipModule(L.LightningModule):
    """Cross-entropy (class weights, label smoothing) over a ClipClassifier."""

    def __init__(self, model: nn.Module, num_classes: int, config: TrainConfig, *,
                 class_weights: torch.Tensor | None = None, cached: bool = False,
                 epochs: int | None = None, steps_per_epoch: int = 1,
                 backbone_lr_mult: float = 1.0) -> None:
        super().__init__()
        self.model, self.config, self.cached = model, config, cached
        self.num_classes = num_classes
        self.epochs = epochs or config.epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.backbone_lr_mult = backbone_lr_mult
        # a buffer so the weights move with the module and are saved in checkpoints
        self.register_buffer("class_weights", class_weights if class_weights is not None
                             else torch.ones(num_classes), persistent=True)
        self.train_metrics = _metrics(num_classes, "train_")
        self.val_metrics = _metrics(num_classes, "val_")
        self._frozen_digest: str | None = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """On cached features the backbone cannot change: its weights stay out of the epoch
        checkpoints (a digest stands in); the run's published checkpoints are complete again
        (`complete_state`). Measured, resnet10t on 2 CPU cores: 39 -> 19 MB a checkpoint (the
        rest is the head and its AdamW moments), 65 -> 27 ms a save; more for larger backbones."""
        if not self.cached:
            return
        if self._frozen_digest is None:  # frozen: hashed once per stage
            self._frozen_digest = frozen_digest(self.model)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN)]:
            del state[key]
        checkpoint[FROZEN_KEY] = self._frozen_digest

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        complete_state(self, checkpoint)  # --resume of stage 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_cached(x, lengths) if self.cached else self.model(x, lengths)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return clip_loss(self.class_weights, self.config.label_smoothing)(logits, y)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, lengths = unpack(batch)
        logits = self(x, lengths)
        loss = self.loss(logits, y)
        self.train_metrics.update(logits.detach(), y)
        # sync_dist: under DDP the epoch values are averaged over the ranks (no-op otherwise)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y),
                 sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute(), sync_dist=True)  # compute() syncs the states
        self.log("lr", self.optimizers().param_groups[0]["lr"], sync_dist=True)  # at the epoch end
        self.train_metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, lengths = unpack(batch)
        logits = self(x, lengths)
        self.val_metrics.update(logits, y)
        # synced: checkpointing and early stopping must see one val_loss on every rank
        self.log("val_loss", self.loss(logits, y), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.log("val_balanced_acc", values.pop("val_balanced_acc"), prog_bar=True, sync_dist=True)
        self.log_dict(values, sync_dist=True)
        self.val_metrics.reset()

    def configure_optimizers(self):
        """AdamW; no weight decay on biases and norms; backbone at a lower LR in stage 2
        (`make_optimizer`), stepped by `make_schedule` every optimizer step."""
        optimizer = make_optimizer(self.model, self.config, self.backbone_lr_mult)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, make_schedule(self.config, self.steps_per_epoch, self.epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
