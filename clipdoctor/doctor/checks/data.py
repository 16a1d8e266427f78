"""Data checks (DESIGN §4, area "data"): class balance, sample size, corrupt files, split
mismatch, leakage, label noise, and what each clip gives the model (static clips, frames out
of order, clip shapes, normalisation, augmentation that treats frames differently or is too
strong).

Pure functions of the data probes (`probes/data.py`, `clip_scan.py`, `features.py`; the
augmentation strength reads `overfit_batch` and `short_run`). Each threshold says where it
comes from: FIELD-NOTES (other tools, issue threads) and/or the synthetic demo data
(`clipdoctor.data.synthetic.generate`, demo_config: test_resnet, 8 frames at 64 px), sick
(fault planted) against healthy. `effect` ("how much loss would move if fixed", comparable
within a report) is mostly the share of clips affected times ln(classes), what wrongly
labelled or useless clips add to the loss floor; fixed values where no share exists.
"""

from __future__ import annotations

import math
from statistics import median

from clipdoctor.doctor.checks.common import (HIGH_LOSS, IMBALANCE_WARN, WEIGHTED, get,
                                               imbalance, lnk, skip_unless)
from clipdoctor.doctor.findings import Finding
from clipdoctor.doctor.probes import Probes, ProbeSkipped
from clipdoctor.doctor.probes.results import MemorisedGap
from clipdoctor.doctor.registry import check

# -- class balance: largest / smallest training class (and IMBALANCE_WARN in common.py) -----
IMBALANCE_INFO = 1.5  # a stratified split of a balanced set stays well below this (measured 1.0)

# -- too few samples ------------------------------------------------------------------------
MIN_PER_CLASS = 20  # training clips per class a sequence model needs at about 1 M trainable
# parameters (FIELD-NOTES: five-video #78 and the keras.io CNN-RNN example overfit far below
# that: train 85 % vs test 27 %). The demo (0.69 M trainable, 32 clips per class) learns: 0.78
# balanced accuracy on 8 classes (README)
CAPACITY_REF = 1e6  # parameters at which MIN_PER_CLASS holds; need grows with sqrt(params / ref)
MAX_NEEDED = 100  # cap: beyond this, more parameters say little about clips needed
FEW_WARN = 0.5  # warning below half the need; between half and all of it: info (thin, workable;
# the shared healthy test data has 13 training clips per class at 0.7 M parameters)
FEW_ERROR = 5  # under 5 clips a class cannot even fill a 5-fold split: it cannot be learned

# -- corrupt clips --------------------------------------------------------------------------
BLANK_CLIP = 0.5  # a clip with at least half of its frames flat (black, one colour) is blank
# (decord #233: all-zero frames). Healthy synthetic clips: lowest frame std 15.7 (FLAT_STD 3)
DARK_MEAN = 16  # a blank clip whose median brightness (0..255) is below this is called black
SHORT_FRACTION = 0.5  # a clip with fewer than max(SHORT_MIN, T * 0.5) frames is too short
SHORT_MIN = 3  # (jfzhang95 #12: clips shorter than the model's 16 frames); T/2 still moves
CORRUPT_ERROR = 0.2  # a fifth of the data unusable: error (the rest of the data is suspect too)

# -- split mismatch -------------------------------------------------------------------------
SHARE_TVD = 0.45  # total variation distance of class shares train vs val/test. clipdoctor's
# stratified split gives 0.0 on the demo data; a RANDOM 10 % split of 8 x 40 clips 0.21 median,
# 0.35 at the 99th percentile (simulated, 500 draws); the keras class-sorted tail split (#597,
# #8346) 0.7-1.0
SHARE_MIN_CLIPS = 4  # compare shares only with at least 4 clips per class in the split on average
# (at 1.5 per class a random split alone reaches 0.55 at the 99th percentile)

# -- leakage --------------------------------------------------------------------------------
NEAR_DUP = 0.98  # pixel correlation of sampled-frame thumbnails. Measured: re-encoded copies
# (crf 18 -> 28) 0.998-0.9997; distinct synthetic clips at most 0.92 over 320 clips. Frozen
# features of a random-init backbone did NOT separate them (copies >= 0.986, distinct up to
# 0.988 after centring and whitening), so features are evidence only

