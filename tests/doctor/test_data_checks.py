"""Data checks: each code sick and healthy on scripted measurements, then end to end with the
fault planted for real (tiny real videos, small budgets) and the same setup healthy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipdoctor.data import decode
from clipdoctor.data.datamodule import ClipDataModule
from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate, render_clip, clip_rng, write_video
from clipdoctor.demo import demo_config
from clipdoctor.doctor.probes import Probes
from clipdoctor.doctor.runner import build_context, diagnose, run_checks

from conftest import make_video

DATA_CHECKS = ["class_balance", "class_weights", "sample_size", "corrupt_clips", "split_classes",
               "split_leakage", "label_noise", "static_clips", "frames_in_order",
               "sequence_length", "clip_shape", "input_normalization",
               "augmentation_consistency"]
DATA_CODES = {"class-imbalance", "class-weights-unused", "too-few-samples", "corrupt-clips",
              "split-class-mismatch", "train-val-leakage", "label-noise", "static-clips",
              "frame-order-corrupted", "unnormalized-input", "inconsistent-augmentation",
              "inconsistent-clip-shape", "sequence-too-short"}


def run(values: dict, name: str) -> tuple[dict, list[dict]]:
    """Run one check on scripted probe values -> ({code: severity}, skipped)."""
    findings, skipped, failures = run_checks(Probes(values=values), [name])
    assert failures == [], failures
    return {f.code: f.severity for f in findings}, skipped


def found(values: dict, name: str) -> dict:
    """{code: severity} of one check on scripted probe values."""
    return run(values, name)[0]


# =============================================================================================
# scripted measurements

def dataset(train=(30, 30), val=(4, 4), test=(4, 4), weighting="balanced", source="config",
            params=700_000, skipped=()) -> dict:
    classes = [f"c{i}" for i in range(len(train))]
    listed = sum(train) + sum(val) + sum(test) + len(skipped)
    counts = {"train": list(train), "val": list(val), "test": list(test)}
    return {"dataset": {"classes": classes, "counts": counts, "listed": listed,
                        "skipped": [{"path": p, "reason": "broken"} for p in skipped],
                        "class_weighting": weighting, "weighting_source": source,
                        "loss": "CrossEntropyLoss", "trainable_params": params}}


def clip(name="a.mp4", split="train", frames=16, peak=60.0, detours=0, judged=5, coverage=0.94,
         std=30.0, mean=100.0, width=64, height=64, channels=None) -> dict:
    kept = min(frames, 32)
    return {"name": name, "split": split, "label": 0, "frames": frames, "width": width,
            "height": height, "fps": 12.0, "channels": channels, "kept": kept,
            "frame_mean": [mean] * kept, "frame_std": [std] * kept,
            "motion": 3.0, "motion_peak": peak, "d1": 2.0, "d2": 3.2, "detours": detours,
            "judged": judged, "coverage": coverage, "sampled_gap_s": 0.15}


def scan(clips: list[dict], frames: int = 8, sampler: str = "uniform") -> dict:
    return {"clip_scan": {
        "clips": len(clips), "readable": len(clips), "failed": [],
        "sampling": {"sampler": sampler, "frames": frames, "stride": 2, "max_stride": 4,
                     "short": "repeat", "cache_frames": 32, "cached": True},
        "definitions": {"flat_std": 3.0, "detour_ratio": 0.5, "detour_min_step": 1.5,
                        "scan_side": 32},
        "_clips": clips}}


IMB, WEIGHTS, FEW = "class-imbalance", "class-weights-unused", "too-few-samples"


def test_class_imbalance_scripted():
    assert found(dataset(train=(50, 10), weighting="none"), "class_balance") == {IMB: "warning"}
    assert found(dataset(train=(50, 10)), "class_balance") == {IMB: "info"}
    assert found(dataset(train=(30, 29), weighting="none"), "class_balance") == {}


def test_class_weights_unused_scripted():
    assert found(dataset(train=(50, 10), weighting="none"), "class_weights") == {WEIGHTS: "warning"}
    assert found(dataset(train=(50, 10), weighting="sampler"), "class_weights") == {}
    weighted_loss = dataset(train=(50, 10), weighting="loss", source="loss_fn")
    assert found(weighted_loss, "class_weights") == {}
    assert found(dataset(train=(30, 30), weighting="none"), "class_weights") == {}
    unknown = dataset(train=(50, 10), weighting="unknown", source="loss_fn")
    codes_, skipped = run(unknown, "class_weights")
    assert codes_ == {} and skipped[0]["codes"] == [WEIGHTS] and "unknown" in skipped[0]["reason"]


def test_too_few_samples_scripted():
    assert found(dataset(train=(8, 30)), "sample_size") == {FEW: "warning"}
    assert found(dataset(train=(3, 30)), "sample_size") == {FEW: "error"}
    assert found(dataset(train=(14, 30)), "sample_size") == {FEW: "info"}
    assert found(dataset(train=(30, 30)), "sample_size") == {}
    # capacity: 4 M trainable parameters need 40 clips per class, 25 M need 100
    assert found(dataset(train=(30, 30), params=4_000_000), "sample_size") == {FEW: "info"}
    assert found(dataset(train=(30, 30), params=25_000_000), "sample_size") == {FEW: "warning"}


def test_corrupt_clips_scripted():
    ok = scan([clip(f"{i}.mp4") for i in range(20)])
    assert found({**dataset(), **ok}, "corrupt_clips") == {}
    one_lost = {**dataset(skipped=["x.mp4"]), **ok}
    assert found(one_lost, "corrupt_clips") == {"corrupt-clips": "warning"}
    lost = dataset(train=(10, 10), val=(0, 0), test=(0, 0), skipped=[f"{i}.mp4" for i in range(8)])
    assert found({**lost, **ok}, "corrupt_clips") == {"corrupt-clips": "error"}
    blank = {**dataset(), **scan([clip("black.mp4", std=0.5, mean=2.0), clip("ok.mp4"),
                                  clip("short.mp4", frames=2)])}
    findings, _, _ = run_checks(Probes(values=blank), ["corrupt_clips"])
    reasons = {b["path"]: b["reason"] for b in findings[0].evidence["blank_or_short"]}
    assert set(reasons) == {"black.mp4", "short.mp4"} and "black" in reasons["black.mp4"]


def test_split_class_mismatch_scripted():
    mismatch = "split-class-mismatch"
    assert found(dataset(train=(30, 30, 30), val=(4, 4, 4), test=(4, 4, 4)), "split_classes") == {}
    # keras tail split: the last class only in val, never trained on
    tail = dataset(train=(30, 30, 0), val=(0, 0, 12), test=(0, 0, 0))
    assert found(tail, "split_classes") == {mismatch: "error"}
    untested = dataset(train=(30, 30, 30), val=(4, 4, 0), test=(4, 4, 4))
    assert found(untested, "split_classes") == {mismatch: "warning"}
    skewed = dataset(train=(30, 30, 30), val=(20, 2, 2), test=(4, 4, 4))  # 0.83 / 0.08 / 0.08
    assert found(skewed, "split_classes") == {mismatch: "warning"}


def leak(groups_leaked=0, pixel=0.6) -> dict:
    group = {"group": "Jump_g01", "splits": {"train": 3, "val": 1}}
    pair = {"a": "a.mp4", "split_a": "train", "b": "b.mp4", "split_b": "val", "pixel": pixel,
            "feature": 0.9}
    return {"leakage": {"groups": 10, "groups_leaked": groups_leaked,
                        "leaked_groups": [group] * groups_leaked,
                        "clips_in_leaked_groups": 4 * groups_leaked,
                        "eval_clips_in_leaked_groups": groups_leaked, "compared": 40,
                        "eval_clips": 8, "features_skipped": None, "nearest": [pair]}}


def test_train_val_leakage_scripted():
    assert found(leak(), "split_leakage") == {}
    assert found(leak(groups_leaked=2), "split_leakage") == {"train-val-leakage": "warning"}
    assert found(leak(pixel=0.999), "split_leakage") == {"train-val-leakage": "warning"}


def labels(share=0.2, recall=(0.99, 0.99, 0.99, 0.99), weights="hub", left=0) -> dict:
    """4 classes of 25 clips; `share` of them flagged (a->b, spread over the classes), `recall`
    on the unflagged clips per class, `left` of those still misclassified."""
    names = ["a", "b", "c", "d"]
    flagged = round(share * 100)
    issues = [{"path": f"{i}.mp4", "given": names[i % 4], "predicted": names[(i + 1) % 4],
               "p_given": 0.1, "p_predicted": 0.9, "margin": 0.8} for i in range(flagged)]
    per_class = {c: {"clips": 25, "flagged": sum(i["given"] == c for i in issues),
                     "cleaned_recall": r} for c, r in zip(names, recall)}
    for c in per_class.values():
        c["kept"] = 25 - c["flagged"]
        c["kept_wrong"] = 0
    per_class["a"]["kept_wrong"] = left
    return {"label_issues": {"clips": 100, "classes": 4, "backbone_weights": weights,
                             "probe_accuracy": 1 - share, "cleaned_accuracy": min(recall),
                             "chance": 0.25, "flagged": flagged, "share": flagged / 100,
                             "per_class": per_class, "issues": issues}}


def test_label_noise_scripted():
    assert found(labels(0.2), "label_noise") == {"label-noise": "warning"}
    assert found(labels(0.3), "label_noise") == {"label-noise": "error"}
    assert found(labels(0.02), "label_noise") == {"label-noise": "info"}
    assert found(labels(0.0), "label_noise") == {}
    for weak in (labels(0.3, recall=(0.7, 0.8, 0.99, 0.5)), labels(0.3, weights="random"),
                 labels(0.02, left=4)):  # 5 % errors left vs 2 % flagged: the probe's own
        codes_, skipped = run(weak, "label_noise")
        assert codes_ == {} and skipped[0]["codes"] == ["label-noise"]


def test_label_noise_judges_only_the_classes_the_probe_separates():
    """Measured on CLEAN demo clips with a trained demo backbone: six classes recalled at
    0.95-1.0, the rotation pair at chance, most of cleanlab's flags inside the pair. Only flags
    between judged classes count, and the finding names what was not judged."""
    li = labels(0.0, recall=(0.99, 0.99, 0.5, 0.4))["label_issues"]
    flag = {"p_given": 0.1, "p_predicted": 0.9, "margin": 0.8}
    li["issues"] = [{"path": f"{i}.mp4", "given": "c", "predicted": "d", **flag}
                    for i in range(12)] + [{"path": "x.mp4", "given": "a", "predicted": "c", **flag}]
    assert found({"label_issues": li}, "label_noise") == {}  # every flag touches c or d
    li["issues"].append({"path": "y.mp4", "given": "a", "predicted": "b", **flag})
    (f,), _, _ = run_checks(Probes(values={"label_issues": li}), ["label_noise"])
    assert f.severity == "info" and f.evidence["clips"] == 50 and f.evidence["flagged"] == 1
    assert f.evidence["unjudged_classes"] == ["c", "d"] and "c, d" in f.remedy
    assert f.evidence["cleaned_accuracy"] == 0.4  # the earlier evidence key stays


def test_static_clips_scripted():
    assert found(scan([clip(peak=3.0)] * 10), "static_clips") == {"static-clips": "warning"}
    assert found(scan([clip(peak=3.0)] + [clip()] * 19), "static_clips") == {"static-clips": "info"}
    assert found(scan([clip()] * 10), "static_clips") == {}


def test_frame_order_scripted():
    order = "frame-order-corrupted"
    assert found(scan([clip(detours=2)] * 10), "frames_in_order") == {order: "error"}
    assert found(scan([clip(detours=1)] + [clip()] * 7), "frames_in_order") == {order: "warning"}
    assert found(scan([clip()] * 10), "frames_in_order") == {}
    assert found(scan([clip(detours=1, judged=1)] * 3), "frames_in_order") == {}  # too few


def test_sequence_too_short_scripted():
    short = {"sequence-too-short": "warning"}
    dense = scan([clip(frames=150, coverage=0.13)] * 5, sampler="dense")  # keras: first 20 frames
    assert found(dense, "sequence_length") == short
    assert found(scan([clip(frames=60)] * 5, frames=2), "sequence_length") == short
    assert found(scan([clip()] * 5), "sequence_length") == {}


def shapes(source="files", frames=(16, 16), sizes=1, channels=(3,), with_length=False) -> dict:
    return {"clip_shapes": {"source": source, "handled": source == "files", "clips": 10,
                            "frames": {"min": frames[0], "max": frames[1]},
                            "sizes": {"64x64": 10}, "distinct_sizes": sizes,
                            "channels": list(channels), "with_length": with_length,
                            "frames_sampled": 8, "ndim": [4]}}


def test_inconsistent_clip_shape_scripted():
    shape = "inconsistent-clip-shape"
    assert found(shapes(), "clip_shape") == {}
    assert found(shapes(frames=(10, 300), sizes=3), "clip_shape") == {shape: "info"}
    assert found(shapes("dataset", sizes=2), "clip_shape") == {shape: "error"}
    assert found(shapes("dataset", frames=(8, 12)), "clip_shape") == {shape: "error"}
    padded = shapes("dataset", frames=(8, 12), with_length=True)
    assert found(padded, "clip_shape") == {shape: "info"}
    assert found(shapes("dataset"), "clip_shape") == {}
    flat = {"clip_shapes": {**shapes("dataset")["clip_shapes"], "ndim": [3],
                            "shapes": {"8x32x32": 10}}}  # (T, H, W): no channel axis
    assert found(flat, "clip_shape") == {shape: "error"}


def inputs(lo=-2.1, hi=2.6, mean=(0.0, 0.1, -0.1), std=(1.0, 0.9, 1.1), applied=(0.485, 0.229),
           expected=(0.485, 0.229)) -> dict:
    stats = {"mean": [expected[0]] * 3, "std": [expected[1]] * 3, "backbone": "r"} \
        if expected is not None else None
    return {"input_stats": {"clips": 8, "mean": list(mean), "std": list(std), "min": lo, "max": hi,
                            "applied": {"mean": [applied[0]] * 3, "std": [applied[1]] * 3},
                            "expected": stats}}


def test_unnormalized_input_scripted():
    norm, name = "unnormalized-input", "input_normalization"
    assert found(inputs(), name) == {}
    raw = inputs(0, 255, (110, 100, 90), (60, 60, 60), (0, 1 / 255))
    assert found(raw, name) == {norm: "error"}
    unit = inputs(0, 1, (0.45, 0.4, 0.4), (0.25, 0.25, 0.25), (0, 1), None)
    assert found(unit, name) == {norm: "warning"}
    assert found(inputs(applied=(0.5, 0.5)), name) == {norm: "warning"}  # not the weights' stats


def test_inconsistent_augmentation_scripted():
    name, code = "augmentation_consistency", "inconsistent-augmentation"

    def aug(jitter: float) -> dict:
        return {"augmentation": {"clips": 8, "jitter_max": 0.3, "per_frame_setting": True,
                                 "jitter": jitter, "motion": 0.04}}

    assert found(aug(0.2), name) == {code: "error"}
    assert found(aug(0.01), name) == {code: "warning"}
    assert found(aug(0.0), name) == {}


# =============================================================================================
# end to end: tiny real videos, the fault planted for real

SMALL = {"data.size": 32, "data.frame_size": 36}  # test_resnet at 32 px: 1x1 maps, fast


def config(tmp: Path, **extra):
    return demo_config(tmp / "cache", **{**SMALL, **extra})


def codes(report, severities=("error", "warning")) -> dict:
    return {f.code: f.severity for f in report.findings
            if f.code in DATA_CODES and f.severity in severities}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """2 classes x 28 clips (about 22 training clips per class), 8 frames, 32 px."""
    root = tmp_path_factory.mktemp("healthy") / "data"
    generate(root, clips_per_class=28, frames=8, size=32, classes=("move_left", "grow"), seed=4)
    return load_source(root)


def test_healthy_data_reports_no_data_error_or_warning(healthy, tmp_path):
    report = diagnose(healthy, config=config(tmp_path), budget_s=30, checks=DATA_CHECKS)
    assert codes(report) == {}, [(f.code, f.title) for f in report.findings]
    assert report.failures == []
    not_judged = {c for s in report.skipped for c in s["codes"]}
    assert not_judged <= {"label-noise"}, report.skipped  # random weights: labels not judged


def test_imbalanced_unweighted_data_e2e(tmp_path):
    root = tmp_path / "data"
    generate(root, clips_per_class=20, frames=6, size=32, imbalance=5,
             classes=("move_left", "grow"), seed=1)
    data = load_source(root)
    sick = diagnose(data, config=config(tmp_path, **{"train.class_weighting": "none"}),
                    budget_s=20, checks=["class_balance", "class_weights"])
    assert codes(sick) == {"class-imbalance": "warning", "class-weights-unused": "warning"}
    fixed = diagnose(data, config=config(tmp_path), budget_s=20,
                     checks=["class_balance", "class_weights"])
    assert codes(fixed) == {}  # balanced weights: imbalance is only info


class TinyModel(nn.Module):
    """A user model: (B, T, C, H, W) -> (B, classes) from mean colour over time."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(1, 3, 4)))  # (B, T, C, H, W) -> (B, C) -> (B, classes)


