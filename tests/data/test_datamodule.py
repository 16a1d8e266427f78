"""Clip datasets: the right frames in the right order, reproducible draws, cache reuse, padding."""

from __future__ import annotations

import numpy as np
import torch

from clipdoctor.config import DataConfig
from clipdoctor.data import decode
from clipdoctor.data.cache import FrameCache
from clipdoctor.data.datamodule import ClipDataModule, ClipDataset, class_weights
from clipdoctor.data.frames import FrameSource
from clipdoctor.data.sources import Sample, SourceIndex
from clipdoctor.data.transforms import AugmentSpec, train_transform
from conftest import frame_number, make_video


def _raw(clip: torch.Tensor) -> list[int]:
    """Frame numbers of an un-normalised clip (T, C, H, W) in [0, 1]."""
    return [frame_number((f.permute(1, 2, 0).numpy() * 255)) for f in clip]


class _ToFloat:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255


def _index(tmp_path, n_frames=(40, 40, 40, 40), bad: bool = False) -> SourceIndex:
    samples = [Sample(make_video(tmp_path / f"c{i % 2}" / f"{i}.mp4", n=n), label=i % 2,
                      split="train" if i < 2 else "val", name=f"{i}.mp4")
               for i, n in enumerate(n_frames)]
    if bad:
        (tmp_path / "broken.mp4").write_bytes(b"")
        samples.append(Sample(tmp_path / "broken.mp4", 0, "train", name="broken.mp4"))
    return SourceIndex("folder", tmp_path, ["a", "b"], samples)


def test_eval_clip_is_segment_centres_in_order(tmp_path):
    idx = _index(tmp_path)
    cache = FrameCache(tmp_path / "cache", frame_size=32, max_frames=40)
    ds = ClipDataset(idx.samples, frames=4, train=False, transform=_ToFloat(),
                     source=FrameSource(cache, frame_size=32, cache_frames=40))
    clip, label = ds[0]
    assert clip.shape == (4, 3, 32, 32) and label == 0
    assert _raw(clip) == [5, 15, 25, 35]


def test_uncached_path_decodes_only_sampled_frames(tmp_path):
    idx = _index(tmp_path)
    ds = ClipDataset(idx.samples, frames=4, train=False, transform=_ToFloat(),
                     source=FrameSource(None, frame_size=32))
    assert _raw(ds[1][0]) == [5, 15, 25, 35]


def test_training_draws_repeat_per_seed_and_epoch(tmp_path):
    idx = _index(tmp_path)
    cache = FrameCache(tmp_path / "cache", frame_size=32, max_frames=40)
    ds = ClipDataset(idx.samples, frames=4, train=True, transform=_ToFloat(),
                     source=FrameSource(cache, frame_size=32, cache_frames=40), seed=3)
    first = _raw(ds[0][0])
    assert first == _raw(ds[0][0])  # same seed, epoch, item -> same frames
    assert all(10 * k <= f < 10 * (k + 1) for k, f in enumerate(first))  # one per segment
    draws = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        draws.add(tuple(_raw(ds[0][0])))
    assert len(draws) > 1  # temporal jitter changes with the epoch


