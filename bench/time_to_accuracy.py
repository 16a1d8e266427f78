"""Time to accuracy on moving handwritten digits: clipdoctor's default training vs a plain
per-epoch-recompute CNN-LSTM, same backbone and head, same clips, same process.

Data: `digits.py` (scikit-learn's digits 0-3 sliding left or right, 8 classes, real .mp4 files).
Config: clipdoctor's defaults (resnet10t, frozen, grid pooling, BiLSTM, AdamW 1e-3 cosine,
30 epochs, early stopping) with random weights (nothing downloads) at 64 px
(`data.size` 64, `data.frame_size` 72) because the clips are 64 px.

* clipdoctor: `clipdoctor.training.run.train` from an empty cache (decoding, feature cache and
  stage-1 epochs all inside the clock); a callback notes the time of every validation.
* baseline: what CNN-LSTM tutorials do: every epoch decode each clip with PyAV, pick the same
  8 frames, resize, normalise, run the frozen backbone and train the head (Adam 1e-3), then
  validate the same way; it stops at the target or at the time budget.

Time to target = wall time until validation balanced accuracy first reaches TARGET. When the
baseline does not reach it within its budget, the ratio is a lower bound (budget / clipdoctor).
Final balanced accuracy of both on the test split at equal budget: each side trains for at
most the same wall time (clipdoctor's default run is stopped at the first epoch end past it,
and its best checkpoint is evaluated as `clipdoctor train` does); then both are tested.
"""

from __future__ import annotations

import time

import av
import numpy as np
import torch
import torch.nn.functional as F

from common import Result, cli, ratio_row, workdir
from digits import write_digits

NAME = "time_to_accuracy"
TARGET = 0.6
SIZE = 64
# Digits 0-3 in both directions: 8 classes of about 90 clips. With all ten digits (20 classes,
# 1,797 clips) the random-weight features told directions apart but too few digits in a
# few minutes of training; these four are told apart by a linear probe on them.
DIGITS = (0, 1, 2, 3)


def _config(cache):
    from clipdoctor.config import RunConfig, with_overrides

    return with_overrides(RunConfig(), {"model.pretrained": False, "data.size": SIZE,
                                        "data.frame_size": SIZE + SIZE // 8,
                                        "data.cache_dir": cache})


