"""Faults during training turned into one clear line: a non-finite loss, memory, disk space.

- `NonFiniteLossGuard` (a Lightning callback) stops training at the first NaN / Inf training
  loss (`on_train_batch_end`, before the epoch's validation and checkpointing run) or
  validation loss (`on_validation_end`, before ModelCheckpoint, which Lightning always runs
  last), so `last.ckpt` / `best.ckpt` keep the last good weights, never the broken ones.
  Lightning's EarlyStopping would end such a run quietly (`check_finite`) as if it had
  finished. `train()` writes the `NonFiniteLoss` record to `RUN/failure.json`, which
  `diagnose --run RUN` reads.
- `resource_faults` maps an out-of-memory batch (CUDA or host) to a hint to shrink the batch
  or the frames, and a full disk met mid-run to a line naming the folder.
- `check_free_space` refuses, before any work, a run folder whose disk cannot hold the
  checkpoints this model will write.
"""

from __future__ import annotations

import contextlib
import errno
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from lightning.pytorch.callbacks import Callback

from clipdoctor.config import RunConfig
from clipdoctor.errors import ClipdoctorError
from clipdoctor.training.module import unpack

FAILURE_FILE = "failure.json"  # in the run folder; read by diagnose's `run_record` probe
LOG_MARGIN = 16 * 2**20  # bytes of CSV / TensorBoard logs, config and metrics on top of checkpoints


@dataclass(frozen=True)
class NonFiniteRecord:
    """Where and how the loss stopped being finite (written to RUN/failure.json)."""

    stage: str
    phase: str  # "training" or "validation": which loss stopped being finite
    epoch: int  # 1-based: the first epoch is 1
    step: int  # optimiser updates made before this loss (0: before any update)
    batch: int | None  # index of the training batch within its epoch (None: validation)
    loss: str  # "nan", "inf" or "-inf" (JSON has no NaN)
    lr: float  # the learning rate of the first parameter group at that step
    inputs_finite: bool  # False: the batch itself held NaN / Inf
    last_good_checkpoint: str | None = None

    @property
    def cause(self) -> str:
        if not self.inputs_finite:
            return ("the input batch holds NaN / Inf values: check the decoding and normalisation "
                    "of the data (clipdoctor info DATA, clipdoctor diagnose DATA)")
        if self.step == 0:
            return ("the loss is not finite before any update: the model or the loss produces "
                    "NaN / Inf on these inputs (labels outside the output range, log of 0)")
        return (f"the learning rate is too high (lr {self.lr:.3g} at that step): lower "
                "--lr (e.g. by 10x) and keep --grad-clip on; or bad inputs")

    def to_dict(self) -> dict:
        return {"error": "non-finite loss", **asdict(self), "cause": self.cause}


class NonFiniteLoss(ClipdoctorError):
    """Training stopped at a non-finite loss; `record` says where."""

    def __init__(self, record: NonFiniteRecord) -> None:
        self.record = record
        kept = (f"the last good checkpoint is kept ({record.last_good_checkpoint})"
                if record.last_good_checkpoint else "no checkpoint was written yet")
        batch = f" (batch {record.batch})" if record.batch is not None else ""
        super().__init__(f"{record.stage}: {record.phase} loss became {record.loss} at epoch "
                         f"{record.epoch}, step {record.step}{batch}; likely cause: "
                         f"{record.cause}; {kept}")

    def __reduce__(self):
        return (type(self), (self.record,))


class NonFiniteLossGuard(Callback):
    """Raises `NonFiniteLoss` at the first non-finite training loss of a stage."""

    def __init__(self, stage: str, ckpt_dir: Path) -> None:
        self.stage, self.ckpt_dir = stage, Path(ckpt_dir)
        self._updates = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._updates = trainer.global_step  # updates made before this batch's loss

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or bool(torch.isfinite(loss).all()):
            return
        x = unpack(batch)[0]
        raise self._failure(trainer, "training", loss, self._updates, batch_idx,
                            inputs_finite=bool(torch.isfinite(x).all()))

    def on_validation_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("val_loss")
        if trainer.sanity_checking or loss is None or bool(torch.isfinite(loss).all()):
            return
        raise self._failure(trainer, "validation", loss, trainer.global_step, None,
                            inputs_finite=True)

    def _failure(self, trainer, phase: str, loss: torch.Tensor, step: int, batch: int | None,
                 *, inputs_finite: bool) -> NonFiniteLoss:
        value = float(loss.detach().float().reshape(-1)[0])
        last = self.ckpt_dir / "last.ckpt"
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        return NonFiniteLoss(NonFiniteRecord(
            stage=self.stage, phase=phase, epoch=trainer.current_epoch + 1, step=step,
            batch=batch, loss="nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"),
            lr=float(lr), inputs_finite=inputs_finite,
            last_good_checkpoint=str(last) if last.exists() else None))


# How allocators word it: CUDA / MPS "out of memory", the CPU allocator "can't allocate memory"
# ("DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes")
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(t in str(e).lower() for t in _OOM_TEXT)


@contextlib.contextmanager
def resource_faults(what: str, config: RunConfig, out: Path) -> Iterator[None]:
    """Out of memory -> a smaller --batch-size / --size / --frames; a full disk -> free space."""
    try:
        yield
    except ClipdoctorError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ClipdoctorError(f"{out}: the disk is full ({e.strerror}) while {what}; free "
                                  "space there or pass --out on another disk, then --resume"
                                  ) from None
        raise
    except (RuntimeError, MemoryError) as e:
        if not _is_out_of_memory(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        d = config.data
        device = "GPU" if "CUDA" in str(e) or "MPS" in str(e) else "host"
        raise ClipdoctorError(
            f"out of {device} memory while {what} (batch {d.batch_size} clips x {d.frames} frames "
            f"at {d.size} px); pass a smaller --batch-size (e.g. {max(1, d.batch_size // 2)}) or "
            f"--size (e.g. {max(16, d.size * 3 // 4)}), or fewer --frames") from None


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About what one checkpoint of `model` takes: weights plus AdamW's two moments."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return 3 * params + buffers


def check_free_space(out: Path, model: torch.nn.Module) -> None:
    """Refuse a run folder whose disk cannot hold the run's checkpoints, before any work.

    Up to four checkpoints stay (the stage's best and last, their copies at the top) and an
    atomic write needs one more while it renames."""
    need = 5 * checkpoint_bytes(model) + LOG_MARGIN
    free = shutil.disk_usage(out).free
    if free < need:
        raise ClipdoctorError(f"{out}: only {free / 2**20:.0f} MiB free on its disk; the run needs "
                              f"about {need / 2**20:.0f} MiB (checkpoints and logs); free space or "
                              "pass --out on another disk")