def test_second_epoch_opens_no_video_file(tmp_path, monkeypatch):
    dm = ClipDataModule(_index(tmp_path), DataConfig(frames=4, frame_size=32, size=28, batch_size=2,
                                                     cache_dir=tmp_path / "cache"))
    loader = dm.train_dataloader()  # fills the cache
    next(iter(loader))
    opened: list[str] = []
    real_open = decode.av.open
    monkeypatch.setattr(decode.av, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    for epoch in range(2):
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            assert batch[0].shape == (2, 4, 3, 28, 28)
        for batch in dm.val_dataloader():
            pass
    assert opened == []


def test_unreadable_clips_are_dropped_and_reported(tmp_path):
    dm = ClipDataModule(_index(tmp_path, bad=True), DataConfig(frame_size=32, size=28,
                                                               cache_dir=tmp_path / "cache"))
    dm.prepare()
    assert [s.name for s in dm.samples if s.name == "broken.mp4"] == []
    assert [(s.path, s.reason) for s in dm.skipped] == [("broken.mp4", "file is empty (0 bytes)")]


def test_strict_makes_unreadable_clips_fatal(tmp_path):
    import pytest

    from clipdoctor.errors import DataError

    dm = ClipDataModule(_index(tmp_path, bad=True),
                        DataConfig(frame_size=32, size=28, strict=True, cache_dir=tmp_path / "cache"))
    with pytest.raises(DataError, match="broken.mp4: file is empty"):
        dm.prepare()


def test_short_clips_repeat_or_pad_with_length(tmp_path):
    idx = _index(tmp_path, n_frames=(3, 3, 40, 40))
    cache = FrameCache(tmp_path / "cache", frame_size=32)
    source = FrameSource(cache, frame_size=32)
    rep = ClipDataset(idx.samples, frames=8, train=False, transform=_ToFloat(), source=source)
    clip, _ = rep[0]
    assert _raw(clip) == [0, 0, 0, 1, 1, 1, 2, 2]
    pad = ClipDataset(idx.samples, frames=8, train=False, transform=_ToFloat(), source=source,
                      short="pad")
    clip, label, length = pad[0]
    assert length == 3 and _raw(clip[:3]) == [0, 1, 2]
    assert torch.count_nonzero(clip[3:]) == 0
    assert pad[2][2] == 8  # a long clip is not padded


def test_augmentation_is_identical_across_frames_of_a_clip(tmp_path):
    """Through the whole dataset path: a still clip (lossless PNG frames) stays exactly still."""
    from PIL import Image

    folder = tmp_path / "still"
    folder.mkdir()
    image = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    for i in range(12):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    cache = FrameCache(tmp_path / "cache", frame_size=40)
    ds = ClipDataset([Sample(folder, 0, "train", name="still")], frames=6, train=True,
                     transform=train_transform(32, spec=AugmentSpec(degrees=10)),
                     source=FrameSource(cache, frame_size=40))
    for epoch in range(5):
        ds.set_epoch(epoch)
        clip, _ = ds[0]
        assert all(torch.equal(f, clip[0]) for f in clip)


def test_class_weights_balanced_formula():
    w = class_weights([0, 0, 0, 1], 3)
    assert torch.allclose(w, torch.tensor([4 / (2 * 3), 4 / (2 * 1), 0.0]))


def test_epoch_sampler_repeats_per_epoch_tells_the_dataset_and_balances():
    from clipdoctor.data.datamodule import EpochSampler

    class Items(torch.utils.data.Dataset):
        epoch = -1

        def __len__(self):
            return 100

        def __getitem__(self, i):
            return i

        def set_epoch(self, epoch):
            self.epoch = epoch

    ds = Items()
    s = EpochSampler(ds, seed=3)
    s.set_epoch(2)
    assert ds.epoch == 2  # the dataset's random frames follow the epoch (Lightning calls this)
    first = list(s)
    assert sorted(first) == list(range(100))  # a permutation
    again = EpochSampler(ds, seed=3)
    again.set_epoch(2)
    assert list(again) == first  # same (seed, epoch) -> same order, e.g. after a resume
    s.set_epoch(3)
    assert list(s) != first
    w = torch.tensor([10.0] * 10 + [1.0] * 90)  # items 0..9 weighted 10x: half the mass
    drawn = list(EpochSampler(ds, seed=0, weights=w))
    assert len(drawn) == 100 and 35 <= sum(i < 10 for i in drawn) <= 65


def test_balanced_sampler_reaches_the_train_loader(tmp_path):
    from clipdoctor.data.datamodule import EpochSampler

    dm = ClipDataModule(_index(tmp_path), DataConfig(frame_size=32, size=28,
                                                     cache_dir=tmp_path / "cache"),
                        balanced_sampler=True)
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, EpochSampler) and sampler.p is not None
    sampler.set_epoch(4)
    assert sampler.dataset.epoch == 4
