"""The random augmentation layers a Keras model applies frame by frame (inside
TimeDistributed), as a callable on one clip: what the doctor's `augmentation` probe tests, as
it tests a user's own ``augment=`` callable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from clipdoctor.data.transforms import IMAGENET_MEAN, IMAGENET_STD

from .graph import _is_random_augmentation, _walk
from .module import KerasModule


class FrameAugmenter:
    """``augmenter(clip)``: one clip as :class:`KerasModule` receives it ((T, C, H, W) float,
    normalised with `mean` / `std`) through the random augmentation `layers` in training mode,
    its T frames as one batch (what TimeDistributed does: each frame draws its own transform),
    returned in the same layout and normalisation. ``names`` are the layers' paths in the
    model."""

    def __init__(self, layers: Sequence[tuple[str, Any]], *, pixel_scale: float = 1.0,
                 channels_last: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.layers = list(layers)
        self.names = [name for name, _ in self.layers]
        self.pixel_scale = float(pixel_scale)
        self.channels_last = bool(channels_last)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, clip: Tensor) -> Tensor:
        x = (clip.float().cpu() * self.std + self.mean) * self.pixel_scale  # (T, C, H, W) pixels
        x = x.permute(0, 2, 3, 1) if self.channels_last else x  # (T, C, H, W) -> (T, H, W, C)
        with torch.no_grad():
            for _, layer in self.layers:
                x = layer(x, training=True)
        x = torch.as_tensor(x).float().cpu()
        x = x.permute(0, 3, 1, 2) if self.channels_last else x  # (T, H, W, C) -> (T, C, H, W)
        return (x / self.pixel_scale - self.mean) / self.std

    def __repr__(self) -> str:
        return f"FrameAugmenter({', '.join(self.names)})"


def frame_augmenter(module: KerasModule) -> FrameAugmenter | None:
    """The random augmentation layers inside TimeDistributed of the Keras model `module`
    wraps, in graph order, as a :class:`FrameAugmenter` feeding them what `module` feeds the
    model; None when there are none. The layers are the model's own (calling them advances
    their seed state): give it a copy of the user's model."""
    layers = [(v.path, v.layer) for v in _walk(module.keras_model)
              if v.in_time_distributed and _is_random_augmentation(v.layer)]
    if not layers:
        return None
    return FrameAugmenter(layers, pixel_scale=module.pixel_scale,
                          channels_last=module.channels_last,
                          mean=module.mean.flatten().tolist(), std=module.std.flatten().tolist())