# -- label noise ----------------------------------------------------------------------------
CLEANED_COMPETENCE = 0.9  # a class is judged when the probe recalls this share of its clips
# that cleanlab did not flag (out of fold). A weak probe's flags are its own errors: cleanlab then
# flags 12-43 % of CLEAN clips. Measured: random-init test_resnet features on clean demo data
# 0.55-0.84 overall; colour-coded clips, 0-30 % planted noise: 0.87-1.0. Over ALL classes the
# bar was not enough: backbones of trained demo runs (val 0.78 / 0.86) on CLEAN demo clips
# passed it in 6 of 10 CV seeds with 14-18 % flagged (false alarms), because six classes were
# recalled at 0.95-1.0 and the rotation pair at chance. Per class, the pair drops out and 0-0.8 %
# of the judged clips are flagged; with 15 % planted pair swaps, 5-17 % (66-93 % of them right).
# Random backbone weights are refused outright (label_noise below)
RESIDUAL_RATIO = 1.0  # errors left among the judged classes' unflagged clips, per flagged clip
# (both as shares): flags must outnumber the probe's own remaining mistakes. Measured on the
# judged classes: 15 % noisy demo clips 0.22-0.52; clean demo clips 3-11 (or nothing flagged)
NOISE_WARN = 0.05  # flagged share: below this, a handful of doubtful clips (info)
NOISE_ERROR = 0.25  # a quarter of wrong labels sets a loss floor no model can get under

# -- static clips ---------------------------------------------------------------------------
STATIC_PEAK = 8.0  # 99th-percentile change (0..255) between the frames the model sees. Measured:
# still clips with sensor noise (sigma 1.5) 2.6-4.6; moving demo clips 10.4-186 (840 clips)
STATIC_WARN = 0.2  # a fifth of the clips without motion costs the temporal head its signal

# -- frame order ----------------------------------------------------------------------------
ORDER_ERROR = 0.3  # share of moving clips with a detour (probes/clip_scan.py: a frame farther from
# both neighbours than they are from each other). Measured: healthy demo clips 0 of 320, frame
# folders f1..f20 in natural order 0 of 40, the same read lexicographically 39 of 40 (0.975)
ORDER_WARN = 0.1
ORDER_MIN_CLIPS = 5  # judge order only on at least 5 clips with motion above the noise

# -- input normalisation (UMLAUT: inputs outside [-1, 1] are not normalised) ----------------
RAW_RANGE = 20.0  # |input| above this: raw 0..255 pixels reach the model
UNIT_SLACK = 0.01  # inputs inside [0, 1] (+/- this): scaled but not standardised
STAT_TOLERANCE = 0.01  # applied vs expected mean / std (timm data config), per channel
GROSS_MEAN, GROSS_STD = (2.0, (0.1, 4.0))  # normalised inputs: |mean| and std per channel
# (demo inputs with test_resnet's 0.5 / 0.5: means within 0.05 of 0, stds 0.53-0.60)

# -- augmentation ---------------------------------------------------------------------------
JITTER_MIN = 1e-3  # identical frames through one clip-wide draw differ by exactly 0 (measured)
JITTER_ERROR = 0.5  # jitter at half the real frame-to-frame change or more drowns the motion.
# Measured (demo data, 64 px): per_frame=True jitter 0.216 vs motion 0.037 (5.8x); default 0.0

# -- augmentation strength (model losses compared with ln K) -------------------------------
AUG_RATIO = 1.5  # augmented loss above 1.5x the clean loss (brief) ...
AUG_MIN_GAP = 0.25  # ... and above it by at least 0.25 ln K (small losses make wild ratios)
AUG_MEMORISED_GAP = 0.5  # a fitted batch: augmented draws 0.5 ln K worse (demo default: +0.001,
# extreme scale 0.05-0.1 / 45 degrees / hue 0.5: +1.4..2.1 ln K)


# ==== class balance ===========================================================================

@check("class-imbalance", order=10, requires=("dataset",))
def class_balance(probes: Probes) -> list[Finding]:
    """Largest / smallest training-class count; a warning when nothing is known to weight it
    (an unknown user loss counts as unweighted here: the imbalance itself is the finding)."""
    d = probes.get("dataset")
    im = imbalance(d)
    if im is None or im["ratio"] < IMBALANCE_INFO:
        return []
    weighting = d.get("class_weighting", "none")
    severity = "warning" if im["ratio"] >= IMBALANCE_WARN and weighting not in WEIGHTED else "info"
    evidence = {k: im[k] for k in ("ratio", "largest", "smallest", "train_counts")}
    evidence.update(class_weighting=weighting, warn_at=IMBALANCE_WARN, info_at=IMBALANCE_INFO)
    return [Finding(
        "class-imbalance", severity,
        f"Training classes are imbalanced {im['ratio']:.1f}:1 ('{im['big']}' {im['n_big']} clips, "
        f"'{im['small']}' {im['n_small']})",
        evidence,
        ("Weight your loss by class (nn.CrossEntropyLoss(weight=n / (K * counts))) or sample "
         "classes evenly (torch.utils.data.WeightedRandomSampler); collect more clips of the "
         "small classes." if d.get("user_model") else
         "Weight the loss by class (--class-weighting balanced) or sample classes evenly "
         "(--class-weighting sampler); collect more clips of the small classes."),
        effect=math.log(im["ratio"]))]


