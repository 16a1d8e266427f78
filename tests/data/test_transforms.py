"""Clip transforms: one random draw per clip, normalisation, eval determinism, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from clipdoctor.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, denormalize, eval_transform,
                                        train_transform)

T = 6


def _static_clip(seed: int = 0, h: int = 48, w: int = 64, c: int = 3) -> torch.Tensor:
    """(T, C, H, W) uint8: T copies of one random frame (a still scene)."""
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (1, c, h, w), generator=g, dtype=torch.uint8)
    return frame.repeat(T, 1, 1, 1)


def _frames_identical(out: torch.Tensor) -> bool:
    return all(torch.equal(out[0], out[i]) for i in range(1, out.shape[0]))


@pytest.mark.parametrize("spec", [
    AugmentSpec(),
    AugmentSpec(hflip=True),
    AugmentSpec(scale=(0.08, 1.0), ratio=(0.5, 2.0), degrees=45.0, translate=0.3, brightness=0.6,
                contrast=0.6, saturation=0.6, hue=0.3, hflip=True),
], ids=["default", "hflip", "strong"])
def test_static_clip_stays_static(spec: AugmentSpec) -> None:
    tr = train_transform(32, spec=spec)
    clip = _static_clip()
    for seed in range(15):
        torch.manual_seed(seed)
        out = tr(clip)
        assert _frames_identical(out), f"frames differ after one clip-level draw (seed {seed})"


def test_per_frame_fault_breaks_static_clip() -> None:
    tr = train_transform(32, spec=AugmentSpec(per_frame=True))
    clip = _static_clip()
    for seed in range(5):
        torch.manual_seed(seed)
        out = tr(clip)
        assert out.shape == (T, 3, 32, 32)
        assert not _frames_identical(out)


def test_output_shape_and_dtype() -> None:
    clip = _static_clip(h=40, w=90)
    for tr in (train_transform(28), eval_transform(28)):
        out = tr(clip)
        assert out.shape == (T, 3, 28, 28)
        assert out.dtype == torch.float32
        assert type(out) is torch.Tensor  # not a tv_tensors.Video leaking into the model


def test_mean_colour_maps_to_zero() -> None:
    mean_rgb = torch.tensor([round(m * 255) for m in IMAGENET_MEAN], dtype=torch.uint8)
    clip = mean_rgb.view(1, 3, 1, 1).expand(T, 3, 40, 40).contiguous()  # (T, 3, 40, 40)
    still = AugmentSpec(degrees=0.0, translate=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    for tr in (eval_transform(32), train_transform(32, spec=still)):
        out = tr(clip)
        assert out.abs().max() < 0.02
    # and white maps to (1 - mean) / std per channel
    white = torch.full((T, 3, 40, 40), 255, dtype=torch.uint8)
    out = eval_transform(32)(white)
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(out.mean(dim=(0, 2, 3)), expected, atol=1e-4)


def test_eval_is_deterministic_and_centre_crops() -> None:
    g = torch.Generator().manual_seed(3)
    clip = torch.randint(0, 256, (T, 3, 64, 96), generator=g, dtype=torch.uint8)
    tr = eval_transform(56, crop_pct=0.875)  # short side -> round(56 / 0.875) = 64: no resize here
    torch.manual_seed(0)
    a = tr(clip)
    torch.manual_seed(1)
    b = tr(clip)
    assert torch.equal(a, b)
    crop = clip[:, :, 4:60, 20:76].float() / 255  # (T, 3, 56, 56): the centre of 64 x 96
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(a, (crop - mean) / std, atol=1e-5)
    assert torch.equal(denormalize(a), clip[:, :, 4:60, 20:76])


def test_eval_resizes_short_side() -> None:
    # a 2x bigger clip of flat colour blocks: resize to 64 on the short side, then the same centre crop
    clip = torch.zeros(T, 3, 128, 192, dtype=torch.uint8)
    clip[:, :, :, 96:] = 200  # right half bright
    out = denormalize(eval_transform(56)(clip))  # (T, 3, 56, 56), the centre 112x112 of the original
    assert out.shape == (T, 3, 56, 56)
    assert out[..., :20].float().mean() < 5 and out[..., 36:].float().mean() > 195


def test_same_seed_same_output() -> None:
    tr = train_transform(32)
    g = torch.Generator().manual_seed(7)
    clip = torch.randint(0, 256, (T, 3, 48, 64), generator=g, dtype=torch.uint8)
    torch.manual_seed(123)
    a = tr(clip)
    torch.manual_seed(123)
    b = tr(clip)
    torch.manual_seed(124)
    c = tr(clip)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _left_bright_clip() -> torch.Tensor:
    clip = torch.full((T, 3, 48, 64), 20, dtype=torch.uint8)
    clip[:, :, :, :32] = 230  # (T, 3, 48, 32) bright left half
    return clip


def _left_minus_right(out: torch.Tensor) -> float:
    w = out.shape[-1]
    return float(out[..., : w // 2].mean() - out[..., w // 2 :].mean())


def test_hflip_off_by_default() -> None:
    default, flipping = train_transform(32), train_transform(32, spec=AugmentSpec(hflip=True))
    clip = _left_bright_clip()
    flipped = 0
    for seed in range(40):
        torch.manual_seed(seed)
        assert _left_minus_right(default(clip)) > 0  # the bright side stays on the left
        torch.manual_seed(seed)
        flipped += _left_minus_right(flipping(clip)) < 0
    assert 5 < flipped < 35  # with hflip=True about half the draws are mirrored: the check has teeth


def test_grayscale_accepted() -> None:
    clip = _static_clip(c=1)  # (T, 1, H, W)
    out = eval_transform(32)(clip)
    assert out.shape == (T, 3, 32, 32)
    back = denormalize(out)
    assert torch.equal(back[:, 0], back[:, 1]) and torch.equal(back[:, 1], back[:, 2])
    torch.manual_seed(0)
    assert train_transform(32)(clip).shape == (T, 3, 32, 32)


@pytest.mark.parametrize("bad", [
    torch.zeros(T, 3, 32, 32),  # float, not uint8
    torch.zeros(3, 32, 32, dtype=torch.uint8),  # a single frame, 3-D
    torch.zeros(1, T, 3, 32, 32, dtype=torch.uint8),  # batched, 5-D
    torch.zeros(T, 32, 32, 3, dtype=torch.uint8),  # channels last
    torch.zeros(T, 2, 32, 32, dtype=torch.uint8),  # C=2
    torch.zeros(0, 3, 32, 32, dtype=torch.uint8),  # empty
    np.zeros((T, 3, 32, 32), np.uint8),  # not a tensor
])
def test_bad_input_raises(bad) -> None:
    for tr in (train_transform(16), eval_transform(16)):
        with pytest.raises(ValueError):
            tr(bad)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        train_transform(0)
    with pytest.raises(ValueError):
        eval_transform(32, crop_pct=0.0)
    with pytest.raises(ValueError):
        eval_transform(32, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError):
        denormalize(torch.zeros(T, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("make", [lambda: train_transform(32), lambda: eval_transform(32),
                                  lambda: train_transform(32, spec=AugmentSpec(per_frame=True, hflip=True))])
def test_pickle_round_trip(make) -> None:
    tr = make()
    clone = pickle.loads(pickle.dumps(tr))
    g = torch.Generator().manual_seed(9)
    clip = torch.randint(0, 256, (T, 3, 48, 64), generator=g, dtype=torch.uint8)
    torch.manual_seed(5)
    a = tr(clip)
    torch.manual_seed(5)
    b = clone(clip)
    assert torch.equal(a, b)