def test_class_weights_of_a_user_loss_e2e(tmp_path):
    root = tmp_path / "data"
    generate(root, clips_per_class=20, frames=6, size=32, imbalance=5,
             classes=("move_left", "grow"), seed=1)
    data = load_source(root)
    names = ["class_weights"]

    def with_loss(loss_fn):
        return diagnose(data, config=config(tmp_path), model=TinyModel(), loss_fn=loss_fn,
                        budget_s=20, checks=names)

    assert codes(with_loss(nn.CrossEntropyLoss())) == {"class-weights-unused": "warning"}
    assert codes(with_loss(nn.CrossEntropyLoss(weight=torch.tensor([0.6, 3.0])))) == {}
    unknown = with_loss(lambda logits, y: nn.functional.cross_entropy(logits, y))
    assert codes(unknown) == {} and unknown.skipped[0]["codes"] == ["class-weights-unused"]


def test_too_few_samples_e2e(tmp_path):
    root = tmp_path / "data"
    generate(root, clips_per_class=10, frames=6, size=32, classes=("move_left", "grow"), seed=2)
    report = diagnose(load_source(root), config=config(tmp_path), budget_s=20,
                      checks=["sample_size"])
    assert codes(report) == {"too-few-samples": "warning"}


def test_corrupt_and_blank_clips_e2e(tmp_path):
    root = tmp_path / "data"
    made = generate(root, clips_per_class=8, frames=8, size=32, corrupt=0.25,
                    classes=("move_left", "grow"), seed=3)
    write_video(root / "grow" / "black.mp4", np.zeros((8, 32, 32, 3), np.uint8))
    report = diagnose(load_source(root), config=config(tmp_path), budget_s=20,
                      checks=["corrupt_clips"])
    assert codes(report) == {"corrupt-clips": "error"}  # 5 of 17 clips
    evidence = report.findings[0].evidence
    broken = {Path(p).name for p in made.corrupt}
    assert {Path(u["path"]).name for u in evidence["unreadable"]} == broken
    assert [b["path"] for b in evidence["blank_or_short"]] == ["grow/black.mp4"]


