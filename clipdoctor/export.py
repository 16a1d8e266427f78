"""ONNX and TorchScript export of a trained run, each checked against PyTorch on one input.

Both take clips (B, T, 3, H, W) float, normalised as in training, and give logits (B, K);
the batch axis is dynamic. The parity check runs the exported model and the PyTorch model on
the same random batch and reports the largest absolute difference of the logits.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from clipdoctor.errors import ClipdoctorError

log = logging.getLogger(__name__)

PARITY_TOL = 1e-4


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str  # "onnx" or "torchscript"
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_TOL


class _ClipsToLogits(nn.Module):
    """The exported function: clips -> logits, without the optional lengths argument."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(clips)


def example_input(frames: int, size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, size, size, generator=g)  # (B, T, C, H, W)


def _tmp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def export_onnx(model: nn.Module, path: str | Path, frames: int, size: int) -> ExportResult:
    """ONNX with a dynamic batch axis, checked with onnxruntime on a batch of another size."""
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ClipdoctorError("ONNX export needs onnx, onnxscript and onnxruntime: "
                              "pip install 'clipdoctor[export]'") from None
    path = Path(path)
    wrapped = _ClipsToLogits(model).eval()
    tmp = _tmp_beside(path)
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        with torch.no_grad():
            # the torch.export-based exporter: the legacy one cannot size adaptive pooling
            torch.onnx.export(wrapped, (example_input(frames, size),), str(tmp), dynamo=True,
                              dynamic_shapes=({0: batch},), input_names=["clips"],
                              output_names=["logits"], external_data=False, verbose=False)
        x = example_input(frames, size, batch=3, seed=1)  # another batch size: axis is dynamic
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"clips": x.numpy()})[0])
        with torch.no_grad():
            want = wrapped(x)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(path, "onnx", float((got - want).abs().max()))


def export_torchscript(model: nn.Module, path: str | Path, frames: int, size: int) -> ExportResult:
    """TorchScript by tracing (the model's control flow does not depend on values)."""
    path = Path(path)
    wrapped = _ClipsToLogits(model).eval()
    tmp = _tmp_beside(path)
    try:
        with torch.no_grad():
            traced = torch.jit.trace(wrapped, (example_input(frames, size),), check_trace=False)
            traced.save(str(tmp))
            loaded = torch.jit.load(str(tmp))
            x = example_input(frames, size, batch=3, seed=1)
            diff = float((loaded(x) - wrapped(x)).abs().max())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(path, "torchscript", diff)
