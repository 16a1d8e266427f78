"""Data checks: class balance and weighting, sample size, corrupt files, split mismatch,
leakage, label noise. What each clip gives the model (frames, shapes, normalisation,
augmentation) is checked in `checks/inputs.py`.

Each check is a pure function of the data probes (`probes/data.py`, `clip_scan.py`,
`features.py`): it reads measurements,
compares them with the thresholds below and returns findings. Every threshold says where it
comes from: FIELD-NOTES (what other tools and issue threads use) and/or what we measured on
the synthetic demo data (`clipdoctor.data.synthetic.generate`, demo_config: test_resnet,
8 frames at 64 px), sick (fault planted) against healthy.

`effect` is a rough "how much loss would move if fixed", in nats-like units comparable within
a report: mostly the share of clips affected times ln(classes) (what wrongly labelled or
useless clips add to the loss floor), fixed values where no share exists.
"""

from __future__ import annotations

import math
from statistics import median

from clipdoctor.diagnose.findings import Finding
from clipdoctor.diagnose.probes import Probes, ProbeSkipped
from clipdoctor.diagnose.registry import check

# -- class balance: largest / smallest training class ---------------------------------------
IMBALANCE_WARN = 3.0  # above this an unweighted loss drifts to the big classes (FIELD-NOTES:
# pytorchvideo #181, imbalance with no weighting); generate(imbalance=5) plants 5:1
IMBALANCE_INFO = 1.5  # a stratified split of a balanced set stays well below this (measured 1.0)
WEIGHTED = ("balanced", "sampler", "loss")  # ways the loss or the sampler can weight classes

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


def _k(d: dict) -> int:
    return max(2, len(d.get("classes", [])))


# =============================================================================================
# class balance and weighting

def _imbalance(d: dict) -> dict | None:
    """Largest / smallest training class and the evidence, or None when < 2 classes train."""
    counts, classes = d["counts"]["train"], d["classes"]
    present = [c for c in counts if c > 0]
    if len(present) < 2:
        return None
    big, small = counts.index(max(present)), counts.index(min(present))
    return {"ratio": max(present) / min(present), "largest": {classes[big]: counts[big]},
            "smallest": {classes[small]: counts[small]},
            "train_counts": dict(zip(classes, counts)), "big": classes[big],
            "small": classes[small], "n_big": counts[big], "n_small": counts[small]}


@check("class-imbalance", order=10)
def class_balance(probes: Probes) -> list[Finding]:
    """Largest / smallest training-class count; a warning when nothing is known to weight it
    (an unknown user loss counts as unweighted here: the imbalance itself is the finding)."""
    d = probes.get("dataset")
    im = _imbalance(d)
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
        "Weight the loss by class (--class-weighting balanced) or sample classes evenly "
        "(--class-weighting sampler); collect more clips of the small classes.",
        effect=math.log(im["ratio"]))]


@check("class-weights-unused", order=10)
def class_weights(probes: Probes) -> list[Finding]:
    """Imbalanced classes while neither the loss nor the sampler weights them. A user loss
    that is not a (weighted or plain) cross-entropy is not guessed at: the check is skipped."""
    d = probes.get("dataset")
    weighting = d.get("class_weighting", "none")
    im = _imbalance(d)
    if im is None or im["ratio"] < IMBALANCE_WARN or weighting in WEIGHTED:
        return []
    if weighting == "unknown":
        raise ProbeSkipped(f"the loss function '{d.get('loss')}' is not an nn.CrossEntropyLoss: "
                           "whether it weights classes is unknown")
    if d.get("weighting_source") == "config":
        remedy = ("Use --class-weighting balanced (scikit-learn's n / (k * count) weights in "
                  "the loss).")
    else:
        remedy = ("Give the loss class weights: nn.CrossEntropyLoss(weight=n / (k * counts)) "
                  "(scikit-learn's 'balanced'), or sample classes evenly (WeightedRandomSampler).")
    return [Finding(
        "class-weights-unused", "warning",
        f"Classes are imbalanced {im['ratio']:.1f}:1 but neither the loss nor the sampler "
        "weights them",
        {"ratio": im["ratio"], "train_counts": im["train_counts"], "class_weighting": weighting,
         "weighting_source": d.get("weighting_source"), "loss": d.get("loss"),
         "warn_at": IMBALANCE_WARN},
        remedy, effect=math.log(im["ratio"]))]