# ==== too few samples =========================================================================

def clips_needed(trainable_params: int) -> int:
    """Training clips per class the model's trainable parameters call for (MIN_PER_CLASS at
    CAPACITY_REF parameters, growing with the square root, capped at MAX_NEEDED)."""
    scale = math.sqrt(max(1.0, trainable_params / CAPACITY_REF))
    return int(min(MAX_NEEDED, round(MIN_PER_CLASS * scale)))


@check("too-few-samples", order=11, requires=("dataset",))
def sample_size(probes: Probes) -> list[Finding]:
    """Training clips per class against what the model's capacity needs."""
    d = probes.get("dataset")
    counts, classes = d["counts"]["train"], d["classes"]
    trained = [(n, c) for n, c in zip(counts, classes) if n > 0]
    if not trained:
        return []
    params = int(d.get("trainable_params") or 0)
    needed = clips_needed(params)
    low = sorted((n, c) for n, c in trained if n < needed)
    if not low:
        return []
    fewest = low[0][0]
    severity = ("error" if fewest < FEW_ERROR else "warning" if fewest < FEW_WARN * needed
                else "info")
    return [Finding(
        "too-few-samples", severity,
        f"{len(low)} of {len(trained)} classes have fewer than {needed} training clips "
        f"(fewest: '{low[0][1]}' with {fewest}) for {params / 1e6:.1f} M trainable parameters",
        {"needed_per_class": needed, "min_per_class": MIN_PER_CLASS, "error_below": FEW_ERROR,
         "warning_below": FEW_WARN * needed,
         "trainable_params": params, "params_per_clip": round(params / max(1, sum(counts))),
         "short_classes": {c: n for n, c in low[:20]}, "train_clips": sum(counts)},
        "Collect more clips of these classes; meanwhile train fewer parameters: "
        + ("freeze a pretrained CNN (in eval mode), keep the LSTM and head small, and augment "
           "each clip." if d.get("user_model") else
           "a frozen pretrained backbone (--freeze-backbone --pretrained), a smaller head "
           "(--hidden 128 --proj-dim 128) and more augmented views (--feature-views 4)."),
        effect=(needed - fewest) / needed * lnk(len(d["classes"])))]


# ==== corrupt clips ===========================================================================

def _bad_clips(scan: dict) -> list[dict]:
    """Readable clips that are blank (mostly flat frames) or too short, with the reason."""
    t = scan["sampling"]["frames"]
    short = max(SHORT_MIN, math.ceil(t * SHORT_FRACTION))
    flat = scan["definitions"]["flat_std"]
    out = []
    for c in scan["_clips"]:
        stds = c["frame_std"]
        blank = sum(s < flat for s in stds) / max(1, len(stds))
        if blank >= BLANK_CLIP:
            dark = median(c["frame_mean"]) < DARK_MEAN
            out.append({"path": c["name"], "reason": f"{blank:.0%} of frames are "
                        + ("black" if dark else "flat (one colour)")})
        elif c["frames"] < short:
            out.append({"path": c["name"],
                        "reason": f"only {c['frames']} frames (< {short}, T={t})"})
    return out


@check("corrupt-clips", order=12, requires=("dataset", "clip_scan"))
def corrupt_clips(probes: Probes) -> list[Finding]:
    """Files that cannot be decoded (dropped by the data module), and readable clips that are
    blank or far shorter than the T frames the model samples."""
    d = probes.get("dataset")
    scan = get(probes, "clip_scan", optional=True)
    unreadable = list(d["skipped"]) + (scan["failed"] if scan else [])
    bad = _bad_clips(scan) if scan else []
    listed = max(1, d["listed"])
    scanned = scan["clips"] if scan else 0
    # blank / short share among scanned clips, extrapolated when the scan was cut by the budget
    lost = len(unreadable) / listed
    share = lost + (len(bad) / scanned if scanned else 0.0) * (1 - lost)
    if not unreadable and not bad:
        return []
    severity = "error" if share >= CORRUPT_ERROR else "warning"
    parts = [f"{len(unreadable)} unreadable"] if unreadable else []
    parts += [f"{len(bad)} blank or too short"] if bad else []
    return [Finding(
        "corrupt-clips", severity,
        f"{' and '.join(parts)} clips ({share:.0%} of the data)",
        {"share": share, "unreadable": unreadable[:30], "blank_or_short": bad[:30],
         "listed": d["listed"], "scanned": scanned, "error_at": CORRUPT_ERROR,
         "blank_if_flat_frames": BLANK_CLIP,
         "_exclude": [c["path"] for c in unreadable + bad]},  # all of them, for repair
        "Re-encode or remove the listed files (ffmpeg -i IN -c:v libx264 OUT.mp4), drop blank "
        "and too-short clips; --strict stops on any unreadable file instead of skipping it.",
        effect=share * lnk(len(d["classes"])))]


