"""What a Keras model takes as input: the clip shape and layout of its Input, and the
pixel range its first value-changing layer expects."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from clipdoctor.errors import ClipdoctorError

from .graph import _is_random_augmentation, _sublayers, _walk


# Layers that only move or select pixels (or pass them through at inference): the pixel range
# a model expects is read past them, at its first layer that changes values.
_PIXEL_NEUTRAL = {
    "InputLayer", "Reshape", "Permute", "Flatten", "Identity", "Resizing", "CenterCrop",
    "Cropping2D", "Cropping3D", "ZeroPadding2D", "ZeroPadding3D", "Dropout", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Masking",
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomCrop",
    "RandomContrast", "RandomBrightness", "RandomShear", "RandomPerspective",
}


def _pixel_scale(model: Any) -> tuple[float, str]:
    """(pixel_scale, why): the pixel range the model expects, read at its first layer that
    changes values (walking into TimeDistributed and nested models such as Keras'
    applications, past layers that only move pixels or act in training only).

    Rule: a Rescaling that divides by 64 or more (1/255, 1/127.5: EfficientNet, MobileNet...)
    or a Normalization whose mean is above 2 (a mean in 0..255 units) means the model takes
    raw 0..255 pixels: 255. A Normalization with a smaller mean takes 0..1 pixels: 1. An
    identity Normalization (not adapted: mean 0, variance 1) is passed over. Any other first
    layer (a Conv2D...): the model takes pixels as given, 0..1: 1."""
    for v in _walk(model):
        layer, name = v.layer, type(v.layer).__name__
        if _sublayers(layer) or name in _PIXEL_NEUTRAL or _is_random_augmentation(layer):
            continue
        if name == "Rescaling":
            scale = torch.as_tensor(layer.scale, dtype=torch.float64).abs().max()
            if float(scale) <= 1 / 64:
                return 255.0, f"{v.path}: Rescaling(scale={float(scale):.4g}) takes 0..255 pixels"
            return 1.0, f"{v.path}: Rescaling(scale={float(scale):.4g}) takes 0..1 pixels"
        if name == "Normalization":
            mean = _normalization_stats(layer)
            if mean is None:
                continue  # identity: look further
            pixels = "0..255" if mean > 2 else "0..1"
            return (255.0 if mean > 2 else 1.0,
                    f"{v.path}: Normalization with a mean up to {mean:.4g} takes {pixels} pixels")
        return 1.0, f"{v.path}: the first layer ({name}) takes the pixels as given (0..1)"
    return 1.0, "no layer reads the pixels: 0..1"


def _normalization_stats(layer: Any) -> float | None:
    """The largest |mean| of a Normalization layer; None when it is an identity (not adapted:
    mean 0 and variance 1)."""
    mean = getattr(layer, "input_mean", None)
    var = getattr(layer, "input_variance", None)
    if mean is None:
        mean = getattr(layer, "adapt_mean", None)
        var = getattr(layer, "adapt_variance", None)
    if mean is None:
        return None
    m = torch.as_tensor(_numpy(mean), dtype=torch.float64)
    v = torch.as_tensor(_numpy(var), dtype=torch.float64) if var is not None else torch.ones(1)
    if bool((m == 0).all()) and bool((v == 1).all()):
        return None
    return float(m.abs().max())


def _numpy(value: Any) -> Any:
    """A Keras variable, tensor or list as something torch.as_tensor takes."""
    import numpy as np

    if hasattr(value, "numpy") and not isinstance(value, Tensor):
        return np.asarray(value.numpy())
    if isinstance(value, Tensor):
        return value.detach().cpu()
    return np.asarray(value, dtype=np.float64)



def _input_shape(model: Any) -> tuple[tuple[int | None, ...], bool]:
    """((T, H, W, C) or (T, C, H, W), channels_last) of the model's single 5-D clip input."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):  # a Sequential or subclassed model never built
        inputs = None
    if not inputs:
        raise ClipdoctorError("the Keras model has no defined input (a subclassed model never "
                              "called?); build it from keras.Input((T, H, W, 3)) or call it once")
    if len(inputs) != 1:
        raise ClipdoctorError(f"the Keras model takes {len(inputs)} inputs; clipdoctor feeds "
                              "one clip tensor (batch, frames, height, width, channels)")
    shape = tuple(inputs[0].shape)
    if len(shape) != 5:
        raise ClipdoctorError(f"the Keras model's input has shape {shape}; clipdoctor feeds "
                              "clips as (batch, frames, height, width, channels)")
    dims = tuple(None if d is None else int(d) for d in shape[1:])
    if dims[3] in (3, None) or dims[1] != 3:
        if dims[3] not in (3, None):
            raise ClipdoctorError(f"the Keras model takes {dims[3]}-channel frames; clipdoctor "
                                  "feeds RGB clips (3 channels)")
        return dims, True
    return dims, False  # (T, 3, H, W): channels first