def _split_folders(root: Path, layout: dict[str, dict[str, int]]) -> None:
    """root/<split>/<class>/<n>.mp4 with the given clip counts."""
    k = 0
    for split, classes in layout.items():
        for cls, n in classes.items():
            for i in range(n):
                make_video(root / split / cls / f"{i}.mp4", n=6, size=(16, 16), offset=k % 200)
                k += 1


def test_split_class_mismatch_e2e(tmp_path):
    tail = tmp_path / "tail"  # class-sorted tail split: 'c' only in val
    _split_folders(tail, {"train": {"a": 6, "b": 6}, "val": {"c": 3}})
    report = diagnose(load_source(tail), config=config(tmp_path), budget_s=10,
                      checks=["split_classes"])
    assert codes(report) == {"split-class-mismatch": "error"}
    good = tmp_path / "good"
    _split_folders(good, {"train": {"a": 6, "b": 6}, "val": {"a": 2, "b": 2}})
    report = diagnose(load_source(good), config=config(tmp_path), budget_s=10,
                      checks=["split_classes"])
    assert codes(report) == {}


def _motion_clip(path: Path, cls: str, index: int, seed: int, crf: int = 18) -> None:
    write_video(path, render_clip(cls, clip_rng(seed, cls, index), 8, 32), crf=crf)


