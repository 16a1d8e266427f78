"""Does `diagnose` name each planted cause among its top three findings? (issues 4 and 13)

One fault at a time, in two columns:

**demo files + built-in pipeline** (issue 4): the demo data (the synthetic generator's 8 motion
classes, 40 clips per class, 16 frames at 64 px, real H.264 files) read by clipdoctor's own
loader with the demo configuration; the "user:" rows swap in the user's own model. Plus the
healthy configuration on clean data, which must report nothing at warning level or above (also
with the label-noise case's given backbone, on other clean clips drawn with the noisy set's
seed):

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

**user Dataset + user model** (issue 13): the same demo files, decoded once with PyAV by the
user's own `torch.utils.data.Dataset` (`DemoClips`: 8 evenly spaced frames per clip, items
`(clip (T, C, H, W) float32 normalised with ImageNet statistics, label)`, labels from the class
folders, the user's own stratified 80/20 split), passed as `cd.load_dataset(train_ds,
val=val_ds)`, fed to the user's CNN-LSTM (`UserCNNLSTM`, a per-frame conv/BatchNorm CNN, an LSTM
read at h_n) with the user's loss (`nn.CrossEntropyLoss()`) and optimizer (Adam, 1e-3). Each
fault is planted the way it shows up in user code:

  imbalance            the imbalanced files; a plain CrossEntropyLoss
  label-noise          the noisy files. With a user model the label check cannot run (it needs
                       the built-in backbone's features: the table says why); the variant row
                       gives the user Dataset to the built-in model with the given weights
  corrupt-files        the broken files: the user's Dataset catches the decoding error and
                       returns an all-black clip in its place (a common fallback)
  corrupt: items fail  the broken files, decoded lazily in __getitem__, which raises for them
  lr-too-high          optimizer=Adam(lr=3)
  per-frame-aug        augment= the user's crop, a torchvision v2 RandomResizedCrop called on
                       every frame (healthy: called once on the (T, C, H, W) clip)
  frozen BN drift      a CNN pretrained by the user (on the clean seed-0 clips), frozen by each
                       idiom: requires_grad_(False), torch.no_grad() in forward, or left out of
                       a ready Adam; the frozen CNN stays in train mode after model.train().
                       Fixed (healthy): the frozen CNN kept in eval mode
  output-ignores-input the CNN's features replaced by zeros_like before the LSTM (a debugging
                       line left in)

    python bench/doctor_faults.py [--budget 60] [--only builtin|user] [--scenarios "A;B"]
                                  [--out bench/results]

Writes doctor_faults.json and doctor_faults.md (per scenario and column: planted code, its
rank, severity, the top three, wall time). `--only` / `--scenarios` re-run part of the table
and keep the other cells from the last doctor_faults.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.demo import demo_config
from clipdoctor.doctor.runner import diagnose

COLUMNS = {"builtin": "demo files + built-in pipeline", "user": "user Dataset + user model"}
LOUD = ("error", "warning")


# =============================================================================================
# the user's model

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
                 bidirectional_last: bool = False, blind: bool = False) -> None:
        super().__init__()
        self.cnn = FrameCNN()
        self.view_tb, self.last, self.blind = view_tb, bidirectional_last, blind
        self.rnn = nn.LSTM(self.cnn.out_dim, 64, batch_first=True,
                           bidirectional=bidirectional_last)
        out = nn.Linear(128 if bidirectional_last else 64, classes)
        self.fc = nn.Sequential(out, nn.Softmax(dim=-1)) if softmax else out

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        B, T = clips.shape[:2]
        f = self.cnn.net(clips.flatten(0, 1))  # (B*T, D)
        if self.blind:  # the bug: a debugging line left in, the LSTM never sees the clips
            f = torch.zeros_like(f)
        if self.view_tb:  # the bug: (B*T, D) read back as (T, B, D)
            out, _ = self.rnn(f.view(T, B, -1))
            return self.fc(out[-1])
        out, (h, _) = self.rnn(f.view(B, T, -1))
        return self.fc(out[:, -1] if self.last else h[-1])


class FrozenCNNLSTM(nn.Module):
    """The user's CNN-LSTM on a CNN they pretrained before (weights loaded from a file), frozen
    by one of the idioms people use. `freeze`: "requires_grad" (flags off), "no_grad" (the CNN
    runs under torch.no_grad() in forward) or "optimizer" (nothing in the model: the user's
    Adam holds only the LSTM and the classifier). The bug: `model.train()` puts the frozen CNN
    in train mode, so its BatchNorm running statistics drift; `eval_frozen` is the fix."""

    def __init__(self, freeze: str, cnn_state: dict, classes: int = 8,
                 eval_frozen: bool = False) -> None:
        super().__init__()
        self.freeze, self.eval_frozen = freeze, eval_frozen
        self.cnn = FrameCNN()
        self.cnn.load_state_dict(cnn_state)
        self.rnn = nn.LSTM(self.cnn.out_dim, 64, batch_first=True)
        self.fc = nn.Linear(64, classes)
        if freeze == "requires_grad":
            self.cnn.requires_grad_(False)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        B, T = clips.shape[:2]
        if self.freeze == "no_grad":
            with torch.no_grad():
                f = self.cnn.net(clips.flatten(0, 1))  # (B*T, C, H, W) -> (B*T, D)
        else:
            f = self.cnn.net(clips.flatten(0, 1))
        _, (h, _) = self.rnn(f.view(B, T, -1))  # (B, T, D)
        return self.fc(h[-1])

    def train(self, mode: bool = True) -> FrozenCNNLSTM:
        super().train(mode)
        if self.eval_frozen:
            self.cnn.eval()  # the fix: the frozen CNN keeps its BatchNorm statistics
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.rnn.parameters(), *self.fc.parameters()]


def adam(lr: float = 1e-3) -> Callable:
    """optimizer= as a user writes it: a factory of the parameters."""
    return lambda params: torch.optim.Adam(params, lr=lr)


def frozen_setup(freeze: str, cnn_state: dict, fixed: bool) -> dict:
    """model= and optimizer= for one freezing idiom (the optimizer-subset idiom passes the
    user's ready Adam on the LSTM and classifier)."""
    torch.manual_seed(0)
    model = FrozenCNNLSTM(freeze, cnn_state, eval_frozen=fixed)
    opt = (torch.optim.Adam(model.head_parameters(), lr=1e-3) if freeze == "optimizer"
           else adam())
    return {"model": model, "optimizer": opt}


# =============================================================================================
# the user's Dataset over the demo files

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
FRAMES = 8


def decode_clip(path: Path, frames: int = FRAMES) -> np.ndarray:
    """(frames, H, W, 3) uint8: every frame of the file decoded with PyAV, `frames` of them
    evenly spaced kept (what a user's loader does). Raises for a file without video frames."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path.name}: no video stream")
        imgs = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not imgs:
        raise ValueError(f"{path.name}: no frames decoded")
    idx = np.linspace(0, len(imgs) - 1, frames).round().astype(int)
    return np.stack([imgs[i] for i in idx])


def list_files(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names): one folder per class, labels from the folder names."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / c).glob("*.mp4")):
            files.append(f)
            labels.append(k)
    return files, labels, classes


def user_split(labels: list[int], seed: int = 0) -> tuple[list[int], list[int]]:
    """The user's own stratified 80/20 split (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, val = train_test_split(idx, test_size=0.2, stratify=labels, random_state=seed)
    return sorted(train.tolist()), sorted(val.tolist())


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32, ImageNet-normalised."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)  # (T, H, W, C) -> (T, C, H, W)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


class DemoClips(Dataset):
    """A user's Dataset as tutorials write it: the clips decoded once into memory (a failed
    decode becomes an all-black clip, the user's fallback), items (clip, label)."""

    def __init__(self, frames: list[np.ndarray], labels: list[int], classes: list[str]) -> None:
        self.frames, self.targets, self.classes = frames, labels, classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.frames[i]), self.targets[i]


