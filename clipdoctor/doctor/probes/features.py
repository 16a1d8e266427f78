"""Probes on frozen per-frame features, and what they reveal.

- `clip_features`: per-frame pooled features (2x2 grid and global average) of the built-in
  backbone on a budget of clips per split (shared with the model checks).
- `reference_features`: the same from a reference backbone with ImageNet weights that need no
  network, for judging the data when the model's own backbone cannot (user model, random
  weights).
- `leakage`: source groups and near-duplicates across splits (pixel thumbnails from
  `clip_scan` decide; feature similarity is evidence).
- `label_issues`: cleanlab on out-of-fold probabilities of a linear probe over the features.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipdoctor.data.sources import SPLITS, Sample
from clipdoctor.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from clipdoctor.doctor.probes import (Context, work_clock, Probes, ProbeSkipped, _need_index,
                                        base_model, clip_batch, datamodule, is_user_data,
                                        need_data, pick, probe, samples)
from clipdoctor.doctor.probes.cost import forward_flops, nominal_forward_s

log = logging.getLogger(__name__)

PROBE_C = 0.01  # inverse L2 strength of the label probe's logistic regression (see _oof_probs)
MIN_FEATURE_CLIPS = 32  # below this the linear probes (labels, motion) say nothing: taken
# whatever the budget (0.5-3.5 s on the reference machine)
FEATURE_SHARE = 0.15  # clip_features may use this share of the whole budget (shared with the
# model checks); resnet10t at 112 px: ~50 ms a clip on 2 cores, so ~350 clips at 120 s


def _backbone(ctx: Context) -> nn.Module:
    if ctx.user_model:
        raise ProbeSkipped("user model: clip_features needs the built-in model's backbone "
                           "(model.backbone); its structure is unknown here")
    model = base_model(ctx)
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ProbeSkipped("the model has no .backbone to take per-frame features from")
    return backbone


def _split_quota(every: list[Sample], total: int, seed: int) -> list[Sample]:
    """Up to `total` clips: every split gets its share of the readable clips (at least a few
    of each when it has them), stratified by class inside a split, in a seeded random order
    so that a run cut short by the budget still holds every split and class."""
    by_split = {s: [x for x in every if x.split == s] for s in SPLITS}
    n_all = max(1, sum(len(v) for v in by_split.values()))
    out: list[Sample] = []
    for split, items in by_split.items():
        if not items:
            continue
        want = max(min(len(items), 8), round(total * len(items) / n_all))
        out += pick(items, want, seed)
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


@torch.no_grad()
def _features(backbone: nn.Module, clips: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, T, C, H, W) -> grid (B, T, C*4) and gap (B, T, C) features, float32."""
    B, T = clips.shape[:2]
    f = backbone(clips.flatten(0, 1))  # (B, T, C, H, W) -> (B*T, C, H, W) -> (B*T, C', h, w)
    grid = F.adaptive_avg_pool2d(f, 2).flatten(1)  # (B*T, C', 2, 2) -> (B*T, C'*4)
    gap = F.adaptive_avg_pool2d(f, 1).flatten(1)  # (B*T, C', 1, 1) -> (B*T, C')
    return (grid.view(B, T, -1).float().numpy(),  # (B*T, C'*4) -> (B, T, C'*4)
            gap.view(B, T, -1).float().numpy())  # (B*T, C') -> (B, T, C')


@probe("clip_features", min_s=5.0)
def clip_features(ctx: Context, probes: Probes) -> dict:
    """Per-frame pooled features of up to a budget of clips per split, from the frozen
    built-in backbone in eval mode, through the real data pipeline (evaluation transform)."""
    data = need_data(ctx)
    if not is_user_data(data):
        _need_index(ctx)
    backbone = _backbone(ctx)
    if is_user_data(data) and (data.layout.order != "TCHW" or "float" not in data.layout.dtype):
        raise ProbeSkipped(f"your Dataset yields {data.layout} clips; the built-in backbone "
                           "takes (T, C, H, W) float clips")
    return _take_features(ctx, backbone, lambda clips: clips)


