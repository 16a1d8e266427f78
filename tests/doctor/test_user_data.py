"""The doctor on the user's own PyTorch data (DESIGN §3): Datasets written the way tutorials
write them (a class holding tensors, returning (clip, label)), both clip layouts, a DataLoader
with its own collate, each data fault planted once and the same setup healthy, and the clear
errors for what is not an accepted data form.

Clips are 8 frames of 32 x 32: a square moving across a textured background (each clip its
own position, direction by class, colour and texture, so distinct clips are not
near-duplicates); budgets are small and each test runs only the checks it is about."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import clipdoctor as cd
from clipdoctor.data.user import UserData
from clipdoctor.doctor.runner import diagnose

T, S = 8, 32
MEAN, STD = 0.45, 0.25
DATA_CODES = {"class-imbalance", "too-few-samples", "split-class-mismatch", "train-val-leakage",
              "static-clips", "frame-order-corrupted", "unnormalized-input",
              "inconsistent-augmentation", "inconsistent-clip-shape", "corrupt-clips",
              "label-noise"}
USER_DATA_CHECKS = ["class_balance", "sample_size", "split_classes", "split_leakage",
                    "static_clips", "frames_in_order", "clip_shape", "input_normalization",
                    "augmentation_consistency", "corrupt_clips", "label_noise"]
DIRECTIONS = [(0, 2), (2, 0), (0, -2), (-2, 0)]  # (dy, dx) per frame, by class


def frames(i: int, label: int, *, moving: bool = True, t: int = T) -> np.ndarray:
    """(t, S, S, 3) float in 0..1: clip number i of class `label` (its own start, colour and
    background texture), the square moving in the class's direction unless `moving` is off."""
    rng = np.random.default_rng(1000 + i)
    blocks = rng.uniform(-1, 1, (S // 4, S // 4))  # a texture of 4 x 4 px blocks, the clip's own
    bg = 0.4 + 0.1 * np.kron(blocks, np.ones((4, 4)))  # (S, S)
    out = np.repeat(np.repeat(bg[None, :, :, None], t, 0), 3, 3)  # (t, S, S, 3)
    dy, dx = DIRECTIONS[label % len(DIRECTIONS)] if moving else (0, 0)
    y0 = int(rng.integers(2 + max(0, -dy) * (t - 1), S - 10 - max(0, dy) * (t - 1) + 1))
    x0 = int(rng.integers(2 + max(0, -dx) * (t - 1), S - 10 - max(0, dx) * (t - 1) + 1))
    colour = rng.uniform(0.75, 1.0, 3)
    for k in range(t):
        y, x = y0 + dy * k, x0 + dx * k
        out[k, y:y + 8, x:x + 8] = colour
    return out.astype(np.float32)


def tchw(f: np.ndarray, scale: str = "normalised") -> torch.Tensor:
    """(T, H, W, C) 0..1 -> a (T, C, H, W) float tensor: normalised, 0..1 or 0..255."""
    x = torch.from_numpy(f).permute(0, 3, 1, 2).contiguous()  # (T, H, W, C) -> (T, C, H, W)
    return {"normalised": (x - MEAN) / STD, "unit": x, "raw": x * 255}[scale]


class ClipDataset(Dataset):
    """What a tutorial writes: clips and labels held as tensors, one (clip, label) per item."""

    def __init__(self, clips, labels):
        self.clips = clips
        self.labels = labels

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, idx):
        return self.clips[idx], self.labels[idx]


class LengthDataset(ClipDataset):
    """Items (clip, label, length) for clips of different lengths."""

    def __getitem__(self, idx):
        return self.clips[idx], self.labels[idx], self.clips[idx].shape[0]


def make(counts, start=0, *, scale="normalised", moving=True, order=None, layout="TCHW",
         lengths=None):
    """(clips, labels) for `counts` clips per class, clip numbers from `start`."""
    clips, labels, i = [], [], start
    for label, n in enumerate(counts):
        for _ in range(n):
            t = lengths[i % len(lengths)] if lengths else T
            f = frames(i, label, moving=moving, t=t)
            if order is not None:
                f = f[order]
            if layout == "TCHW":
                clips.append(tchw(f, scale))
            else:  # (T, H, W, C) uint8, as decoded frames come
                clips.append((f * 255).round().astype(np.uint8))
            labels.append(label)
            i += 1
    return clips, labels


def dataset(counts, start=0, **kw) -> ClipDataset:
    return ClipDataset(*make(counts, start, **kw))


class CNNLSTM(nn.Module):
    """A user's CNN-LSTM: a small conv per frame, an LSTM over time, the last step read out.
    `channels_last` models take (B, T, H, W, C) uint8 and scale / normalise in forward."""

    def __init__(self, classes: int = 2, channels_last: bool = False, normalise: bool = True):
        super().__init__()
        self.channels_last, self.normalise = channels_last, normalise
        self.cnn = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        if self.channels_last:  # (B, T, H, W, C) uint8 -> (B, T, C, H, W) float
            x = x.permute(0, 1, 4, 2, 3).float()
            if self.normalise:
                x = (x / 255 - MEAN) / STD
        B, Tn = x.shape[:2]
        f = self.cnn(x.flatten(0, 1)).view(B, Tn, -1)  # (B*T, C, H, W) -> (B*T, 8) -> (B, T, 8)
        out, _ = self.lstm(f)  # (B, T, 16)
        return self.fc(out[:, -1])


def run(train, val=None, *, checks, model=None, augment=None, **kw):
    data = cd.load_dataset(train, val=val) if val is not None else train
    return diagnose(data, model=model or CNNLSTM(), budget_s=kw.pop("budget_s", 10),
                    checks=checks, augment=augment, **kw)


def codes(report, severities=("error", "warning")) -> dict:
    assert not report.failures, report.failures
    return {f.code: f.severity for f in report.findings
            if f.code in DATA_CODES and f.severity in severities}


def shift(clip: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    return torch.roll(clip, shifts=(dy, dx), dims=(-2, -1))


def per_frame_shift(clip: torch.Tensor) -> torch.Tensor:
    """A random translation drawn for every frame: the per-frame augmentation bug."""
    return torch.stack([shift(f, *torch.randint(-4, 5, (2,)).tolist()) for f in clip])


def clip_shift(clip: torch.Tensor) -> torch.Tensor:
    """One random translation for the whole clip."""
    return shift(clip, *torch.randint(-4, 5, (2,)).tolist())


def numpy_per_frame_shift(clip: np.ndarray) -> np.ndarray:
    """(T, H, W, C) uint8: a random translation per frame, with numpy's global generator."""
    return np.stack([np.roll(f, tuple(np.random.randint(-4, 5, 2)), axis=(0, 1)) for f in clip])


# =============================================================================================
# load_dataset: forms, layouts, labels, splits

def test_load_dataset_takes_a_user_dataset_and_states_its_layout():
    data = cd.load_dataset(dataset((20, 20)), val=dataset((5, 5), start=40))
    assert isinstance(data, UserData) and data.classes == ["0", "1"]
    assert str(data.layout) == "(T, C, H, W) float32"
    assert data.counts_total() == {"train": 40, "val": 10, "test": 0}
    x, y = data.batch(data.split("val")[:3])
    assert x.shape == (3, T, 3, S, S) and x.dtype == torch.float32 and y.tolist() == [0, 0, 0]
    item = data.datasets["val"][0][0]  # exactly what the Dataset yields: no resize, no re-norm
    assert torch.equal(x[0], item)

    hwc = cd.load_dataset(dataset((6, 6), layout="THWC"))
    assert str(hwc.layout) == "(T, H, W, C) uint8 numpy"
    x, _ = hwc.batch(hwc.samples[:2])
    assert x.shape == (2, T, S, S, 3) and x.dtype == torch.uint8


def test_only_train_given_gets_a_seeded_stratified_val_split():
    train = dataset((20, 10))
    a, b = cd.load_dataset(train), cd.load_dataset(train)
    val = [(s.index, s.label) for s in a.split("val")]
    assert val == [(s.index, s.label) for s in b.split("val")]  # seeded
    assert sorted(lab for _, lab in val) == [0, 0, 1]  # 10 %, both classes (stratified)
    assert all(s.source == "train" for s in a.split("val"))
    assert any("stratified" in n for n in a.notes)
    other = cd.load_dataset(train, seed=1)
    assert [s.index for s in other.split("val")] != [i for i, _ in val]


def test_labels_and_classes_from_attributes_without_reading_items():
    class Tutorial(ClipDataset):
        classes = ["walk", "run"]
        reads = 0

        def __init__(self, clips, labels):
            super().__init__(clips, labels)
            self.targets = torch.tensor(labels)

        def __getitem__(self, idx):
            Tutorial.reads += 1
            return super().__getitem__(idx)

    ds = Tutorial(*make((8, 8)))
    data = cd.load_dataset(ds)
    assert data.classes == ["walk", "run"]
    assert Tutorial.reads == 1  # the first item only (its form and layout); labels from targets
    assert sorted(s.label for s in data.samples) == [0] * 8 + [1] * 8


def test_random_split_subsets_keep_the_datasets_classes_and_labels():
    """torch's random_split, as tutorials split one Dataset: Subsets of it for train and val."""
    class Named(ClipDataset):
        classes = ["left", "right"]

    full = Named(*make((10, 10)))
    train, val = torch.utils.data.random_split(full, [16, 4],
                                               generator=torch.Generator().manual_seed(0))
    data = cd.load_dataset(train, val=val)
    assert data.classes == ["left", "right"]
    assert [s.label for s in data.split("val")] == [full.labels[i] for i in val.indices]
    assert data.counts_total() == {"train": 16, "val": 4, "test": 0}


def test_a_dataloader_keeps_its_collate_and_batch_size():
    def pad_collate(batch):
        clips, labels = zip(*batch)
        n = max(c.shape[0] for c in clips)
        x = torch.zeros(len(clips), n, *clips[0].shape[1:])
        for i, c in enumerate(clips):
            x[i, :c.shape[0]] = c
        return x, torch.tensor(labels), torch.tensor([c.shape[0] for c in clips])

    ds = dataset((6, 6), lengths=[8, 6])
    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=pad_collate)
    data = cd.load_dataset(loader)
    assert data.format == "dataloader" and data.batch_size == 4 and data.collate is pad_collate
    x, y, lengths = data.batch(data.samples[:2])
    assert x.shape == (2, 8, 3, S, S) and lengths.tolist() == [8, 6]
    # mixed lengths that the user's collate pads: handled (info), not an error
    report = diagnose(loader, model=CNNLSTM(), budget_s=10, checks=["clip_shape"])
    assert codes(report) == {}
    assert codes(report, ("info",)) == {"inconsistent-clip-shape": "info"}
    assert report.dataset["batch_size"] == 4


def test_items_with_lengths_are_padded_by_the_default_collate():
    data = cd.load_dataset(LengthDataset(*make((4, 4), lengths=[8, 5])))
    assert data.with_length
    x, y, lengths = data.batch(data.samples[:2])
    assert x.shape == (2, 8, 3, S, S) and lengths.tolist() == [8, 5]
    assert float(x[1, 5:].abs().sum()) == 0.0  # zero padding after the valid frames


# =============================================================================================
# clear errors for what is not an accepted form

def test_forms_that_are_not_data_are_one_clear_error():
    train, val = dataset((4, 4)), dataset((2, 2), start=8)
    with pytest.raises(cd.DataError, match="pass a dataset path") as e:
        cd.load_dataset(42)
    assert "torch Datasets" in str(e.value)
    with pytest.raises(cd.DataError, match=r"pass them by name: load_dataset\(train_ds, val="):
        cd.load_dataset((train, val))
    with pytest.raises(cd.DataError, match="torch Datasets"):
        diagnose(42, model=CNNLSTM(), budget_s=5)
    with pytest.raises(cd.DataError, match="pass them by name"):
        diagnose((train, val), model=CNNLSTM(), budget_s=5)
    with pytest.raises(cd.DataError, match="val=, test= and augment= go with torch Datasets"):
        cd.load_dataset("clips/", val=val)


def test_items_and_clips_of_the_wrong_form_are_one_clear_error():
    class Dicts(ClipDataset):
        def __getitem__(self, idx):
            return {"video": self.clips[idx], "label": self.labels[idx]}

    class ClipsOnly(ClipDataset):
        def __getitem__(self, idx):
            return self.clips[idx]

    clips, labels = make((3, 3))
    for bad in (Dicts(clips, labels), ClipsOnly(clips, labels)):
        with pytest.raises(cd.DataError, match=r"items must be \(clip, label\)"):
            cd.load_dataset(bad)
        with pytest.raises(cd.DataError, match=r"items must be \(clip, label\)"):
            diagnose(bad, model=CNNLSTM(), budget_s=5)
    flat = ClipDataset([c[:, 0] for c in clips], labels)  # (T, H, W): no channel axis
    with pytest.raises(cd.DataError, match="4-D"):
        cd.load_dataset(flat)
    one_hot = ClipDataset(clips, [torch.eye(2)[v] for v in labels])
    with pytest.raises(cd.DataError, match="one class index"):
        cd.load_dataset(one_hot)
    with pytest.raises(cd.DataError, match="augment= must be a callable"):
        cd.load_dataset(dataset((3, 3)), augment="flip")

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from zip(clips, labels)

    with pytest.raises(cd.DataError, match="map-style"):
        cd.load_dataset(DataLoader(Stream(), batch_size=2))
    with pytest.raises(cd.DataError, match=r"item 0 of the train data could not be read"):
        diagnose(Broken(), model=CNNLSTM(), budget_s=5)


class Broken(Dataset):
    """A Dataset whose __getitem__ fails (a bad path inside, say)."""

    def __len__(self):
        return 3

    def __getitem__(self, idx):
        raise FileNotFoundError(f"clip_{idx}.mp4")


# =============================================================================================
# faults planted in a user Dataset, each against the healthy version

def test_class_imbalance_and_too_few_samples():
    report = run(dataset((30, 6)), dataset((5, 5), start=40),
                 checks=["class_balance", "sample_size"])
    assert codes(report)["class-imbalance"] == "warning"
    report = run(dataset((4, 4)), dataset((2, 2), start=10), checks=["sample_size"])
    assert codes(report) == {"too-few-samples": "error"}


def test_split_class_mismatch():
    report = run(dataset((24, 24)), dataset((6, 0), start=60), checks=["split_classes"])
    assert codes(report) == {"split-class-mismatch": "warning"}


def test_unnormalized_input_judged_on_what_the_model_receives():
    report = run(dataset((8, 8), scale="raw"), dataset((2, 2), start=20, scale="raw"),
                 checks=["input_normalization"])
    assert codes(report) == {"unnormalized-input": "error"}
    assert report.probes["input_stats"]["layout"] == "(T, C, H, W) float32"
    # uint8 (T, H, W, C) clips: fine when the model scales and normalises them in forward ...
    hwc, hwc_val = dataset((8, 8), layout="THWC"), dataset((2, 2), start=20, layout="THWC")
    report = run(hwc, hwc_val, model=CNNLSTM(channels_last=True), checks=["input_normalization"])
    assert codes(report, ("error", "warning", "info")) == {}
    assert "first layer" in report.probes["input_stats"]["judged_on"]
    # ... and raw pixels when it only casts them to float
    report = run(hwc, hwc_val, model=CNNLSTM(channels_last=True, normalise=False),
                 checks=["input_normalization"])
    assert codes(report) == {"unnormalized-input": "error"}


def test_inconsistent_clip_shape_for_mixed_lengths_without_a_length():
    mixed = dataset((6, 6), lengths=[8, 6])
    report = run(mixed, checks=["clip_shape"])
    assert codes(report) == {"inconsistent-clip-shape": "error"}
    with_length = LengthDataset(*make((6, 6), lengths=[8, 6]))
    report = run(with_length, checks=["clip_shape"])
    assert codes(report, ("error", "warning", "info")) == {"inconsistent-clip-shape": "info"}


def test_static_clips_from_the_frames():
    still = ClipDataset(*[a + b for a, b in zip(make((10, 10)), make((10, 10), 20, moving=False))])
    report = run(still, dataset((3, 3), start=50), checks=["static_clips"])
    assert codes(report) == {"static-clips": "warning"}


def test_blank_clips_from_the_frames():
    clips, labels = make((12, 12))
    for i in range(0, 24, 6):  # 4 of 30 clips all black (normalised: (0 - mean) / std)
        clips[i] = torch.full_like(clips[i], -MEAN / STD)
    report = run(ClipDataset(clips, labels), dataset((3, 3), start=50), checks=["corrupt_clips"])
    assert codes(report) == {"corrupt-clips": "warning"}
    assert all("black" in c["reason"] for c in report.findings[0].evidence["blank_or_short"])


def test_black_clips_normalised_per_channel_are_blank():
    """A Dataset that returns a black clip for a file it cannot decode, normalised with
    ImageNet's per-channel mean / std: flat in each channel, not over all three (bench)."""
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    clips, labels = make((12, 12))
    for i in range(0, 24, 6):
        clips[i] = ((torch.zeros_like(clips[i]) - mean) / std)
    report = run(ClipDataset(clips, labels), dataset((3, 3), start=50), checks=["corrupt_clips"])
    assert codes(report) == {"corrupt-clips": "warning"}
    assert len(report.findings[0].evidence["blank_or_short"]) >= 4


def test_black_stand_ins_on_both_sides_of_a_split_are_corrupt_not_leaked():
    """A Dataset returning a black clip for each file it cannot decode, in train and in val:
    the black clips are identical, yet they share nothing but the failure (bench: 31 such
    pairs were reported as train-val-leakage)."""
    black = -torch.tensor([0.485, 0.456, 0.406])[:, None, None] / torch.tensor(
        [0.229, 0.224, 0.225])[:, None, None]
    train_clips, train_labels = make((12, 12))
    val_clips, val_labels = make((4, 4), start=50)
    for clips in (train_clips, val_clips):
        for i in range(0, len(clips), 4):
            clips[i] = black.expand_as(clips[i]).clone()
    report = run(ClipDataset(train_clips, train_labels), ClipDataset(val_clips, val_labels),
                 checks=["corrupt_clips", "split_leakage"])
    assert set(codes(report)) == {"corrupt-clips"}  # 25 % of the clips: an error


class SomeBroken(ClipDataset):
    """A Dataset whose reads fail for some items (a file that vanished, say)."""

    def __init__(self, clips, labels, broken):
        super().__init__(clips, labels)
        self.broken = set(broken)

    def __getitem__(self, idx):
        if idx in self.broken:
            raise ValueError(f"cannot decode clip_{idx}.mp4")
        return super().__getitem__(idx)


def test_items_that_raise_are_corrupt_clips_and_left_out_of_training():
    """corrupt-clips names the items whose read raised; the training probes that run after it
    train on the others instead of failing on them (bench: 4 probes failed, 15 checks skipped)."""
    train = SomeBroken(*make((12, 12)), broken=range(0, 24, 5))
    report = run(train, dataset((4, 4), start=50), budget_s=12,
                 checks=["corrupt_clips", "init_loss", "learning_rate", "gradients"])
    assert codes(report).get("corrupt-clips") in ("warning", "error")
    assert not report.failures, report.failures
    assert report.probes["training_data"]["train_clips"] <= 24 - 5
    assert "lr_range" in report.probes


class BrokenWithoutLabels(SomeBroken):
    """The same without a labels attribute: the labels come from the items, a broken one has
    none (it is listed as unreadable, like a file that cannot be decoded)."""

    def __init__(self, clips, labels, broken):
        super().__init__(clips, labels, broken)
        self.items = list(zip(clips, labels))
        del self.labels

    def __getitem__(self, idx):
        if idx in self.broken:
            raise ValueError(f"cannot decode clip_{idx}.mp4")
        return self.items[idx]


def test_items_that_raise_while_labels_are_read_are_unreadable_clips():
    train = BrokenWithoutLabels(*make((12, 12)), broken=[0, 7, 13])
    data = cd.load_dataset(train)
    assert [s["path"] for s in data.skipped] == ["train[0]", "train[7]", "train[13]"]
    assert len(data.samples) == 21 and "train[7]" not in {s.name for s in data.samples}
    report = diagnose(data, model=CNNLSTM(), budget_s=5, checks=["corrupt_clips"])
    finding = report.findings[0]
    assert finding.code == "corrupt-clips"
    assert {u["path"] for u in finding.evidence["unreadable"]} == {"train[0]", "train[7]",
                                                                   "train[13]"}
    assert "cannot decode clip_7.mp4" in finding.evidence["unreadable"][1]["reason"]


class MaskedCNNLSTM(CNNLSTM):
    """The same model taking the valid lengths: packed, so padded steps are never read."""

    def forward(self, x, lengths=None):
        B, Tn = x.shape[:2]
        f = self.cnn(x.flatten(0, 1)).view(B, Tn, -1)
        if lengths is not None:
            f = nn.utils.rnn.pack_padded_sequence(f, torch.as_tensor(lengths).cpu(),
                                                  batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(f)
        return self.fc(h[-1])


@pytest.mark.parametrize("model, found", [(CNNLSTM, {"unmasked-padding": "warning"}),
                                          (MaskedCNNLSTM, {})])
def test_unmasked_padding_of_items_with_lengths(model, found):
    """Items (clip, label, length) of 5 or 8 frames, padded to 8 by the collate: a model read
    at [:, -1] reads the padding; one that packs by the lengths does not."""
    torch.manual_seed(0)
    train = LengthDataset(*make((12, 12), lengths=[8, 5]))
    val = LengthDataset(*make((3, 3), start=50, lengths=[8, 5]))
    report = run(train, val, model=model(), checks=["padding_mask"])
    assert {c: s for c, s in codes(report).items()} == {}  # not a data code
    loud = {f.code: f.severity for f in report.findings if f.severity != "info"}
    assert loud == found, report.probes["behaviour"].get("padding")
    if found:
        assert report.findings[0].evidence["short_clips"] > 0


def test_frame_order_corrupted_from_the_frames():
    order = [0, 4, 1, 5, 2, 6, 3, 7]  # frames read out of order
    report = run(dataset((10, 10), order=order), dataset((3, 3), start=50, order=order),
                 checks=["frames_in_order"])
    assert codes(report) == {"frame-order-corrupted": "error"}


def test_train_val_leakage_of_duplicated_clips():
    train = dataset((20, 20))
    copies = ClipDataset([train.clips[i].clone() for i in (0, 1, 2, 20, 21)],
                         [train.labels[i] for i in (0, 1, 2, 20, 21)])
    report = run(train, copies, checks=["split_leakage"])
    assert codes(report) == {"train-val-leakage": "warning"}
    ev = report.findings[0].evidence
    assert len(ev["near_duplicates"]) == 5 and ev["near_duplicates"][0]["pixel"] > 0.99


def test_inconsistent_augmentation_of_the_users_augment():
    train, val = dataset((8, 8)), dataset((2, 2), start=20)
    sick = run(train, val, augment=per_frame_shift, checks=["augmentation_consistency"])
    assert codes(sick) == {"inconsistent-augmentation": "error"}
    fine = run(train, val, augment=clip_shift, checks=["augmentation_consistency"])
    assert codes(fine, ("error", "warning", "info")) == {}
    assert fine.probes["augmentation"]["jitter"] == 0.0
    # numpy clips and numpy's generator; augment= carried by load_dataset
    hwc = cd.load_dataset(dataset((8, 8), layout="THWC"), augment=numpy_per_frame_shift)
    report = diagnose(hwc, model=CNNLSTM(channels_last=True), budget_s=10,
                      checks=["augmentation_consistency"])
    assert codes(report) == {"inconsistent-augmentation": "error"}
    # without augment= the check says why it cannot run
    plain = run(train, val, checks=["augmentation_consistency"])
    assert plain.findings == [] and "augment=fn" in plain.skipped[0]["reason"]


TINTS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40)]


