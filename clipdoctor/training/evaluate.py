"""evaluate / predict on a trained run: metrics (torchmetrics), confusion matrix, top-k labels.

Evaluation averages the softmax scores of `eval_clips` clips per video (multi-clip testing).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (multiclass_accuracy,
                                                    multiclass_confusion_matrix,
                                                    multiclass_f1_score, multiclass_recall)

from clipdoctor.config import RunConfig, load_config
from clipdoctor.data.cache import FeatureCache
from clipdoctor.data.datamodule import ClipDataModule
from clipdoctor.data.sources import Sample, SourceIndex
from clipdoctor.errors import ClipdoctorError, DecodeError
from clipdoctor.models.classifier import ClipClassifier, build_classifier
from clipdoctor.training.features import compute_features

log = logging.getLogger(__name__)


@torch.no_grad()
def clip_scores(model: ClipClassifier, dm: ClipDataModule, samples: list[Sample]) -> torch.Tensor:
    """(N, K) class probabilities per sample, averaged over `eval_clips` clips."""
    model.eval()
    k = dm.config.eval_clips
    cache = FeatureCache(dm.config.cache_dir) if dm.config.cache else None
    views = compute_features(model, dm, samples, views=1, num_clips=k, cache=cache)
    probs = []
    for i in range(0, len(samples), 64):
        feats = torch.from_numpy(np.stack([np.asarray(v[0], dtype=np.float32)
                                           for v in views[i:i + 64]]))
        if k > 1:  # (B, K, T, ...) -> (B*K, T, ...), scores averaged over the K clips
            b = feats.shape[0]
            p = F.softmax(model.forward_cached(feats.flatten(0, 1)), -1).view(b, k, -1).mean(1)
        else:
            p = F.softmax(model.forward_cached(feats), -1)
        probs.append(p)
    return torch.cat(probs)


def metrics_from_scores(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """top-1, top-5, balanced accuracy, macro-F1, per-class recall and the confusion matrix."""
    k = len(classes)
    conf = multiclass_confusion_matrix(probs, labels, k)
    recall = multiclass_recall(probs, labels, k, average="none")
    return {
        "clips": int(len(labels)),
        "top1": float(multiclass_accuracy(probs, labels, k, average="micro")),
        "top5": float(multiclass_accuracy(probs, labels, k, average="micro", top_k=min(5, k))),
        "balanced_acc": float(multiclass_accuracy(probs, labels, k, average="macro")),
        "macro_f1": float(multiclass_f1_score(probs, labels, k, average="macro")),
        "loss": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels)),
        "per_class_recall": {c: float(r) for c, r in zip(classes, recall)},
        "confusion": conf.tolist(),
    }


def evaluate_samples(model: ClipClassifier, dm: ClipDataModule, samples: list[Sample],
                     classes: list[str]) -> dict:
    probs = clip_scores(model, dm, samples)
    labels = torch.tensor([s.label for s in samples])
    return metrics_from_scores(probs, labels, classes)


@dataclass
class LoadedRun:
    path: Path
    config: RunConfig
    classes: list[str]
    model: ClipClassifier


def load_run(run: str | Path, checkpoint: str = "best.ckpt") -> LoadedRun:
    """Rebuild a run's model from config.yaml + classes.json and load its checkpoint."""
    run = Path(run)
    for name in ("config.yaml", "classes.json", f"checkpoints/{checkpoint}"):
        if not (run / name).exists():
            raise ClipdoctorError(f"{run}: not a finished run ({name} missing); pass the folder "
                                  "that `clipdoctor train --out` wrote")
    config = load_config(run / "config.yaml")
    classes = json.loads((run / "classes.json").read_text(encoding="utf-8"))
    # the checkpoint has the trained weights: do not fetch or read pretrained ones again
    model = build_classifier(config.model.model_copy(update={"pretrained": False, "weights": None}),
                             len(classes))
    from clipdoctor.training.checkpoint_io import load_checkpoint_file

    state = load_checkpoint_file(run / "checkpoints" / checkpoint)
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items()
               if k.startswith("model.")}
    model.load_state_dict(weights)
    model.eval()
    return LoadedRun(run, config, classes, model)


def evaluate(run: str | Path, data: SourceIndex, split: str = "test") -> dict:
    """Metrics of a trained run on one split of `data` (falls back to val when test is empty)."""
    loaded = load_run(run)
    if data.classes != loaded.classes:
        raise ClipdoctorError(f"{data.root}: classes {data.classes[:5]} differ from the run's "
                              f"{loaded.classes[:5]}; evaluate on the dataset it was trained on")
    dm = ClipDataModule(data, loaded.config.data, mean=loaded.model.info.mean,
                        std=loaded.model.info.std, seed=loaded.config.seed)
    dm.prepare()
    samples = [s for s in dm.samples if s.split == split]
    if not samples and split == "test":
        split, samples = "val", [s for s in dm.samples if s.split == "val"]
    if not samples:
        raise ClipdoctorError(f"{data.root}: the {split} split holds no readable clips")
    out = evaluate_samples(loaded.model, dm, samples, loaded.classes)
    out["split"] = split
    out["skipped"] = [{"path": s.path, "reason": s.reason} for s in dm.skipped]
    return out


def predict(run: str | Path, paths: list[str | Path], topk: int = 5) -> list[dict]:
    """Top-k labels with probabilities for video files or frame folders (no cache needed)."""
    loaded = load_run(run)
    cfg = loaded.config.data.model_copy(update={"cache": False})
    samples = [Sample(Path(p).resolve(), 0, "test", name=str(p)) for p in paths]
    for s in samples:
        if not s.path.exists():
            raise ClipdoctorError(f"{s.name}: no such file or folder")
    index = SourceIndex("files", Path.cwd(), loaded.classes, samples)
    dm = ClipDataModule(index, cfg, mean=loaded.model.info.mean, std=loaded.model.info.std,
                        seed=loaded.config.seed)
    results = []
    for s in samples:
        try:
            probs = clip_scores(loaded.model, dm, [s])[0]
        except DecodeError as e:
            results.append({"path": s.name, "error": e.reason})
            continue
        top = torch.topk(probs, min(topk, len(loaded.classes)))
        results.append({"path": s.name, "top": [
            {"label": loaded.classes[int(i)], "prob": round(float(p), 4)}
            for p, i in zip(top.values, top.indices)]})
    return results
