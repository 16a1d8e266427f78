"""Epoch cost: head training on cached per-frame features vs running the frozen backbone every epoch.

Both sides train the same head with the same optimiser on the same clips in the same process;
only where the per-frame features come from differs. Usage:

    python bench/epoch_cost.py [DATA] [--backbone resnet10t] [--size 112] [--frames 8]

DATA defaults to the demo data (`clipdoctor synth`, 40 clips per class, 64 px), written to a
temporary folder. Writes bench/results/epoch_cost.json and prints one table row.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from clipdoctor.config import RunConfig, with_overrides
from clipdoctor.data.cache import FeatureCache
from clipdoctor.data.datamodule import ClipDataModule
from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.models.classifier import build_classifier
from clipdoctor.train.features import FeatureDataset, compute_features
from clipdoctor.train.module import unpack


def _epoch(model, loader, optimizer, *, through_backbone: bool) -> float:
    started = time.perf_counter()
    model.train()
    for batch in loader:
        x, y, lengths = unpack(batch)
        if through_backbone:
            with torch.no_grad():
                x = model.frozen_features(x)  # the frozen backbone, every epoch
        loss = torch.nn.functional.cross_entropy(model.forward_cached(x, lengths), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data", nargs="?")
    p.add_argument("--backbone", default="resnet10t")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per side (best is kept)")
    args = p.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="clipdoctor-bench-"))
    data = args.data or generate(tmp / "data", clips_per_class=40).root
    cfg = with_overrides(RunConfig(), {"model.backbone": args.backbone, "model.pretrained": False,
                                       "data.size": args.size, "data.frame_size": round(args.size * 8 / 7),
                                       "data.frames": args.frames, "data.cache_dir": tmp / "cache"})
    index = load_source(data)
    model = build_classifier(cfg.model, len(index.classes))
    dm = ClipDataModule(index, cfg.data, mean=model.info.mean, std=model.info.std)
    dm.prepare()  # frame cache filled: decoding is not part of either side
    samples = [s for s in dm.samples if s.split == "train"]
    t0 = time.perf_counter()
    views = compute_features(model, dm, samples, cache=FeatureCache(tmp / "cache"))
    fill_s = time.perf_counter() - t0
    feats = torch.utils.data.DataLoader(FeatureDataset(views, [s.label for s in samples], train=True),
                                        batch_size=cfg.data.batch_size, shuffle=True)
    clips = torch.utils.data.DataLoader(dm.dataset("train", train=False, samples=samples),
                                        batch_size=cfg.data.batch_size, shuffle=True)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW(head_params, 1e-3)
    cached = min(_epoch(model, feats, opt, through_backbone=False) for _ in range(args.epochs))
    full = min(_epoch(model, clips, opt, through_backbone=True) for _ in range(args.epochs))
    row = {"backbone": args.backbone, "size": args.size, "frames": args.frames,
           "train_clips": len(samples), "feature_fill_s": round(fill_s, 2),
           "epoch_cached_s": round(cached, 3), "epoch_backbone_s": round(full, 3),
           "ratio": round(full / cached, 1), "threads": torch.get_num_threads()}
    out = Path(__file__).parent / "results" / "epoch_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(row, indent=1))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