class LazyDemoClips(Dataset):
    """The same Dataset decoding each file in __getitem__: a broken file raises there."""

    def __init__(self, files: list[Path], labels: list[int], classes: list[str]) -> None:
        self.files, self.targets, self.classes = files, labels, classes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_tensor(decode_clip(self.files[i])), self.targets[i]


@lru_cache(maxsize=None)
def decoded(root: Path) -> tuple[list[np.ndarray], list[int], list[str], int]:
    """Every clip of a demo folder decoded (a broken file: all-black frames of the others'
    size), its labels, the classes, how many files failed."""
    files, labels, classes = list_files(root)
    clips: list[np.ndarray | None] = []
    for f in files:
        try:
            clips.append(decode_clip(f))
        except Exception:  # noqa: BLE001 — what the user's loader does: carry on with zeros
            clips.append(None)
    shape = next(c.shape for c in clips if c is not None)
    failed = sum(c is None for c in clips)
    return ([c if c is not None else np.zeros(shape, np.uint8) for c in clips], labels,
            classes, failed)


def user_data(root: Path, *, lazy: bool = False, augment: Callable | None = None) -> Any:
    """`cd.load_dataset(train_ds, val=val_ds)` over the user's Dataset of a demo folder."""
    import clipdoctor as cd

    if lazy:
        files, labels, classes = list_files(root)
        tr, va = user_split(labels)
        train = LazyDemoClips([files[i] for i in tr], [labels[i] for i in tr], classes)
        val = LazyDemoClips([files[i] for i in va], [labels[i] for i in va], classes)
    else:
        clips, labels, classes, _ = decoded(root)
        tr, va = user_split(labels)
        train = DemoClips([clips[i] for i in tr], [labels[i] for i in tr], classes)
        val = DemoClips([clips[i] for i in va], [labels[i] for i in va], classes)
    return cd.load_dataset(train, val=val, augment=augment)


