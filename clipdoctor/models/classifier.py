"""ClipClassifier: a backbone and a pool per frame, a projection, a temporal head.

    clips (B, T, C, H, W) --backbone+pool per frame--> (B, T, D_pool) --proj--> (B, T, proj_dim)
    --head--> logits (B, K)

Optional motion inputs (models/motion.py): with `rgb_diff`, the frame differences
x_t - x_{t-1} run through the same backbone ("shared") or a second one ("separate") and their
own pool, and the two streams' pooled vectors are concatenated per frame (D = 2 * D_pool)
before the projection; with `feature_diff`, the projected steps g_t are concatenated with
g_t - g_{t-1} (2 * proj_dim) before the head.

The model also runs from per-frame features (`forward_features`), which is how stage 1 trains
the head on cached features. Batch and time are flattened together for the backbone and
restored in the same (B, T) order: viewing (B*T, D) back as (T, B, D) is the
`batch-time-swapped` bug clipdoctor diagnoses in other models.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from clipdoctor.config import ModelConfig
from clipdoctor.models.backbones import BackboneInfo, create_backbone, freeze
from clipdoctor.models.heads import check_lengths, make_head, valid_mask
from clipdoctor.models.motion import RGB_DIFF_MODES, time_differences
from clipdoctor.models.pooling import make_pool


def _weights_digest(module: nn.Module) -> str:
    """Short identity of a module's weights (the separate RGB-difference backbone's part of the
    feature-cache key; the RGB backbone's is hashed by training/features.py)."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ClipClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, pool: nn.Module, head: nn.Module, *, proj_dim: int,
                 dropout: float, info: BackboneInfo | None = None, rgb_diff: str = "off",
                 diff_backbone: nn.Module | None = None, diff_pool: nn.Module | None = None,
                 feature_diff: bool = False) -> None:
        super().__init__()
        if rgb_diff not in RGB_DIFF_MODES:
            raise ValueError(f"rgb_diff must be one of {', '.join(RGB_DIFF_MODES)}; got {rgb_diff!r}")
        if (rgb_diff == "separate") != (diff_backbone is not None):
            raise ValueError("give diff_backbone exactly when rgb_diff='separate' (a second backbone "
                             "for the frame differences)")
        streams = 1 if rgb_diff == "off" else 2
        want = proj_dim * (2 if feature_diff else 1)  # feature_diff: [g_t, g_t - g_{t-1}]
        head_in = getattr(head, "in_dim", want)
        if head_in != want:
            raise ValueError(f"the head takes {head_in}-dim steps but proj_dim is {proj_dim}"
                             f"{' with feature differences' if feature_diff else ''}; "
                             f"build the head with in_dim={want}")
        self.backbone = backbone
        self.pool = pool
        self.rgb_diff, self.feature_diff = rgb_diff, feature_diff
        self.diff_backbone = diff_backbone  # None unless "separate": the frames' backbone serves both
        if rgb_diff != "off":
            # the difference stream has its own pool: a learned (attention) pool attends to
            # moving edges there, to objects in the frames
            self.diff_pool = diff_pool if diff_pool is not None else copy.deepcopy(pool)
            if int(self.diff_pool.out_dim) != int(pool.out_dim):
                raise ValueError(f"diff_pool gives {self.diff_pool.out_dim}-dim vectors, the frames' "
                                 f"pool {pool.out_dim}: build both with make_pool on the same channels")
        self.stream_dim = int(pool.out_dim)  # D_pool of one stream
        self.feature_dim = self.stream_dim * streams  # D: what the feature cache stores per frame
        self.proj = nn.Sequential(nn.Linear(self.feature_dim, proj_dim), nn.GELU(), nn.Dropout(dropout))
        self.head = head
        self.info = info  # mean / std / input size for the data pipeline; how weights were loaded
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

    # -- the two streams ---------------------------------------------------------------------
    def _with_diffs(self, clips: Tensor, lengths: Tensor | None) -> Tensor:
        """(B, T, C, H, W) -> (B, T, 2C, H, W): each frame and its difference from the previous
        frame side by side in channels, so `_per_frame` masks and flattens both together."""
        return torch.cat([clips, time_differences(clips, lengths)], dim=2)  # 2 x (B, T, C, H, W)

    def _maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 2C, H, W) frames + differences -> two feature maps (N, C', h, w). A shared
        backbone takes both in one batch: in training, BatchNorm then normalises with the
        same mixed statistics that its running averages (used in eval) accumulate."""
        rgb, diff = x.chunk(2, dim=1)  # (N, 2C, H, W) -> 2 x (N, C, H, W)
        if self.diff_backbone is None:
            maps = self.backbone(torch.cat([rgb, diff], dim=0))  # (2N, C, H, W) -> (2N, C', h, w)
            # a view, not maps[:len(rgb)]: len() would fix the batch size in an exported graph
            maps = maps.view(2, rgb.shape[0], *maps.shape[1:])  # (2N, C', h, w) -> (2, N, C', h, w)
            return maps[0], maps[1]
        return self.backbone(rgb), self.diff_backbone(diff)

    def _pool_both(self, rgb_map: Tensor, diff_map: Tensor) -> Tensor:
        # 2 x (N, C', h, w) -> (N, D_pool) + (N, D_pool) -> (N, 2 * D_pool), frames first
        return torch.cat([self.pool(rgb_map), self.diff_pool(diff_map)], dim=1)

    def frame_features(self, clips: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) -> (B, T, D): backbone + pool on every frame, and with rgb_diff on
        every frame difference (padded frames skipped when lengths are given, see `_per_frame`)."""
        if self.rgb_diff == "off":
            # per frame: (N, C, H, W) -> (N, C', h, w) -> (N, D_pool)
            return self._per_frame(clips, lengths, lambda x: self.pool(self.backbone(x)))
        # per frame: (N, 2C, H, W) -> 2 x (N, C', h, w) -> (N, 2 * D_pool)
        return self._per_frame(self._with_diffs(clips, lengths), lengths,
                               lambda x: self._pool_both(*self._maps(x)))

    # -- stage 1: cached features ------------------------------------------------------------
    def _pool_learns(self) -> bool:
        pools = [self.pool] + ([self.diff_pool] if self.rgb_diff != "off" else [])
        return any(True for p in pools for _ in p.parameters())

    def cached_pool_id(self) -> str:
        """What `frozen_features` returns, as part of a feature-cache key: 'map' when the pool
        has parameters (the feature maps are cached and pooled in training), else the
        parameter-free pool and its width (e.g. 'GridPool:2048'); with rgb_diff, the mode (and
        a separate backbone's weights), so a cache made without the difference stream is never
        read with it. Feature differences are computed after the cache and do not enter."""
        base = "map" if self._pool_learns() else f"{type(self.pool).__name__}:{self.stream_dim}"
        if self.rgb_diff == "off":
            return base
        if self.diff_backbone is None:
            return f"{base}+rgbdiff-shared"
        return f"{base}+rgbdiff-separate:{_weights_digest(self.diff_backbone)}"

    def frozen_features(self, clips: Tensor, lengths: Tensor | None = None) -> Tensor:
        """What stage 1 caches per clip: pooled features (B, T, D) when the pools have no
        parameters, else the backbone feature maps (B, T, C', h, w) — with rgb_diff the frames'
        and the differences' maps stacked in channels (B, T, 2C', h, w) — so that a learned
        pool (attention) keeps training on cached features."""
        if not self._pool_learns():
            return self.frame_features(clips, lengths)
        if self.rgb_diff == "off":
            return self._per_frame(clips, lengths, self.backbone)  # (B, T, C, H, W) -> (B, T, C', h, w)
        # (B, T, 2C, H, W) -> per frame 2 x (N, C', h, w) -> (N, 2C', h, w) -> (B, T, 2C', h, w)
        return self._per_frame(self._with_diffs(clips, lengths), lengths,
                               lambda x: torch.cat(self._maps(x), dim=1))

    def forward_cached(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Logits from `frozen_features` output: (B, T, C', h, w) maps are pooled first,
        (B, T, D) features go straight to `forward_features`."""
        if feats.ndim == 5:
            B, T = feats.shape[:2]
            maps = feats.flatten(0, 1)  # (B, T, C', h, w) -> (B*T, C', h, w)
            if self.rgb_diff == "off":
                f = self.pool(maps)  # (B*T, C', h, w) -> (B*T, D_pool)
            else:
                f = self._pool_both(*maps.chunk(2, dim=1))  # (B*T, 2C', h, w) -> (B*T, 2 * D_pool)
            feats = f.view(B, T, -1)  # (B*T, D) -> (B, T, D)
        return self.forward_features(feats, lengths)

    def forward_features(self, feats: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T, D) per-frame features -> (B, K) logits."""
        if feats.ndim != 3 or feats.shape[-1] != self.feature_dim:
            raise ValueError(f"features must be (B, T, {self.feature_dim}); got shape {tuple(feats.shape)}")
        x = self.proj(feats)  # (B, T, D) -> (B, T, proj_dim)
        if self.feature_diff:
            # (B, T, proj_dim) + (B, T, proj_dim) -> (B, T, 2 * proj_dim): [g_t, g_t - g_{t-1}]
            x = torch.cat([x, time_differences(x, lengths)], dim=-1)
        return self.head(x, lengths)  # (B, T, head.in_dim) -> (B, K)

    def forward(self, clips: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) clips [+ (B,) valid lengths] -> (B, K) logits."""
        return self.forward_features(self.frame_features(clips, lengths), lengths)


def build_classifier(config: ModelConfig, num_classes: int) -> ClipClassifier:
    """The model a ModelConfig describes. A frozen backbone is frozen whole (trainable_blocks
    is for stage 2, which calls `freeze(model.backbone, config.trainable_blocks)` itself); a
    separate RGB-difference backbone is built and frozen the same way."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    backbone, info = create_backbone(config.backbone, pretrained=config.pretrained, weights=config.weights)
    diff_backbone = None
    if config.rgb_diff == "separate":
        diff_backbone, _ = create_backbone(config.backbone, pretrained=config.pretrained,
                                           weights=config.weights)
    if config.freeze_backbone:
        for b in (backbone, diff_backbone):
            if b is not None:
                freeze(b, trainable_blocks=0)
    pool = make_pool(config.pool, info.channels, grid=config.grid)
    diff_pool = make_pool(config.pool, info.channels, grid=config.grid) if config.rgb_diff != "off" else None
    head_in = config.proj_dim * (2 if config.feature_diff else 1)
    head = make_head(config.head, head_in, num_classes, hidden=config.hidden,
                     layers=config.layers, dropout=config.dropout)
    return ClipClassifier(backbone, pool, head, proj_dim=config.proj_dim, dropout=config.dropout,
                          info=info, rgb_diff=config.rgb_diff, diff_backbone=diff_backbone,
                          diff_pool=diff_pool, feature_diff=config.feature_diff)
