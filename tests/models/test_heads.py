"""Temporal heads: shapes, padding never changes a prediction, the bidirectional read-out."""

from __future__ import annotations

import typing

import pytest
import torch

from clipdoctor.config import ModelConfig
from clipdoctor.errors import ClipdoctorError
from clipdoctor.models import HEADS, make_head

D, K, H = 12, 3, 16


def _head(kind: str, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return make_head(kind, D, K, hidden=H, layers=layers, dropout=0.3).eval()


def _x(B: int = 3, T: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))


def test_registry_matches_the_config():
    assert set(HEADS) == set(typing.get_args(ModelConfig.model_fields["head"].annotation))


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_shapes_with_and_without_lengths(kind):
    head = _head(kind)
    x = _x()
    assert head(x).shape == (3, K)
    assert head(x, torch.tensor([5, 2, 1])).shape == (3, K)
    assert head.readout(x).shape == (3, head.out_dim)


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("garbage", ["noise", "huge", "nan"])
def test_padding_never_changes_a_prediction(kind, garbage):
    head = _head(kind)
    x, lengths = _x(), torch.tensor([5, 3, 1])
    with torch.no_grad():
        ref = head(x, lengths)
        fill = {"noise": torch.randn(3, 4, D), "huge": torch.full((3, 4, D), 1e6),
                "nan": torch.full((3, 4, D), float("nan"))}[garbage]
        padded = torch.cat([x, fill], dim=1)  # (3, 9, D): 4 more steps after every clip
        padded[1, 3:5] = fill[1, :2]  # and garbage inside T, after the valid steps
        padded[2, 1:5] = fill[2]
        out = head(padded, lengths)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_full_lengths_equal_no_lengths(kind):
    head = _head(kind)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(head(x, torch.full((3,), 5)), head(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_short_clip_equals_the_clip_alone(kind):
    head = _head(kind)
    x = _x()
    with torch.no_grad():
        batched = head(x, torch.tensor([5, 2, 4]))
        alone = head(x[1:2, :2])
    torch.testing.assert_close(batched[1:2], alone, rtol=0, atol=1e-5)


def test_bilstm_reads_the_backward_direction_over_the_whole_clip():
    head = _head("bilstm", layers=1)
    x = _x()
    x2 = x.clone()
    x2[:, 0] += 3.0  # perturb only the FIRST frame
    with torch.no_grad():
        r, r2 = head.readout(x), head.readout(x2)
        out, _ = head.rnn(x)  # (B, T, 2H)
        out2, _ = head.rnn(x2)
    # the classic bug, output[:, -1]: its backward half has read only the last frame
    torch.testing.assert_close(out[:, -1, H:], out2[:, -1, H:], rtol=0, atol=0)
    # the read-out's backward half is the backward state back at step 0: it saw frame 0
    assert (r[:, H:] - r2[:, H:]).abs().max() > 1e-2
    torch.testing.assert_close(r[:, H:], out[:, 0, H:])
    torch.testing.assert_close(r[:, :H], out[:, -1, :H])


def test_bilstm_with_lengths_reads_each_clip_at_its_ends():
    head = _head("bilstm", layers=1)
    x, lengths = _x(), torch.tensor([5, 3, 2])
    with torch.no_grad():
        r = head.readout(x, lengths)
        for b, n in enumerate(lengths.tolist()):
            out, _ = head.rnn(x[b:b + 1, :n])  # the clip alone, unpadded
            torch.testing.assert_close(r[b, :H], out[0, n - 1, :H], rtol=0, atol=1e-6)
            torch.testing.assert_close(r[b, H:], out[0, 0, H:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_reads_the_last_valid_step(kind):
    head = _head(kind)
    x, lengths = _x(), torch.tensor([5, 3, 1])
    with torch.no_grad():
        r = head.readout(x, lengths)
        out, _ = head.rnn(x)  # unpacked: step n-1 has read exactly the valid steps
    torch.testing.assert_close(r, out[torch.arange(3), lengths - 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind,order_matters", [("lstm", True), ("bilstm", True), ("gru", True),
                                                ("attention", True), ("transformer", True),
                                                ("meanpool", False)])
def test_which_heads_see_order(kind, order_matters):
    head = _head(kind)
    x = _x()
    with torch.no_grad():
        diff = (head(x) - head(x.flip(1))).abs().max()
    assert (diff > 1e-4) == order_matters


def test_bad_lengths_and_kinds():
    head = _head("lstm")
    x = _x()
    with pytest.raises(ValueError, match=r"lengths must lie in 1..5.*got 0..5"):
        head(x, torch.tensor([5, 0, 2]))
    with pytest.raises(ValueError, match=r"got 2..6"):
        head(x, torch.tensor([5, 6, 2]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        head(x, torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="exceed the 256"):
        _head("attention")(torch.randn(1, 257, D))
    with pytest.raises(ClipdoctorError, match="unknown head 'tcn' — valid: lstm, bilstm, gru, attention"):
        make_head("tcn", D, K)


def test_rnn_dropout_between_layers_only():
    assert make_head("lstm", D, K, layers=1, dropout=0.5).rnn.dropout == 0.0
    assert make_head("lstm", D, K, layers=2, dropout=0.5).rnn.dropout == 0.5
    assert make_head("bilstm", D, K, hidden=8).out_dim == 16
    assert make_head("transformer", D, K, hidden=64).encoder.layers[0].self_attn.num_heads == 2
