"""Input checks: what the model receives from each clip. Static clips, frames out of order,
sequences too short, clip shapes that vary, unnormalised input and augmentation that treats
the frames of one clip differently.

Pure functions of the data probes (`probes/clip_scan.py`, `probes/data.py`), with thresholds,
their sources and `effect` as in `checks/data.py`.
"""

from __future__ import annotations

import math
from statistics import median

from clipdoctor.diagnose.findings import Finding
from clipdoctor.diagnose.probes import Probes
from clipdoctor.diagnose.registry import check

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

# -- sequence too short ---------------------------------------------------------------------
COVERAGE_MIN = 1 / 3  # sampled span / clip (FIELD-NOTES: keras.io takes the first 20 frames, ~0.1
# of an average UCF101 clip of 7 s at 25 fps); uniform sampling covers 1 - 1/T (0.94 at T=8)
MIN_STEPS = 4  # fewer sampled frames than this cannot show a motion's course (start, middle, end)

# =============================================================================================
# frames: static clips, frame order, sequence length, shapes

@check("static-clips", order=20)
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


@check("frame-order-corrupted", order=20)
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


@check("sequence-too-short", order=21)
def sequence_length(probes: Probes) -> list[Finding]:
    """Too few frames sampled, or a sampled span far shorter than the clip."""
    scan = probes.get("clip_scan")
    clips, sampling = scan["_clips"], scan["sampling"]
    if not clips:
        return []
    t = sampling["frames"]
    coverage = median(c["coverage"] for c in clips)
    frames = median(c["frames"] for c in clips)
    problems = []
    if coverage < COVERAGE_MIN:
        problems.append(f"the {t} sampled frames span {coverage:.0%} of a typical clip "
                        f"({frames:.0f} frames)")
    if t < MIN_STEPS and frames > t:
        problems.append(f"only {t} frames are sampled per clip")
    if not problems:
        return []
    gaps = [c["sampled_gap_s"] for c in clips if c["sampled_gap_s"] is not None]
    return [Finding(
        "sequence-too-short", "warning", "; ".join(problems),
        {"frames_sampled": t, "median_clip_frames": frames, "median_coverage": coverage,
         "coverage_min": COVERAGE_MIN, "min_steps": MIN_STEPS, "sampler": sampling["sampler"],
         "stride": sampling["stride"],
         "median_gap_s": round(median(gaps), 3) if gaps else None},
        "Cover the whole clip: --sampler uniform (TSN segments), or a larger --stride with "
        "the dense sampler, and more steps (--frames 16).",
        effect=(1 - min(coverage, 1.0)) * math.log(2))]


@check("inconsistent-clip-shape", order=14)
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
    return [Finding(
        "inconsistent-clip-shape", "info" if handled_len else "error",
        f"Your Dataset yields clips that vary in {', '.join(what)}"
        + (" (lengths given: padded and masked)" if handled_len else ": they cannot be batched"),
        evidence,
        "Resize every frame to one size and sample a fixed number of frames in the Dataset "
        "(or return (clip, label, length) and pad), or load the files with "
        "clipdoctor.load_dataset, which does both.",
        effect=0.0 if handled_len else 2.0)]


# =============================================================================================
# model inputs: normalisation, augmentation

def _close(a: list[float], b: list[float]) -> bool:
    return all(abs(x - y) <= STAT_TOLERANCE for x, y in zip(a, b))


@check("unnormalized-input", order=15)
def input_normalization(probes: Probes) -> list[Finding]:
    """Model inputs in 0..255 or 0..1, normalised with other statistics than the backbone's
    weights expect, or with grossly off per-channel statistics."""
    st = probes.get("input_stats")
    mean, std, lo, hi = st["mean"], st["std"], st["min"], st["max"]
    applied, expected = st["applied"], st.get("expected")
    evidence = {"mean": mean, "std": std, "min": lo, "max": hi, "applied": applied,
                "expected": expected, "clips": st["clips"]}
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
    if expected and not (_close(applied["mean"], expected["mean"])
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


@check("inconsistent-augmentation", order=16)
def augmentation_consistency(probes: Probes) -> list[Finding]:
    """One repeated frame through the training transform must stay identical frame to frame."""
    au = probes.get("augmentation")
    jitter, motion = au["jitter"], au["motion"]
    if jitter < JITTER_MIN:
        return []
    ratio = jitter / motion if motion > 0 else float("inf")
    return [Finding(
        "inconsistent-augmentation", "error" if ratio >= JITTER_ERROR else "warning",
        f"The training transform changes identical frames of a clip differently "
        f"(jitter {jitter:.3f} vs real motion {motion:.3f} per step)",
        {"jitter": jitter, "jitter_max": au["jitter_max"], "motion": motion,
         "jitter_over_motion": ratio if math.isfinite(ratio) else "inf",
         "jitter_min": JITTER_MIN, "error_at_ratio": JITTER_ERROR,
         "per_frame_setting": au.get("per_frame_setting")},
        "Draw augmentation parameters once per clip (data.augment.per_frame: false; "
        "torchvision v2 on a tv_tensors.Video does this).",
        effect=min(3.0, ratio) if math.isfinite(ratio) else 3.0)]
