"""Per-frame pooling: a backbone feature map (N, C, h, w) -> one vector per frame (N, D).

What pooling throws away decides which motions the temporal head can ever see: global average
pooling keeps *what* is in a frame but not *where*, so "moving left" and "moving right" give the
same sequence of vectors (the `motion-invisible-features` finding). `grid` and `attention`
keep position. Every pool works for any h, w, a 1x1 map included, and has `out_dim`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipdoctor.errors import ClipdoctorError

POOLS: dict[str, type[nn.Module]] = {}


def register_pool(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in POOLS:
            raise ValueError(f"pool '{name}' is registered twice ({POOLS[name].__name__}, {cls.__name__})")
        POOLS[name] = cls
        return cls

    return add


@register_pool("gap")
class GapPool(nn.Module):
    """Global average: what is in the frame, not where. out_dim = C."""

    def __init__(self, channels: int, grid: int = 2) -> None:
        super().__init__()
        self.out_dim = channels

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))  # (N, C, h, w) -> (N, C)


@register_pool("grid")
class GridPool(nn.Module):
    """Average over a grid x grid layout of cells, flattened channel-major: coarse position
    (left vs right, top vs bottom) survives. out_dim = C * grid * grid. Maps smaller than the
    grid are replicated into the cells by adaptive pooling."""

    def __init__(self, channels: int, grid: int = 2) -> None:
        super().__init__()
        self.grid = grid
        self.out_dim = channels * grid * grid

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, self.grid)  # (N, C, h, w) -> (N, C, g, g)
        return x.flatten(1)  # (N, C, g, g) -> (N, C*g*g)


def _coords(h: int, w: int, like: Tensor) -> Tensor:
    """(h*w, 2) location centres as (x, y) in [-1, 1], row-major; a single row / column sits at 0."""
    ys = torch.linspace(-1, 1, h, device=like.device, dtype=like.dtype) if h > 1 else like.new_zeros(1)
    xs = torch.linspace(-1, 1, w, device=like.device, dtype=like.dtype) if w > 1 else like.new_zeros(1)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    return torch.stack([gx, gy], dim=-1).reshape(h * w, 2)  # (h, w, 2) -> (h*w, 2)


@register_pool("attention")
class AttentionPool(nn.Module):
    """Learned spatial attention: a 1x1 conv scores every location of the feature map plus a
    positional encoding, a softmax over locations weights them. out_dim = C + 2: the weighted
    mean of the features, then the weighted mean position (x, y) in [-1, 1], so where the
    attended content sits survives even when its features do not change.

    The positional encoding is a fixed 2-D sinusoid of the normalised (x, y) coordinates (so
    it exists for any h, w) mapped into channel space by a learned linear layer."""

    def __init__(self, channels: int, grid: int = 2, freqs: int = 4) -> None:
        super().__init__()
        self.freqs = freqs  # frequencies (pi/2) * 2^k, k < freqs: the first is monotonic on [-1, 1]
        self.pos = nn.Linear(4 * freqs, channels)  # sin/cos of x and y -> an offset per channel
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        self.out_dim = channels + 2

    def _encoding(self, xy: Tensor) -> Tensor:
        f = (math.pi / 2) * 2.0 ** torch.arange(self.freqs, device=xy.device, dtype=xy.dtype)  # (F,)
        a = xy[:, :, None] * f  # (L, 2, 1) * (F,) -> (L, 2, F)
        return torch.cat([a.sin(), a.cos()], dim=-1).flatten(1)  # (L, 2, 2F) -> (L, 4F)

    def forward(self, x: Tensor) -> Tensor:
        N, C, h, w = x.shape
        xy = _coords(h, w, x)  # (h*w, 2)
        pos = self.pos(self._encoding(xy))  # (h*w, 4F) -> (h*w, C)
        pos = pos.t().reshape(1, C, h, w)  # (h*w, C) -> (C, h*w) -> (1, C, h, w)
        logits = self.score(x + pos).flatten(1)  # (N, 1, h, w) -> (N, h*w)
        attn = logits.softmax(dim=1)  # (N, h*w), sums to 1 over locations
        feat = torch.einsum("nl,ncl->nc", attn, x.flatten(2))  # (N, C, h, w) -> (N, C, h*w) -> (N, C)
        where = attn @ xy  # (N, h*w) @ (h*w, 2) -> (N, 2)
        return torch.cat([feat, where], dim=1)  # (N, C + 2)


def make_pool(kind: str, channels: int, grid: int = 2) -> nn.Module:
    """A pool from POOLS by name; the module's `out_dim` is the per-frame vector size."""
    if kind not in POOLS:
        raise ClipdoctorError(f"unknown pool '{kind}' — valid: {', '.join(POOLS)} (model.pool, --pool)")
    if channels < 1 or grid < 1:
        raise ValueError(f"make_pool needs channels >= 1 and grid >= 1, got channels={channels}, grid={grid}")
    return POOLS[kind](channels, grid=grid)