def _crop() -> Callable:
    from torchvision.transforms import v2

    return v2.RandomResizedCrop(64, scale=(0.6, 1.0), antialias=True)


def clip_crop(clip: torch.Tensor) -> torch.Tensor:
    """The user's augmentation, healthy: one random crop for the whole (T, C, H, W) clip
    (torchvision v2 treats the leading T axis as a batch of images and draws once)."""
    return _crop()(clip)


def per_frame_crop(clip: torch.Tensor) -> torch.Tensor:
    """The bug: the same transform called frame by frame, a new crop for every frame."""
    crop = _crop()
    return torch.stack([crop(f) for f in clip])


def pretrain_cnn(root: Path, clean: Path, epochs: int = 8) -> dict:
    """The user's 'pretrained' CNN: UserCNNLSTM trained a few epochs on the clean seed-0 clips
    (made once), its CNN's state dict."""
    path = root / "user-cnn.pt"
    if path.exists():
        return torch.load(path)
    clips, labels, classes, _ = decoded(clean)
    ds = DemoClips(clips, labels, classes)
    torch.manual_seed(0)
    model = UserCNNLSTM(len(classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)
    model.train()
    for epoch in range(epochs):
        correct = 0
        for x, y in loader:
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((out.argmax(1) == y).sum())
        print(f"pretraining the user's CNN: epoch {epoch + 1}, train acc "
              f"{correct / len(ds):.2f}", flush=True)
    state = model.cnn.state_dict()
    torch.save(state, path)
    return state


# =============================================================================================
# data folders and the given weights

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


# =============================================================================================
# scenarios: name -> planted code and, per column, a function giving diagnose's arguments
# (or a reason why the column cannot plant it)

def scenarios(args: argparse.Namespace) -> list[dict]:
    work, cache = args.work, args.work / "cache"
    clean = _data(work, "clean", seed=0)
    seed1 = _data(work, "clean-seed1")
    imbalanced = _data(work, "imbalanced", imbalance=5.0)
    noisy = _data(work, "noisy", label_noise=0.15)
    corrupt = _data(work, "corrupt", corrupt=0.1)
    cfg = lambda **kw: demo_config(cache, **kw)  # noqa: E731
    given = lambda: _clean_weights(work, clean, cache, args.reference)  # noqa: E731
    weighted = lambda: cfg(**{"model.weights": str(given())})  # noqa: E731
    cnn = lambda: pretrain_cnn(work, clean)  # noqa: E731
    ce = nn.CrossEntropyLoss

    def files(data: Path, config: Callable = cfg, model: Callable | None = None) -> Callable:
        return lambda: {"data": load_source(data), "config": config(),
                        "model": model() if model else None}

    def user(data: Path, model: Callable = UserCNNLSTM, *, lazy: bool = False,
             augment: Callable | None = clip_crop, lr: float = 1e-3) -> Callable:
        def make() -> dict:
            torch.manual_seed(0)
            return {"data": user_data(data, lazy=lazy, augment=augment), "config": cfg(),
                    "model": model(), "loss_fn": ce(), "optimizer": adam(lr)}
        return make

    def user_frozen(freeze: str, fixed: bool) -> Callable:
        return lambda: {"data": user_data(seed1, augment=clip_crop), "config": cfg(),
                        "loss_fn": ce(), **frozen_setup(freeze, cnn(), fixed)}

    rows = [
        ("healthy", None, files(clean), user(clean)),
        ("imbalance", "class-imbalance",
         files(imbalanced, lambda: cfg(**{"train.class_weighting": "none"})), user(imbalanced)),
        ("healthy, given weights", None, files(seed1, weighted),
         lambda: {"data": user_data(seed1), "config": weighted()}),
        ("label-noise", "label-noise", files(noisy, weighted), user(noisy)),
        ("label-noise, built-in model + given weights", "label-noise",
         "the built-in column's label-noise row is this case",
         lambda: {"data": user_data(noisy), "config": weighted()}),
        ("corrupt-files", "corrupt-clips", files(corrupt), user(corrupt)),
        ("corrupt: items that fail", "corrupt-clips",
         "files are read by clipdoctor's loader, which skips what it cannot decode "
         "(the corrupt-files row)", user(corrupt, lazy=True)),
        ("lr-too-high", "lr-too-high", files(clean, lambda: cfg(**{"train.lr": 3.0})),
         user(clean, lr=3.0)),
        ("per-frame-aug", "inconsistent-augmentation",
         files(clean, lambda: cfg(**{"data.augment.per_frame": True})),
         user(clean, augment=per_frame_crop)),
        ("user: softmax", "double-softmax", files(clean, model=lambda: UserCNNLSTM(softmax=True)),
         user(clean, lambda: UserCNNLSTM(softmax=True))),
        ("user: (T, B) view", "batch-time-swapped",
         files(clean, model=lambda: UserCNNLSTM(view_tb=True)),
         user(clean, lambda: UserCNNLSTM(view_tb=True))),
        ("user: bi-LSTM [:, -1]", "bidirectional-last-step",
         files(clean, model=lambda: UserCNNLSTM(bidirectional_last=True)),
         user(clean, lambda: UserCNNLSTM(bidirectional_last=True))),
        ("user: output ignores input", "output-ignores-input",
         files(clean, model=lambda: UserCNNLSTM(blind=True)),
         user(clean, lambda: UserCNNLSTM(blind=True))),
    ]
    for freeze, label in (("requires_grad", "requires_grad_(False)"),
                          ("no_grad", "no_grad() in forward"),
                          ("optimizer", "left out of the optimizer")):
        why = "a user model frozen by hand: planted in the user column"
        rows.append((f"frozen BN: {label}", "frozen-batchnorm-drift", why,
                     user_frozen(freeze, fixed=False)))
        rows.append((f"healthy: frozen CNN in eval, {label}", None, why,
                     user_frozen(freeze, fixed=True)))
    return [{"scenario": n, "planted": c, "builtin": b, "user": u} for n, c, b, u in rows]


# =============================================================================================
# running one cell

def run_cell(make: Callable, code: str | None, budget: float) -> dict:
    torch.manual_seed(0)  # before the model is built, as the one-column bench did
    kw = make()
    started = time.perf_counter()
    try:
        report = diagnose(kw.pop("data"), budget_s=budget, **kw)
    except Exception as e:  # noqa: BLE001 — a refusal or crash is a result too
        return {"rank": None, "severity": None, "top3": [], "errors_warnings": [], "ok": False,
                "wall_s": round(time.perf_counter() - started, 1), "skipped_because": "",
                "error": f"{type(e).__name__}: {str(e)[:300]}", "skipped": [], "failures": []}
    wall = time.perf_counter() - started
    ranked = [f.code for f in report.findings]
    sev = {f.code: f.severity for f in report.findings}
    rank = ranked.index(code) + 1 if code in ranked else None
    loud = [c for c in ranked if sev[c] in LOUD]
    ok = (not loud) if code is None else (rank is not None and rank <= 3)
    why = next((sk["reason"] for sk in report.skipped if code in sk.get("codes", [])), "")
    return {"rank": rank, "severity": sev.get(code) if code else None, "top3": ranked[:3],
            "top3_severity": [sev[c] for c in ranked[:3]],
            "errors_warnings": loud, "ok": ok, "wall_s": round(wall, 1),
            "skipped_because": why, "skipped": [s["name"] for s in report.skipped],
            "failures": [{k: f.get(k) for k in ("name", "kind", "error", "checks")}
                         for f in report.failures],
            "titles": {f.code: f.title for f in report.findings[:5]}}


# =============================================================================================
# the table

def _cell(c: dict | str | None, planted: str | None) -> list[str]:
    """rank, severity, top three (or loud findings for a healthy row), ok, wall s."""
    if c is None:
        return ["-", "-", "not run", "-", "-"]
    if isinstance(c, str):
        return ["-", "-", f"n/a: {c}", "-", "-"]
    if c.get("error"):
        return ["-", "-", f"diagnose raised {c['error'][:100]}", "NO", str(c["wall_s"])]
    if planted is None:
        top = ", ".join(c["errors_warnings"]) or "no error or warning"
    else:
        top = ", ".join(c["top3"]) or "no finding"
        if c["rank"] is None and c["skipped_because"]:
            top += f" (check skipped: {c['skipped_because'][:90]})"
    return [str(c["rank"] or "-"), c["severity"] or "-", top, "yes" if c["ok"] else "**NO**",
            str(c["wall_s"])]


def write_table(out: Path, rows: list[dict], meta: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "doctor_faults.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    head = ["rank", "sev.", "top three findings", "ok", "s"]
    lines = [f"Planted faults, one at a time, on the demo files; `diagnose(budget_s="
             f"{meta['budget_s']:g})` (torch {meta['torch']}, {meta['cores']} threads). "
             f"Left: {COLUMNS['builtin']}; right: {COLUMNS['user']} (see the docstring of "
             "bench/doctor_faults.py for how each fault is planted).", "",
             "| scenario | planted code | " + " | ".join(f"B {h}" for h in head) + " | "
             + " | ".join(f"U {h}" for h in head) + " |",
             "|---|---|" + "---|" * (2 * len(head))]
    notes = []
    for r in rows:
        planted = r["planted"] or "(none)"
        cells = _cell(r.get("builtin"), r["planted"]) + _cell(r.get("user"), r["planted"])
        lines.append(f"| {r['scenario']} | {planted} | " + " | ".join(cells) + " |")
        for col in COLUMNS:
            c = r.get(col)
            if isinstance(c, dict) and c.get("failures"):
                fl = "; ".join(f"{f['name']}: {(f.get('error') or '')[:120]}"
                               for f in c["failures"])
                notes.append(f"- {r['scenario']} ({col}): failures reported: {fl}")
            if c is None:
                notes.append(f"- {r['scenario']} ({col}): not run yet (the given weights come "
                             "from a demo training run, bench/work/doctor_faults/clean-run, "
                             "made on first use)" if "given weights" in r["scenario"]
                             else f"- {r['scenario']} ({col}): not run yet")
            said = "; ".join(f"`{k}`: {v}" for k, v in list(c.get("titles", {}).items())[:3]) \
                if isinstance(c, dict) else ""
            if isinstance(c, dict) and not c["ok"] and r["planted"] and c["rank"] is None:
                notes.append(f"- {r['scenario']} ({col}): `{r['planted']}` not found"
                             + (f"; the check was skipped: {c['skipped_because']}"
                                if c["skipped_because"] else "")
                             + (f"; diagnose raised {c['error']}" if c.get("error") else "")
                             + (f". Reported instead: {said}" if said else ""))
            elif isinstance(c, dict) and r["planted"] and c["rank"] and c["rank"] > 1:
                notes.append(f"- {r['scenario']} ({col}): `{r['planted']}` ranked "
                             f"{c['rank']}, after {', '.join(c['top3'][:c['rank'] - 1])}: "
                             f"{said}")
            elif isinstance(c, dict) and r["planted"] is None and not c["ok"]:
                notes.append(f"- {r['scenario']} ({col}): false alarm(s): {said}")
    total = {col: sum(r[col]["wall_s"] for r in rows if isinstance(r.get(col), dict))
             for col in COLUMNS}
    runs = {col: sum(isinstance(r.get(col), dict) for r in rows) for col in COLUMNS}
    passed = {col: sum(isinstance(r.get(col), dict) and r[col]["ok"] for r in rows)
              for col in COLUMNS}
    lines += ["", "B = " + COLUMNS["builtin"] + ", U = " + COLUMNS["user"]
              + "; rank of the planted code among all findings (severity first, then effect); "
              "for healthy rows the errors and warnings reported (none expected).", ""]
    for col in COLUMNS:
        when = sorted({r[col].get("ran", "?") for r in rows if isinstance(r.get(col), dict)})
        lines.append(f"- {COLUMNS[col]}: {passed[col]} of {runs[col]} cells as expected, "
                     f"{total[col]:.0f} s in all (run {'; '.join(when) or '-'})")
    if notes:
        lines += ["", "Not as expected, or with failures:", ""] + notes
    text = "\n".join(lines) + "\n"
    (out / "doctor_faults.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=60.0)
    p.add_argument("--work", type=Path, default=Path("bench/work/doctor_faults"))
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--only", choices=list(COLUMNS), help="run one column, keep the other's "
                   "cells from the last doctor_faults.json")
    p.add_argument("--scenarios", help="scenario names separated by ; (NAME* for a prefix) to run; the "
                   "other rows keep their cells from the last doctor_faults.json")
    p.add_argument("--from-log", type=Path, help="run nothing: fill the cells a cut-short run "
                   "printed (its stdout) into the table, the others from doctor_faults.json")
    p.add_argument("--reference", type=Path,
                   help="run folder whose backbone the label-noise case uses (default: the demo "
                        "CNN-LSTM trained on clean demo clips)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    previous: dict = {}
    meta_prev: dict = {}
    old = args.out / "doctor_faults.json"
    if old.exists():
        loaded = json.loads(old.read_text())
        meta_prev = loaded.get("meta", {})
        for r in loaded.get("rows", []):
            if "builtin" in r or "user" in r:
                previous[r["scenario"]] = r
            else:  # the one-column format before the user column: its cells are built-in
                previous[r["scenario"]] = {"builtin": {
                    **{k: v for k, v in r.items() if k not in ("scenario", "planted")},
                    "ran": "before 2026-12-03 (one-column bench)"}}
    wanted = [s.strip() for s in args.scenarios.split(";")] if args.scenarios else None
    logged: dict = {}
    if args.from_log:
        wanted, current = [], None
        for line in args.from_log.read_text().splitlines():
            if line.startswith("== ") and line.endswith("]"):
                name, col = line[3:-1].rsplit(" [", 1)
                current = (name, col)
            elif line.startswith("{") and current:
                logged[current] = json.loads(line)
                current = None
    rows = []
    ran = dict(meta_prev.get("ran", {}))
    for s in scenarios(args):
        row = {"scenario": s["scenario"], "planted": s["planted"]}
        chosen = wanted is None or any(s["scenario"] == w or (w.endswith("*") and s["scenario"]
                                                                .startswith(w[:-1]))
                                         for w in wanted)
        for col in COLUMNS:
            make = s[col]
            if isinstance(make, str):
                row[col] = make
            elif (s["scenario"], col) in logged:
                row[col] = logged[s["scenario"], col]
                ran[col] = time.strftime("%Y-%m-%d %H:%M UTC",
                                         time.gmtime(args.from_log.stat().st_mtime))
                row[col].setdefault("ran", ran[col])
            elif chosen and args.only in (None, col):
                print(f"== {s['scenario']} [{col}]", flush=True)
                row[col] = run_cell(make, s["planted"], args.budget)
                ran[col] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                row[col]["ran"] = ran[col]
                print(json.dumps(row[col]), flush=True)
            else:
                row[col] = previous.get(s["scenario"], {}).get(col)
        rows.append(row)
    meta = {"machine": platform.processor() or platform.machine(),
            "cores": torch.get_num_threads(), "torch": torch.__version__,
            "budget_s": args.budget, "ran": ran}
    print(write_table(args.out, rows, meta))


if __name__ == "__main__":
    main()
