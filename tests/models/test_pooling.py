"""Per-frame pooling: shapes for any map size, and which pools keep position."""

from __future__ import annotations

import typing

import pytest
import torch

from clipdoctor.config import ModelConfig
from clipdoctor.errors import ClipdoctorError
from clipdoctor.models import POOLS, make_pool


def test_registry_matches_the_config():
    assert set(POOLS) == set(typing.get_args(ModelConfig.model_fields["pool"].annotation))


@pytest.mark.parametrize("kind,grid,out_dim",
                         [("gap", 2, 8), ("grid", 2, 32), ("grid", 3, 72), ("attention", 2, 10)])
@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 5), (7, 7)])
def test_shapes_for_any_map(kind, grid, out_dim, hw):
    pool = make_pool(kind, 8, grid=grid)
    y = pool(torch.randn(3, 8, *hw))
    assert pool.out_dim == out_dim and y.shape == (3, out_dim)
    assert torch.isfinite(y).all()


def _left_right(C: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The same activation on the left half of a 4x4 map, or on its right half."""
    left = torch.zeros(1, C, 4, 4)
    left[..., :2] = 1.0
    return left, left.flip(-1)


def test_gap_cannot_tell_left_from_right_but_grid_can():
    left, right = _left_right()
    gap, grid = make_pool("gap", 8), make_pool("grid", 8, grid=2)
    torch.testing.assert_close(gap(left), gap(right))
    assert (grid(left) - grid(right)).abs().max() == 1.0
    cells = grid(left).view(8, 2, 2)  # channel-major: (C, row, col)
    assert (cells[:, :, 0] == 1).all() and (cells[:, :, 1] == 0).all()


def test_attention_pool_tells_left_from_right():
    torch.manual_seed(0)
    pool = make_pool("attention", 8)
    left, right = _left_right()
    with torch.no_grad():
        a, b = pool(left), pool(right)
    x_left, x_right = a[0, -2], b[0, -2]  # attention-weighted mean x position
    assert abs(x_left - x_right) > 0.05
    assert (a - b).abs().max() > 0.05


def test_attention_pool_weights_and_position():
    torch.manual_seed(0)
    pool = make_pool("attention", 4)
    with torch.no_grad():
        one = pool(torch.randn(2, 4, 1, 1))
        x = torch.randn(2, 4, 3, 3)
        y = pool(x)
    assert (one[:, -2:] == 0).all()  # a 1x1 map sits at the centre
    assert (y[:, -2:].abs() <= 1).all()  # a convex combination of [-1, 1] coordinates
    lo, hi = x.flatten(2).min(-1).values, x.flatten(2).max(-1).values  # feature part: a convex combination
    assert ((y[:, :4] >= lo - 1e-6) & (y[:, :4] <= hi + 1e-6)).all()


def test_attention_pool_learns():
    torch.manual_seed(0)
    pool = make_pool("attention", 4)
    pool(torch.randn(2, 4, 3, 3)).sum().backward()
    assert pool.score.weight.grad.abs().sum() > 0 and pool.pos.weight.grad.abs().sum() > 0


def test_unknown_pool():
    with pytest.raises(ClipdoctorError, match="unknown pool 'max' — valid: gap, grid, attention"):
        make_pool("max", 8)