def test_train_val_leakage_e2e(tmp_path):
    # UCF101-style names: group g01 of Jump has clips in train and in val
    root = tmp_path / "ucf"
    for split, groups in (("train", (1, 2, 3)), ("val", (1, 4))):
        for cls, motion in (("Jump", "move_up"), ("Run", "move_left")):
            for g in groups:
                _motion_clip(root / split / cls / f"v_{cls}_g{g:02d}_c01.mp4", motion, g, seed=5)
    report = diagnose(load_source(root), config=config(tmp_path), budget_s=20,
                      checks=["split_leakage"])
    assert codes(report) == {"train-val-leakage": "warning"}
    evidence = report.findings[0].evidence
    assert evidence["groups_leaked"] == 2
    # the g01 clips are also the same footage on both sides: near-duplicates by pixels
    assert {p["a"].split("/")[-1] for p in evidence["near_duplicates"]} == \
        {"v_Jump_g01_c01.mp4", "v_Run_g01_c01.mp4"}

    clean = tmp_path / "clean"  # distinct footage, no shared groups
    for split, groups in (("train", (1, 2, 3)), ("val", (4, 5))):
        for cls, motion in (("Jump", "move_up"), ("Run", "move_left")):
            for g in groups:
                _motion_clip(clean / split / cls / f"v_{cls}_g{g:02d}_c01.mp4", motion, g, seed=5)
    report = diagnose(load_source(clean), config=config(tmp_path), budget_s=20,
                      checks=["split_leakage"])
    assert codes(report) == {}


