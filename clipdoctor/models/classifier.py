"""ClipClassifier: a backbone and a pool per frame, a projection, a temporal head.

    clips (B, T, C, H, W) --backbone+pool per frame--> (B, T, D_pool) --proj--> (B, T, proj_dim)
    --head--> logits (B, K)

The model also runs from per-frame features (`forward_features`), which is how stage 1 trains
the head on cached features. Batch and time are flattened together for the backbone and
restored in the same (B, T) order: viewing (B*T, D) back as (T, B, D) is the
`batch-time-swapped` bug clipdoctor diagnoses in other models.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from clipdoctor.config import ModelConfig
from clipdoctor.models.backbones import BackboneInfo, create_backbone, freeze
from clipdoctor.models.heads import check_lengths, make_head, valid_mask
from clipdoctor.models.pooling import make_pool


class ClipClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, pool: nn.Module, head: nn.Module, *, proj_dim: int,
                 dropout: float, info: BackboneInfo | None = None) -> None:
        super().__init__()
        head_in = getattr(head, "in_dim", proj_dim)
        if head_in != proj_dim:
            raise ValueError(f"the head takes {head_in}-dim steps but proj_dim is {proj_dim}; "
                             "build the head with in_dim=proj_dim")
        self.backbone = backbone
        self.pool = pool
        self.proj = nn.Sequential(nn.Linear(int(pool.out_dim), proj_dim), nn.GELU(), nn.Dropout(dropout))
        self.head = head
        self.info = info  # mean / std / input size for the data pipeline; how weights were loaded
        self.feature_dim = int(pool.out_dim)  # D_pool: what the feature cache stores per frame
        self.num_classes = int(getattr(head, "num_classes", 0)) or None

    def _per_frame(self, clips: Tensor, lengths: Tensor | None,
                   fn: Callable[[Tensor], Tensor]) -> Tensor:
        """fn on every frame: (B, T, C, H, W) -> (B, T, *F). With lengths, padded frames skip fn
        (their output is 0): they cost nothing and cannot shift BatchNorm batch statistics of
        a training backbone."""
        if clips.ndim != 5:
            raise ValueError(f"clips must be (B, T, C, H, W); got shape {tuple(clips.shape)}")
        B, T, C, H, W = clips.shape
        lengths = check_lengths(lengths, B, T)
        if lengths is None:
            f = fn(clips.reshape(B * T, C, H, W))  # (B, T, C, H, W) -> (B*T, C, H, W) -> (B*T, *F)
            # batch-major, as flattened: never view it back as (T, B, *F)
            return f.view(B, T, *f.shape[1:])  # (B*T, *F) -> (B, T, *F)
        mask = valid_mask(lengths, T, clips.device)  # (B, T)
        f = fn(clips[mask])  # (B, T, C, H, W) -> (N_valid, C, H, W), (b, t) row-major -> (N_valid, *F)
        out = f.new_zeros(B, T, *f.shape[1:])  # (B, T, *F)
        out[mask] = f  # (N_valid, *F) -> (B, T, *F), same row-major order
        return out

    def frame_features(self, clips: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) -> (B, T, D_pool): backbone + pool on every frame (padded frames
        skipped when lengths are given, see `_per_frame`)."""
        # per frame: (N, C, H, W) -> (N, C', h, w) -> (N, D_pool)
        return self._per_frame(clips, lengths, lambda x: self.pool(self.backbone(x)))

    # -- stage 1: cached features ------------------------------------------------------------
    def _pool_learns(self) -> bool:
        return any(True for _ in self.pool.parameters())

    def cached_pool_id(self) -> str:
        """What `frozen_features` returns, as part of a feature-cache key: 'map' when the pool
        has parameters (the feature maps are cached and pooled in training), else the
        parameter-free pool and its width (e.g. 'GridPool:2048')."""
        return "map" if self._pool_learns() else f"{type(self.pool).__name__}:{self.feature_dim}"

    def frozen_features(self, clips: Tensor, lengths: Tensor | None = None) -> Tensor:
        """What stage 1 caches per clip: pooled features (B, T, D_pool) when the pool has no
        parameters, else the backbone feature maps (B, T, C', h, w), so that a learned pool
        (attention) keeps training on cached features."""
        if self._pool_learns():
            return self._per_frame(clips, lengths, self.backbone)  # (B, T, C, H, W) -> (B, T, C', h, w)
        return self.frame_features(clips, lengths)

    def forward_cached(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Logits from `frozen_features` output: (B, T, C', h, w) maps are pooled first,
        (B, T, D_pool) features go straight to `forward_features`."""
        if feats.ndim == 5:
            B, T = feats.shape[:2]
            f = self.pool(feats.flatten(0, 1))  # (B, T, C', h, w) -> (B*T, C', h, w) -> (B*T, D_pool)
            feats = f.view(B, T, -1)  # (B*T, D_pool) -> (B, T, D_pool)
        return self.forward_features(feats, lengths)

    def forward_features(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T, D_pool) per-frame features -> (B, K) logits."""
        if feats.ndim != 3 or feats.shape[-1] != self.feature_dim:
            raise ValueError(f"features must be (B, T, {self.feature_dim}); got shape {tuple(feats.shape)}")
        x = self.proj(feats)  # (B, T, D_pool) -> (B, T, proj_dim)
        return self.head(x, lengths)  # (B, T, proj_dim) -> (B, K)

    def forward(self, clips: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) clips [+ (B,) valid lengths] -> (B, K) logits."""
        return self.forward_features(self.frame_features(clips, lengths), lengths)


def build_classifier(config: ModelConfig, num_classes: int) -> ClipClassifier:
    """The model a ModelConfig describes. A frozen backbone is frozen whole (trainable_blocks
    is for stage 2, which calls `freeze(model.backbone, config.trainable_blocks)` itself)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone, info = create_backbone(config.backbone, pretrained=config.pretrained, weights=config.weights)
    if config.freeze_backbone:
        freeze(backbone, trainable_blocks=0)
    pool = make_pool(config.pool, info.channels, grid=config.grid)
    head = make_head(config.head, config.proj_dim, num_classes, hidden=config.hidden,
                     layers=config.layers, dropout=config.dropout)
    return ClipClassifier(backbone, pool, head, proj_dim=config.proj_dim, dropout=config.dropout, info=info)

