"""Clip transforms (torchvision.transforms.v2): uint8 (T, C, H, W) in, normalised float32 out.

The clip is wrapped as a :class:`torchvision.tv_tensors.Video`, so every random transform draws
its parameters ONCE and applies them to all T frames: the same crop, rotation, shift, colour
change and flip on every frame. That is the point of this module: drawing new parameters per
frame makes a still scene jitter from frame to frame, which the LSTM reads as motion and
cannot learn from (the ``inconsistent-augmentation`` fault; ``AugmentSpec(per_frame=True)``
plants it on purpose for tests and demos).

Randomness: torchvision v2 draws from torch's global generator, so callers seed it per item
(``torch.manual_seed(seed)``) to make an augmented clip reproducible.

The returned transforms are instances of module-level classes, so they pickle and can be sent
to DataLoader worker processes started with ``spawn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentSpec:
    """Training augmentation strengths. Defaults are mild: clips are few and motion is fragile."""

    scale: tuple[float, float] = (0.6, 1.0)  # RandomResizedCrop area range: keep most of the actor in view
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect range: mild stretch only
    degrees: float = 5.0  # small rotation: cameras are roughly level, large tilts are unrealistic
    translate: float = 0.05  # small translation (fraction of size): framing varies a little
    brightness: float = 0.2  # lighting changes between recordings
    contrast: float = 0.2  # cameras and compression differ in contrast
    saturation: float = 0.2  # colour response differs between cameras
    hue: float = 0.02  # tiny: hue shifts change object identity (a red ball becomes a green one)
    hflip: bool = False  # off by default: a flip swaps left and right motions ("swipe left" <-> "swipe right")
    per_frame: bool = False  # True draws new random parameters for every frame: WRONG on purpose, used only
    # to plant the `inconsistent-augmentation` fault in tests and demos


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """Mean and std as 3-element lists (RGB), std strictly positive."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
    if min(std) <= 0:
        raise ValueError(f"std must be > 0, got {std}")
    return mean, std


def _check_size(size: int) -> int:
    """The output side as a positive int."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    return size


def _check_clip(clip: torch.Tensor) -> torch.Tensor:
    """Validate a raw clip and return it as (T, 3, H, W) uint8 (grayscale repeated to 3 channels)."""
    if not isinstance(clip, torch.Tensor):
        raise ValueError(f"a clip must be a torch.Tensor (T, C, H, W) uint8, got {type(clip).__name__}")
    if clip.ndim != 4 or clip.dtype != torch.uint8:
        raise ValueError(f"a clip must be a (T, C, H, W) uint8 tensor, got shape {tuple(clip.shape)} {clip.dtype}")
    t, c, h, w = clip.shape
    if c not in (1, 3):
        raise ValueError(f"a clip must have 1 or 3 channels in dim 1 (T, C, H, W), got C={c} in shape "
                         f"{tuple(clip.shape)}; (T, H, W, C) arrays need .permute(0, 3, 1, 2)")
    if t < 1 or h < 1 or w < 1:
        raise ValueError(f"a clip must not be empty, got shape {tuple(clip.shape)}")
    if c == 1:
        clip = clip.repeat(1, 3, 1, 1)  # (T, 1, H, W) -> (T, 3, H, W), grey replicated
    return clip


class ClipTransform:
    """A picklable callable: validate a clip, run a v2 pipeline on it, return a plain tensor.

    With ``per_frame=False`` the clip goes through the pipeline as one ``Video`` (one random
    draw for the whole clip). With ``per_frame=True`` each frame goes through separately as an
    ``Image`` (a new draw per frame) -- only for planting the inconsistent-augmentation fault.
    """

    def __init__(self, pipeline: v2.Compose, per_frame: bool = False) -> None:
        self.pipeline = pipeline
        self.per_frame = per_frame

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        """(T, C, H, W) uint8 -> (T, 3, size, size) float32, normalised."""
        clip = _check_clip(clip)
        if self.per_frame:
            frames = [self.pipeline(tv_tensors.Image(frame)) for frame in clip]  # T x (3, size, size)
            out = torch.stack([f.as_subclass(torch.Tensor) for f in frames])  # (T, 3, size, size)
        else:
            out = self.pipeline(tv_tensors.Video(clip)).as_subclass(torch.Tensor)  # (T, 3, size, size)
        return out.contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(per_frame={self.per_frame}, pipeline={self.pipeline!r})"


def train_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    spec: AugmentSpec = AugmentSpec()) -> Callable[[torch.Tensor], torch.Tensor]:
    """Random crop, small affine, colour jitter, optional flip, then float and normalise.

    One draw per clip (the same geometry and colour on every frame) unless ``spec.per_frame``.
    """
    size = _check_size(size)
    mean, std = _check_stats(mean, std)
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(size, scale=spec.scale, ratio=spec.ratio, antialias=True),
        v2.RandomAffine(degrees=spec.degrees, translate=(spec.translate, spec.translate),
                        interpolation=InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=spec.brightness, contrast=spec.contrast, saturation=spec.saturation,
                       hue=spec.hue),
    ]
    if spec.hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return ClipTransform(v2.Compose(steps), per_frame=spec.per_frame)


def eval_transform(size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   crop_pct: float = 0.875) -> Callable[[torch.Tensor], torch.Tensor]:
    """Deterministic: resize the short side to round(size / crop_pct), centre crop to size,
    float and normalise (the usual ImageNet evaluation recipe, applied to every frame alike)."""
    size = _check_size(size)
    mean, std = _check_stats(mean, std)
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    steps = [
        v2.Resize(round(size / crop_pct), antialias=True),  # int: the shorter side gets this length
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ]
    return ClipTransform(v2.Compose(steps))


def denormalize(clip: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Undo ``Normalize`` and ``ToDtype``: float (T, C, H, W) -> uint8 (T, C, H, W) for reports.

    Values outside the displayable range (rotation fill, jitter overshoot) are clipped to [0, 255].
    """
    if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[1] != 3 or not clip.is_floating_point():
        shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise ValueError(f"denormalize expects a float (T, 3, H, W) tensor, got {shape}")
    mean, std = _check_stats(mean, std)
    m = torch.tensor(mean, dtype=clip.dtype, device=clip.device).view(1, 3, 1, 1)  # broadcast over (T, C, H, W)
    s = torch.tensor(std, dtype=clip.dtype, device=clip.device).view(1, 3, 1, 1)
    return (clip * s + m).mul(255).round().clamp(0, 255).to(torch.uint8)  # (T, 3, H, W)