TINTS = {"red": (200, 60, 60), "green": (60, 200, 60), "blue": (60, 60, 200)}


def _tinted(root: Path, per: int, noise: float, seed: int = 0) -> set[str]:
    """Clips whose colour tells their class (so even untrained features separate them), a
    square moving across; `noise` of them written into another class's folder. -> the
    mislabelled names."""
    rng = np.random.default_rng(seed)
    names = list(TINTS)
    plan = [(c, i) for c in names for i in range(per)]
    wrong = set(rng.choice(len(plan), round(noise * len(plan)), replace=False).tolist())
    truth = set()
    for j, (cls, i) in enumerate(plan):
        base = np.array(TINTS[cls], np.float64)
        bg = base * rng.uniform(0.6, 1.0) + rng.normal(0, 25, (32, 32, 1))
        frames = np.repeat(bg[None], 8, axis=0)  # (T, H, W, 3)
        for t in range(8):
            x = 2 + t * 3
            frames[t, 10:18, x:x + 8] = 255 - base
        label = names[(names.index(cls) + 1 + int(rng.integers(2))) % 3] if j in wrong else cls
        write_video(root / label / f"{cls}_{i:02d}.mp4", np.clip(frames, 0, 255).astype(np.uint8))
        if j in wrong:
            truth.add(f"{label}/{cls}_{i:02d}.mp4")
    return truth


