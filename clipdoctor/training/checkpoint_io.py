"""Checkpoint files that a crash can never leave half-written, and that load without pickle.

Lightning's `TorchCheckpointIO` hands the bytes to fsspec, whose local "transaction" stages
them in the system temp folder and *moves* them into place: across file systems that move is a
copy, so a `kill -9` during it leaves a truncated `last.ckpt` that a later `--resume` trips on.
`AtomicCheckpointIO` writes beside the target and renames (one atomic `os.replace`), and loads
with `weights_only=True` (no arbitrary code from a shared checkpoint). A file that still cannot
be read (copied in broken, damaged on disk) is one `ClipdoctorError` line naming it.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from clipdoctor.io import atomic_write_bytes
from clipdoctor.errors import ClipdoctorError

log = logging.getLogger(__name__)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`, any failure as one line naming the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ClipdoctorError(f"{path}: checkpoint not found; train the run first") from None
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile, AttributeError, KeyError, TypeError, IndexError) as e:
        if re.search(r"unsupported global", str(e), re.I):  # a pickled object, not garbled bytes
            raise ClipdoctorError(
                f"{path}: refused: the checkpoint holds Python objects that could run code when "
                "loaded (only tensors and plain values are accepted); use a checkpoint written "
                "by clipdoctor") from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ClipdoctorError(
            f"{path}: unreadable checkpoint ({first}); it is damaged or not a clipdoctor "
            "checkpoint: delete it to restart that stage, or train without --resume") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ClipdoctorError(f"{path}: not a clipdoctor checkpoint (no 'state_dict'); delete it "
                              "or train without --resume")
    return state


class AtomicCheckpointIO(TorchCheckpointIO):
    """Temp file in the same folder + `os.replace` on save; `weights_only=True` on load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(Path(path), buf.getbuffer())

    def load_checkpoint(self, path: str | Path,
                        map_location: Callable | str | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            log.debug("weights_only=False asked for %s; loading with weights_only=True anyway", path)
        return load_checkpoint_file(path, map_location)