# ==== split class mismatch ====================================================================

def _tvd(a: list[int], b: list[int]) -> float:
    """Total variation distance between the class shares of two count vectors."""
    sa, sb = max(1, sum(a)), max(1, sum(b))
    return 0.5 * sum(abs(x / sa - y / sb) for x, y in zip(a, b))


@check("split-class-mismatch", order=13, requires=("dataset",))
def split_classes(probes: Probes) -> list[Finding]:
    """A class that trains but is never evaluated (or the reverse), or class shares that
    differ sharply between train and val / test (the class-sorted tail split)."""
    d = probes.get("dataset")
    classes, counts = d["classes"], d["counts"]
    train = counts["train"]
    if sum(train) == 0:
        return []
    unseen = {s: [c for c, n, m in zip(classes, train, counts[s]) if m > 0 and n == 0]
              for s in ("val", "test")}
    missing = {s: [c for c, n, m in zip(classes, train, counts[s]) if n > 0 and m == 0]
               for s in ("val", "test") if sum(counts[s]) > 0}
    tvd = {s: _tvd(train, counts[s]) for s in ("val", "test")
           if sum(counts[s]) >= SHARE_MIN_CLIPS * sum(1 for n in train if n > 0)}
    drift = {s: v for s, v in tvd.items() if v >= SHARE_TVD}
    not_trained = sorted({c for v in unseen.values() for c in v})
    not_evaluated = sorted({c for v in missing.values() for c in v})
    if not (not_trained or not_evaluated or drift):
        return []
    what = []
    if not_trained:
        what.append(f"{len(not_trained)} class(es) in val/test have no training clips "
                    f"({not_trained[:5]})")
    if not_evaluated:
        what.append(f"{len(not_evaluated)} training class(es) missing from val/test "
                    f"({not_evaluated[:5]})")
    if drift:
        s, v = max(drift.items(), key=lambda kv: kv[1])
        what.append(f"class shares of {s} differ from train by {v:.2f} (total variation)")
    eval_total = max(1, sum(sum(counts[s]) for s in ("val", "test")))
    untrained_share = sum(m for s in ("val", "test") for c, m in zip(classes, counts[s])
                          if c in not_trained) / eval_total
    return [Finding(
        "split-class-mismatch", "error" if not_trained else "warning", "; ".join(what),
        {"counts": {s: dict(zip(classes, counts[s])) for s in counts},
         "not_in_train": unseen, "missing_from_split": missing, "share_distance": tvd,
         "share_distance_warn": SHARE_TVD, "untrained_eval_share": untrained_share},
        ("Split per class (stratified): sklearn's train_test_split(indices, stratify=labels) "
         "or StratifiedShuffleSplit, then torch.utils.data.Subset; never take validation from "
         "the tail of class-sorted data."
         if d.get("format") in ("torch-dataset", "dataloader") else
         "Split per class (stratified): drop the fixed val/test split and let clipdoctor split "
         "(--val-fraction 0.1 --test-fraction 0.1); never take validation from the tail of "
         "class-sorted data."),
        effect=max([untrained_share, 0.1, *drift.values()]) * lnk(len(d["classes"])))]


# ==== train / val leakage =====================================================================

