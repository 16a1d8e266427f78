"""Feature model probes: the features the built-in model reads on the way to its logits.

- `widths`: the narrowest per-frame / per-clip width on the way to the logits (with a linear
  probe of the pooled features at that width when it is under K - 1).
- `motion_features`: can a linear probe over time read the motion from the features the model
  pools (gap, with the RGB-difference stream when the model has one) as well as from 2x2-grid
  features (uses the shared `clip_features` probe; for a Keras model with a global pooling per
  frame, the reference backbone's `reference_features`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from clipdoctor.doctor.probes import (Context, Probes, ProbeSkipped, base_model, clip_batch,
                                        probe, samples)
from clipdoctor.doctor.probes.model import _builtin, _num_classes

MOTION_CLIPS = 600  # clips for the motion probes at a 120 s budget (PCA + fits: 2-4 s measured
#                    on 2 cores for resnet10t at 112 px, beyond the shared clip_features)
MOTION_PCA = 32  # per-frame PCA components: measured on the synthetic pairs, the full width
#                  (16k dims for resnet10t grid) generalises worse on few clips and takes 20 s
BOTTLENECK_PCA_CLIPS = 400  # clips for the bottleneck's linear probe at a 120 s budget


# ---------------------------------------------------------------------------------------------
# widths (feature bottleneck)

@probe("widths", needs=("model_summary", "clip_features"))
def widths(ctx: Context, probes: Probes) -> dict:
    """The narrowest width on the way from per-frame features to the logits (built-in:
    pooled feature, projection, head read-out; user model: RNN outputs and the input of the
    last Linear producing the logits). When it is under K - 1, a linear probe of the pooled
    features reduced to that width is compared with the full width (built-in only)."""
    K = _num_classes(ctx)
    model = base_model(ctx)
    if not ctx.user_model:
        parts = {"pooled feature (model.pool)": model.feature_dim,
                 "projection (model.proj_dim)": ctx.config.model.proj_dim,
                 "head read-out (model.hidden)": int(getattr(model.head, "out_dim", 0)) or None}
    else:
        parts = {f"{n} output": int(m.hidden_size) * (2 if m.bidirectional else 1)
                 for n, m in model.named_modules() if isinstance(m, nn.RNNBase)}
        W = probes.get("model_summary").get("output_width")
        heads = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, nn.Linear) and W is not None and m.out_features == W]
        if heads:
            n, m = heads[-1]
            parts[f"{n} input (classifier)"] = int(m.in_features)
    parts = {k: v for k, v in parts.items() if v}
    if not parts:
        raise ProbeSkipped("found no RNN or classifier Linear layer to read widths from")
    where = min(parts, key=parts.get)
    res = {"classes": K, "widths": parts, "narrowest": parts[where], "narrowest_at": where}
    if K is not None and parts[where] < K - 1 and not ctx.user_model:
        res.update(_bottleneck_probe(ctx, probes, parts[where]))
    return res


def _bottleneck_probe(ctx: Context, probes: Probes, width: int) -> dict:
    """Linear-probe accuracy of time-averaged pooled features, full width vs PCA to `width`."""
    try:
        feats, labels, groups = _model_features(ctx, probes)
    except ProbeSkipped as e:
        return {"probe_skipped": str(e)}
    X = feats.mean(1)  # (N, T, D) -> (N, D)
    full = _cv_accuracy(X, labels, groups, ctx.seed)
    narrow = _cv_accuracy(_pca(X, width, ctx.seed), labels, groups, ctx.seed)
    return {"probe_full_accuracy": full, "probe_narrow_accuracy": narrow, "probe_clips": len(X)}


# ---------------------------------------------------------------------------------------------
# motion_features

@probe("motion_features", min_s=3.0, needs=("clip_features", "reference_features"))
def motion_features(ctx: Context, probes: Probes) -> dict:
    """A linear probe over time on the features the model pools vs 2x2-grid features of the
    same frames; and how much each changes from frame to frame relative to its spread.

    With the RGB-difference input (model.rgb_diff) on a global pool, the features the model
    uses are the frames' and the frame differences' pooled vectors side by side, and the probe
    measures those (a backbone pass over the differences). Feature differences
    (model.feature_diff) change nothing here: the probe already reads late-minus-early
    differences of the pooled features.

    A Keras model (`ctx.keras`) whose frames end in a global pooling inside TimeDistributed is
    measured the same way on the reference backbone's features (`_keras_motion`)."""
    if ctx.keras is not None:
        return _keras_motion(ctx, probes, ctx.keras)
    model = _builtin(ctx)
    cfg = ctx.config.model
    used = "gap" if cfg.pool == "gap" or (cfg.pool == "grid" and cfg.grid == 1) else cfg.pool
    if used != "gap":  # grid keeps the position the probe asks about; attention learns it
        return {"pool": cfg.pool, "grid": cfg.grid, "used": used,
                "skipped": f"pool '{cfg.pool}' keeps position: nothing to compare"}
    if cfg.rgb_diff != "off":
        used = "gap+rgbdiff"
    cf = probes.get("clip_features")
    grid, gap, labels, groups, keep = _kept_features(ctx, cf)
    if used == "gap+rgbdiff":
        diff = _difference_gap_features(ctx, model, [cf["names"][i] for i in keep])
        gap = np.concatenate([gap, diff], axis=-1)  # (N, T, C) + (N, T, C) -> (N, T, 2C)
    return _compare_pooling(ctx, grid, gap, labels, groups,
                            {"pool": cfg.pool, "grid": cfg.grid, "used": used})


