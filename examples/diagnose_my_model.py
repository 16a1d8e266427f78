"""Diagnose your own PyTorch CNN-LSTM on your own Dataset (README, "The doctor").

The model is written the way many tutorials write it: a "pretrained" per-frame CNN frozen by
running it under `torch.no_grad()` inside `forward`, a `BatchNorm1d` after it, an LSTM read at
its last step, and Adam given only the layers after the CNN. Its fault: `model.train()` also
puts the frozen CNN in train mode, so its BatchNorm running statistics drift away from the
ones its weights were trained with, and the features change under the head while it learns.
The doctor measures what is frozen (which parameters receive a gradient, which the optimizer
holds) and finds the drift; with the frozen part kept in eval mode it reports nothing loud.

    python examples/diagnose_my_model.py [--budget 30] [--html report.html]

Runs in about a minute on a 2-core CPU; needs nothing but clipdoctor.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

import clipdoctor as cd

CLASSES = ["left", "right", "up", "down"]
FRAMES, SIZE = 8, 32


class MovingSquares(Dataset):
    """Your Dataset: items are (clip, label), a clip (T, C, H, W) float32 normalised to about
    zero mean and unit scale: a square moving left, right, up or down over noise."""

    def __init__(self, clips_per_class: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        moves = [(0, -2), (0, 2), (-2, 0), (2, 0)]
        self.clips, self.targets = [], []
        for i in range(clips_per_class * len(CLASSES)):
            label = i % len(CLASSES)
            clip = rng.normal(0, 0.3, (FRAMES, 3, SIZE, SIZE)).astype(np.float32)
            r, c = rng.integers(10, 18, 2)
            dr, dc = moves[label]
            for t in range(FRAMES):
                rr, cc = r + dr * (t - FRAMES // 2), c + dc * (t - FRAMES // 2)
                clip[t, :, max(rr, 0):rr + 6, max(cc, 0):cc + 6] = 1.5
            self.clips.append(torch.from_numpy(clip))
            self.targets.append(label)
        self.classes = CLASSES

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.clips[i], self.targets[i]


class CNNLSTM(nn.Module):
    """A per-frame CNN (standing in for a pretrained one) run under no_grad, BatchNorm1d,
    an LSTM read at the last step. `fixed=True` keeps the frozen CNN in eval mode."""

    def __init__(self, fixed: bool = False) -> None:
        super().__init__()
        self.fixed = fixed
        self.cnn = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.bn = nn.BatchNorm1d(128)
        self.lstm = nn.LSTM(128, 64, batch_first=True)
        self.fc = nn.Linear(64, len(CLASSES))

    def train(self, mode: bool = True) -> CNNLSTM:
        super().train(mode)
        if self.fixed:
            self.cnn.eval()  # the fix: a frozen network keeps its BatchNorm statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        with torch.no_grad():  # "frozen": no gradient reaches the CNN
            f = self.cnn(x.flatten(0, 1))  # (B*T, 3, H, W) -> (B*T, 128)
        f = self.bn(f).view(B, T, -1)
        out, _ = self.lstm(f)
        return self.fc(out[:, -1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per diagnosis")
    parser.add_argument("--html", help="also write the faulty model's report here")
    args = parser.parse_args()

    data = cd.load_dataset(MovingSquares(16, seed=0), val=MovingSquares(4, seed=1))
    for fixed in (False, True):
        torch.manual_seed(0)
        model = CNNLSTM(fixed=fixed)
        report = cd.diagnose(
            data, model=model, loss_fn=nn.CrossEntropyLoss(),
            # Adam on the layers after the CNN only: a factory of the model
            optimizer=lambda m: torch.optim.Adam(
                [*m.bn.parameters(), *m.lstm.parameters(), *m.fc.parameters()], lr=1e-3),
            budget_s=args.budget)
        print(f"\n== {'fixed' if fixed else 'faulty'} model: data {report.dataset.get('layout')}, "
              f"{report.model.get('trainable')} of {report.model.get('parameters')} "
              f"parameters trained ==")
        for f in report.findings:  # most severe first
            print(f"{f.severity:8} {f.code:28} {f.title}")
        loud = [f.code for f in report.findings if f.severity in ("error", "warning")]
        print("errors and warnings:", ", ".join(loud) if loud else "none")
        if args.html and not fixed:
            report.to_html(args.html)


if __name__ == "__main__":
    main()
