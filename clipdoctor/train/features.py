"""Stage 1 of two-stage training: run the frozen backbone once, cache per-frame features.

With a frozen backbone, every epoch through it would compute the same numbers again. Here
each clip's features are computed once per *view* and stored in the feature cache; the head
then trains on them at a small fraction of the cost. View 0 is the evaluation view (centre
frames, centre crop); views 1..K-1 are augmented training views (random frames, one random
crop / colour draw per clip), of which training picks one at random each epoch.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clipdoctor.data.cache import FeatureCache, sample_key
from clipdoctor.data.datamodule import ClipDataModule
from clipdoctor.data.sources import Sample

log = logging.getLogger(__name__)


def state_hash(module: torch.nn.Module) -> str:
    """Identity of a network's weights (random or loaded): part of every feature-cache key."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureDataset(Dataset):
    """Cached features: item i -> (features (T, D...) float32, label[, length]).

    `views[i]` lists the cached views of clip i; training draws one per epoch."""

    def __init__(self, views: Sequence[Sequence[np.ndarray]], labels: Sequence[int],
                 lengths: Sequence[int] | None = None, *, train: bool = False, seed: int = 0) -> None:
        self.views, self.labels = list(views), list(labels)
        self.lengths = list(lengths) if lengths is not None else None
        self.train, self.seed, self.epoch = train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, i: int):
        views = self.views[i]
        v = 0
        if self.train and len(views) > 1:
            v = int(np.random.default_rng([self.seed, self.epoch, i]).integers(len(views)))
        x = torch.from_numpy(np.array(views[v], dtype=np.float32))
        if self.lengths is not None:
            return x, self.labels[i], self.lengths[i]
        return x, self.labels[i]


@torch.no_grad()
def compute_features(model: torch.nn.Module, dm: ClipDataModule, samples: list[Sample], *,
                     views: int = 1, num_clips: int = 1, cache: FeatureCache | None = None,
                     batch_size: int = 16, progress: Callable[[int, int], None] | None = None
                     ) -> list[list[np.ndarray]]:
    """Per sample, the list of its cached views' features (memory-mapped when cached).

    Evaluation with `num_clips` K > 1 stores K clips of view 0 stacked as (K, T, ...)."""
    model.eval()
    ident = {"weights": state_hash(model.backbone), "pool": model.cached_pool_id(),
             "data": dm.config.model_dump(mode="json", exclude={"cache_dir", "batch_size",
                                                               "num_workers", "strict"}),
             "seed": dm.seed, "mean": dm.mean, "std": dm.std, "clips": num_clips}
    out: list[list[np.ndarray | None]] = [[None] * views for _ in samples]
    todo: dict[int, list[int]] = {}
    keys: dict[tuple[int, int], str] = {}
    for i, s in enumerate(samples):
        for v in range(views):
            keys[i, v] = sample_key(s, kind="features", view=v, **ident)
            hit = cache.get(keys[i, v]) if cache is not None else None
            if hit is not None:
                out[i][v] = hit
            else:
                todo.setdefault(v, []).append(i)
    total, done = sum(len(ix) for ix in todo.values()), 0
    for v, idx in todo.items():
        k = num_clips if v == 0 else 1
        # view 0: evaluation frames and crop; view v > 0: one fixed augmented draw per clip
        ds = dm.dataset("train", train=v > 0, samples=[samples[i] for i in idx], num_clips=k,
                        seed=dm.seed * 1000 + v)
        loader = DataLoader(ds, batch_size=batch_size * k, shuffle=False,
                            num_workers=dm.config.num_workers)
        pos = 0
        for batch in loader:
            x = batch[0]
            feats = model.frozen_features(x).float().cpu().numpy()  # (B*k, T, ...)
            for j in range(0, len(feats), k):
                i = idx[pos]
                arr = feats[j:j + k] if k > 1 else feats[j]  # (K, T, ...) or (T, ...)
                arr = arr.astype(np.float16 if cache is not None else np.float32)
                if cache is not None:
                    cache.put(keys[i, v], arr)
                    arr = cache.get(keys[i, v])
                out[i][v] = arr
                pos += 1
                done += 1
            if progress:
                progress(done, total)
    return out  # type: ignore[return-value]
