"""Fuzzing the loader: corrupted and truncated video files and frame images, made by hypothesis
from valid ones, never crash or hang clipdoctor; each gives valid frames or a DecodeError
naming the file.

The fuzz loop runs in a child process (this file run as a script), so a segfault or an abort
inside FFmpeg / Pillow shows up as a failed test with the signal's name instead of killing
pytest, and a hang is cut by the child's timeout. The default run tries 60 variants; the
`slow` one 600 (`make test-all`). Every variant goes through `probe`, `read_frames`, a
`ClipDataset` item (the uncached loader) and the frame cache's `fill` (the cached loader), and
one folder of variants through `clipdoctor info` on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clipdoctor.data import decode
from clipdoctor.errors import DecodeError

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]


# ---------------------------------------------------------------------------------------------
# the tests (parent process)

def _run_fuzz(tmp_path: Path, variants: int, seed: int, limit_s: float) -> dict:
    out = tmp_path / "summary.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(HERE), "--variants", str(variants), "--seed", str(seed),
           "--work", str(tmp_path / "work"), "--summary", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the fuzz loop hung: no result after {limit_s:.0f} s\n{(e.stdout or '')[-3000:]}")
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        pytest.fail(f"the fuzz loop's process died of {name} (a crash in a decoder)\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


def _check_summary(summary: dict, variants: int) -> None:
    assert summary["variants"] >= variants
    outcomes = summary["outcomes"]
    assert sum(outcomes.values()) == summary["variants"]
    # both outcomes occur: corrupted files that still decode, and ones that cannot
    assert outcomes.get("frames", 0) > 0 and outcomes.get("decode-error", 0) > 0, outcomes
    assert set(summary["formats"]) == {".mp4", ".avi", ".webm", ".png", ".jpg"}
    assert summary["slowest_s"] < summary["timeout_s"] + 5
    info = summary["info"]
    assert info["rc"] == 0 and info["clips"] + info["skipped"] == info["files"], info


def test_fuzzed_files_decode_or_fail_cleanly(tmp_path):
    summary = _run_fuzz(tmp_path, variants=60, seed=1, limit_s=240)
    _check_summary(summary, 60)


@pytest.mark.slow
def test_fuzzed_files_decode_or_fail_cleanly_600(tmp_path):
    summary = _run_fuzz(tmp_path, variants=600, seed=2, limit_s=1200)
    _check_summary(summary, 600)


def test_decode_deadline_fires(tmp_path, video_factory):
    path = video_factory("long.mp4", n=120)
    assert decode.probe(path).frames == 120  # the default deadline is generous
    with pytest.raises(DecodeError, match=r"long\.mp4: decoding took longer than 1e-09 s"):
        decode.probe(path, timeout=1e-9)
    info = decode.probe(path)
    with pytest.raises(DecodeError, match=r"long\.mp4: decoding took longer than"):
        decode.read_frames(path, list(range(0, 120, 7)), info=info, timeout=1e-9)


def test_decode_deadline_fires_on_frame_folders(tmp_path):
    from PIL import Image

    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"f{i}.png")
    assert decode.read_frames(folder, [0, 3]).shape == (2, 8, 8, 3)
    with pytest.raises(DecodeError, match=r"clip: decoding took longer than"):
        decode.read_frames(folder, [0, 1, 2, 3], timeout=1e-9)


# ---------------------------------------------------------------------------------------------
# the fuzz loop (child process)

TIMEOUT_S = 5.0  # per-file decode deadline inside the fuzz loop


def _seed_files(folder: Path) -> dict[str, bytes]:
    """Valid files of every kind the loader reads, as bytes (the fuzzer mutates copies)."""
    from PIL import Image

    from clipdoctor.data.synthetic import render_clip, write_video

    rng = np.random.default_rng(0)
    clip = render_clip("move_left", rng, frames=12, size=32)  # (12, 32, 32, 3) uint8
    folder.mkdir(parents=True, exist_ok=True)
    seeds = {}
    for suffix, codec in ((".mp4", "libx264"), (".avi", "mpeg4"), (".webm", "libvpx")):
        path = write_video(folder / f"seed{suffix}", clip, fps=12.0, codec=codec)
        seeds[suffix] = path.read_bytes()
    for suffix, fmt in ((".png", "PNG"), (".jpg", "JPEG")):
        path = folder / f"seed{suffix}"
        Image.fromarray(clip[0]).save(path, fmt)
        seeds[suffix] = path.read_bytes()
    return seeds


def _mutations(seeds: dict[str, bytes]):
    """A hypothesis strategy of (suffix, mutation name, mutated bytes)."""
    from hypothesis import strategies as st

    @st.composite
    def variant(draw):
        suffix = draw(st.sampled_from(sorted(seeds)))
        data = bytearray(seeds[suffix])
        n = len(data)
        kind = draw(st.sampled_from(["truncate", "flip", "zero", "header", "insert", "cut-tail"]))
        if kind == "truncate":  # cut at a random offset: a copy or download that stopped
            data = data[:draw(st.integers(0, n - 1))]
        elif kind == "flip":  # random byte flips: bad sectors, bad RAM
            for pos in draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=24)):
                data[pos] ^= draw(st.integers(1, 255))
        elif kind == "zero":  # a zeroed range: a sparse file or a lost block
            start = draw(st.integers(0, n - 1))
            length = draw(st.integers(1, max(1, n // 3)))
            data[start:start + length] = bytes(min(length, n - start))
        elif kind == "header":  # garbage over the header: the container cannot be recognised
            length = draw(st.integers(1, min(256, n)))
            data[:length] = draw(st.binary(min_size=length, max_size=length))
        elif kind == "insert":  # random bytes inserted in the middle: offsets all shift
            pos = draw(st.integers(0, n))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=512))
        else:  # the tail replaced by garbage: the index (moov, cues) at the end is gone
            pos = draw(st.integers(n // 2, n - 1))
            data[pos:] = draw(st.binary(min_size=0, max_size=256))
        return suffix, kind, bytes(data)

    return variant()


def _check_variant(path: Path, clip: Path, transform) -> str:
    """'frames' or 'decode-error'; anything else (another exception, bad frames) raises."""
    from clipdoctor.data.datamodule import ClipDataset
    from clipdoctor.data.frames import FrameSource
    from clipdoctor.data.sources import Sample

    def named(e: DecodeError) -> str:
        assert e.path in (str(path), str(clip)), f"DecodeError names {e.path}, not {path}"
        assert str(e).startswith(e.path) and "\n" not in str(e), str(e)
        return "decode-error"

    try:
        info = decode.probe(clip, timeout=TIMEOUT_S)
    except DecodeError as e:
        return named(e)
    assert info.frames >= 1 and info.width >= 1 and info.height >= 1, info
    indices = sorted({0, info.frames // 2, info.frames - 1})
    try:
        frames = decode.read_frames(clip, indices, size=24, info=info, timeout=TIMEOUT_S)
    except DecodeError as e:
        return named(e)
    assert frames.shape == (len(indices), 24, 24, 3) and frames.dtype == np.uint8, frames.shape
    ds = ClipDataset([Sample(clip, 0, "train", name=clip.name)], frames=4, train=False,
                     transform=transform, source=FrameSource(None, frame_size=28))
    try:
        x, label = ds[0]
    except DecodeError as e:
        return named(e)
    assert tuple(x.shape) == (4, 3, 24, 24) and bool(x.isfinite().all()), x.shape
    return "frames"


def fuzz(variants: int, seed: int, work: Path) -> dict:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    from clipdoctor.data.transforms import eval_transform

    seeds = _seed_files(work / "seeds")
    transform = eval_transform(24)
    data = work / "data"  # every variant is kept, in a folder-per-class dataset for `info`
    outcomes: Counter = Counter()
    kinds: Counter = Counter()
    formats: Counter = Counter()
    slowest, slowest_name = 0.0, [""]
    count = 0

    @hypothesis_seed(seed)
    @settings(max_examples=variants, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(_mutations(seeds))
    def one(variant) -> None:
        nonlocal slowest, count
        suffix, kind, blob = variant
        count += 1
        cls = data / f"class{count % 2}"
        if suffix in (".png", ".jpg"):  # a frame folder: the damaged image among good ones
            clip = cls / f"v{count:04d}"
            clip.mkdir(parents=True)
            (clip / f"f0{suffix}").write_bytes(seeds[suffix])
            path = clip / f"f1{suffix}"
            path.write_bytes(blob)
            (clip / f"f2{suffix}").write_bytes(seeds[suffix])
        else:
            cls.mkdir(parents=True, exist_ok=True)
            path = clip = cls / f"v{count:04d}{suffix}"
            path.write_bytes(blob)
        started = time.perf_counter()
        outcome = _check_variant(path, clip, transform)
        if time.perf_counter() - started > slowest:
            slowest, slowest_name[:] = time.perf_counter() - started, [f"{path.name} ({kind})"]
        outcomes[outcome] += 1
        kinds[kind] += 1
        formats[suffix] += 1

    warm = work / "seeds" / "seed.mp4"  # imports and first-call set-up stay out of the timings
    assert _check_variant(warm, warm, transform) == "frames"
    one()
    info = _info_on(data, work / "cache")
    return {"variants": count, "outcomes": dict(outcomes), "kinds": dict(kinds),
            "formats": dict(formats), "slowest_s": round(slowest, 3),
            "slowest": slowest_name[0], "timeout_s": TIMEOUT_S,
            "info": info, "cache_fill": _fill_cache(data, work / "cache2")}


def _info_on(data: Path, cache: Path) -> dict:
    """`clipdoctor info DATA --json` on the folder of every variant: exit 0, all accounted for."""
    files = sum(1 for cls in data.iterdir() for _ in cls.iterdir())
    cli = "import sys; from clipdoctor.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", cli, "info", str(data), "--json",
                           "--cache-dir", str(cache)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        return {"rc": proc.returncode, "stderr": proc.stderr[-2000:], "files": files,
                "clips": 0, "skipped": 0}
    summary = json.loads(proc.stdout)
    for item in summary["skipped"]:
        assert item["reason"] and "\n" not in item["reason"], item
    return {"rc": 0, "files": files, "clips": summary["clips"],
            "skipped": len(summary["skipped"])}


def _fill_cache(data: Path, cache: Path) -> dict:
    """The cached loader's path: FrameCache.fill decodes every clip, failures come back listed."""
    from clipdoctor.data.cache import FrameCache
    from clipdoctor.data.sources import load_source

    index = load_source(data)
    failed = FrameCache(cache, frame_size=24, max_frames=8).fill(index.samples)
    for sample, err in failed:
        assert err.path.startswith(str(sample.path)), (err.path, sample.path)
    return {"clips": len(index.samples), "failed": len(failed)}


def main() -> None:
    parser = argparse.ArgumentParser(description="clipdoctor loader fuzzing (child process)")
    parser.add_argument("--variants", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--summary", type=Path, required=True)
    args = parser.parse_args()
    summary = fuzz(args.variants, args.seed, args.work)
    args.summary.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
