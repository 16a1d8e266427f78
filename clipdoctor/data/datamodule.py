"""Clip datasets and the LightningDataModule: splits, class weights / balanced sampler, loaders.

A dataset item is `(clip, label)` with clip a float tensor (T, C, H, W), or
`(clip, label, length)` when short clips are padded (`short="pad"`): steps at and after
`length` are padding that the model must mask.

Randomness (which frames, which crop) comes from a generator seeded by (seed, epoch, item),
so a run repeats exactly whatever the number of loader workers.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol, Sequence, TypeVar

import lightning as L
import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from clipdoctor.config import DataConfig
from clipdoctor.data.cache import FrameCache
from clipdoctor.data.frames import FrameSource
from clipdoctor.data.sampling import sample_indices
from clipdoctor.data.sources import SourceIndex, Sample, Skipped
from clipdoctor.data.transforms import AugmentSpec, eval_transform, train_transform
from clipdoctor.errors import DataError, DecodeError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Shards(Protocol):
    """The processes of a DDP run as `ClipDataModule.prepare` splits work across them
    (`clipdoctor.training.distributed.Ranks` is one); every rank must make the same calls."""

    @property
    def world_size(self) -> int: ...

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's part of `items`: disjoint from the other ranks', together all items."""
        ...

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order; also waits for all ranks."""
        ...


class ClipDataset(Dataset):
    """Samples -> clips of `frames` steps, read through `source`: with a cache from its entries,
    without one only the sampled frames of each clip are decoded (seeking in video files)."""

    def __init__(self, samples: Sequence[Sample], *, frames: int, train: bool,
                 transform: Callable[[torch.Tensor], torch.Tensor], source: FrameSource,
                 sampler: str = "uniform", stride: int = 2, max_stride: int = 4,
                 short: str = "repeat", num_clips: int = 1, seed: int = 0) -> None:
        self.samples = list(samples)
        self.frames, self.train, self.transform, self.source = frames, train, transform, source
        self.sampler, self.stride, self.max_stride, self.short = sampler, stride, max_stride, short
        self.num_clips = num_clips
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """New random frames and crops each epoch (training); evaluation ignores it."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples) * self.num_clips

    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def __getitem__(self, i: int):
        sample, clip = self.samples[i // self.num_clips], i % self.num_clips
        # one generator per item: the same (seed, epoch, item) gives the same clip in any worker
        seq = np.random.SeedSequence([self.seed, self.epoch if self.train else 0, i])
        rng = np.random.default_rng(seq)
        kw = dict(train=self.train, rng=rng if self.train else None, clip=clip,
                  num_clips=self.num_clips, short=self.short)
        if self.sampler == "dense":
            kw.update(stride=self.stride, max_stride=self.max_stride)
        picked = sample_indices(self.sampler, self.source.count(sample), self.frames, **kw)
        frames = self.source.frames(sample, picked.indices)  # (T, S, S, 3) uint8
        x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, H, W, C) -> (T, C, H, W)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone (the transforms run on CPU): torch.manual_seed would also
            # reseed the GPU generators, which fork_rng(devices=[]) does not restore, and
            # formats a stack trace for each lazy GPU seeding (0.2 ms an item)
            torch.default_generator.manual_seed(int(seq.generate_state(1)[0]))
            x = self.transform(x)
        if self.short == "pad":
            x[picked.length:] = 0  # padded steps carry no signal, and the length says so
            return x, sample.label, picked.length
        return x, sample.label