def _keras_motion(ctx: Context, probes: Probes, facts: dict) -> dict:
    """`motion_features` for a Keras model: when the facts show a global pooling ending what
    a TimeDistributed applies to each frame, the same comparison (pooled vs 2x2-grid features
    of the same frames) on the features of the reference backbone (`reference_features`: the
    Keras layers' own maps are not reachable as torch modules); otherwise nothing to compare."""
    pools = list(facts.get("per_frame_global_pool") or [])
    if not pools:
        return {"pool": "keras", "used": "spatial", "framework": "keras",
                "skipped": "no global pooling per frame inside TimeDistributed: the per-frame "
                           "features keep position"}
    cf = _keras_reference_features(probes)
    grid, gap, labels, groups, _ = _kept_features(ctx, cf)
    return _compare_pooling(ctx, grid, gap, labels, groups,
                            {"pool": pools[0], "grid": None, "used": "gap", "framework": "keras",
                             "keras_pools": pools, "features": cf.get("backbone")})


def _keras_reference_features(probes: Probes) -> dict:
    """The per-frame features a Keras model's pooling is judged on: the reference backbone's
    (`reference_features`, the same dict layout as `clip_features`)."""
    return probes.get("reference_features")


def _kept_features(ctx: Context, cf: dict
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list | None, np.ndarray]:
    """(grid (N, T, 4D), gap (N, T, D), labels, groups, kept indices) of a budget of clips
    from a `clip_features`-style dict."""
    grid, gap = _as_array(cf["_grid"]), _as_array(cf["_gap"])
    labels = np.asarray(cf["labels"])
    groups = cf.get("groups")
    keep = _subsample(labels, ctx.budget.scale(MOTION_CLIPS, minimum=60), ctx.seed)
    groups = [groups[i] for i in keep] if groups is not None else None
    return grid[keep], gap[keep], labels[keep], groups, keep


def _compare_pooling(ctx: Context, grid: np.ndarray, gap: np.ndarray, labels: np.ndarray,
                     groups: list | None, res: dict) -> dict:
    """`res` plus the linear probe over time on grid vs pooled features and how much each
    changes from frame to frame (`motion_features`' measurement)."""
    res = {**res, "clips": int(len(labels)), "classes": int(len(np.unique(labels))),
           "chance": float(np.bincount(labels).max() / len(labels)),
           "change_grid": _temporal_change(grid), "change_gap": _temporal_change(gap)}
    res["change_ratio"] = (res["change_gap"] / res["change_grid"]
                           if res["change_grid"] > 0 else None)
    if len(np.unique(labels)) < 2:
        res["skipped"] = "needs clips of 2+ classes"
        return res
    res["accuracy_grid"] = _cv_accuracy(_time_probe_features(grid, ctx.seed), labels, groups,
                                        ctx.seed)
    res["accuracy_gap"] = _cv_accuracy(_time_probe_features(gap, ctx.seed), labels, groups,
                                       ctx.seed)
    res["accuracy_used"] = res["accuracy_gap"]
    return res