@check("train-val-leakage", order=30, requires=("leakage", "clip_scan"))
def split_leakage(probes: Probes) -> list[Finding]:
    """Source groups (UCF101 `_gNN_`) on both sides of a split, and near-duplicate clips
    across splits (pixel correlation of the sampled frames >= NEAR_DUP). Two blank clips
    (black or one colour: a Dataset's stand-in for a file it cannot read) are alike without
    sharing anything: corrupt-clips reports them, not this check."""
    lk = probes.get("leakage")
    scan = get(probes, "clip_scan", optional=True)
    blank = {c["path"] for c in _bad_clips(scan) if "frames are" in c["reason"]} if scan else set()
    dups = [p for p in lk["nearest"] if p["pixel"] >= NEAR_DUP
            and not (p["a"] in blank and p["b"] in blank)]
    if not lk["groups_leaked"] and not dups:
        return []
    eval_clips = max(1, lk["eval_clips"])
    dup_eval = {p["a"] if p["split_a"] != "train" else p["b"] for p in dups}
    share = min(1.0, (lk.get("eval_clips_in_leaked_groups", 0) + len(dup_eval)) / eval_clips)
    what = []
    if lk["groups_leaked"]:
        what.append(f"{lk['groups_leaked']} source group(s) have clips in several splits")
    if dups:
        what.append(f"{len(dups)} near-duplicate clip pair(s) across splits")
    return [Finding(
        "train-val-leakage", "warning", "; ".join(what) + " — validation scores are inflated",
        {"groups_leaked": lk["groups_leaked"], "leaked_groups": lk["leaked_groups"][:10],
         "clips_in_leaked_groups": lk["clips_in_leaked_groups"], "eval_share_affected": share,
         "near_duplicates": dups[:20],
         "near_duplicate_at": NEAR_DUP, "compared": lk["compared"],
         "features": lk.get("features_skipped") or "feature cosine shown per pair"},
        "Split by source group (clipdoctor keeps UCF101 `_gNN_` groups together when it "
        "splits: drop the fixed split, --val-fraction 0.1) and remove duplicated clips from "
        "val/test.",
        effect=share)]


# ==== label noise =============================================================================

def _stronger(li: dict) -> str:
    """What would let the label check judge: features that know the task."""
    if li.get("backbone_weights") == "reference":  # a user model: ImageNet reference features
        return (f"these are a reference backbone's ImageNet features ({li.get('features')}), "
                "which do not separate classes told apart by motion; diagnosing with the "
                "built-in model and --weights of a backbone trained on this task would settle it")
    return "stronger features (--pretrained or --weights) would settle it"


@check("label-noise", order=60, requires=("label_issues",))
def label_noise(probes: Probes) -> list[Finding]:
    """A share of labels that a linear probe on frozen clip features confidently contradicts
    out of fold (cleanlab's find_label_issues). Judged only where the features are informative:
    pretrained / given weights, and only the classes the probe nearly always recognises once the
    flagged clips are set aside; the flags must also outnumber the probe's remaining mistakes."""
    li = probes.get("label_issues")
    if li.get("backbone_weights") == "random":
        raise ProbeSkipped("the backbone has random weights: its features cannot judge labels "
                           "(use --pretrained or --weights FILE to enable the label check)")
    per_class = li["per_class"]
    judged = sorted(c for c, v in per_class.items()
                    if (v["cleaned_recall"] or 0.0) >= CLEANED_COMPETENCE)
    if len(judged) < 2:
        raise ProbeSkipped(f"a linear probe on the frozen features is too weak to tell label "
                           f"errors from its own: it recalls {len(judged)} of {len(per_class)} "
                           f"classes at {CLEANED_COMPETENCE} on the unflagged clips (accuracy "
                           f"{li['probe_accuracy']:.2f} overall); {_stronger(li)}")
    issues = [i for i in li["issues"] if i["given"] in judged and i["predicted"] in judged]
    clips = sum(per_class[c]["clips"] for c in judged)
    if not issues:
        return []
    share = round(len(issues) / clips, 4)
    left = (sum(per_class[c]["kept_wrong"] for c in judged)
            / max(1, sum(per_class[c]["kept"] for c in judged)))
    if left > RESIDUAL_RATIO * share:
        raise ProbeSkipped(f"the probe's flags look like its own errors: {share:.0%} of the "
                           f"judged clips flagged, yet {left:.1%} of the unflagged ones are still "
                           f"misclassified; {_stronger(li)}")
    unjudged = sorted(set(per_class) - set(judged))
    severity = "error" if share >= NOISE_ERROR else "warning" if share >= NOISE_WARN else "info"
    scope = f" in {len(judged)} of {len(per_class)} classes" if unjudged else ""
    return [Finding(
        "label-noise", severity,
        f"{share:.0%} of labels ({len(issues)} of {clips} clips{scope}) disagree with confident "
        f"out-of-fold predictions",
        {"share": share, "flagged": len(issues), "clips": clips, "judged_classes": judged,
         "unjudged_classes": unjudged, "probe_accuracy": li["probe_accuracy"],
         "cleaned_accuracy": li["cleaned_accuracy"],
         "cleaned_recall": {c: v["cleaned_recall"] for c, v in per_class.items()},
         "cleaned_needed": CLEANED_COMPETENCE, "errors_left": round(left, 4),
         "examples": issues[:20], "warn_at": NOISE_WARN, "error_at": NOISE_ERROR,
         "method": "cleanlab find_label_issues (prune_by_noise_rate) on 5-fold logistic "
                   "regression over frozen clip features; classes judged where the probe "
                   "recalls their unflagged clips"},
        "Review the listed clips and fix their labels (cleanlab's ranking puts the clearest "
        "first); meanwhile --label-smoothing 0.1 softens the damage."
        + (f" Not judged (the features do not separate them): {', '.join(unjudged)}."
           if unjudged else ""),
        effect=share * math.log(max(2, len(judged))))]


