"""Proposed fixes, measured before and after in the same run.

Each `bench/proposals/<name>.diff` is a unified diff against the package (`patch -p1` from the
repository root). This part copies `clipdoctor/` to a temporary folder, applies the diff there
(the working tree is never touched) and runs the same micro-benchmark in child processes
against the unchanged package ("before") and the patched copy ("after"), in turns, keeping
each side's best time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import BENCH, ROOT, Result, best_of, cli, demo_data, workdir

NAME = "proposals"
PACKAGE_ENV = "CLIPDOCTOR_BENCH_PACKAGE"  # where the child imports clipdoctor from (common.py)


def _micro_seeking(data: Path) -> dict:
    """read_frames of the 8 evaluation frames: 60 s videos with keyframes every 250 and 60
    frames, a 20 s one with keyframes every 250 (where the gaps fall inside a GOP), and the
    demo clips (16 frames: no seek, nothing should change)."""
    from clipdoctor.data import decode
    from clipdoctor.data.sampling import uniform_segments

    out = {}
    for name in ("long_k250.mp4", "long_k60.mp4", "medium_k250.mp4"):
        path = data / name
        info = decode.probe(path)
        idx = uniform_segments(info.frames, 8, train=False).indices.tolist()
        out[name] = best_of(lambda: decode.read_frames(path, idx, info=info), 3)
    clips = sorted((data / "demo").rglob("*.mp4"))[:48]
    infos = [decode.probe(p) for p in clips]
    idxs = [uniform_segments(i.frames, 8, train=False).indices.tolist() for i in infos]
    out["demo_clips"] = best_of(lambda: [decode.read_frames(p, ix, info=i)
                                       for p, ix, i in zip(clips, idxs, infos)], 3)
    return out


def _micro_frozen_pass(data: Path) -> dict:
    """compute_features over the 48 demo clips from the frame cache (decoding is outside the
    clock; no feature cache, so every call computes): clip loading, transforms and the default
    backbone (resnet10t, random weights) at 64 px, 8 frames a clip, grid pool."""
    import torch

    from clipdoctor.config import RunConfig, with_overrides
    from clipdoctor.data.datamodule import ClipDataModule
    from clipdoctor.data.sources import load_source
    from clipdoctor.models.classifier import build_classifier
    from clipdoctor.training.features import compute_features

    torch.manual_seed(0)
    cfg = with_overrides(RunConfig(), {"model.pretrained": False, "data.size": 64,
                                       "data.frame_size": 72, "data.cache_dir": data / "cache"})
    index = load_source(data / "demo")
    model = build_classifier(cfg.model, len(index.classes))
    dm = ClipDataModule(index, cfg.data, mean=model.info.mean, std=model.info.std)
    dm.prepare()
    return {"frozen_pass_48_clips": best_of(lambda: compute_features(model, dm, dm.samples), 3)}


MICRO = {"seeking": _micro_seeking, "frozen_pass": _micro_frozen_pass}

# diff file -> (micro-benchmark, what it fixes)
PROPOSALS = {
    "keyframe-aware-seeking.diff": (
        "seeking", "read_frames seeks only when the keyframe before the next wanted frame lies "
                   "after the current position (probe records keyframe indices), and not at "
                   "all while the first wanted frame is in the first group of pictures; "
                   "before, a seek inside one group of pictures went back to its keyframe and "
                   "decoded the same frames again"),
    "channels-last-frozen-pass.diff": (
        "frozen_pass", "the frozen pass that fills the feature cache runs the backbone with "
                       "channels-last convolution weights (CPU oneDNN and GPU kernels prefer "
                       "it; outputs equal to float rounding), back to the default layout after"),
}


def _prepare_data(root: Path, quick: bool) -> Path:
    from decoding import write_long_video

    data = root / "data"
    data.mkdir()
    seconds = 20 if quick else 60
    write_long_video(data / "long_k250.mp4", seconds, keyint=250)
    write_long_video(data / "long_k60.mp4", seconds, keyint=60)
    # 20 s at 30 fps: the 8 sampled frames are 75 frames apart, inside 250-frame GOPs
    write_long_video(data / "medium_k250.mp4", 20, keyint=250)
    demo_data(data / "demo", clips_per_class=6)
    return data


def _patched_copy(root: Path, diff: Path, *, reverse: bool = False) -> Path | None:
    """A copy of the package with the diff applied (or, `reverse`, taken out again)."""
    pkg = root / f"pkg-{diff.stem}{'-reverse' if reverse else ''}"
    shutil.copytree(ROOT / "clipdoctor", pkg / "clipdoctor",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(["patch", "-p1", "-s", "-d", str(pkg), "-i", str(diff)]
                          + (["-R"] if reverse else []), capture_output=True, text=True)
    return pkg if proc.returncode == 0 else None


def _child_time(package: Path, micro: str, data: Path) -> dict:
    env = {**os.environ, PACKAGE_ENV: str(package), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, "--micro", micro, str(data)], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(quick: bool) -> Result:
    result = Result(NAME)
    with workdir(NAME) as root:
        data = _prepare_data(root, quick)
        for diff_name, (micro, what) in PROPOSALS.items():
            diff = BENCH / "proposals" / diff_name
            applied = False
            pkg = _patched_copy(root, diff)
            if pkg is None:  # already in the package: "before" is the package without it
                pkg, applied = _patched_copy(root, diff, reverse=True), True
            if pkg is None:
                result.add(f"`{diff_name}`", "applies", "does not apply", False,
                           "the package changed since the diff was written; regenerate it")
                continue
            before: dict = {}
            after: dict = {}
            old_new = ((before, pkg), (after, ROOT)) if applied else ((before, ROOT), (after, pkg))
            if applied:
                what = f"(applied) {what}"
            for _ in range(2):  # in turns, best of each side
                for side, package in old_new:
                    for k, v in _child_time(package, micro, data).items():
                        side[k] = min(side.get(k, float("inf")), v)
            result.details[diff_name] = {"before_s": before, "after_s": after, "what": what}
            how = ("in the package now" if applied else
                   f"apply with `patch -p1 < bench/proposals/{diff_name}`")
            result.notes.append(f"Proposal `bench/proposals/{diff_name}` ({how}): {what}. Measured: "
                                + ", ".join(f"{k} {before[k] * 1e3:.0f} -> {after[k] * 1e3:.0f} ms"
                                            for k in before) + ".")
            for k in before:
                result.add(f"`{diff_name}`: {k}", "-", f"{before[k] / after[k]:.2f}x faster",
                           None, f"{before[k] * 1e3:.0f} ms before, {after[k] * 1e3:.0f} ms after. "
                           + (what if k == next(iter(before)) else ""))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--micro":
        print(json.dumps(MICRO[sys.argv[2]](Path(sys.argv[3]))))
    else:
        cli(NAME, measure)