@pytest.fixture(scope="module")
def given_weights(tmp_path_factory) -> Path:
    """test_resnet weights in a file: the doctor trusts given weights' features (random ones
    it does not); on colour-coded clips even these untrained features separate the classes."""
    import safetensors.torch

    from clipdoctor.models.backbones import create_backbone

    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    torch.manual_seed(0)
    backbone, _ = create_backbone("test_resnet")
    safetensors.torch.save_file(backbone.model.state_dict(), str(path))
    return path


def test_label_noise_e2e(tmp_path, given_weights):
    truth = _tinted(tmp_path / "noisy", per=40, noise=0.2)
    cfg = config(tmp_path, **{"model.weights": given_weights})
    report = diagnose(load_source(tmp_path / "noisy"), config=cfg, budget_s=30,
                      checks=["label_noise"])
    assert codes(report) == {"label-noise": "warning"}, report.skipped
    flagged = {e["path"] for e in report.findings[0].evidence["examples"]}
    assert len(flagged & truth) >= 0.7 * len(truth)  # most planted errors found
    assert len(flagged & truth) >= 0.7 * len(flagged)  # and few clean clips accused

    _tinted(tmp_path / "clean", per=16, noise=0.0)
    report = diagnose(load_source(tmp_path / "clean"), config=cfg, budget_s=30,
                      checks=["label_noise"])
    assert codes(report, ("error", "warning", "info")) == {} and report.skipped == []


