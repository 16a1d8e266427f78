"""Does `diagnose` name each planted cause among its top three findings? (issue 4, Done when)

One fault at a time on the demo data (the synthetic generator's 8 motion classes, 40 clips per
class, 16 frames at 64 px, real H.264 files) with the demo configuration, plus the healthy
configuration on clean data, which must report nothing at warning level or above (also with
the label-noise case's given backbone, on other clean clips drawn with the noisy set's seed):

  imbalance            5:1 class counts, no class weighting
  label-noise          15 % of clips filed under the other class of their pair; the doctor
                       judges labels only with informative features, so this case gives it the
                       backbone of a run trained on clean demo clips (`--weights best.ckpt`, the
                       stand-in for pretrained weights, which cannot be downloaded here)
  corrupt-files        10 % broken files (text, empty, truncated, audio-only)
  lr-too-high          --lr 3
  per-frame-aug        a new augmentation draw for every frame
  user models          the user's own CNN-LSTM with a final Softmax, with batch and time
                       swapped, and with a bidirectional LSTM read at [:, -1]

    python bench/doctor_faults.py [--budget 60] [--out bench/results]

Writes doctor_faults.json and doctor_faults.md (scenario, planted code, its rank, severity,
the top three, wall time).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.demo import demo_config
from clipdoctor.doctor.runner import diagnose


class FrameCNN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.out_dim = width * 4


class UserCNNLSTM(nn.Module):
    """The kind of CNN-LSTM users write; one flag plants one bug."""

    def __init__(self, classes: int = 8, *, softmax: bool = False, view_tb: bool = False,
                 bidirectional_last: bool = False) -> None:
        super().__init__()
        self.cnn = FrameCNN()
        self.view_tb, self.last = view_tb, bidirectional_last
        self.rnn = nn.LSTM(self.cnn.out_dim, 64, batch_first=True,
                           bidirectional=bidirectional_last)
        out = nn.Linear(128 if bidirectional_last else 64, classes)
        self.fc = nn.Sequential(out, nn.Softmax(dim=-1)) if softmax else out

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        B, T = clips.shape[:2]
        f = self.cnn.net(clips.flatten(0, 1))  # (B*T, D)
        if self.view_tb:  # the bug: (B*T, D) read back as (T, B, D)
            out, _ = self.rnn(f.view(T, B, -1))
            return self.fc(out[-1])
        out, (h, _) = self.rnn(f.view(B, T, -1))
        return self.fc(out[:, -1] if self.last else h[-1])


def _data(root: Path, name: str, seed: int = 1, **kw) -> Path:
    """Faulty data is drawn with seed 1: other clips than the clean set (seed 0) on which the
    label-noise case's backbone was trained."""
    path = root / name
    if not (path / "synthetic.json").exists():
        generate(path, clips_per_class=40, seed=seed, **kw)
    return path


def _clean_weights(root: Path, clean: Path, cache: Path, reference: Path | None) -> Path:
    """best.ckpt of the demo CNN-LSTM trained on clean demo clips (made once), or of the
    `--reference` run."""
    from clipdoctor.training.run import train

    if reference is not None:
        return reference / "checkpoints" / "best.ckpt"
    run = root / "clean-run"
    if not (run / "checkpoints" / "best.ckpt").exists():
        train(load_source(clean), demo_config(cache), run)
    return run / "checkpoints" / "best.ckpt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=60.0)
    p.add_argument("--work", type=Path, default=Path("bench/work/doctor_faults"))
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--reference", type=Path,
                   help="run folder whose backbone the label-noise case uses (default: the demo "
                        "CNN-LSTM trained on clean demo clips)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "cache"
    clean = _data(args.work, "clean", seed=0)
    cfg = lambda **kw: demo_config(cache, **kw)  # noqa: E731

    given = _clean_weights(args.work, clean, cache, args.reference)
    weighted = cfg(**{"model.weights": str(given)})
    scenarios = [  # (name, planted code, data, config, user model)
        ("healthy", None, clean, cfg(), None),
        ("imbalance", "class-imbalance", _data(args.work, "imbalanced", imbalance=5.0),
         cfg(**{"train.class_weighting": "none"}), None),
        ("healthy, given weights", None, _data(args.work, "clean-seed1"), weighted, None),
        ("label-noise", "label-noise", _data(args.work, "noisy", label_noise=0.15), weighted, None),
        ("corrupt-files", "corrupt-clips", _data(args.work, "corrupt", corrupt=0.1), cfg(), None),
        ("lr-too-high", "lr-too-high", clean, cfg(**{"train.lr": 3.0}), None),
        ("per-frame-aug", "inconsistent-augmentation", clean,
         cfg(**{"data.augment.per_frame": True}), None),
        ("user: softmax", "double-softmax", clean, cfg(), lambda: UserCNNLSTM(softmax=True)),
        ("user: (T, B) view", "batch-time-swapped", clean, cfg(), lambda: UserCNNLSTM(view_tb=True)),
        ("user: bi-LSTM [:, -1]", "bidirectional-last-step", clean, cfg(),
         lambda: UserCNNLSTM(bidirectional_last=True)),
    ]
    rows = []
    for name, code, data, config, user in scenarios:
        torch.manual_seed(0)
        started = time.perf_counter()
        report = diagnose(load_source(data), config=config, budget_s=args.budget,
                          model=user() if user else None)
        wall = time.perf_counter() - started
        ranked = [f.code for f in report.findings]
        sev = {f.code: f.severity for f in report.findings}
        rank = ranked.index(code) + 1 if code in ranked else None
        loud = [c for c in ranked if sev[c] in ("error", "warning")]
        ok = (not loud) if code is None else (rank is not None and rank <= 3)
        why = next((sk["reason"] for sk in report.skipped if code in sk.get("codes", [])), "")
        rows.append({"scenario": name, "planted": code, "rank": rank, "skipped_because": why,
                     "severity": sev.get(code) if code else None, "top3": ranked[:3],
                     "errors_warnings": loud, "ok": ok, "wall_s": round(wall, 1),
                     "skipped": [s["name"] for s in report.skipped]})
        print(json.dumps(rows[-1]), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
            "torch": torch.__version__, "budget_s": args.budget}
    (args.out / "doctor_faults.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"Planted faults, one at a time, on the demo data; `diagnose --budget {args.budget:g}` "
             f"(torch {meta['torch']}, {meta['cores']} threads).", "",
             "| scenario | planted code | rank | severity | top three findings | ok | wall s |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for r in rows:
        planted = r["planted"] or "(none: no error or warning expected)"
        top = ", ".join(r["top3"]) or "-"
        if r["planted"] is None:
            top = ", ".join(r["errors_warnings"]) or "no error or warning"
        lines.append(f"| {r['scenario']} | {planted} | {r['rank'] or '-'} | {r['severity'] or '-'} "
                     f"| {top} | {'yes' if r['ok'] else 'NO'} | {r['wall_s']} |")
        if not r["ok"] and r["skipped_because"]:
            notes.append(f"- {r['scenario']}: the check was skipped: {r['skipped_because']}")
    lines += [""] + notes if notes else []
    (args.out / "doctor_faults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