def _clipdoctor(index, cfg, out, budget_s: float) -> dict:
    """Default training with a timing callback added to each Lightning trainer; the callback
    also ends training at the first epoch end past `budget_s` (then the best checkpoint is
    evaluated as usual)."""
    from lightning.pytorch.callbacks import Callback

    from clipdoctor.training import run as run_mod

    history: list[tuple[float, int, float]] = []
    started = time.perf_counter()

    class Timer(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            acc = trainer.callback_metrics.get("val_balanced_acc")
            if acc is not None:
                history.append((time.perf_counter() - started, trainer.current_epoch, float(acc)))
            if time.perf_counter() - started > budget_s:
                trainer.should_stop = True

    original = run_mod._trainer

    def with_timer(*args, **kw):
        trainer, ckpt = original(*args, **kw)
        trainer.callbacks.append(Timer())
        return trainer, ckpt

    run_mod._trainer = with_timer
    try:
        run = run_mod.train(index, cfg, out)
    finally:
        run_mod._trainer = original
    total = time.perf_counter() - started
    hit = next((t for t, _, acc in history if acc >= TARGET), None)
    return {"time_to_target_s": hit, "total_s": total, "history": history,
            "epochs": run.metrics.get("epochs"), "val_balanced_acc": run.metrics["val"]["balanced_acc"],
            "test_balanced_acc": run.metrics["test"]["balanced_acc"]}


class PlainCnnLstm:
    """The straightforward implementation: nothing is cached, every epoch starts from files."""

    def __init__(self, model, mean, std, frames: int) -> None:
        self.model, self.frames = model, frames
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        self.opt = torch.optim.Adam(head, 1e-3)

    def clip(self, path) -> torch.Tensor:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        n = len(frames)
        pick = [(2 * i + 1) * n // (2 * self.frames) for i in range(self.frames)]  # segment centres
        x = torch.from_numpy(np.stack([frames[i] for i in pick])).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True)  # (T, 3, S, S)
        return (x - self.mean) / self.std

    def batches(self, samples, batch: int, rng: np.random.Generator | None):
        order = rng.permutation(len(samples)) if rng is not None else np.arange(len(samples))
        for i in range(0, len(order), batch):
            part = [samples[j] for j in order[i:i + batch]]
            yield torch.stack([self.clip(s.path) for s in part]), torch.tensor([s.label for s in part])

    def epoch(self, samples, rng) -> None:
        self.model.train()
        self.model.backbone.eval()  # frozen: BatchNorm statistics stay put
        for x, y in self.batches(samples, 16, rng):
            with torch.no_grad():
                feats = self.model.frame_features(x)  # (B, T, D): the backbone, every epoch
            loss = F.cross_entropy(self.model.forward_features(feats), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()

    @torch.no_grad()
    def balanced_acc(self, samples, classes: int) -> float:
        from sklearn.metrics import balanced_accuracy_score

        self.model.eval()
        pred, true = [], []
        for x, y in self.batches(samples, 32, None):
            pred += self.model(x).argmax(-1).tolist()
            true += y.tolist()
        return float(balanced_accuracy_score(true, pred))


def _baseline(index, cfg, budget_s: float) -> dict:
    from clipdoctor.models.classifier import build_classifier

    torch.manual_seed(cfg.seed)  # the same initial weights as clipdoctor's run
    model = build_classifier(cfg.model, len(index.classes))
    plain = PlainCnnLstm(model, model.info.mean, model.info.std, cfg.data.frames)
    train, val, test = (index.split(s) for s in ("train", "val", "test"))
    rng = np.random.default_rng(cfg.seed)
    history: list[tuple[float, int, float]] = []
    started = time.perf_counter()
    epoch = 0
    while time.perf_counter() - started < budget_s:
        plain.epoch(train, rng)
        acc = plain.balanced_acc(val, len(index.classes))
        history.append((time.perf_counter() - started, epoch, acc))
        epoch += 1
        if acc >= TARGET:
            break
    hit = next((t for t, _, a in history if a >= TARGET), None)
    elapsed = time.perf_counter() - started
    return {"time_to_target_s": hit, "total_s": elapsed, "epochs": epoch, "history": history,
            "epoch_s": elapsed / max(1, epoch),
            "test_balanced_acc": plain.balanced_acc(test, len(index.classes))}


def measure(quick: bool) -> Result:
    from clipdoctor.data.sources import load_source

    result = Result(NAME)
    budget = 60.0 if quick else 180.0
    with workdir(NAME) as root:
        t0 = time.perf_counter()
        data = write_digits(root / "digits", digits_used=DIGITS, limit=240 if quick else None)
        write_s = time.perf_counter() - t0
        index = load_source(data)
        cfg = _config(root / "cache")
        cd = _clipdoctor(index, cfg, root / "run", budget)
        base = _baseline(index, cfg, budget)
    n = {s: len(index.split(s)) for s in ("train", "val", "test")}
    result.details = {"clips": n, "classes": len(index.classes), "target_val_balanced_acc": TARGET,
                      "write_clips_s": round(write_s, 1), "baseline_budget_s": budget,
                      "config": "clipdoctor defaults, model.pretrained=false, data.size=64, "
                                "data.frame_size=72", "clipdoctor": cd, "baseline": base}
    t_cd, t_b = cd["time_to_target_s"], base["time_to_target_s"]
    stamps = [t for t, *_ in cd["history"]]
    if len(stamps) > 2:
        gaps = np.diff(stamps)
        per_epoch = float(np.median(gaps))
        result.notes.append(
            f"Time to accuracy: a stage-1 epoch of `clipdoctor train` on {n['train']} cached clips "
            f"took {per_epoch:.1f} s (median; slowest {gaps.max():.0f} s on this shared machine) "
            f"against {base['epoch_s']:.1f} s for a baseline epoch that decodes and runs the "
            f"backbone ({base['epoch_s'] / per_epoch:.0f}x); clipdoctor's first epoch, with "
            f"decoding and the feature cache, ended at {stamps[0]:.0f} s, about one baseline "
            "epoch. So the time-to-target ratio is roughly the number of epochs the target "
            "needs: 10x needs a target that takes 10 or more epochs, and a baseline budget of "
            "10 or more of its epochs to show it.")
    spent = f"baseline {base['epochs']} epochs of {base['epoch_s']:.0f} s"
    if t_cd is None:
        result.add(f"time to val balanced acc {TARGET}: clipdoctor vs per-epoch recompute",
                   ">= 10x", "n/a", False,
                   f"clipdoctor's default run did not reach {TARGET} (best "
                   f"{max(a for *_, a in cd['history']):.3f}); {spent}")
    elif t_b is None:
        lower = base["total_s"] / t_cd
        result.add(f"time to val balanced acc {TARGET}: clipdoctor vs per-epoch recompute",
                   ">= 10x", f">= {lower:.1f}x", lower >= 10 or None,
                   f"clipdoctor {t_cd:.0f} s (decode + features + epochs); the baseline did not "
                   f"reach {TARGET} in its {base['total_s']:.0f} s budget ({spent}, last val "
                   f"{base['history'][-1][2]:.3f}): a lower bound"
                   + ("" if lower >= 10 else "; a longer budget would be needed to show 10x"))
    else:
        ratio_row(result, f"time to val balanced acc {TARGET}: clipdoctor vs per-epoch recompute",
                  t_b / t_cd, 10, f"{t_cd:.0f} s vs {t_b:.0f} s ({spent})",
                  missed_because=(
                      f"The ratio is about the {base['epochs']} epochs the baseline needed, each "
                      f"decoding and running the backbone, over clipdoctor's first epoch (which "
                      f"does that once, {cd['history'][0][0]:.0f} s) plus its cached epochs until "
                      "the target: close to 10x at this target, and on this shared 2-core "
                      "machine the short clipdoctor side varies by about 15 % between runs."))
    result.add("test balanced accuracy at equal budget: clipdoctor / baseline", "-",
               f"{cd['test_balanced_acc']:.3f} / {base['test_balanced_acc']:.3f}", None,
               f"budget {budget:.0f} s each; clipdoctor's run took {cd['total_s']:.0f} s with "
               f"evaluation ({cd['epochs']} epochs, {cd['history'][-1][0] / max(1, len(cd['history'])):.1f} s "
               "per epoch in all, the first including decoding and features); "
               f"the baseline had {base['total_s']:.0f} s; {n['test']} test clips, "
               f"{len(index.classes)} classes (chance {1 / len(index.classes):.3f})")
    return result


if __name__ == "__main__":
    cli(NAME, measure)
