"""Motion signals that do not depend on what per-frame pooling keeps.

Global pooling makes a CNN's per-frame vector nearly blind to *where* things are, so "moving
left" and "moving right" look alike to the temporal head (`motion-invisible-features`). Two
remedies live here, both computed inside the model from what it already receives, so datasets,
the feature cache format, export and predict need no change:

- RGB difference (TSN's RGB-diff modality, Wang et al. 2016): the differences of consecutive
  normalised frames x_t - x_{t-1} go through a backbone as a second stream. A difference
  image shows the moving object's leading and trailing edges with opposite signs, a local
  pattern that survives global pooling and flips with the direction of motion.
- Feature differences: f_t - f_{t-1} of the projected per-frame features, concatenated to
  them before the temporal head: an explicit velocity for heads that cannot subtract steps
  themselves (the order-blind `meanpool` head included: the mean of the differences is the
  last-minus-first change, which reverses with time).

`time_differences` is the one rule both use, for any trailing shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clipdoctor.models.heads import check_lengths, valid_mask

RGB_DIFF_MODES = ("off", "shared", "separate")  # ModelConfig.rgb_diff


def time_differences(x: Tensor, lengths: Tensor | None = None) -> Tensor:
    """(B, T, *F) -> (B, T, *F): step t holds x_t - x_{t-1}; step 0 repeats step 1's difference.

    Why repeat rather than zeros at step 0: a zero step would tell the head "nothing moved" at
    the start of every clip, and for the RGB stream it is a blank image the backbone otherwise
    sees only on static clips; the repeated difference is a real measurement of the same
    motion. With `lengths`, no difference crosses the pad boundary: padded steps (t >= length)
    are 0, and a clip of one valid step has only zero differences (no motion is observable).
    Zeroing uses `where`, so NaN / inf padding cannot leak into the valid steps."""
    B, T = x.shape[:2]
    if T < 2:
        return torch.zeros_like(x)
    d = x[:, 1:] - x[:, :-1]  # (B, T-1, *F): index t-1 holds x_t - x_{t-1}
    d = torch.cat([d[:, :1], d], dim=1)  # (B, T, *F): step 0 repeats step 1
    lengths = check_lengths(lengths, B, T)
    if lengths is None:
        return d
    keep = valid_mask(lengths, T, x.device) & (lengths.to(x.device) >= 2)[:, None]  # (B, T)
    keep = keep.view(B, T, *([1] * (x.ndim - 2)))  # (B, T) -> (B, T, 1, ...) for broadcasting
    return torch.where(keep, d, torch.zeros((), dtype=d.dtype, device=d.device))