@torch.no_grad()
def _difference_gap_features(ctx: Context, model: nn.Module, names: list[str]) -> np.ndarray:
    """Globally pooled backbone features of the frame differences x_t - x_{t-1} of the named
    clips, through the backbone the model sends them to, in eval mode: (N, T, C)."""
    from clipdoctor.models.motion import time_differences

    by_name = {s.name: s for s in samples(ctx)}
    backbone = model.diff_backbone if model.diff_backbone is not None else model.backbone
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for i in range(0, len(names), 8):
            clips, _ = clip_batch(ctx, [by_name[n] for n in names[i:i + 8]])  # (B, T, C, H, W)
            d = time_differences(clips)  # (B, T, C, H, W)
            f = backbone(d.flatten(0, 1)).mean(dim=(2, 3))  # (B*T, C, H, W) -> (B*T, C', h, w) -> (B*T, C')
            out.append(f.view(*d.shape[:2], -1).float().numpy())  # (B*T, C') -> (B, T, C')
    finally:
        backbone.train(was_training)
    return np.concatenate(out)


def _as_array(a: Any) -> np.ndarray:
    return a.detach().float().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a, np.float32)


def _subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(labels) <= n:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(labels), n, replace=False))


def _temporal_change(f: np.ndarray) -> float:
    """Mean frame-to-frame step of the features over their mean distance from the global
    mean: near 0 when the features stay put inside a clip."""
    if f.shape[1] < 2:
        return 0.0
    step = np.linalg.norm(np.diff(f, axis=1), axis=-1).mean()
    flat = f.reshape(-1, f.shape[-1])
    spread = np.linalg.norm(flat - flat.mean(0), axis=-1).mean()
    return float(step / spread) if spread > 0 else 0.0


def _pca(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from threadpoolctl import threadpool_limits

    Z = StandardScaler().fit_transform(X)
    k = max(1, min(k, Z.shape[0] - 1, Z.shape[1]))
    with threadpool_limits(1):  # small problems: BLAS threads only contend on 2 cores (~70x)
        return PCA(k, random_state=seed,
                   svd_solver="randomized" if k < 64 else "auto").fit_transform(Z)


def _time_probe_features(f: np.ndarray, seed: int) -> np.ndarray:
    """(N, T, D) -> (N, 2k): per-frame PCA to k components, then the clip mean and the
    late-minus-early difference (second half mean - first half mean): the "feature
    differences" probe; on the synthetic pairs it beat the T x k concatenation by 0.1-0.2."""
    N, T, D = f.shape
    Z = _pca(f.reshape(N * T, D), MOTION_PCA, seed).reshape(N, T, -1)
    h = max(1, T // 2)
    return np.concatenate([Z.mean(1), Z[:, h:].mean(1) - Z[:, :h].mean(1)], axis=1)


def _cv_accuracy(X: np.ndarray, labels: np.ndarray, groups: list | None, seed: int) -> float | None:
    """Mean held-out accuracy of a logistic regression, 3-fold stratified (group-aware when
    clips carry source groups), repeated 3x on small sets."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from threadpoolctl import threadpool_limits
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels)
    folds = int(min(3, counts[counts > 0].min()))
    if folds < 2:
        return None
    repeats = 3 if len(labels) < 300 else 1
    scores = []
    keys = None
    if groups is not None and any(g is not None for g in groups):
        keys = np.array([g if g is not None else f"\0{i}" for i, g in enumerate(groups)])
    for r in range(repeats):
        if keys is not None:
            splits = StratifiedGroupKFold(folds, shuffle=True,
                                          random_state=seed + r).split(X, labels, keys)
        else:
            splits = StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(X, labels)
        for tr, te in splits:
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
            with threadpool_limits(1):  # see _pca
                clf.fit(X[tr], labels[tr])
            scores.append(float((clf.predict(X[te]) == labels[te]).mean()))
    return float(np.mean(scores))


def _model_features(ctx: Context, probes: Probes) -> tuple[np.ndarray, np.ndarray, list | None]:
    """The pooled per-frame features the built-in model uses, from `clip_features`."""
    cfg = ctx.config.model
    cf = probes.get("clip_features")
    if cfg.pool == "gap" or (cfg.pool == "grid" and cfg.grid == 1):
        f = cf["_gap"]
    elif cfg.pool == "grid" and cfg.grid == 2:
        f = cf["_grid"]
    else:
        raise ProbeSkipped(f"no cached features for pool '{cfg.pool}' (grid {cfg.grid})")
    labels = np.asarray(cf["labels"])
    keep = _subsample(labels, ctx.budget.scale(BOTTLENECK_PCA_CLIPS, minimum=60), ctx.seed)
    groups = cf.get("groups")
    return (_as_array(f)[keep], labels[keep],
            [groups[i] for i in keep] if groups is not None else None)