def tinted(per_class: int, start: int = 0, swap: int = 0) -> ClipDataset:
    """(T, H, W, C) uint8 clips whose colour tells the class (content, not motion: what
    ImageNet features separate), a square moving across; with `swap`, that many clips of each
    class pair (0, 1) and (2, 3) carry the other's label."""
    rng = np.random.default_rng(start)
    clips, labels = [], []
    for label, tint in enumerate(TINTS):
        for i in range(per_class):
            bg = np.array(tint) * rng.uniform(0.6, 1.0) + rng.normal(0, 25, (S, S, 1))
            f = np.repeat(bg[None], T, axis=0)  # (T, S, S, 3)
            for t in range(T):
                f[t, 10:18, 2 + 3 * t:10 + 3 * t] = 255 - np.array(tint)
            clips.append(np.clip(f, 0, 255).astype(np.uint8))
            labels.append(label ^ 1 if i < swap else label)  # 0 <-> 1, 2 <-> 3
    return ClipDataset(clips, labels)


@pytest.mark.parametrize("swap, found", [(0, {}), (4, {"label-noise": "warning"})])
def test_label_noise_with_a_user_model_judged_on_reference_features(swap, found):
    """A user model has no backbone clipdoctor can take features from: the label check uses
    the reference backbone's (efficientnet_lite0, ImageNet weights from a pip package) on the
    user's clips brought to 0..1. 4 of 24 labels per class swapped are found; clean labels
    are judged (not skipped) and give no finding."""
    report = run(tinted(24, swap=swap), tinted(6, start=99),
                 model=CNNLSTM(classes=4, channels_last=True), checks=["label_noise"],
                 budget_s=30)
    assert codes(report) == found, (report.skipped, report.probes.get("label_issues"))
    assert report.skipped == []
    assert "tf_efficientnet_lite0" in report.probes["label_issues"]["features"]


