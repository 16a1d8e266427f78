"""Temporal heads: per-frame vectors (B, T, D) [+ valid lengths (B,)] -> logits (B, K).

Every head splits into `readout(x, lengths) -> (B, out_dim)`, the clip summary, and `fc`, the
classifier on it; `forward` is `fc(readout(...))`. Padding never changes a prediction: steps
at or after a clip's length are never read (RNNs run packed sequences; attention, transformer
and mean pooling mask them, after zeroing them so even NaN padding cannot leak through a
zero weight). `lengths=None` means every clip fills all T steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from clipdoctor.errors import ClipdoctorError

HEADS: dict[str, type[TemporalHead]] = {}
MAX_LEN = 256  # longest clip the learned time embeddings cover (DataConfig.frames <= 256)


def register_head(name: str) -> Callable[[type[TemporalHead]], type[TemporalHead]]:
    def add(cls: type[TemporalHead]) -> type[TemporalHead]:
        if name in HEADS:
            raise ValueError(f"head '{name}' is registered twice ({HEADS[name].__name__}, {cls.__name__})")
        HEADS[name] = cls
        return cls

    return add


def check_lengths(lengths: Tensor | None, B: int, T: int) -> Tensor | None:
    """Validated int64 lengths, or None when there are none or every clip fills all T steps."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (B,) or lengths.is_floating_point():
        raise ValueError(f"lengths must be an integer tensor of shape ({B},), one per clip; "
                         f"got {lengths.dtype} of shape {tuple(lengths.shape)}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths must lie in 1..{T} (the padded clip length); got {lo}..{hi}")
    return None if lo == T else lengths.long()


def valid_mask(lengths: Tensor, T: int, device: torch.device) -> Tensor:
    """(B, T) bool, True on the steps before each clip's length."""
    return torch.arange(T, device=device)[None, :] < lengths.to(device)[:, None]  # (1, T) < (B, 1) -> (B, T)


