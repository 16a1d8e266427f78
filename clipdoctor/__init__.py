"""clipdoctor: train CNN-LSTM clip classifiers and find out why the loss stays high.

Public API (DESIGN §3): load_dataset, train, evaluate, predict, diagnose, Report, Finding.
The heavy parts (Lightning, timm) are imported on first use, so `import clipdoctor` is quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipdoctor.data.sources import Sample, SourceIndex, from_arrays, load_source
from clipdoctor.errors import ClipdoctorError, DataError, DecodeError

__version__ = "0.1.0"

__all__ = ["ClipdoctorError", "DataError", "DecodeError", "Finding", "Report", "RunConfig",
           "Sample", "SourceIndex", "diagnose", "evaluate", "load_dataset", "predict", "repair",
           "train",
           "__version__"]

_LAZY = {
    "train": ("clipdoctor.training.run", "train"),
    "evaluate": ("clipdoctor.training.evaluate", "evaluate"),
    "predict": ("clipdoctor.training.evaluate", "predict"),
    "diagnose": ("clipdoctor.doctor.runner", "diagnose"),
    "repair": ("clipdoctor.doctor.repair", "repair"),
    "Report": ("clipdoctor.doctor.findings", "Report"),
    "Finding": ("clipdoctor.doctor.findings", "Finding"),
    "RunConfig": ("clipdoctor.config", "RunConfig"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'clipdoctor' has no attribute '{name}'")


def load_dataset(source: Any, *, format: str | None = None, fold: int = 1, seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, strict: bool = False,
                 classes: list[str] | None = None) -> SourceIndex:
    """Any layout of DESIGN §2 (a folder, CSV or .npz path), or in-memory `(X, y)` arrays
    with X (N, T, H, W, C) uint8. Splits the source does not give are made seeded and
    stratified, keeping source groups together."""
    if isinstance(source, (str, Path)):
        return load_source(source, format, fold=fold, seed=seed, val_fraction=val_fraction,
                           test_fraction=test_fraction, strict=strict)
    if isinstance(source, tuple) and len(source) == 2:
        X, y = source
        return from_arrays(X, y, classes=classes, seed=seed, val_fraction=val_fraction,
                           test_fraction=test_fraction)
    raise DataError(f"load_dataset got a {type(source).__name__}; pass a dataset path "
                    "(folder, .csv, .npz) or a tuple (X, y) of arrays")