REFERENCE = "tf_efficientnet_lite0"  # ImageNet weights from a pip package, in the architecture
# they were trained in (efficientnet_lite0 runs them with other padding: 53 % top-1 agreement)
REFERENCE_SIDE = 128  # frames resized to this: a 4 x 4 feature map (stride 32), whose 2 x 2
# grid keeps position (at 32 px the map is 1 x 1; at 96 px, 3 x 3, the grid's cells overlap and
# the grid accuracy on a Keras test's direction pair was 0.73 against 0.99 at 128 px)
REFERENCE_FRAMES = 4  # evenly spaced frames of each clip: the label probe reads the mean and
# the late-minus-early change of the features, which 4 frames give (an EfficientNet's
# depthwise convolutions make a frame cost ~1 GFLOP dense-equivalent at 128 px, `cost.py`)


@probe("reference_features", min_s=5.0)
def reference_features(ctx: Context, probes: Probes) -> dict:
    """`clip_features` from a reference backbone with ImageNet weights that need no network
    (REFERENCE, `models/offline_weights.py`), for the checks that judge the data itself
    (label-noise) when the model's own backbone cannot: a user's model, or random weights.
    Clips are brought to 0..1 first (`_to_unit`) and normalised as those weights expect;
    REFERENCE_FRAMES frames of each, at REFERENCE_SIDE px."""
    from clipdoctor.errors import ClipdoctorError
    from clipdoctor.models.backbones import create_backbone

    need_data(ctx)
    try:
        backbone, info = create_backbone(REFERENCE, pretrained=True)
    except ClipdoctorError as e:
        raise ProbeSkipped(f"no reference backbone: {e}") from e
    to_unit = _to_unit(ctx)
    mean = torch.tensor(info.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 1, 3, 1, 1)

    def prepare(clips: torch.Tensor) -> torch.Tensor:
        x = (to_unit(clips) - mean) / std  # (B, T, 3, H, W)
        keep = np.unique(np.linspace(0, x.shape[1] - 1, REFERENCE_FRAMES).round().astype(int))
        x = x[:, torch.from_numpy(keep)]  # (B, T, ...) -> (B, REFERENCE_FRAMES, ...)
        B, T = x.shape[:2]
        x = F.interpolate(x.flatten(0, 1), size=(REFERENCE_SIDE, REFERENCE_SIDE),
                          mode="bilinear", antialias=True, align_corners=False)
        return x.view(B, T, *x.shape[1:])  # (B*T, 3, S, S) -> (B, T, 3, S, S)

    out = _take_features(ctx, backbone, prepare)
    out["backbone"] = f"{REFERENCE} ({info.weights})"
    return out