# ==== frames: static clips, frame order, shapes ===============================================

@check("static-clips", order=20, requires=("clip_scan",))
def static_clips(probes: Probes) -> list[Finding]:
    """Clips whose sampled frames barely change (99th-percentile step below STATIC_PEAK)."""
    scan = probes.get("clip_scan")
    clips = scan["_clips"]
    if not clips:
        return []
    still = sorted((c for c in clips if c["motion_peak"] < STATIC_PEAK),
                   key=lambda c: c["motion_peak"])
    if not still:
        return []
    share = len(still) / len(clips)
    return [Finding(
        "static-clips", "warning" if share >= STATIC_WARN else "info",
        f"{share:.0%} of clips ({len(still)} of {len(clips)}) barely change between sampled frames",
        {"share": share, "static_below": STATIC_PEAK, "warn_at": STATIC_WARN,
         "examples": [{"path": c["name"], "motion_peak": c["motion_peak"], "frames": c["frames"]}
                      for c in still[:20]],
         "median_motion_peak": median(c["motion_peak"] for c in clips)},
        "Check the listed clips (frozen or duplicated frames, a still camera on a still scene); "
        "remove them, or sample more of each clip (--sampler uniform, --frames 16).",
        effect=share * math.log(2))]


@check("frame-order-corrupted", order=20, requires=("clip_scan",))
def frames_in_order(probes: Probes) -> list[Finding]:
    """Frames read out of temporal order: in ordered footage neighbouring frames are closer
    than frames further apart; a 'detour' frame breaks that (see probes/clip_scan.py)."""
    scan = probes.get("clip_scan")
    moving = [c for c in scan["_clips"] if c["judged"] > 0]
    if len(moving) < ORDER_MIN_CLIPS:
        return []
    bad = [c for c in moving if c["detours"] > 0]
    share = len(bad) / len(moving)
    if share < ORDER_WARN:
        return []
    ratios = [c["d1"] / c["d2"] for c in moving if c["d1"] is not None and c["d2"]]
    return [Finding(
        "frame-order-corrupted", "error" if share >= ORDER_ERROR else "warning",
        f"{share:.0%} of moving clips have frames out of temporal order "
        f"({len(bad)} of {len(moving)})",
        {"share": share, "warn_at": ORDER_WARN, "error_at": ORDER_ERROR,
         "median_adjacent_vs_two_apart": round(median(ratios), 3) if ratios else None,
         "examples": [{"path": c["name"], "detours": c["detours"], "frames": c["frames"]}
                      for c in bad[:20]],
         "detour": scan["definitions"]},
        "Sort frame files numerically (f2 before f10: zero-pad the names, f002, f010, or sort "
        "with a natural key); for your own Dataset, check the order frames are read in.",
        effect=share * math.log(2) * 2)]


@check("inconsistent-clip-shape", order=14, requires=("clip_shapes",))
def clip_shape(probes: Probes) -> list[Finding]:
    """Frame sizes, channels or lengths that vary: info when clipdoctor's pipeline resizes
    and samples a fixed T; an error when a user's Dataset yields them unhandled."""
    sh = probes.get("clip_shapes")
    frames = sh.get("frames") or {}
    evidence = {k: sh.get(k) for k in ("source", "frames", "sizes", "channels", "shapes",
                                       "with_length", "clips", "ndim")}
    if (sh.get("ndim") or [4]) != [4]:  # a user Dataset whose clips are not all (T, C, H, W)
        return [Finding(
            "inconsistent-clip-shape", "error",
            f"Your Dataset yields clips of shapes {list(sh.get('shapes') or {})[:3]}; the model "
            "takes (T, C, H, W) clips batched to (B, T, C, H, W)",
            evidence, "Return every clip as a float tensor (T, C, H, W) of one size.",
            effect=2.0)]
    varies = {
        "frames": frames.get("min") != frames.get("max"),
        "sizes": sh.get("distinct_sizes", 1) > 1,
        "channels": len(sh.get("channels") or []) > 1,
    }
    what = [k for k, v in varies.items() if v]
    if not what:
        return []
    if sh["source"] == "files":
        return [Finding(
            "inconsistent-clip-shape", "info",
            f"Clips vary in {', '.join(what)}; clipdoctor resizes every frame and samples "
            f"{sh.get('frames_sampled')} frames, so this is handled",
            evidence, "Nothing to do; --size and --frames set what the model sees.", effect=0.0)]
    handled_len = what == ["frames"] and sh.get("with_length")
    collated = sh.get("collated")  # the Dataset's collate batched two clips of unequal shape
    handled = collated if collated is not None else handled_len
    how = (" (lengths given: padded and masked)" if handled_len
           else " (your collate batches them)") if handled else ": they cannot be batched"
    evidence["collated"] = collated
    return [Finding(
        "inconsistent-clip-shape", "info" if handled else "error",
        f"Your Dataset yields clips that vary in {', '.join(what)}" + how,
        evidence,
        "Resize every frame to one size and sample a fixed number of frames in the Dataset "
        "(or return (clip, label, length) and pad), or load the files with "
        "clipdoctor.load_dataset, which does both.",
        effect=0.0 if handled else 2.0)]