class EpochSampler(DistributedSampler):
    """Training order drawn from (seed, epoch): the same on every run and after a resume.

    Without `weights` a permutation; with per-item `weights` a class-balanced draw with
    replacement. Lightning calls `set_epoch` before each epoch; the dataset is told too, so
    its random frame / crop / view choices follow the epoch.

    Under DDP (`num_replicas` ranks, default: the initialised torch.distributed group) every
    rank draws the same epoch order and takes every `num_replicas`-th item from position
    `rank`, the order padded by its own head to a multiple of the ranks (as torch's
    DistributedSampler): disjoint shards, and step k of all ranks together covers the items
    of step k of one process with `num_replicas` x the batch. Being a DistributedSampler,
    Lightning keeps it instead of wrapping it (its wrapper did not forward `set_epoch` to
    the wrapped sampler before Lightning 2.6).
    """

    def __init__(self, dataset: Dataset, seed: int = 0,
                 weights: torch.Tensor | np.ndarray | None = None, *,
                 num_replicas: int | None = None, rank: int | None = None) -> None:
        if num_replicas is None or rank is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            num_replicas = num_replicas or (dist.get_world_size() if ready else 1)
            rank = rank if rank is not None else (dist.get_rank() if ready else 0)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.p = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            self.p = w / w.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.dataset)
        order = rng.permutation(n) if self.p is None else rng.choice(n, n, p=self.p)
        order = np.resize(order, self.total_size)  # pads by repeating the head: equal shards
        return iter(order[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                weights: torch.Tensor | None = None, num_workers: int = 0) -> DataLoader:
    """A loader over `ds`: with `shuffle` in the order `EpochSampler` draws from (seed, epoch),
    class-balanced when per-item `weights` are given; else in order."""
    sampler = EpochSampler(ds, seed, weights) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """scikit-learn's 'balanced' weights, n / (k * count); classes absent from labels get 0."""
    labels = np.asarray(labels)
    present = np.unique(labels)
    w = compute_class_weight("balanced", classes=present, y=labels)
    out = torch.zeros(num_classes, dtype=torch.float32)
    out[torch.from_numpy(present)] = torch.tensor(w, dtype=torch.float32)
    return out


class ClipDataModule(L.LightningDataModule):
    """Builds train / val / test datasets from a SourceIndex and a DataConfig.

    `prepare()` probes and decodes every clip once into the frame cache (with a progress
    callback); clips that cannot be decoded are dropped and listed in `skipped` (or stop the
    run with `strict`). `frames` is how everything reads a clip's frames (the cache when the
    config enables it, else decoding).
    """

    def __init__(self, index: SourceIndex, config: DataConfig, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, balanced_sampler: bool = False, seed: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> None:
        super().__init__()
        self.index, self.config, self.seed = index, config, seed
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.balanced_sampler = balanced_sampler
        self.progress = progress
        cache = (FrameCache(config.cache_dir, frame_size=config.frame_size,
                            max_frames=config.cache_frames) if config.cache else None)
        self.frames = FrameSource(cache, frame_size=config.frame_size,
                                  cache_frames=config.cache_frames)
        excluded = set(config.exclude)
        self.samples: list[Sample] = [s for s in index.samples if s.name not in excluded]
        self.skipped: list[Skipped] = list(index.skipped) + [
            Skipped(s.name, "excluded by data.exclude") for s in index.samples if s.name in excluded]
        self._prepared = False

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    def prepare(self, *, ranks: Shards | None = None) -> None:
        """Decode everything once (cache) or probe everything (no cache); drop what fails.

        With `ranks` of a DDP run (every rank must call it then) each rank decodes its shard
        into the shared cache, the ranks exchange their failures (which also waits for all),
        then every rank reads all entries; a cache that is not shared between the nodes only
        costs the decoding again there, never a wrong entry."""
        if self._prepared:
            return
        failed: list[tuple[Sample, DecodeError]] = []
        cache = self.frames.cache
        if cache is not None and ranks is not None and ranks.world_size > 1:
            failed = self._fill_sharded(cache, ranks)
        elif cache is not None:
            failed = cache.fill(self.samples, progress=self.progress)
        else:
            for s in self.samples:
                try:
                    self.frames.probe(s)
                except DecodeError as e:
                    failed.append((s, e))
        if failed and self.config.strict:
            s, e = failed[0]
            raise DataError(f"{s.name}: {e.reason} ({len(failed)} unreadable clip(s); "
                            "drop --strict to skip them)")
        bad = {id(s) for s, _ in failed}
        self.samples = [s for s in self.samples if id(s) not in bad]
        self.skipped += [Skipped(s.name, e.reason) for s, e in failed]
        self._prepared = True

    def _fill_sharded(self, cache: FrameCache, ranks: Shards) -> list[tuple[Sample, DecodeError]]:
        mine = ranks.shard(list(range(len(self.samples))))
        position = {id(self.samples[i]): i for i in mine}
        errors = cache.fill([self.samples[i] for i in mine], progress=self.progress)
        local = [(position[id(s)], e.path, e.reason) for s, e in errors]
        bad = {i: DecodeError(path, reason)
               for part in ranks.all_gather(local) for i, path, reason in part}
        rest = [s for i, s in enumerate(self.samples) if i not in bad]
        failed = [(self.samples[i], e) for i, e in sorted(bad.items())]
        return failed + cache.fill(rest)  # cache hits, unless the cache is not shared

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def dataset(self, split: str, *, train: bool | None = None,
                samples: Sequence[Sample] | None = None, num_clips: int | None = None,
                seed: int | None = None) -> ClipDataset:
        """The dataset of one split; `train` (default: split == 'train') picks augmentation.

        `samples`, `num_clips` and `seed` override the split's clips, the clips per video
        (default: 1 in training, `eval_clips` otherwise) and the module's seed."""
        self.prepare()
        c = self.config
        train = split == "train" if train is None else train
        norm = {k: v for k, v in (("mean", self.mean), ("std", self.std)) if v is not None}
        if train:
            transform = train_transform(c.size, spec=AugmentSpec(**c.augment.model_dump()), **norm)
        else:
            transform = eval_transform(c.size, **norm)
        if samples is None:
            samples = [s for s in self.samples if s.split == split]
        if num_clips is None:
            num_clips = 1 if train else c.eval_clips
        return ClipDataset(samples, frames=c.frames, train=train, transform=transform,
                           source=self.frames, sampler=c.sampler, stride=c.stride,
                           max_stride=c.max_stride, short=c.short, num_clips=num_clips,
                           seed=self.seed if seed is None else seed)

    def class_weights(self) -> torch.Tensor:
        labels = [s.label for s in self.samples if s.split == "train"]
        return class_weights(labels, len(self.classes))

    def item_weights(self, labels: Sequence[int]) -> torch.Tensor | None:
        """Per-item class weights for a class-balanced sampler, or None when not balancing."""
        if not self.balanced_sampler:
            return None
        return self.class_weights()[torch.as_tensor(list(labels), dtype=torch.long)]

    def train_dataloader(self) -> DataLoader:
        """Training clips in the (seed, epoch) order, class-balanced with `balanced_sampler`."""
        ds = self.dataset("train")
        return make_loader(ds, self.config.batch_size, shuffle=True, seed=self.seed,
                           weights=self.item_weights(ds.labels()),
                           num_workers=self.config.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Validation clips in order, evaluation view."""
        return make_loader(self.dataset("val"), self.config.batch_size,
                           num_workers=self.config.num_workers)
