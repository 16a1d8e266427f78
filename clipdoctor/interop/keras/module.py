"""The Keras model as a torch module taking clipdoctor's batch (KerasModule), and its
deep copy (copy_keras_model)."""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from clipdoctor.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from .loading import import_keras


class KerasModule(nn.Module):
    """A Keras model as clipdoctor's model: clipdoctor's batch in, the Keras outputs out.

    ``forward(x)`` takes ``(B, T, C, H, W)`` float32 normalised with `mean` / `std` (the
    pipeline's ImageNet statistics), undoes the normalisation to 0..1 pixels, multiplies them
    by `pixel_scale` (255 for models that rescale raw pixels themselves), moves channels last
    when the model is channels-last, and calls the Keras model with ``training=self.training``
    (Keras 3 otherwise runs a direct call in inference mode whatever torch's flag says).

    ``named_parameters()`` / ``parameters()`` yield only the model's trainable variables (the
    torch Parameters of ``keras_model.trainable_variables``), so a torch optimizer built on
    them trains exactly what Keras' ``fit`` would. BatchNorm moving statistics, the seeds of
    random layers and frozen weights are Parameters with ``requires_grad=False`` in the Keras
    model: they are left out here but still belong to ``state_dict()`` and move with ``.to()``.

    ``copy.deepcopy`` (the doctor trains deep copies) rebuilds the Keras model from its config
    and copies every variable (:func:`copy_keras_model`); `custom_objects` are the model's
    custom classes, needed to rebuild it when they are not registered with Keras.
    """

    def __init__(self, keras_model: Any, *, pixel_scale: float = 1.0, channels_last: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 custom_objects: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.keras_model = keras_model  # a torch submodule: .to() / state_dict reach it
        self.custom_objects = dict(custom_objects or {})
        self.pixel_scale = float(pixel_scale)
        self.channels_last = bool(channels_last)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 1, -1, 1, 1),
                             persistent=False)

    def to_keras_input(self, x: Tensor) -> Tensor:
        """clipdoctor's (B, T, C, H, W) normalised batch -> the Keras model's input: pixels
        at `pixel_scale`, (B, T, H, W, C) for a channels-last model."""
        if x.ndim != 5:
            raise ValueError(f"expected clips (B, T, C, H, W); got shape {tuple(x.shape)}")
        x = (x.float() * self.std + self.mean) * self.pixel_scale  # un-normalise: 0..1 (x scale)
        # (B, T, C, H, W) -> (B, T, H, W, C)
        return x.permute(0, 1, 3, 4, 2) if self.channels_last else x

    def forward(self, x: Tensor) -> Tensor:
        device = self._device()
        x = self.to_keras_input(x.to(device))
        keras = import_keras()
        with keras.device(str(device)):  # Keras creates its tensors where the weights live
            return self.keras_model(x, training=self.training)

    def _device(self) -> torch.device:
        """Where the Keras weights live (a `.to()` on this module moves them)."""
        for p in self.keras_model.parameters():
            return p.device
        return self.mean.device

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        """The trainable variables' Parameters, under the names torch gives them."""
        keep = {id(v.value) for v in self.keras_model.trainable_variables}
        inner = f"{prefix}.keras_model" if prefix else "keras_model"
        for name, p in self.keras_model.named_parameters(inner, recurse, remove_duplicate):
            if id(p) in keep:
                yield name, p

    def extra_repr(self) -> str:
        return (f"keras_model={getattr(self.keras_model, 'name', '?')!r}, "
                f"pixel_scale={self.pixel_scale:g}, channels_last={self.channels_last}")

    def __deepcopy__(self, memo: dict) -> KerasModule:
        """A copy over a copy of the Keras model (see :func:`copy_keras_model`); everything
        else (buffers, flags, hooks) deep-copied as nn.Module does."""
        keras_twin = copy_keras_model(self.keras_model, self.custom_objects)
        memo[id(self.keras_model)] = keras_twin
        twin = self.__class__.__new__(self.__class__)
        memo[id(self)] = twin
        for key, value in self.__dict__.items():
            twin.__dict__[key] = copy.deepcopy(value, memo)
        return twin


def copy_keras_model(model: Any, custom_objects: dict[str, Any] | None = None) -> Any:
    """An independent copy of a Keras model with the same weights and state, on the same
    device: rebuilt from its config (``from_config``), then every variable (weights, BatchNorm
    statistics, random-seed state) assigned. Keras' own deepcopy pickles the model, i.e. saves
    and reloads a whole .keras file: 2-3x slower on EfficientNetB0, and it knows only
    registered custom classes. That is the fallback for models that cannot be rebuilt from
    their config (subclassed models without get_config). The copy is not compiled: the doctor
    trains it with the adapter's loss and optimizer."""
    keras = import_keras()
    scope = _unsafe_deserialization_scope()  # the model is already in memory: its Lambdas too
    device = next((str(p.device) for p in model.parameters()), "cpu")
    with keras.saving.custom_object_scope(custom_objects or {}):
        try:
            with scope, keras.device(device):
                twin = type(model).from_config(model.get_config())
            src, dst = list(model.variables), list(twin.variables)
            if [_variable_key(v) for v in src] != [_variable_key(v) for v in dst]:
                raise ValueError("the rebuilt model's variables differ")
            for s, d in zip(src, dst):
                d.assign(s.value)
                d.trainable = s.trainable
            return twin
        except Exception:  # noqa: BLE001 — not rebuildable from its config: Keras' pickling
            return copy.deepcopy(model)


def _variable_key(variable: Any) -> tuple:
    """What must agree between a variable and its copy: path, shape and dtype; a random seed
    generator's own numbered name (seed_generator_12) is a global counter, not structure."""
    path = re.sub(r"(^|/)seed_generator(_\d+)?/", r"\1seed_generator/", variable.path)
    return path, tuple(variable.shape), str(variable.dtype)


def _unsafe_deserialization_scope() -> Any:
    """Keras' scope that lets Lambda layers be rebuilt (a private class: a no-op context when
    it moves, and the copy then falls back to Keras' own deepcopy)."""
    try:
        from keras.src.saving.serialization_lib import SafeModeScope

        return SafeModeScope(False)
    except ImportError:
        return contextlib.nullcontext()