def _to_unit(ctx: Context) -> Callable[[torch.Tensor], torch.Tensor]:
    """A map of the model's input batches onto (B, T, 3, H, W) floats in 0..1: clipdoctor's
    pipeline undone (its mean / std); the user's clips by their layout and scale (uint8 / 255;
    0..1 floats as they are; 0..255 floats / 255; anything else, normalised clips, each
    channel's 0.5th..99.5th percentile of the first batch onto 0..1). ProbeSkipped for clips
    that are not 3-channel."""
    data = need_data(ctx)
    if not is_user_data(data):
        dm = datamodule(ctx)
        mean = torch.tensor(dm.mean or IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        std = torch.tensor(dm.std or IMAGENET_STD).view(1, 1, 3, 1, 1)
        return lambda x: (x * std + mean).clamp(0, 1)
    tchw = data.layout.order == "TCHW"
    scale: dict = {}

    def convert(x: torch.Tensor) -> torch.Tensor:
        x = x if tchw else x.permute(0, 1, 4, 2, 3)  # (B, T, H, W, C) -> (B, T, C, H, W)
        if x.shape[2] != 3:
            raise ProbeSkipped(f"clips of {x.shape[2]} channels: the reference backbone takes 3")
        x = x.float()
        if not scale:
            v = x.transpose(0, 2).reshape(3, -1)  # (C, all values)
            v = v[:, :: max(1, v.shape[1] // 200_000)]
            if "uint8" in data.layout.dtype or (v.min() >= 0 and 1.5 < v.max() <= 255):
                scale.update(lo=torch.zeros(3), span=torch.full((3,), 255.0))
            elif v.min() >= 0 and v.max() <= 1:
                scale.update(lo=torch.zeros(3), span=torch.ones(3))
            else:
                lo, hi = torch.quantile(v, 0.005, dim=1), torch.quantile(v, 0.995, dim=1)
                scale.update(lo=lo, span=(hi - lo).clamp_min(1e-6))
        lo, span = scale["lo"].view(1, 1, 3, 1, 1), scale["span"].view(1, 1, 3, 1, 1)
        return ((x - lo) / span).clamp(0, 1)

    return convert


def _take_features(ctx: Context, backbone: nn.Module,
                   prepare: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """Per-frame grid and GAP features of `backbone` (eval mode) on up to a budget of clips
    per split, each batch as `prepare` makes it from the model's input.

    Sized by the counted cost of the first batch (`cost.py`): as many clips as fit
    FEATURE_SHARE of the whole budget on the reference machine, whatever else runs here (the
    work clock stops it only at the diagnosis's safety stop, `Budget.deadline`); clips come
    in a seeded order mixing splits and classes, so a cut run still covers them all."""
    chosen = _split_quota(samples(ctx), ctx.budget.scale(600, minimum=16), ctx.seed)
    allowed = max(2.0, FEATURE_SHARE * ctx.budget.seconds)
    was_training = backbone.training
    backbone.eval()
    grids, gaps, used = [], [], []
    batch = 8
    try:
        for i in range(0, len(chosen), batch):
            part = chosen[i:i + batch]
            clips = prepare(clip_batch(ctx, part, train=False)[0])  # (B, T, C, H, W)
            if i == 0:
                first: list = []
                flops = forward_flops(backbone, lambda: first.append(_features(backbone, clips)))
                most = max(MIN_FEATURE_CLIPS, int(allowed / nominal_forward_s(flops / len(part))))
                grid, gap = first[0]
            else:
                grid, gap = _features(backbone, clips)
            grids.append(grid)
            gaps.append(gap)
            used.extend(part)
            if len(used) >= most or work_clock() > ctx.budget.deadline():
                log.info("features: budget reached after %d of %d clips", len(used),
                         len(chosen))
                break
    finally:
        backbone.train(was_training)
    if not used:
        raise ProbeSkipped("no readable clips to take features from")
    return {
        "_grid": np.concatenate(grids).astype(np.float32),  # (N, T, C*4)
        "_gap": np.concatenate(gaps).astype(np.float32),  # (N, T, C)
        "labels": [s.label for s in used],
        "splits": [s.split for s in used],
        "names": [s.name for s in used],
        "groups": [s.group for s in used],
    }


# =============================================================================================
# leakage: source groups and near-duplicates across splits

def _group_sides(samples: list[Sample]) -> tuple[int, list[dict]]:
    """(groups seen, groups with clips in more than one split and their counts per split)."""
    sides: dict[str, Counter] = defaultdict(Counter)
    for s in samples:
        if s.group is not None:
            sides[s.group][s.split] += 1
    leaked = [{"group": g, "splits": dict(c)} for g, c in sorted(sides.items()) if len(c) > 1]
    return len(sides), leaked


def clip_embeddings(features: dict) -> np.ndarray:
    """One unit vector per clip: per-frame GAP features averaged over time, centred on the
    mean clip (random or generic features share a large common component) -> (N, C)."""
    e = np.asarray(features["_gap"], np.float64).mean(axis=1)  # (N, T, C) -> (N, C)
    e = e - e.mean(axis=0, keepdims=True)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def _nearest_pairs(vectors: np.ndarray, splits: np.ndarray, top: int
                   ) -> list[tuple[int, int, float]]:
    """Each clip's most similar clip in ANOTHER split (dot product of unit vectors): the
    `top` most similar such pairs (i < j), best first."""
    if len(set(splits.tolist())) < 2 or len(vectors) < 2:
        return []
    sim = vectors @ vectors.T  # (N, L) @ (L, N) -> (N, N)
    sim[splits[:, None] == splits[None, :]] = -np.inf  # only pairs across splits
    nearest = sim.argmax(axis=1)  # (N,)
    pairs = {tuple(sorted((i, int(j)))): float(sim[i, j]) for i, j in enumerate(nearest)
             if np.isfinite(sim[i, j])}
    return [(i, j, v) for (i, j), v in sorted(pairs.items(), key=lambda kv: -kv[1])[:top]]


def _feature_similarity(features: dict) -> Callable[[str, str], float | None]:
    """name, name -> cosine of the two clips' feature embeddings (None when not both sampled)."""
    e = clip_embeddings(features)
    where = {n: i for i, n in enumerate(features["names"])}

    def sim(a: str, b: str) -> float | None:
        if a not in where or b not in where:
            return None
        return round(float(e[where[a]] @ e[where[b]]), 5)

    return sim


@probe("leakage", min_s=1.0, needs=("clip_scan", "clip_features"))
def leakage(ctx: Context, probes: Probes) -> dict:
    """Source groups (UCF101 `_gNN_`) with clips in several splits, and the most similar
    clip pairs across splits: pixel correlation of the sampled frames' thumbnails (from
    `clip_scan`; decides), and the cosine of frozen clip features (from `clip_features`, when
    they exist; evidence)."""
    groups, leaked = _group_sides(samples(ctx))  # no groups in a user's own Dataset
    scan = probes.get("clip_scan")
    clips = scan["_clips"]
    splits = np.asarray([c["split"] for c in clips])
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # a small product; BLAS threads only contend on 2 cores
        pairs = _nearest_pairs(np.asarray(scan["_thumbs"], np.float32), splits, top=200)
    feature_sim, skipped = (lambda a, b: None), None
    try:
        feature_sim = _feature_similarity(probes.get("clip_features"))
    except ProbeSkipped as e:
        skipped = str(e)
    nearest = [{"a": clips[i]["name"], "split_a": clips[i]["split"], "b": clips[j]["name"],
                "split_b": clips[j]["split"], "pixel": round(v, 5),
                "feature": feature_sim(clips[i]["name"], clips[j]["name"])} for i, j, v in pairs]
    return {"groups": groups, "leaked_groups": leaked[:50], "groups_leaked": len(leaked),
            "clips_in_leaked_groups": sum(sum(g["splits"].values()) for g in leaked),
            "eval_clips_in_leaked_groups": sum(n for g in leaked for split, n in g["splits"].items()
                                               if split != "train"),
            "compared": len(clips), "eval_clips": int(np.sum(splits != "train")),
            "nearest": nearest, "features_skipped": skipped}


# =============================================================================================
# label_issues: cleanlab on out-of-fold probabilities of a linear probe

def probe_inputs(features: dict) -> np.ndarray:
    """Clip vectors for the linear probe: grid features averaged over time, plus the change
    from the first to the last third (a linear model on a mean alone is blind to motion)."""
    g = np.asarray(features["_grid"], np.float64)  # (N, T, D)
    third = max(1, g.shape[1] // 3)
    change = g[:, -third:].mean(axis=1) - g[:, :third].mean(axis=1)  # (N, D)
    return np.concatenate([g.mean(axis=1), change], axis=1)  # (N, 2D)


def _oof_probs(X: np.ndarray, y: np.ndarray, seed: int, groups: np.ndarray | None = None
               ) -> np.ndarray:
    """Out-of-fold class probabilities (N, K) of standardise -> PCA -> logistic regression;
    folds keep source groups together when there are any (UCF101 `_gNN_`)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(5, np.bincount(y).min()))
    # PCA keeps lbfgs fast (thousands of raw dims cost minutes) and the probe from memorising
    dims = int(max(2, min(64, X.shape[1], (len(y) * (folds - 1)) // (folds * 4))))
    # strong L2 (C=PROBE_C): measured on planted 20 % noise, it flagged 93-100 % of the wrong
    # labels at 80-100 % precision where C=1 overfitted the noise (79-92 %, 57-75 %)
    clf = make_pipeline(StandardScaler(), PCA(dims, random_state=seed),
                        LogisticRegression(C=PROBE_C, max_iter=500))
    if groups is not None and len(set(groups.tolist())) >= folds:
        cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        return cross_val_predict(clf, X, y, groups=groups, cv=cv, method="predict_proba")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(clf, X, y, cv=cv, method="predict_proba")


def _cleaned_recall(X: np.ndarray, y: np.ndarray, flagged: np.ndarray, seed: int,
                    groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions of the same probe on the clips cleanlab did NOT flag -> (per-class
    recall (K,), NaN where a class keeps fewer than 5 clips; whether each kept clip was
    predicted right). When the flags are label errors, the rest is clean and a competent probe
    gets it (nearly) all right; when they are the probe's own mistakes, new ones appear.
    Per class, because features often separate some classes and not others (on the demo clips
    a trained backbone: 0.95-1.0 recall for six classes, chance for the rotation pair)."""
    K = int(y.max()) + 1
    recall = np.full(K, np.nan)
    keep = ~flagged
    counts = np.bincount(y[keep], minlength=K)
    right = np.zeros(int(keep.sum()), bool)
    if np.count_nonzero(counts >= 2) < 2:
        return recall, right
    ok = np.isin(y[keep], np.flatnonzero(counts >= 2))  # a class needs 2 clips to be folded
    present, yk = np.unique(y[keep][ok], return_inverse=True)
    probs = _oof_probs(X[keep][ok], yk, seed, None if groups is None else groups[keep][ok])
    right[ok] = probs.argmax(axis=1) == yk
    for c in present:
        mine = y[keep] == c
        if mine.sum() >= 5:
            recall[c] = right[mine].mean()
    return recall, right


# 0.5-0.7 s measured beyond clip_features
def _own_weights(ctx: Context) -> str | None:
    """Where the built-in backbone's weights came from ("hub", "package:...", a file), or
    None when its features cannot judge labels: a user's model, or random weights."""
    if ctx.user_model:
        return None
    try:
        info = getattr(base_model(ctx), "info", None)
    except Exception:  # noqa: BLE001 — a model that cannot be built judges nothing
        return None
    weights = getattr(info, "weights", None)
    return None if weights in (None, "random") else weights


@probe("label_issues", min_s=1.0, needs=("clip_features", "reference_features"))
def label_issues(ctx: Context, probes: Probes) -> dict:
    """cleanlab's `find_label_issues` (prune_by_noise_rate) on out-of-fold probabilities of a
    linear probe over frozen clip features: the built-in backbone's when it has real weights,
    else the reference backbone's (`reference_features`); classes with fewer than 3 sampled
    clips are left out (cross-validation needs them in every fold)."""
    import warnings

    from cleanlab.filter import find_label_issues

    own = _own_weights(ctx)
    feats = probes.get("clip_features" if own else "reference_features")
    labels = np.asarray(feats["labels"])
    counts = Counter(labels.tolist())
    keep = np.array([counts[v] >= 3 for v in labels])
    present = sorted({int(v) for v in labels[keep]})
    if len(present) < 2:
        raise ProbeSkipped("fewer than 2 classes with 3+ clips: no cross-validated label check")
    remap = {c: i for i, c in enumerate(present)}
    y = np.array([remap[int(v)] for v in labels[keep]])
    X = probe_inputs(feats)[keep]
    groups = None
    if any(g is not None for g in feats["groups"]):  # clips without a group: a group each
        groups = np.array([g if g is not None else f"\0{i}"
                           for i, g in enumerate(feats["groups"])])[keep]
    from threadpoolctl import threadpool_limits

    # one BLAS thread: on 2 busy cores, threaded SVDs of this size ran 70x slower (measured)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # convergence chatter; the accuracy below says enough
        probs = _oof_probs(X, y, ctx.seed, groups)
        flagged = find_label_issues(y, probs, filter_by="prune_by_noise_rate")
        recall, right = _cleaned_recall(X, y, flagged, ctx.seed, groups)
    names = np.asarray(feats["names"])[keep]
    pred = probs.argmax(axis=1)
    classes = list(ctx.data.classes)
    margin = probs[np.arange(len(y)), pred] - probs[np.arange(len(y)), y]
    order = np.argsort(-margin)
    issues = [{"path": str(names[i]), "given": classes[present[y[i]]],
               "predicted": classes[present[pred[i]]], "p_given": round(float(probs[i, y[i]]), 4),
               "p_predicted": round(float(probs[i, pred[i]]), 4),
               "margin": round(float(margin[i]), 4)} for i in order if flagged[i]]
    kept_y = y[~flagged]
    per_class = {classes[present[c]]: {
        "clips": int(np.sum(y == c)), "flagged": int(np.sum(flagged & (y == c))),
        "kept": int(np.sum(kept_y == c)), "kept_wrong": int(np.sum(~right & (kept_y == c))),
        "cleaned_recall": None if np.isnan(recall[c]) else round(float(recall[c]), 4)}
        for c in range(len(present))}
    return {"clips": int(len(y)), "classes": len(present),
            "backbone_weights": own or "reference",  # "hub" | "package:..." | a file
            "features": "the model's backbone" if own else feats["backbone"],
            "probe_accuracy": round(float((pred == y).mean()), 4),
            "cleaned_accuracy": (round(float(np.nanmean(recall)), 4)  # balanced, unflagged clips
                                 if not np.isnan(recall).all() else None),
            "chance": round(float(np.bincount(y).max() / len(y)), 4),
            "flagged": int(flagged.sum()), "share": round(float(flagged.mean()), 4),
            "per_class": per_class, "issues": issues}
