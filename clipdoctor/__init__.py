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


def load_dataset(source: Any, *, val: Any = None, test: Any = None, format: str | None = None,
                 fold: int = 1, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, strict: bool = False,
                 classes: list[str] | None = None, augment: Any = None) -> Any:
    """Any layout of DESIGN §2 (a folder, CSV or .npz path), in-memory `(X, y)` arrays with X
    (N, T, H, W, C) uint8, or the user's own map-style torch Datasets / DataLoaders
    (`load_dataset(train_ds, val=val_ds, test=test_ds)`) whose items are `(clip, label)` or
    `(clip, label, length)` -> a SourceIndex, or a `clipdoctor.data.user.UserData` for
    Datasets (`augment=`: the user's own clip augmentation, tested by the doctor). Splits the
    source does not give are made seeded and stratified. Anything else: one DataError naming
    the accepted forms."""
    from clipdoctor.data.user import ACCEPTED, UserData, from_datasets, is_user_data_form

    if isinstance(source, UserData):
        return source.with_augment(augment) if augment is not None else source
    if isinstance(source, (tuple, list)) and any(_torch_data(v) for v in source):
        raise DataError(f"the data is a {type(source).__name__} holding torch Datasets; "
                        f"pass them by name: load_dataset(train_ds, "
                        f"val=val_ds, test=test_ds). Accepted: {ACCEPTED}")
    if is_user_data_form(source):
        return from_datasets(source, val, test, seed=seed, val_fraction=val_fraction,
                             classes=classes, augment=augment)
    if val is not None or test is not None or augment is not None:
        raise DataError(f"val=, test= and augment= go with torch Datasets; got a "
                        f"{type(source).__name__} as the data. Accepted: {ACCEPTED}")
    if isinstance(source, (str, Path)):
        return load_source(source, format, fold=fold, seed=seed, val_fraction=val_fraction,
                           test_fraction=test_fraction, strict=strict)
    if isinstance(source, tuple) and len(source) == 2:
        X, y = source
        if not _array_like(X) or not _array_like(y):
            raise DataError(f"the data is a tuple of ({type(X).__name__}, "
                            f"{type(y).__name__}); a tuple must be (X, y) arrays. Accepted: "
                            f"{ACCEPTED}")
        return from_arrays(_numpy(X), _numpy(y), classes=classes, seed=seed,
                           val_fraction=val_fraction, test_fraction=test_fraction)
    raise DataError(f"the data is a {type(source).__name__}; pass a dataset path "
                    f"(folder, .csv, .npz) or a tuple (X, y) of arrays. Accepted: {ACCEPTED}")


def _torch_data(v: Any) -> bool:
    import torch

    return isinstance(v, (torch.utils.data.Dataset, torch.utils.data.DataLoader))


def _array_like(v: Any) -> bool:
    import numpy as np
    import torch

    return isinstance(v, (np.ndarray, torch.Tensor, list))


def _numpy(v: Any) -> Any:
    import torch

    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