# ==== model inputs: normalisation, augmentation ===============================================

def _close(a: list[float], b: list[float]) -> bool:
    return all(abs(x - y) <= STAT_TOLERANCE for x, y in zip(a, b))


@check("unnormalized-input", order=15, requires=("input_stats",))
def input_normalization(probes: Probes) -> list[Finding]:
    """Model inputs in 0..255 or 0..1, normalised with other statistics than the backbone's
    weights expect, or with grossly off per-channel statistics. For the user's own model the
    numbers are those of what reaches its first layer with weights (it may scale inside
    `forward`); a first layer that normalises its input (BatchNorm, ...) takes any scale."""
    st = probes.get("input_stats")
    if st.get("self_normalising"):
        return []
    mean, std, lo, hi = st["mean"], st["std"], st["min"], st["max"]
    applied, expected = st["applied"], st.get("expected")
    evidence = {"mean": mean, "std": std, "min": lo, "max": hi, "applied": applied,
                "expected": expected, "clips": st["clips"]}
    evidence.update({k: st[k] for k in ("judged_on", "layout", "raw") if k in st})
    if max(abs(lo), abs(hi)) > RAW_RANGE:
        return [Finding(
            "unnormalized-input", "error",
            f"Model inputs range {lo:.0f}..{hi:.0f}: raw pixel values, not normalised",
            {**evidence, "raw_above": RAW_RANGE},
            "Scale to 0..1 and normalise with the backbone's mean / std (clipdoctor's data "
            "pipeline does it; for your own Dataset: v2.ToDtype(torch.float32, scale=True), "
            "v2.Normalize(mean, std)).", effect=2.0)]
    problems = []
    if lo >= -UNIT_SLACK and hi <= 1 + UNIT_SLACK:
        problems.append(f"inputs lie in {lo:.2f}..{hi:.2f}: scaled to 0..1 but not standardised")
    if expected and applied and not (_close(applied["mean"], expected["mean"])
                         and _close(applied["std"], expected["std"])):
        problems.append(f"normalised with mean {applied['mean']} / std {applied['std']}, but "
                        f"{expected['backbone']} expects {expected['mean']} / {expected['std']}")
    off = [i for i, (m, s) in enumerate(zip(mean, std))
           if abs(m) > GROSS_MEAN or not GROSS_STD[0] <= s <= GROSS_STD[1]]
    if off and not problems:
        problems.append(f"channel(s) {off} have mean {[mean[i] for i in off]} / std "
                        f"{[std[i] for i in off]} after normalisation")
    if not problems:
        return []
    return [Finding(
        "unnormalized-input", "warning", "; ".join(problems),
        {**evidence, "tolerance": STAT_TOLERANCE, "gross_mean": GROSS_MEAN, "gross_std": GROSS_STD},
        "Normalise with the statistics the backbone's weights were trained with (timm "
        "resolve_model_data_config; clipdoctor's pipeline uses them for its own backbones).",
        effect=1.0)]