def test_static_clips_e2e(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("move_left", "grow"):
        for i in range(8):
            frames = render_clip(cls, clip_rng(0, cls, i), 8, 32)
            if i < 4:  # a frozen camera: one frame, faint sensor noise
                noise = rng.normal(0, 1.5, (8, 32, 32, 1))
                frames = np.clip(frames[4:5] + noise, 0, 255).astype(np.uint8)
            write_video(root / cls / f"{i}.mp4", frames)
    report = diagnose(load_source(root), config=config(tmp_path), budget_s=20,
                      checks=["static_clips"])
    assert codes(report) == {"static-clips": "warning"}
    assert report.findings[0].evidence["share"] == 0.5


def _frame_folders(root: Path, n: int = 20) -> None:
    """root/<class>/clip<i>/f1.png .. f<n>.png: names that sort wrongly as plain strings."""
    for cls in ("move_left", "grow"):
        for i in range(4):
            for t, frame in enumerate(render_clip(cls, clip_rng(1, cls, i), n, 32)):
                folder = root / cls / f"clip{i}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frame).save(folder / f"f{t + 1}.png")


def test_frame_order_corrupted_e2e(tmp_path, monkeypatch):
    _frame_folders(tmp_path / "frames")
    checks = ["frames_in_order"]
    natural = diagnose(load_source(tmp_path / "frames"), config=config(tmp_path / "a"),
                       budget_s=20, checks=checks)
    assert codes(natural) == {}
    assert natural.probes["clip_scan"]["summary"]["order_judged_clips"] >= 5  # order was judged
    monkeypatch.setattr(decode, "natural_key", str)  # f1, f10, f11, ..., f19, f2, f20, f3
    lexical = diagnose(load_source(tmp_path / "frames"), config=config(tmp_path / "b"),
                       budget_s=20, checks=checks)
    assert codes(lexical) == {"frame-order-corrupted": "error"}


def test_unnormalized_input_e2e(healthy, tmp_path):
    cfg = config(tmp_path)
    for (mean, std), expected in ((((0, 0, 0), (1 / 255,) * 3), "error"),  # raw 0..255
                                  (((0, 0, 0), (1, 1, 1)), "warning"),  # 0..1
                                  ((None, None), None)):  # the backbone's own statistics
        ctx = build_context(healthy, config=cfg, budget_s=20)
        if mean is not None:
            dm = ClipDataModule(healthy, cfg.data, mean=mean, std=std)
            dm.prepare()
            ctx.cache["dm"] = dm  # a pipeline normalising with the wrong statistics
        findings, _, _ = run_checks(Probes(ctx), ["input_normalization"])
        assert {f.code: f.severity for f in findings} == \
            ({"unnormalized-input": expected} if expected else {})


def test_inconsistent_augmentation_e2e(healthy, tmp_path):
    sick = diagnose(healthy, config=config(tmp_path, **{"data.augment.per_frame": True}),
                    budget_s=20, checks=["augmentation_consistency"])
    assert codes(sick) == {"inconsistent-augmentation": "error"}
    fine = diagnose(healthy, config=config(tmp_path), budget_s=20,
                    checks=["augmentation_consistency"])
    assert codes(fine, ("error", "warning", "info")) == {}


class ClipList(torch.utils.data.Dataset):
    """A user's own Dataset of (clip (T, C, H, W), label)."""

    def __init__(self, clips: list[torch.Tensor]) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        return self.clips[i], i % 2


def test_inconsistent_clip_shape_e2e(tmp_path):
    mixed = ClipList([torch.rand(8, 3, 32 + 8 * (i % 2), 32) for i in range(6)])
    report = diagnose(mixed, model=TinyModel(), budget_s=10, checks=["clip_shape"])
    assert codes(report) == {"inconsistent-clip-shape": "error"}
    same = ClipList([torch.rand(8, 3, 32, 32) for _ in range(6)])
    report = diagnose(same, model=TinyModel(), budget_s=10, checks=["clip_shape"])
    assert codes(report, ("error", "warning", "info")) == {}
    # files of mixed sizes and lengths: clipdoctor resizes and samples T, so only info
    for i, (size, n) in enumerate([((32, 40), 8), ((24, 24), 12)] * 3):
        make_video(tmp_path / "files" / ("a" if i % 2 else "b") / f"{i}.mp4", n=n, size=size)
    report = diagnose(load_source(tmp_path / "files"), config=config(tmp_path), budget_s=10,
                      checks=["clip_shape"])
    assert codes(report, ("error", "warning", "info")) == {"inconsistent-clip-shape": "info"}


def test_sequence_too_short_e2e(tmp_path):
    # dense sampling of 4 neighbouring frames out of 32 kept: 1/8 of each clip
    root = tmp_path / "data"
    generate(root, clips_per_class=4, frames=32, size=32, classes=("move_left", "grow"), seed=6)
    short = {"data.sampler": "dense", "data.stride": 1, "data.frames": 4}
    report = diagnose(load_source(root), config=config(tmp_path, **short), budget_s=20,
                      checks=["sequence_length"])
    assert codes(report) == {"sequence-too-short": "warning"}
    report = diagnose(load_source(root), config=config(tmp_path), budget_s=20,
                      checks=["sequence_length"])
    assert codes(report) == {}