class TemporalHead(nn.Module):
    """Shared contract: in_dim, num_classes, out_dim (readout width), readout, fc."""

    out_dim: int
    fc: nn.Module

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes

    def readout(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        return self.fc(self.readout(x, lengths))  # (B, T, D) -> (B, out_dim) -> (B, K)


class _RNNHead(TemporalHead):
    """batch_first RNN read at each clip's last valid step through the final hidden state h_n
    of a packed run; `dropout` acts between stacked layers."""

    rnn_cls: type[nn.RNNBase] = nn.LSTM
    bidirectional = False

    def __init__(self, in_dim: int, num_classes: int, *, hidden: int = 256, layers: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__(in_dim, num_classes)
        self.rnn = self.rnn_cls(in_dim, hidden, num_layers=layers, batch_first=True,
                                dropout=dropout if layers > 1 else 0.0, bidirectional=self.bidirectional)
        self.out_dim = hidden * (2 if self.bidirectional else 1)
        self.fc = nn.Linear(self.out_dim, num_classes)

    def readout(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        lengths = check_lengths(lengths, B, T)
        if lengths is not None:  # padded steps are never fed to the RNN
            x = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h_n = self.rnn(x)
        if isinstance(h_n, tuple):  # LSTM: (h_n, c_n)
            h_n = h_n[0]
        # h_n: (layers * directions, B, hidden), in the clips' original order; last layer last
        if self.bidirectional:
            # forward direction at the last valid step, backward direction back at step 0:
            # NOT output[:, -1], whose backward half has read only the final frame
            return torch.cat([h_n[-2], h_n[-1]], dim=1)  # 2 x (B, hidden) -> (B, 2*hidden)
        return h_n[-1]  # (B, hidden)


@register_head("lstm")
class LSTMHead(_RNNHead):
    rnn_cls = nn.LSTM


@register_head("bilstm")
class BiLSTMHead(_RNNHead):
    """Bidirectional LSTM; `hidden` per direction, so out_dim = 2 * hidden."""

    rnn_cls = nn.LSTM
    bidirectional = True


@register_head("gru")
class GRUHead(_RNNHead):
    rnn_cls = nn.GRU


def _check_time(T: int) -> None:
    if T > MAX_LEN:
        raise ValueError(f"clips of {T} steps exceed the {MAX_LEN} the time embedding covers; "
                         f"sample at most {MAX_LEN} frames (data.frames)")


@register_head("attention")
class AttentionHead(TemporalHead):
    """Attention pooling over time: a learned time embedding is added (without it the pooling
    is order-blind), an MLP scores each step, a softmax over the valid steps weights them.
    out_dim = in_dim; `layers` and `dropout` are unused."""

    def __init__(self, in_dim: int, num_classes: int, *, hidden: int = 256, layers: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__(in_dim, num_classes)
        self.pos = nn.Parameter(torch.zeros(1, MAX_LEN, in_dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.score = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.out_dim = in_dim
        self.fc = nn.Linear(in_dim, num_classes)

    def readout(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        _check_time(T)
        lengths = check_lengths(lengths, B, T)
        mask = None if lengths is None else valid_mask(lengths, T, x.device)  # (B, T)
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)  # padded steps -> 0
        x = x + self.pos[:, :T]  # (B, T, D) + (1, T, D)
        s = self.score(x).squeeze(-1)  # (B, T, 1) -> (B, T)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        a = s.softmax(dim=1)  # (B, T), zero on padded steps
        return torch.einsum("bt,btd->bd", a, x)  # (B, T) x (B, T, D) -> (B, D)


def _num_heads(width: int) -> int:
    """Most heads (<= 8) that divide `width` and keep at least 32 dims each; 1 for tiny widths."""
    return next((h for h in (8, 4, 2) if width % h == 0 and width // h >= 32), 1)


@register_head("transformer")
class TransformerHead(TemporalHead):
    """Pre-norm transformer encoder over [CLS] + the projected steps with a learned time
    embedding; padded steps are masked as keys; the CLS output is the readout (out_dim = hidden).
    Heads: the most of 8 / 4 / 2 dividing `hidden` with >= 32 dims each."""

    def __init__(self, in_dim: int, num_classes: int, *, hidden: int = 256, layers: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__(in_dim, num_classes)
        self.inp = nn.Linear(in_dim, hidden)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos = nn.Parameter(torch.zeros(1, MAX_LEN + 1, hidden))  # slot 0 is the CLS token's
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(hidden, _num_heads(hidden), dim_feedforward=2 * hidden,
                                           dropout=dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(hidden),
                                             enable_nested_tensor=False)
        self.out_dim = hidden
        self.fc = nn.Linear(hidden, num_classes)

    def readout(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        _check_time(T)
        lengths = check_lengths(lengths, B, T)
        pad = None
        if lengths is not None:
            mask = valid_mask(lengths, T, x.device)  # (B, T)
            x = x.masked_fill(~mask[..., None], 0.0)  # padded steps -> 0
            pad = torch.cat([mask.new_zeros(B, 1), ~mask], dim=1)  # (B, 1+T), True = ignore; CLS kept
        x = self.inp(x)  # (B, T, D) -> (B, T, hidden)
        cls = self.cls.expand(B, -1, -1)  # (1, 1, hidden) -> (B, 1, hidden)
        x = torch.cat([cls, x], dim=1)  # (B, 1, hidden) + (B, T, hidden) -> (B, 1+T, hidden)
        x = x + self.pos[:, : T + 1]  # (B, 1+T, hidden) + (1, 1+T, hidden)
        y = self.encoder(x, src_key_padding_mask=pad)  # (B, 1+T, hidden)
        return y[:, 0]  # CLS: (B, hidden)


@register_head("meanpool")
class MeanPoolHead(TemporalHead):
    """The order-blind baseline: mean over the valid steps, then an MLP (Linear, GELU,
    dropout, Linear). If it scores as well as an RNN, the task needs no temporal order.
    out_dim = in_dim."""

    def __init__(self, in_dim: int, num_classes: int, *, hidden: int = 256, layers: int = 1,
                 dropout: float = 0.2) -> None:
        super().__init__(in_dim, num_classes)
        self.out_dim = in_dim
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(hidden, num_classes))

    def readout(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        lengths = check_lengths(lengths, B, T)
        if lengths is None:
            return x.mean(dim=1)  # (B, T, D) -> (B, D)
        mask = valid_mask(lengths, T, x.device)  # (B, T)
        x = x.masked_fill(~mask[..., None], 0.0)  # padded steps -> 0
        return x.sum(dim=1) / lengths.to(x.device, x.dtype)[:, None]  # (B, T, D) -> (B, D)


def make_head(kind: str, in_dim: int, num_classes: int, *, hidden: int = 256, layers: int = 1,
              dropout: float = 0.2) -> TemporalHead:
    """A temporal head from HEADS by name: forward(x (B, T, in_dim), lengths (B,) | None) -> (B, K)."""
    if kind not in HEADS:
        raise ClipdoctorError(f"unknown head '{kind}' — valid: {', '.join(HEADS)} (model.head, --head)")
    if in_dim < 1 or num_classes < 1 or hidden < 1 or layers < 1 or not 0 <= dropout < 1:
        raise ValueError(f"make_head needs in_dim, num_classes, hidden, layers >= 1 and 0 <= dropout < 1; "
                         f"got in_dim={in_dim}, num_classes={num_classes}, hidden={hidden}, layers={layers}, "
                         f"dropout={dropout}")
    return HEADS[kind](in_dim, num_classes, hidden=hidden, layers=layers, dropout=dropout)
