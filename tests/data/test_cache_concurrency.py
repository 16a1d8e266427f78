"""Two runs sharing one cache folder: every entry whole, each computed exactly once, no debris.

Each test starts two real processes ('spawn') on the same samples at the same moment. Every
computation leaves a marker file naming what it computed (a counting wrapper around the
decoder / the feature writer, slowed down so the two processes overlap), so duplicated work
shows up as a name with two markers."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clipdoctor.data.cache import FrameCache
from clipdoctor.data.sources import Sample
from clipdoctor.io import EntryLock
from conftest import frame_number, make_video

SLOW_S = 0.15  # per computation: long enough that two unlocked processes would both compute


def _sample(path: Path) -> Sample:
    return Sample(path=path, label=0, split="train", name=path.name)


def _mark(markers: Path, what: str) -> None:
    (markers / f"{os.getpid()}-{uuid.uuid4().hex}").write_text(what)


def _start_together(go: Path) -> None:
    """Say ready, then wait for the parent's go: both processes begin within a few ms."""
    (go.parent / f"ready-{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.005)


def _markers(markers: Path) -> Counter:
    return Counter(p.read_text() for p in markers.iterdir())


def _debris(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.endswith((".tmp", ".lock")))


def _run_pair(target, args: tuple, go: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while len(list(go.parent.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]


def _decode_worker(root: str, paths: list[str], markers: str, go: str) -> None:
    from clipdoctor.data import cache as cache_mod

    real_read, real_probe = cache_mod.read_sample, cache_mod.probe_sample

    def counted_read(sample, *a, **kw):
        _mark(Path(markers), f"frames:{sample.name}")
        time.sleep(SLOW_S)
        return real_read(sample, *a, **kw)

    def counted_probe(sample):
        _mark(Path(markers), f"probe:{sample.name}")
        return real_probe(sample)

    cache_mod.read_sample, cache_mod.probe_sample = counted_read, counted_probe
    _start_together(Path(go))
    failed = FrameCache(root, frame_size=24).fill([_sample(Path(p)) for p in paths], workers=2)
    assert failed == []


def test_two_runs_decode_each_clip_once(tmp_path):
    paths = [str(make_video(tmp_path / f"{i}.mp4", n=10, offset=i)) for i in range(6)]
    markers = tmp_path / "markers"
    markers.mkdir()
    root = tmp_path / "cache"
    _run_pair(_decode_worker, (str(root), paths, str(markers), str(tmp_path / "go")),
              tmp_path / "go")
    names = [Path(p).name for p in paths]
    assert _markers(markers) == Counter([f"frames:{n}" for n in names] + [f"probe:{n}" for n in names])
    cache = FrameCache(root, frame_size=24)
    for i, p in enumerate(paths):  # every entry whole and right
        frames = cache.frames(_sample(Path(p)))
        assert frames.shape == (10, 24, 24, 3)
        assert [frame_number(f) for f in frames] == list(range(i, i + 10))
    assert _debris(root) == []


def _feature_worker(data: str, cache_dir: str, markers: str, go: str, out: str) -> None:
    import torch

    from clipdoctor.config import DataConfig, ModelConfig
    from clipdoctor.data.cache import FeatureCache
    from clipdoctor.data.datamodule import ClipDataModule
    from clipdoctor.data.sources import load_source
    from clipdoctor.models.classifier import build_classifier
    from clipdoctor.training.features import compute_features

    torch.manual_seed(0)  # both runs: the same weights, hence the same cache keys
    model = build_classifier(ModelConfig(backbone="test_resnet", pretrained=False, proj_dim=16,
                                         hidden=16), 2)
    real = model.frozen_features

    def slow_features(x):
        time.sleep(SLOW_S)
        return real(x)

    model.frozen_features = slow_features
    cache = FeatureCache(cache_dir)
    real_put = cache.put

    def counted_put(key, array):
        _mark(Path(markers), key)
        real_put(key, array)

    cache.put = counted_put
    config = DataConfig(frames=4, frame_size=36, size=32, cache_dir=Path(cache_dir))
    dm = ClipDataModule(load_source(data), config, mean=model.info.mean, std=model.info.std)
    dm.prepare()
    samples = [s for s in dm.samples if s.split == "train"]
    _start_together(Path(go))
    views = compute_features(model, dm, samples, views=2, cache=cache, batch_size=2)
    np.save(out + f"-{os.getpid()}.npy", np.stack([np.stack(v) for v in views]).astype(np.float32))


@pytest.mark.slow  # about 30 s on a busy 2-core machine: two fresh interpreters load torch and timm
def test_two_runs_compute_each_feature_once(tmp_path):
    from clipdoctor.data.synthetic import generate

    generate(tmp_path / "data", clips_per_class=5, frames=6, size=32,
             classes=["move_left", "move_right"])
    markers = tmp_path / "markers"
    markers.mkdir()
    _run_pair(_feature_worker, (str(tmp_path / "data"), str(tmp_path / "cache"), str(markers),
                                str(tmp_path / "go"), str(tmp_path / "views")), tmp_path / "go")
    counts = _markers(markers)
    assert counts and set(counts.values()) == {1}  # each (clip, view) entry written once
    a, b = [np.load(p) for p in sorted(tmp_path.glob("views-*.npy"))]
    assert a.shape[:2] == (len(counts) // 2, 2) and np.array_equal(a, b)  # both read the same
    assert _debris(tmp_path / "cache") == []


def test_entry_lock_excludes_and_leaves_no_file(tmp_path):
    entry = tmp_path / "ab" / "key.npy"
    first, second = EntryLock(entry), EntryLock(entry)
    assert first.acquire()
    assert first.path.exists()
    assert not second.acquire(blocking=False)  # held: another description of the same file
    first.release()
    assert not first.path.exists()  # the holder removes it
    assert second.acquire(blocking=False)
    second.release()
    assert _debris(tmp_path) == []
