"""KerasAdapter: what the doctor needs from a Keras 3 model (the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipdoctor.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from clipdoctor.errors import ClipdoctorError

from .graph import (_bidirectional_last_steps, _contains_batchnorm, _count, _forced_training_calls,
                    _is_random_augmentation, _op_name, _output_activation, _per_frame_global_pools,
                    _recurrent_layers, _Visit, _walk)
from .inputs import _input_shape, _pixel_scale
from .loading import import_keras, is_keras_model, load_keras_model
from .losses import KerasLossFn, make_loss_fn, read_loss
from .module import KerasModule
from .optimizers import read_optimizer


class KerasAdapter:
    """What the doctor needs from a Keras 3 model (see the module docstring).

    Attributes, read once at construction:

    - ``model``: the keras.Model; ``input_shape``: (T, H, W, C) of its Input (None where
      dynamic; (T, C, H, W) for a channels-first model), ``channels_last``, ``frames`` (T),
      ``size`` (H when H == W, else (H, W); None when dynamic), ``num_classes``;
    - ``pixel_scale`` / ``pixel_scale_reason``: 255.0 when the model's first value-changing
      layer rescales raw 0..255 pixels itself, else 1.0 (rule: :func:`_pixel_scale`);
      ``pixel_scale=`` overrides it;
    - ``module``: the :class:`KerasModule` wrapper (torch module over the same Keras model: its
      training changes the model's weights);
    - ``output_activation`` ('softmax', 'linear', ...) and ``outputs_probabilities`` (the last
      layer applies softmax);
    - ``loss_name``, ``from_logits``, ``label_smoothing``, ``label_format`` ('one-hot' /
      'sparse') and ``loss_fn(outputs, y_int) -> scalar`` (None when not compiled);
    - ``optimizer_name``, ``learning_rate`` and ``make_optimizer(params) -> Optimizer`` (None
      when not compiled);
    - ``notes``: what the torch side does not reproduce exactly (one sentence each).
    """

    def __init__(self, model: Any, *, pixel_scale: float | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 custom_objects: dict[str, Any] | None = None) -> None:
        keras = import_keras()
        if not is_keras_model(model):
            raise ClipdoctorError(f"expected a keras.Model; got {type(model).__name__}")
        self.keras_version = keras.__version__
        self.model = model
        self.input_shape, self.channels_last = _input_shape(model)
        self.frames = self.input_shape[0]
        h, w = (self.input_shape[1:3] if self.channels_last else self.input_shape[2:4])
        self.size: int | tuple[int, int] | None = (h if h == w else (h, w)) if h and w else None
        out_shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else ()
        if len(out_shape) != 2:
            raise ClipdoctorError(f"the Keras model outputs shape {out_shape}; clipdoctor "
                                  "diagnoses clip classifiers that output (batch, classes)")
        self.num_classes: int | None = out_shape[-1]
        if pixel_scale is None:
            self.pixel_scale, self.pixel_scale_reason = _pixel_scale(model)
        else:
            self.pixel_scale, self.pixel_scale_reason = float(pixel_scale), "given"
        self.module = KerasModule(model, pixel_scale=self.pixel_scale,
                                  channels_last=self.channels_last, mean=mean, std=std,
                                  custom_objects=custom_objects)
        self.output_activation = _output_activation(model)
        self.outputs_probabilities = self.output_activation == "softmax"
        spec = read_loss(model)
        self.loss_name = spec.name if spec else None
        self.from_logits = spec.from_logits if spec else None
        self.label_smoothing = spec.label_smoothing if spec else None
        self.label_format = spec.label_format if spec else None
        self.loss_fn = make_loss_fn(spec)
        self.notes: list[str] = []
        if isinstance(self.loss_fn, KerasLossFn):
            self.notes.append(f"the loss {spec.name} runs as Keras' own function on "
                              f"{spec.label_format} targets")
        (self.optimizer_name, self.learning_rate, self.make_optimizer,
         optimizer_notes) = read_optimizer(model)
        self.notes += optimizer_notes

    @classmethod
    def from_file(cls, path: str | Path, *, safe_mode: bool = True,
                  custom_objects: dict[str, Any] | None = None, **kwargs: Any) -> KerasAdapter:
        """Load a saved model (:func:`load_keras_model`) and adapt it."""
        return cls(load_keras_model(path, safe_mode=safe_mode, custom_objects=custom_objects),
                   custom_objects=custom_objects, **kwargs)

    def loss_description(self) -> str | None:
        """The loss as a report names it (None when not compiled)."""
        if self.loss_fn is None:
            return None
        how = "logits" if self.from_logits else "probabilities"
        smoothing = f", label smoothing {self.label_smoothing:g}" if self.label_smoothing else ""
        return f"Keras {self.loss_name} (from {how}, {self.label_format} targets{smoothing})"

    def facts(self) -> dict[str, Any]:
        """Architecture facts read from the Keras graph, as a JSON-able dict:

        - ``per_frame_global_pool``: a GlobalAverage/MaxPooling2D that ends what a
          TimeDistributed applies to each frame (wrapped directly, or the last layer of a
          wrapped model such as an application built with ``pooling='avg'/'max'``; pools
          inside a backbone, as in squeeze-excitation blocks, are not counted): paths;
        - ``per_frame_random_augmentation``: random augmentation layers inside
          TimeDistributed (each frame draws its own transform): paths;
        - ``bidirectional_last_step``: ``{"layer", "read_by"}`` for each x[:, -1] read of a
          Bidirectional RNN's full sequence (a Lambda, a ``x[:, -1]`` getitem op...);
        - ``softmax_output``, ``output_activation``, ``compile_from_logits`` (None when not
          compiled), ``loss``, ``label_format``, ``optimizer``, ``learning_rate``;
        - ``frozen_layers``: ``{"name", "contains_batchnorm"}`` for each outermost layer with
          trainable=False;
        - ``forced_training_calls``: layers called with ``training=True`` written into the
          graph (``bn(x, training=True)``; Keras saves call arguments with each node, so a
          saved file shows it). Keras 3 replays it only when the model is called without a
          training flag: ``fit`` / ``predict`` and :class:`KerasModule` pass one, which wins;
        - ``frozen_bn_forced_training``: those of them that are frozen and hold a
          BatchNormalization. Harmless in Keras 3 (``frozen_bn_uses_moving_statistics``):
          a BatchNormalization with trainable=False normalises with its moving statistics
          even in training mode (as tf.keras has done since TensorFlow 2.0);
        - ``recurrent_layers``: name, class, units, bidirectional, return_sequences,
          merge_mode, in_time_distributed;
        - ``trainable_params``, ``total_params`` (weights, random-seed state excluded),
          ``input_shape``, ``num_classes``, ``pixel_scale``, ``pixel_scale_reason``, ``notes``.
        """
        model = self.model
        walk = list(_walk(model))
        frozen, seen = [], set()
        for v in walk:
            if v.frozen and not any(v.path.startswith(p + "/") for p in seen):
                seen.add(v.path)
                frozen.append({"name": v.path, "contains_batchnorm": _contains_batchnorm(v.layer)})
        if not model.trainable:
            frozen = [{"name": model.name, "contains_batchnorm": _contains_batchnorm(model)}]
        forced = _forced_training_calls(model)
        return {
            "keras_version": self.keras_version,
            "input_shape": list(self.input_shape),
            "channels_last": self.channels_last,
            "num_classes": self.num_classes,
            "pixel_scale": self.pixel_scale,
            "pixel_scale_reason": self.pixel_scale_reason,
            "per_frame_global_pool": _per_frame_global_pools(walk),
            "per_frame_random_augmentation": [v.path for v in walk if v.in_time_distributed
                                              and _is_random_augmentation(v.layer)],
            "bidirectional_last_step": _bidirectional_last_steps(model),
            "softmax_output": self.outputs_probabilities,
            "output_activation": self.output_activation,
            "compile_from_logits": self.from_logits,
            "loss": self.loss_name,
            "label_format": self.label_format,
            "optimizer": self.optimizer_name,
            "learning_rate": self.learning_rate,
            "frozen_layers": frozen,
            "forced_training_calls": [_op_name(prefix, op) for prefix, op in forced],
            "frozen_bn_forced_training": [_op_name(prefix, op) for prefix, op in forced
                                          if _frozen_batchnorm(walk, prefix, op)],
            "frozen_bn_uses_moving_statistics": True,
            "recurrent_layers": _recurrent_layers(model),
            "trainable_params": _count(model.trainable_weights),
            "total_params": _count(model.weights),
            "notes": list(self.notes),
        }


def _frozen_batchnorm(walk: list[_Visit], prefix: str, op: Any) -> bool:
    """Is `op` (called inside the graph of the model at `prefix`, '' for the top one) frozen,
    itself or through a frozen parent, and does it hold a BatchNormalization?"""
    frozen = not getattr(op, "trainable", True) or any(v.path == prefix and v.frozen for v in walk)
    return frozen and _contains_batchnorm(op)
