"""Importing Keras 3 on the torch backend, recognising Keras models, loading saved
models; every failure is one ClipdoctorError line naming the file and the fix."""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from clipdoctor.errors import ClipdoctorError

INSTALL_HINT = "pip install clipdoctor[keras]"


def import_keras() -> ModuleType:
    """Import Keras 3 on the torch backend and return the module.

    Sets ``KERAS_BACKEND=torch`` when keras is not imported yet (Keras reads the backend once,
    at its first import). Raises one-line ClipdoctorErrors when Keras is missing or is Keras 2,
    and when keras was already imported on another backend: its models are then not torch
    modules, and the backend cannot be switched inside a running process."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError as e:
        raise ClipdoctorError(f"Keras models need Keras 3 ({e}): {INSTALL_HINT}") from None
    version = str(getattr(keras, "__version__", "0"))
    if not version[:1].isdigit() or int(version.split(".")[0]) < 3:
        raise ClipdoctorError(f"Keras {version} is installed; clipdoctor needs Keras 3 on its "
                              f"torch backend: {INSTALL_HINT}")
    backend = keras.backend.backend()
    if backend != "torch":
        raise ClipdoctorError(
            f"keras was already imported with the {backend!r} backend; clipdoctor runs Keras "
            "models on the torch backend: set KERAS_BACKEND=torch before keras is first "
            "imported (os.environ['KERAS_BACKEND'] = 'torch' at the top of your script), or "
            "run the clipdoctor CLI in a fresh process")
    return keras


def is_keras_model(obj: Any) -> bool:
    """Is `obj` a ``keras.Model``? Never imports keras: without keras already imported no
    object can be a Keras model."""
    keras = sys.modules.get("keras")
    model_cls = getattr(keras, "Model", None) if keras is not None else None
    return isinstance(model_cls, type) and isinstance(obj, model_cls)


def _one_line(text: str, limit: int = 300) -> str:
    """A message squeezed to one line (Keras errors span several)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def load_keras_model(path: str | Path, *, safe_mode: bool = True,
                     custom_objects: dict[str, Any] | None = None) -> Any:
    """Load a saved Keras model (``.keras``, or legacy ``.h5``) on the torch backend.

    `safe_mode=False` is Keras' own switch for Lambda layers holding Python code (only for
    files you trust); `custom_objects` maps the names of the model's custom classes or
    functions to them. Every failure is one ClipdoctorError line naming the file and the fix."""
    keras = import_keras()
    p = Path(path).expanduser()
    if not p.exists():
        raise ClipdoctorError(f"{p}: no such file; give a Keras model saved with "
                              "model.save('model.keras')")
    if p.is_dir():
        raise ClipdoctorError(
            f"{p} is a folder (a TensorFlow SavedModel?); Keras 3 loads .keras files: in the "
            "framework that trained it, re-save the model with model.save('model.keras')")
    try:
        with warnings.catch_warnings():  # the optimizer's saved state: the doctor starts afresh
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = keras.saving.load_model(p, custom_objects=custom_objects, compile=True,
                                            safe_mode=safe_mode)
    except Exception as e:  # noqa: BLE001 — every reason becomes one line with its fix
        raise ClipdoctorError(_load_error(p, e)) from e
    if not is_keras_model(model):
        raise ClipdoctorError(f"{p} holds a {type(model).__name__}, not a keras.Model")
    return model


def _load_error(path: Path, e: Exception) -> str:
    """The one-line message for a model file Keras could not load."""
    msg = str(e)
    if "safe_mode" in msg or ("Lambda" in msg and "deserializ" in msg):
        return (f"{path}: the model has a Lambda layer holding Python code, which Keras refuses "
                "to load by default; if you trust the file, load it with "
                "load_keras_model(path, safe_mode=False) (CLI: --keras-unsafe)")
    unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", msg)
    if unknown or "custom_objects" in msg or "register_keras_serializable" in msg:
        what = f" ({unknown.group(1)})" if unknown else ""
        return (f"{path}: the model uses a custom class or function{what} Keras does not know; "
                "import the module that defines it (decorated with "
                "@keras.saving.register_keras_serializable()) before loading, or pass "
                "custom_objects={'Name': obj} to load_keras_model")
    return (f"{path}: not a readable Keras model ({type(e).__name__}: {_one_line(msg, 200)}); "
            "save it with model.save('model.keras') using Keras 3")