@check("inconsistent-augmentation", order=16, requires=("augmentation", "keras_graph"))
def augmentation_consistency(probes: Probes) -> list[Finding]:
    """One repeated frame through the training transform must stay identical frame to frame
    (the user's augment=, or a Keras model's random layers inside TimeDistributed)."""
    au = probes.get("augmentation")
    jitter, motion = au["jitter"], au["motion"]
    if jitter < JITTER_MIN:
        return []
    ratio = jitter / motion if motion > 0 else float("inf")
    users = au.get("source")  # "augment=<name>" or "Keras layer '...'": the user's own
    keras = get(probes, "keras_graph", optional=True) is not None
    remedy = ("Draw augmentation parameters once per clip (data.augment.per_frame: false; "
              "torchvision v2 on a tv_tensors.Video does this).") if not users else (
        f"Make {users} draw its random parameters once per clip and apply them to every frame "
        "(torchvision.transforms.v2 on the whole (T, C, H, W) clip or a tv_tensors.Video does; "
        "a loop over frames calling a random transform does not).")
    if au.get("keras_layers"):
        named = ", ".join(f"'{n}'" for n in au["keras_layers"])
        remedy = ("Apply one random transform to the whole clip (draw the parameters once per "
                  f"clip), not a random layer inside TimeDistributed: move {named} out of the "
                  "model into the input pipeline (e.g. a tf.data / numpy step that "
                  "transforms all T frames alike), or apply it to the clip reshaped to one "
                  "image (frames stacked along the channels).")
    elif keras and users:
        remedy = (f"Apply one random transform to the whole clip in {users} (draw the parameters "
                  "once per clip and apply them to every frame), not one per frame; "
                  "ImageDataGenerator.random_transform called frame by frame draws per frame.")
    return [Finding(
        "inconsistent-augmentation", "error" if ratio >= JITTER_ERROR else "warning",
        f"{'Your ' + users if users else 'The training transform'} changes identical frames "
        f"of a clip differently (jitter {jitter:.3f} vs real motion {motion:.3f} per step)",
        {"jitter": jitter, "jitter_max": au["jitter_max"], "motion": motion,
         "jitter_over_motion": ratio if math.isfinite(ratio) else "inf",
         "jitter_min": JITTER_MIN, "error_at_ratio": JITTER_ERROR,
         "per_frame_setting": au.get("per_frame_setting"), "source": users,
         "units": au.get("units"), "keras_layers": au.get("keras_layers")},
        remedy,
        effect=min(3.0, ratio) if math.isfinite(ratio) else 3.0)]


def _augmentation_pairs(probes: Probes) -> tuple[list[tuple[str, float, float, float]], int]:
    """(how, augmented loss, clean loss, required gap in ln K) from the probes that ran, and K."""
    o = get(probes, "overfit_batch", optional=True)
    run = get(probes, "short_run", optional=True)
    skip_unless(probes, overfit_batch=o, short_run=run)
    pairs = []
    if o is not None and isinstance(o.augmentation, MemorisedGap):
        a = o.augmentation
        pairs.append((f"model that fit {a.clips} clips, on augmented draws of them",
                      a.augmented_loss, a.clean_loss, AUG_MEMORISED_GAP))
    g = run.augmentation_gap if run is not None else None
    if g and g.clean_loss < HIGH_LOSS * lnk(run.classes):  # the model learned something
        pairs.append(("short-run model, training clips", g.augmented_loss, g.clean_loss,
                      AUG_MIN_GAP))
    k = run.classes if run is not None else probes.get("training_data")["classes"]
    return pairs, k


@check("augmentation-too-strong", order=79,
       requires=("overfit_batch", "short_run", "training_data"))
def augmentation_strength(probes: Probes) -> list[Finding]:
    """Loss on augmented clips far above the loss on the same clips unaugmented: for the model
    that fit one batch (does augmentation destroy what identifies a clip?) and for the
    short-run model trained with the augmentation."""
    pairs, k = _augmentation_pairs(probes)
    ln_k = lnk(k)
    # the ratio is taken above the loss's floor: label smoothing keeps even a memorised clip's
    # loss above 0 (`loss_floor` of the training probes; 0 without smoothing)
    floor = (get(probes, "training_data", optional=True) or {}).get("loss_floor") or 0.0
    hits = [(how, a, c) for how, a, c, need in pairs
            if a - floor >= AUG_RATIO * (c - floor) and a - c >= need * ln_k]
    if not hits:
        return []
    how, a, c = max(hits, key=lambda h: h[1] - h[2])
    return [Finding(
        "augmentation-too-strong", "warning",
        f"Loss on augmented clips is {a:.2f} against {c:.2f} on the same clips unaugmented ({how})",
        {"comparisons": [{"how": h, "augmented": x, "clean": y, "min_gap_lnk": n}
                         for h, x, y, n in pairs], "ln_k": ln_k, "ratio": AUG_RATIO,
         "loss_floor": floor},
        "Augment less: a larger crop area (--scale 0.6 1.0), small rotations (--degrees 5), "
        "little hue change (--hue 0.02).",
        effect=min(2.0, (a - c) / ln_k))]