@pytest.mark.parametrize("layout", ["TCHW", "THWC"])
def test_healthy_user_data_has_no_error_or_warning(layout):
    train, val = dataset((24, 24), layout=layout), dataset((6, 6), start=60, layout=layout)
    model = CNNLSTM(channels_last=layout == "THWC")
    augment = clip_shift if layout == "TCHW" else None
    report = run(train, val, model=model, augment=augment, checks=USER_DATA_CHECKS)
    assert codes(report) == {}
    ran = {c for c in USER_DATA_CHECKS}
    skipped = {s["name"]: s["reason"] for s in report.skipped}
    assert all(reason for reason in skipped.values())  # every skip says why
    # judged on the reference backbone's ImageNet features, which cannot tell directions of
    # motion apart: skipped, saying so
    assert "ImageNet features" in skipped["label_noise"]
    assert ran - set(skipped) >= {"class_balance", "sample_size", "split_classes",
                                  "split_leakage", "static_clips", "frames_in_order",
                                  "clip_shape", "input_normalization"}
    expected = "(T, C, H, W) float32" if layout == "TCHW" else "(T, H, W, C) uint8 numpy"
    assert report.dataset["layout"] == expected
    assert report.dataset["counts"]["val"] == [6, 6]
    leak = report.probes["leakage"]
    assert max(p["pixel"] for p in leak["nearest"]) < 0.98  # distinct clips stay distinct


def test_the_built_in_model_on_a_user_dataset():
    """`cd.diagnose(torch_dataset)` without model=: the built-in CNN-LSTM, its config fitted to
    the clips (T, size), its backbone's features used for leakage evidence."""
    from clipdoctor.config import RunConfig, with_overrides

    config = with_overrides(RunConfig(), {"model.backbone": "test_resnet",
                                          "model.pretrained": False, "model.proj_dim": 32,
                                          "model.hidden": 32})
    report = diagnose(dataset((10, 10)), config=config, budget_s=10,
                      checks=["class_balance", "split_leakage", "input_normalization"])
    assert codes(report) == {}
    assert report.skipped == []
    assert report.probes["leakage"]["features_skipped"] is None  # built-in backbone features
    assert report.probes["input_stats"]["expected"]["backbone"] == "test_resnet"
