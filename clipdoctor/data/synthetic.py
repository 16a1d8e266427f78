"""The demo generator: labelled motion clips written as real H.264 `.mp4` files.

Classes come in time-reversed pairs (`PAIRS`): the second class of a pair is, by construction,
the first class played backwards. Each clip draws one random "forward" motion (shape, colours,
textured background, position, size, speed) and the reverse class reverses its frames, so any
single frame and any order-blind statistic of a clip (the multiset of its frames) has the same
distribution in both classes of a pair. Only frame order tells a pair apart, which is what makes
this data useful for testing temporal models and the doctor's order-sensitivity probes.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from clipdoctor.errors import DataError

# (forward, reverse): the reverse class is the forward motion with its frames reversed.
PAIRS: tuple[tuple[str, str], ...] = (
    ("move_left", "move_right"),
    ("move_up", "move_down"),
    ("grow", "shrink"),
    ("rotate_cw", "rotate_ccw"),
)
CLASSES: tuple[str, ...] = tuple(c for pair in PAIRS for c in pair)
# Broken-file kinds planted by `generate(corrupt=...)`, used in this cycling order.
CORRUPT_KINDS: tuple[str, ...] = ("text", "empty", "truncated", "no-video")
MANIFEST = "synthetic.json"
# Written only with `generate(val_clips_per_class=..., test_clips_per_class=...)`: a CSV manifest
# (path,label,split) that the loaders read before the class folders, so the held-out clips are
# the val and test splits.
SPLITS = "splits.csv"

# class -> (forward class of its pair, whether its frames are reversed)
_FAMILY = {c: (pair[0], i == 1) for pair in PAIRS for i, c in enumerate(pair)}


def _polygon(points: list[tuple[float, float]]) -> np.ndarray:
    return np.asarray(points, np.float64)  # (n, 2) unit coordinates, radius about 1


def _arc(start: float, stop: float, n: int) -> np.ndarray:
    angles = np.linspace(start, stop, n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (n, 2)


# Unit shapes centred near the origin. Rotation is only shown with shapes that have no
# rotational symmetry (a circle or a square cannot show a turn of 90 degrees).
_SHAPES: dict[str, np.ndarray] = {
    "circle": _arc(0.0, 2 * np.pi, 40)[:-1],
    "square": _polygon([(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]),
    "diamond": _polygon([(0, -1), (0.7, 0), (0, 1), (-0.7, 0)]),
    "cross": _polygon([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3),
                       (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]),
    "triangle": _polygon([(0, -1), (0.6, 0.8), (-0.6, 0.8)]),  # tall: no rotational symmetry
    "arrow": _polygon([(-1, -0.3), (0.1, -0.3), (0.1, -0.75), (1, 0), (0.1, 0.75), (0.1, 0.3),
                       (-1, 0.3)]),
    "l_shape": _polygon([(-0.7, -1), (-0.15, -1), (-0.15, 0.45), (0.7, 0.45), (0.7, 1), (-0.7, 1)]),
    "pacman": np.concatenate([[[0.0, 0.0]], _arc(np.pi / 5, 2 * np.pi - np.pi / 5, 33)]),
}
_ASYMMETRIC = ("triangle", "arrow", "l_shape", "pacman")


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A static textured background, (H, W, 3) float32, and its mean colour (3,): low-frequency
    noise, stripes or checker between two random colours of similar brightness (so the object
    keeps its contrast everywhere)."""
    dark = rng.random() < 0.5
    c1 = rng.uniform(10, 110, 3) if dark else rng.uniform(145, 245, 3)
    c2 = np.clip(c1 + rng.uniform(-45, 45, 3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # (H, W) each, in [0, 1)
    kind = int(rng.integers(3))
    if kind == 0:  # smooth noise: a few random values interpolated over the frame
        grid = rng.random((int(rng.integers(3, 7)),) * 2).astype(np.float32)
        t = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    elif kind == 1:  # soft stripes at a random angle, period and phase
        theta, period = rng.uniform(0, np.pi), rng.uniform(0.12, 0.35)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
        t = 0.5 + 0.5 * np.clip(2.5 * wave, -1, 1)
    else:  # checkerboard with a random cell size and offset
        cell, ox, oy = rng.uniform(0.1, 0.25), rng.random(), rng.random()
        t = (np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2
    return (c1 + (c2 - c1) * t[..., None]).astype(np.float32), (c1 + c2) / 2


def _foreground(rng: np.random.Generator, bg_mean: np.ndarray) -> np.ndarray:
    """A random colour whose brightness differs from the background's by at least 100 of 255."""
    luma = np.array([0.299, 0.587, 0.114])
    for _ in range(64):
        fg = rng.uniform(0, 255, 3)
        if abs((fg - bg_mean) @ luma) >= 100:
            return fg
    return np.where(bg_mean < 128, 255.0, 0.0)  # practically unreachable fallback


def _trajectory(forward: str, rng: np.random.Generator, frames: int, size: int
                ) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Shape name and per-frame centre (T, 2), radius (T,) and angle (T,) of a forward motion.

    Amounts are chosen so the motion is plain at 64x64 over 16 frames: moves cover 30-55 % of
    the frame, scale changes 1.9-2.8x, turns 110-220 degrees; the object stays mostly in frame.
    """
    u = np.linspace(0.0, 1.0, frames)  # (T,) progress through the clip
    angle0 = rng.uniform(0, 2 * np.pi)
    if forward in ("move_left", "move_up"):
        shape = list(_SHAPES)[int(rng.integers(len(_SHAPES)))]
        r = rng.uniform(0.10, 0.16) * size
        dist = rng.uniform(0.30, 0.55) * size
        along0 = rng.uniform(r + dist, size - r)  # start; ends at along0 - dist >= r
        across0 = rng.uniform(r, size - r)
        across = np.clip(across0 + rng.uniform(-0.08, 0.08) * size * u, r, size - r)  # slight drift
        along = along0 - dist * u
        centre = np.stack([along, across] if forward == "move_left" else [across, along], axis=1)
        return shape, centre, np.full(frames, r), np.full(frames, angle0)
    if forward == "grow":
        shape = list(_SHAPES)[int(rng.integers(len(_SHAPES)))]
        r0, scale = rng.uniform(0.07, 0.11) * size, rng.uniform(1.9, 2.8)
        lo, hi = 0.8 * r0 * scale, size - 0.8 * r0 * scale
        centre = np.tile(rng.uniform(lo, hi, 2), (frames, 1))  # (T, 2)
        return shape, centre, r0 * scale**u, np.full(frames, angle0)
    if forward == "rotate_cw":  # angle grows with y pointing down: clockwise on screen
        shape = _ASYMMETRIC[int(rng.integers(len(_ASYMMETRIC)))]
        r, turn = rng.uniform(0.15, 0.24) * size, np.deg2rad(rng.uniform(110, 220))
        centre = np.tile(rng.uniform(r, size - r, 2), (frames, 1))  # (T, 2)
        return shape, centre, np.full(frames, r), angle0 + turn * u
    raise AssertionError(f"no forward motion for {forward!r}")


def _masks(shape: str, centre: np.ndarray, radius: np.ndarray, angle: np.ndarray, size: int
           ) -> np.ndarray:
    """Antialiased coverage (T, H, W) float32 in [0, 1]: drawn at 2x, then 2x2 box-averaged."""
    unit = _SHAPES[shape]
    out = np.empty((len(centre), size, size), np.float32)
    for t in range(len(centre)):
        c, s = np.cos(angle[t]), np.sin(angle[t])
        pts = (unit @ np.array([[c, s], [-s, c]])) * radius[t] + centre[t]  # (n, 2) rotated
        img = Image.new("L", (2 * size, 2 * size), 0)
        ImageDraw.Draw(img).polygon([tuple(p) for p in (2 * pts).tolist()], fill=255)
        out[t] = np.asarray(img.reduce(2), np.float32)
    return out / 255.0


def render_clip(cls: str, rng: np.random.Generator, frames: int = 16, size: int = 64) -> np.ndarray:
    """Render one random clip of `cls` as (T, H, W, 3) uint8 RGB frames.

    Both classes of a pair make exactly the same draws from `rng` (the forward motion); the
    reverse class then reverses the frames. So for two generators in the same state,
    `render_clip(rev, a) == render_clip(fwd, b)[::-1]`, and a single frame or any order-blind
    statistic cannot tell the pair apart. Faint per-frame grey noise (sigma 0-1.5) keeps the
    static background from repeating exactly, as in real footage.
    """
    if cls not in _FAMILY:
        raise DataError(f"unknown class {cls!r}; allowed: {', '.join(CLASSES)}")
    if frames < 2 or size < 16:
        raise DataError(f"need frames >= 2 and size >= 16, got frames={frames}, size={size}")
    forward, reverse = _FAMILY[cls]
    bg, bg_mean = _background(rng, size)
    fg = _foreground(rng, bg_mean).astype(np.float32)
    alpha = _masks(*_trajectory(forward, rng, frames, size), size)[..., None]  # (T, H, W, 1)
    clip = bg + (fg - bg) * alpha  # (T, H, W, 3)
    sigma = np.float32(rng.uniform(0.0, 1.5))
    clip += sigma * rng.standard_normal((frames, size, size, 1), dtype=np.float32)
    clip = np.clip(np.rint(clip), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(clip[::-1]) if reverse else clip


def clip_rng(seed: int, cls: str, index: int) -> np.random.Generator:
    """The generator `generate(seed=seed)` renders clip `index` of true class `cls` with.

    It depends only on (seed, class, index), so a clip's content does not change with the
    class selection, counts, imbalance or planted faults, and tests can re-render any clip.
    """
    key = (0, CLASSES.index(cls), index)  # spawn_key (1,) is the fault planner's stream
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def write_video(path: str | Path, frames: np.ndarray, fps: float = 12.0, codec: str = "libx264",
                crf: int = 18) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames into a real video file (H.264 in .mp4 by default).

    Odd sizes are padded to even (H.264 with yuv420p needs even sides) by repeating the edge.
    The file is written next to its final name and renamed, so a crash never leaves half a file.
    Same frames and options give byte-identical files.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":  # mbtree off: on small frames x264's macroblock tree reads
            # uninitialised memory, so the bytes varied with heap state (CPU count, history)
            stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_corrupt(path: Path, kind: str, clip: Callable[[], np.ndarray], fps: float) -> None:
    """Plant one broken `.mp4` of `kind` (see `generate`)."""
    if kind == "text":
        _write_bytes(path, b"this is not a video: clipdoctor synthetic corrupt file\n")
    elif kind == "empty":
        _write_bytes(path, b"")
    elif kind == "truncated":  # a real encoding cut to its first third: the index (moov) is lost
        full = write_video(path.with_name(f".{path.stem}.full{path.suffix}"), clip(), fps=fps)
        data = full.read_bytes()
        full.unlink()
        _write_bytes(path, data[: len(data) // 3])
    else:  # "no-video": a valid mp4 holding only 1024 samples of silent AAC audio
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("aac", rate=8000)
            stream.layout = "mono"
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 8000, 0
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
        os.replace(tmp, path)


@dataclass(frozen=True)
class GeneratedDataset:
    """What `generate` wrote. `counts` are files per class folder (what a loader sees, test
    clips included); `clips` are the manifest records; `noisy` and `corrupt` are absolute paths
    of faulty files."""

    root: Path
    classes: tuple[str, ...]
    counts: dict[str, int]
    clips: tuple[dict, ...]
    noisy: tuple[Path, ...]
    corrupt: tuple[Path, ...]

    @classmethod
    def load(cls, root: str | Path) -> GeneratedDataset:
        """Read a generated dataset back from its `synthetic.json`."""
        root = Path(root)
        manifest = json.loads((root / MANIFEST).read_text())
        clips = tuple(manifest["clips"])
        counts = {c: sum(r["label"] == c for r in clips) for c in manifest["classes"]}
        faults = [(root / r["path"], r["fault"] or "") for r in clips]
        return cls(root, tuple(manifest["classes"]), counts, clips,
                   tuple(p for p, f in faults if f == "label-noise"),
                   tuple(p for p, f in faults if f.startswith("corrupt:")))


def _class_counts(n: int, r: float, k: int) -> list[int]:
    """Geometric fall from n (first class) to round(n / r) (last class), at least 2 each."""
    return [max(2, round(n * r ** (-i / max(k - 1, 1)))) for i in range(k)]


def _prepare(out: Path) -> None:
    """Refuse to write into a folder holding anything but an earlier generated dataset, and
    remove only the files listed in that earlier dataset's manifest."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a folder for the demo data")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / MANIFEST).is_file():
        raise DataError(f"{out} is not empty and holds no {MANIFEST}; "
                        "choose an empty or new folder for the demo data")
    manifest = json.loads((out / MANIFEST).read_text())
    old = [out / r["path"] for r in manifest.get("clips", [])]
    params = manifest.get("params", {})
    if params.get("val_clips_per_class") or params.get("test_clips_per_class"):
        (out / SPLITS).unlink(missing_ok=True)
    for path in old:
        path.unlink(missing_ok=True)
    for folder in {p.parent for p in old}:  # an empty class folder would still read as a class
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    (out / MANIFEST).unlink()


def generate(out: str | Path, *, clips_per_class: int = 40, frames: int = 16, size: int = 64,
             fps: float = 12.0, imbalance: float = 1.0, label_noise: float = 0.0,
             corrupt: float = 0.0, seed: int = 0, classes: Sequence[str] | None = None,
             val_clips_per_class: int = 0, test_clips_per_class: int = 0,
             progress: Callable[[int, int], None] | None = None) -> GeneratedDataset:
    """Write the demo dataset: `out/<class>/<class>_NNNN.mp4` plus `out/synthetic.json`.

    - `imbalance` r >= 1: class counts fall geometrically from `clips_per_class` (first class)
      to round(clips_per_class / r) (last class), at least 2 each.
    - `label_noise` p: round(p * N) clips are written into the folder of the *other class of
      their pair* (the hardest case: same frames, reversed order), or of a random other class
      when the pair-mate is not selected; `true_label` keeps the truth, `fault` = "label-noise".
    - `corrupt` q: round(q * N) other clips become broken files, cycling through the kinds
      `corrupt:text` (a text file named .mp4), `corrupt:empty` (zero bytes),
      `corrupt:truncated` (the first third of a real H.264 mp4; its index is lost, so it does
      not open) and `corrupt:no-video` (a valid mp4 with only an audio stream: opens, 0 frames).
    Faulty clips are chosen with the seed; p + q <= 1 and the two sets never overlap. File
    numbers inside a folder are shuffled, so a name never hints at a fault. Re-running into an
    earlier output replaces it; any other non-empty folder is refused. Clip (class c, number i)
    is rendered with `clip_rng(seed, c, i)`, recorded as `index` in the manifest.
    - `val_clips_per_class` v, `test_clips_per_class` m: v + m more clips per class, clean (no
      noise, no faults, no imbalance; indices `clips_per_class` onwards, val first, numbered
      after the class's other files), and `out/splits.csv` (path,label,split), which loaders
      read before the class folders: these clips are the val and test splits, the
      `clips_per_class` ones are train. Records then carry a `split`. With v = 0 the loader
      carves val out of train by its fraction of each class's total, test clips included; with
      m = 0 there is no test split. With both 0 (default) none of this is written and the
      output is as before.
    `progress(done, total)` is called after each file; the manifest is written last.
    """
    classes = tuple(CLASSES if classes is None else classes)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or len(set(classes)) != len(classes) or len(classes) < 2:
        raise DataError(f"classes must be 2+ distinct names from {', '.join(CLASSES)}; "
                        f"got {classes}")
    # odd sizes would come back padded by one pixel from the H.264 writer
    if clips_per_class < 2 or imbalance < 1 or frames < 2 or size < 16 or size % 2 or fps <= 0 \
            or seed < 0:
        raise DataError(
            "need clips_per_class >= 2, imbalance >= 1, frames >= 2, an even size >= 16, fps > 0 "
            f"and seed >= 0; got {clips_per_class}, {imbalance}, {frames}, {size}, {fps}, {seed}")
    for name, n in (("val_clips_per_class", val_clips_per_class),
                    ("test_clips_per_class", test_clips_per_class)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DataError(f"{name} must be an integer >= 0; got {n!r}")
    if not (0 <= label_noise <= 1 and 0 <= corrupt <= 1 and label_noise + corrupt <= 1):
        raise DataError(f"label_noise and corrupt must lie in [0, 1] with a sum <= 1; "
                        f"got {label_noise} and {corrupt}")
    out = Path(out)
    _prepare(out)
    plan = [(c, i) for c, n in zip(classes, _class_counts(clips_per_class, imbalance, len(classes)))
            for i in range(n)]  # (true class, index) per clip
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    order = rng.permutation(len(plan))
    noisy = order[: round(label_noise * len(plan))]
    broken = np.sort(order[len(noisy): len(noisy) + round(corrupt * len(plan))])
    labels = [c for c, _ in plan]
    for j in noisy:
        mate = next(p[1 - p.index(labels[j])] for p in PAIRS if labels[j] in p)
        others = [c for c in classes if c != labels[j]]
        labels[j] = mate if mate in classes else others[int(rng.integers(len(others)))]
    faults: list[str | None] = [None] * len(plan)
    for j in noisy:
        faults[j] = "label-noise"
    for k, j in enumerate(broken):
        faults[j] = f"corrupt:{CORRUPT_KINDS[k % len(CORRUPT_KINDS)]}"
    names: list[str] = [""] * len(plan)
    for c in classes:  # shuffled numbering inside each folder
        members = [j for j in range(len(plan)) if labels[j] == c]
        for number, j in enumerate(rng.permutation(members).tolist()):
            names[j] = f"{c}/{c}_{number:04d}.mp4"
    # held-out val and test clips: clean, numbered after each folder's other files
    held = ["val"] * val_clips_per_class + ["test"] * test_clips_per_class
    held_plan = [(c, clips_per_class + k, split) for c in classes for k, split in enumerate(held)]
    numbered = {c: labels.count(c) for c in classes}
    total = len(plan) + len(held_plan)
    records = []
    for done, ((true, index), label, fault, name) in enumerate(zip(plan, labels, faults, names), 1):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        render = partial(render_clip, true, clip_rng(seed, true, index), frames, size)
        if fault and fault.startswith("corrupt:"):
            _write_corrupt(path, fault.split(":", 1)[1], render, fps)
        else:
            write_video(path, render(), fps=fps)
        records.append({"path": name, "label": label, "true_label": true, "fault": fault,
                        "index": index})
        if progress is not None:
            progress(done, total)
    for done, (c, index, split) in enumerate(held_plan, len(plan) + 1):
        name = f"{c}/{c}_{numbered[c] + index - clips_per_class:04d}.mp4"
        (out / c).mkdir(parents=True, exist_ok=True)
        write_video(out / name, render_clip(c, clip_rng(seed, c, index), frames, size), fps=fps)
        records.append({"path": name, "label": c, "true_label": c, "fault": None, "index": index,
                        "split": split})
        if progress is not None:
            progress(done, total)
    params = {"clips_per_class": clips_per_class, "frames": frames, "size": size, "fps": float(fps),
              "imbalance": float(imbalance), "label_noise": float(label_noise),
              "corrupt": float(corrupt), "seed": seed}
    if held_plan:
        params.update(val_clips_per_class=val_clips_per_class,
                      test_clips_per_class=test_clips_per_class)
        for rec in records:
            rec.setdefault("split", "train")
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        writer.writerows([r["path"], r["label"], r["split"]] for r in records)
        _write_bytes(out / SPLITS, text.getvalue().encode())
    manifest = {"params": params, "classes": list(classes), "pairs": [list(p) for p in PAIRS],
                "clips": records}
    _write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    return GeneratedDataset.load(out)