# =============================================================================================
# too few samples

def clips_needed(trainable_params: int) -> int:
    """Training clips per class the model's trainable parameters call for (MIN_PER_CLASS at
    CAPACITY_REF parameters, growing with the square root, capped at MAX_NEEDED)."""
    scale = math.sqrt(max(1.0, trainable_params / CAPACITY_REF))
    return int(min(MAX_NEEDED, round(MIN_PER_CLASS * scale)))


@check("too-few-samples", order=11)
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
        "Collect more clips of these classes; meanwhile train fewer parameters: a frozen "
        "pretrained backbone (--freeze-backbone --pretrained), a smaller head (--hidden 128 "
        "--proj-dim 128) and more augmented views (--feature-views 4).",
        effect=(needed - fewest) / needed * math.log(_k(d)))]


# =============================================================================================
# corrupt clips

def _scan(probes: Probes) -> dict | None:
    try:
        return probes.get("clip_scan")
    except ProbeSkipped:
        return None


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


@check("corrupt-clips", order=12)
def corrupt_clips(probes: Probes) -> list[Finding]:
    """Files that cannot be decoded (dropped by the data module), and readable clips that are
    blank or far shorter than the T frames the model samples."""
    d = probes.get("dataset")
    scan = _scan(probes)
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
        effect=share * math.log(_k(d)))]


# =============================================================================================
# split class mismatch

def _tvd(a: list[int], b: list[int]) -> float:
    """Total variation distance between the class shares of two count vectors."""
    sa, sb = max(1, sum(a)), max(1, sum(b))
    return 0.5 * sum(abs(x / sa - y / sb) for x, y in zip(a, b))


@check("split-class-mismatch", order=13)
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
        "Split per class (stratified): drop the fixed val/test split and let clipdoctor split "
        "(--val-fraction 0.1 --test-fraction 0.1); never take validation from the tail of "
        "class-sorted data.",
        effect=max([untrained_share, 0.1, *drift.values()]) * math.log(_k(d)))]


# =============================================================================================
# train / val leakage

@check("train-val-leakage", order=30)
def split_leakage(probes: Probes) -> list[Finding]:
    """Source groups (UCF101 `_gNN_`) on both sides of a split, and near-duplicate clips
    across splits (pixel correlation of the sampled frames >= NEAR_DUP)."""
    lk = probes.get("leakage")
    dups = [p for p in lk["nearest"] if p["pixel"] >= NEAR_DUP]
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


# =============================================================================================
# label noise

@check("label-noise", order=60)
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
                           f"{li['probe_accuracy']:.2f} overall); stronger features "
                           f"(--pretrained or --weights) would settle it")
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
                           f"misclassified; stronger features (--pretrained or --weights) would "
                           f"settle it")
    unjudged = sorted(set(per_class) - set(judged))
    severity = "error" if share >= NOISE_ERROR else "warning" if share >= NOISE_WARN else "info"
    scope = f" in {len(judged)} of {len(per_class)} classes" if unjudged else ""
    return [Finding(
        "label-noise", severity,
        f"{share:.0%} of labels ({len(issues)} of {clips} clips{scope}) disagree with confident "
        f"out-of-fold predictions",
        {"share": share, "flagged": len(issues), "clips": clips, "judged_classes": judged,
         "unjudged_classes": unjudged, "probe_accuracy": li["probe_accuracy"],
         "cleaned_accuracy": li["cleaned_accuracy"], "cleaned_recall": {c: per_class[c]["cleaned_recall"] for c in per_class},
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
