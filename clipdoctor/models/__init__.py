"""Models: a timm backbone per frame, per-frame pooling, a temporal head (DESIGN §1).

    backbone, info = create_backbone("resnet10t", pretrained=False)   # (N, 3, H, W) -> (N, C, h, w)
    pool = make_pool("grid", info.channels, grid=2)                    # (N, C, h, w) -> (N, D)
    head = make_head("bilstm", 256, num_classes=5)                     # (B, T, 256) -> (B, 5)
    model = ClipClassifier(backbone, pool, head, proj_dim=256, dropout=0.2, info=info)
    model = build_classifier(config.model, num_classes=5)              # the same, from a config
    # config.model.rgb_diff / feature_diff add the motion inputs of models/motion.py
"""

from __future__ import annotations

from clipdoctor.models.backbones import (Backbone, BackboneInfo, create_backbone, freeze,
                                         list_backbones, load_weights)
from clipdoctor.models.classifier import ClipClassifier, build_classifier
from clipdoctor.models.heads import HEADS, TemporalHead, make_head
from clipdoctor.models.motion import time_differences
from clipdoctor.models.pooling import POOLS, make_pool

__all__ = ["Backbone", "BackboneInfo", "ClipClassifier", "HEADS", "POOLS", "TemporalHead",
           "build_classifier", "create_backbone", "freeze", "list_backbones", "load_weights",
           "make_head", "make_pool", "time_differences"]
