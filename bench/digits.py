"""Moving digits: scikit-learn's handwritten digits placed into clips whose label needs frame order.

Each 8 x 8 digit image (1,797 in all, about 180 per digit) becomes one clip: the digit, upscaled
to half the frame height, slides across a noisy background from left to right or from right to
left. The class is `<digit>_<direction>` (2 classes per digit; `digits_used` picks the digits):
every frame of a `3_left` clip also occurs in some `3_right` clip, so only the order of the
frames tells the two apart. Clips are written as real H.264 .mp4 files in the folder-per-class
layout, so every loader reads them like user data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DIRECTIONS = ("left", "right")


def render(digit: np.ndarray, direction: str, rng: np.random.Generator, frames: int, size: int
           ) -> np.ndarray:
    """(frames, size, size, 3) uint8: one 8 x 8 digit (values 0..16) sliding horizontally.

    The glyph is half the frame high, bright on a dark noisy background, vertically centred:
    random-weight features (nothing can be downloaded) tell digits apart at this scale, while
    at a third of the frame with random colours and heights a linear probe on them found
    only ~25 % of digits."""
    side = size // 2
    glyph = Image.fromarray((digit * (255 / 16)).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    glyph = np.asarray(glyph, dtype=np.float32)[..., None] / 255  # (side, side, 1) in [0, 1]
    colour = rng.uniform(190, 250, 3)
    top = (size - side) // 2 + int(rng.integers(-2, 3))
    xs = np.linspace(0, size - side, frames).round().astype(int)  # left to right
    if direction == "left":
        xs = xs[::-1]
    background = rng.uniform(20, 50, 3) + rng.normal(0, 8, (size, size, 3))  # static texture
    out = np.empty((frames, size, size, 3), np.uint8)
    for t, x in enumerate(xs):
        frame = background.copy()
        patch = frame[top:top + side, x:x + side]
        frame[top:top + side, x:x + side] = patch * (1 - glyph) + colour * glyph
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def write_digits(out: Path, *, digits_used: tuple[int, ...] = tuple(range(10)),
                 limit: int | None = None, frames: int = 16, size: int = 64, seed: int = 0) -> Path:
    """Write the moving-digit clips of `digits_used` under `out/<digit>_<direction>/`."""
    from sklearn.datasets import load_digits

    from clipdoctor.data.synthetic import write_video

    digits = load_digits()
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(np.isin(digits.target, digits_used))
    order = rng.permutation(keep)[:limit]
    for k, i in enumerate(order):
        direction = DIRECTIONS[k % 2]  # balanced: every digit both ways
        label = f"{digits.target[i]}_{direction}"
        clip = render(digits.images[i], direction, rng, frames, size)
        write_video(out / label / f"{label}_{k:04d}.mp4", clip, fps=12.0)
    return out
