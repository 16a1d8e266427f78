"""The user's own PyTorch data: map-style `Dataset`s (or `DataLoader`s over them) whose items
are `(clip, label)` or `(clip, label, length)`, wrapped so the doctor can count, scan and feed
them without decoding anything itself.

A clip is a tensor or numpy array, `(T, C, H, W)` (torch's convention, usually float) or
`(T, H, W, C)` (frames as decoded, usually uint8); `ClipLayout` records which, detected from
the first item (the axis of size 1 or 3, and the dtype), and the report states it. Batches are
the user's items collated exactly as their DataLoader would (its `collate_fn`; without one,
torch's default, padding along T when items carry a length): no resizing, no re-normalisation.

`UserData` mimics what the doctor reads of a `SourceIndex` (`classes`, `samples` with `split`,
`label`, `name`, `group`; `skipped`), so count-based checks work on it unchanged. When only a
training Dataset is given, a seeded stratified validation split (scikit-learn) is carved out of
it and `notes` says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from clipdoctor.data.source_index import SPLITS
from clipdoctor.errors import DataError

ACCEPTED = ("a dataset path (folder, .csv manifest, .npz), a tuple (X, y) of arrays with X "
            "(N, T, H, W, C) uint8, or your own map-style torch Datasets / DataLoaders whose "
            "items are (clip, label) or (clip, label, length) with clip (T, C, H, W) or "
            "(T, H, W, C): load_dataset(train_ds, val=val_ds, test=test_ds)")


@dataclass(frozen=True, eq=False)
class UserSample:
    """One item of a user Dataset: its role (`split`), its label, and where it lives (`source`,
    the Dataset given as train / val / test, and `index` into it). A validation split carved
    out of the training Dataset has split 'val' and source 'train'."""

    split: str
    label: int
    index: int
    source: str
    name: str = ""
    group: str | None = None  # no source groups are known for a user's Dataset
    path: None = None  # SourceIndex samples have files; these do not
    array: None = field(default=None, repr=False)


@dataclass(frozen=True)
class ClipLayout:
    """How a clip is laid out: axis order ('TCHW' or 'THWC'), dtype name, tensor or numpy."""

    order: str
    dtype: str
    kind: str  # "tensor" | "numpy"

    @property
    def channel_axis(self) -> int:
        """The channel axis of one clip (1 for (T, C, H, W), 3 for (T, H, W, C))."""
        return 1 if self.order == "TCHW" else 3

    def __str__(self) -> str:
        axes = "(T, C, H, W)" if self.order == "TCHW" else "(T, H, W, C)"
        return f"{axes} {self.dtype}" + (" numpy" if self.kind == "numpy" else "")


def _is_clip(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def _dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def detect_layout(clip: Any, where: str = "the first item") -> ClipLayout:
    """(T, C, H, W) or (T, H, W, C) from a clip's shape and dtype: the axis of size 1 or 3 is
    the channel axis; when both could be, integer clips are taken as (T, H, W, C) (decoded
    frames) and float clips as (T, C, H, W) (torch's convention). DataError otherwise."""
    if not _is_clip(clip):
        raise DataError(f"{where}: the clip is a {type(clip).__name__}, not a tensor or numpy "
                        f"array; accepted: {ACCEPTED}")
    shape = tuple(int(v) for v in clip.shape)
    if len(shape) != 4:
        raise DataError(f"{where}: the clip has shape {shape} ({len(shape)} dims); a clip is 4-D, "
                        f"(T, C, H, W) or (T, H, W, C) with C 1 or 3; accepted: {ACCEPTED}")
    dtype = _dtype_name(clip)
    integer = not (torch.is_floating_point(clip) if isinstance(clip, torch.Tensor)
                   else np.issubdtype(clip.dtype, np.floating))
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if not (first or last):
        raise DataError(f"{where}: cannot tell the channel axis of a clip of shape {shape}: "
                        "expected (T, C, H, W) or (T, H, W, C) with C 1 or 3")
    order = "THWC" if (last and (integer or not first)) else "TCHW"
    return ClipLayout(order, dtype, "tensor" if isinstance(clip, torch.Tensor) else "numpy")


def clip_frames(clip: Any, layout: ClipLayout, length: int | None = None) -> np.ndarray:
    """A clip as (T, H, W, C) float32 numpy in its own units (no rescaling), the first
    `length` frames when a length is given."""
    a = clip.detach().cpu().float().numpy() if isinstance(clip, torch.Tensor) \
        else np.asarray(clip, np.float32)
    if layout.order == "TCHW":
        a = a.transpose(0, 2, 3, 1)  # (T, C, H, W) -> (T, H, W, C)
    if length is not None:
        a = a[:max(1, int(length))]
    return np.ascontiguousarray(a, dtype=np.float32)


def seeded_call(fn: Callable, clip: Any, seed: int) -> Any:
    """`fn(clip)` with torch, numpy and Python random seeded by `seed`, leaving the global
    random states as they were (a user's augmentation may draw from any of them)."""
    import random

    state = (np.random.get_state(), random.getstate())
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            return fn(clip)
    finally:
        np.random.set_state(state[0])
        random.setstate(state[1])


def _label_value(label: Any, where: str) -> Any:
    """A label as a Python int (or str, mapped to a class later); DataError for anything else
    (one-hot vectors, floats that are not whole numbers)."""
    if isinstance(label, (torch.Tensor, np.ndarray)):
        if label.ndim != 0 and not (label.ndim == 1 and label.shape[0] == 1):
            raise DataError(f"{where}: the label has shape {tuple(label.shape)}; a label is one "
                            "class index (not one-hot)")
        label = label.reshape(()).item()
    if isinstance(label, (bool, np.bool_)):
        label = int(label)
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        return int(label)
    if isinstance(label, str):
        return label
    raise DataError(f"{where}: the label is a {type(label).__name__} ({label!r}); a label is a "
                    "class index (int) or a class name")


def check_item(item: Any, where: str) -> tuple[Any, Any, Any]:
    """(clip, label, length or None) of one item; DataError unless it is (clip, label[, length])."""
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        what = (f"a {type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list))
                else f"a {type(item).__name__}")
        raise DataError(f"{where} is {what}; items must be (clip, label) or (clip, label, "
                        f"length); accepted: {ACCEPTED}")
    clip, label = item[0], item[1]
    if not _is_clip(clip):
        raise DataError(f"{where}: the clip is a {type(clip).__name__}, not a tensor or numpy "
                        f"array; items must be (clip, label) or (clip, label, length)")
    length = None
    if len(item) == 3:
        length = _label_value(item[2], where + " (length)")
        if not isinstance(length, int) or length < 1:
            raise DataError(f"{where}: the length {item[2]!r} is not a positive frame count")
    return clip, _label_value(label, where), length


# ---------------------------------------------------------------------------------------------
# what was given: a Dataset or a DataLoader over one

def is_user_data_form(x: Any) -> bool:
    """A torch DataLoader, a torch Dataset, or another map-style container (len + getitem)."""
    if isinstance(x, (str, bytes, dict, tuple, np.ndarray, torch.Tensor)):
        return False
    if isinstance(x, torch.utils.data.DataLoader):
        return True
    return isinstance(x, torch.utils.data.Dataset) or (hasattr(x, "__len__")
                                                       and hasattr(x, "__getitem__"))


def _unwrap(x: Any, role: str) -> tuple[Any, Callable | None, int | None]:
    """(dataset, collate_fn or None, batch_size or None) of a Dataset or DataLoader."""
    if isinstance(x, torch.utils.data.DataLoader):
        ds = x.dataset
        batch = x.batch_size if x.batch_size is not None else getattr(x.batch_sampler,
                                                                      "batch_size", None)
        collate = x.collate_fn  # kept even when torch's default: batches as the user's are
        kind = "DataLoader's dataset"
    else:
        ds, collate, batch, kind = x, None, None, "Dataset"
    if isinstance(ds, torch.utils.data.IterableDataset) or not (hasattr(ds, "__len__")
                                                                and hasattr(ds, "__getitem__")):
        raise DataError(f"the {role} {kind} is a {type(ds).__name__} without __len__ and "
                        f"__getitem__: clipdoctor needs a map-style Dataset; accepted: {ACCEPTED}")
    return ds, collate, batch


def _attribute_labels(ds: Any) -> list | None:
    """Labels from a `targets` / `labels` attribute (torchvision's convention), following a
    torch Subset to its dataset; None when there is none of the right length."""
    if isinstance(ds, torch.utils.data.Subset):
        inner = _attribute_labels(ds.dataset)
        return None if inner is None else [inner[int(i)] for i in ds.indices]
    for attr in ("targets", "labels"):
        values = getattr(ds, attr, None)
        if values is None or callable(values) or isinstance(values, (str, bytes)):
            continue
        try:
            values = list(values.tolist() if hasattr(values, "tolist") else values)
        except TypeError:
            continue
        if len(values) == len(ds):
            return values
    return None


def _class_names(ds: Any) -> list[str] | None:
    """`dataset.classes` (a list of names), following Subsets; None when absent."""
    while ds is not None:
        names = getattr(ds, "classes", None)
        if isinstance(names, (list, tuple)) and names and all(isinstance(c, str) for c in names):
            return list(names)
        ds = getattr(ds, "dataset", None) if isinstance(ds, torch.utils.data.Subset) else None
    return None


def collate_clips(items: list) -> tuple:
    """torch's default collate, except that items carrying a length are padded with zeros
    along T to the longest clip first (what a padding collate does)."""
    if items and len(items[0]) == 3:
        clips = [torch.as_tensor(np.asarray(it[0])) if isinstance(it[0], np.ndarray) else it[0]
                 for it in items]
        t = max(int(c.shape[0]) for c in clips)
        if any(int(c.shape[0]) != t for c in clips):
            padded = [torch.cat([c, c.new_zeros((t - c.shape[0], *c.shape[1:]))])
                      if c.shape[0] < t else c for c in clips]
            labels = torch.utils.data.default_collate([it[1] for it in items])
            lengths = torch.utils.data.default_collate([it[2] for it in items])
            return torch.stack(padded), labels, lengths
    return tuple(torch.utils.data.default_collate(items))


# ---------------------------------------------------------------------------------------------
# UserData

class UserData:
    """The user's Datasets as the doctor reads them: classes, per-split datasets, the samples
    (split / label / index), how items are collated, the clip layout, and `augment`, the
    user's own clip augmentation when given."""

    def __init__(self, datasets: dict[str, Any], samples: list[UserSample], classes: list[str],
                 layout: ClipLayout, *, collate: Callable | None = None,
                 batch_size: int | None = None, with_length: bool = False,
                 augment: Callable | None = None, notes: Sequence[str] = (),
                 format: str = "torch-dataset", skipped: Sequence[dict] = (),
                 first_shape: tuple[int, ...] | None = None) -> None:
        self.datasets = datasets
        self.samples = samples
        self.classes = classes
        self.layout = layout
        self.collate = collate or collate_clips
        self.user_collate = collate is not None
        self.batch_size = batch_size
        self.with_length = with_length
        self.augment = augment
        self.notes = list(notes)
        self.format = format
        self.root = None
        self.skipped = list(skipped)  # items that raised while their labels were read
        self.first_shape = first_shape  # of the train split's first readable clip
        self.unreadable: dict[str, str] = {}  # items whose read raised: name -> the error

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s} {n}" for s, n in self.counts_total().items() if n)
        return f"UserData({sizes}; {len(self.classes)} classes; {self.layout})"

    def counts_total(self) -> dict[str, int]:
        c = Counter(s.split for s in self.samples)
        return {s: c.get(s, 0) for s in SPLITS}

    def split(self, name: str) -> list[UserSample]:
        return [s for s in self.samples if s.split == name]

    def with_augment(self, augment: Callable | None) -> UserData:
        """The same data with another `augment` (this object is left as it is)."""
        out = object.__new__(UserData)
        out.__dict__.update(self.__dict__)
        out.augment = augment
        return out

    # -- items ---------------------------------------------------------------------------------

    def item(self, sample: UserSample) -> tuple:
        """The item exactly as the user's Dataset yields it. An item whose read raises is
        remembered (`unreadable`) and left out of `readable()` from then on."""
        try:
            return tuple(self.datasets[sample.source][sample.index])
        except Exception as e:
            self.unreadable[sample.name] = f"{type(e).__name__}: {str(e)[:120]}"
            raise

    def readable(self, split: str | None = None) -> list[UserSample]:
        """The samples (of `split`), less the items whose read raised so far."""
        return [s for s in self.samples if s.name not in self.unreadable
                and (split is None or s.split == split)]

    def clip(self, sample: UserSample) -> tuple[Any, int | None]:
        """(the clip as yielded, its length or None)."""
        item = self.item(sample)
        return item[0], (int(_label_value(item[2], sample.name)) if len(item) > 2 else None)

    def batch(self, samples: list[UserSample], *, augment: bool = False, seed: int = 0
              ) -> tuple:
        """(x, y) or (x, y, lengths): the items of `samples` collated by the user's collate (or
        torch's default), as the model would receive them; with `augment`, the user's clip
        augmentation applied to each clip first (seeded)."""
        items = [self.item(s) for s in samples]
        if augment and self.augment is not None:
            items = [(self.augmented(it[0], seed * 100_003 + k), *it[1:])
                     for k, it in enumerate(items)]
        out = self.collate(items)
        if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
            raise DataError(f"the collate function returned a {type(out).__name__}; it must "
                            "return (clips, labels) or (clips, labels, lengths)")
        x, y = out[0], out[1]
        x = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
        y = torch.as_tensor(y) if not isinstance(y, torch.Tensor) else y
        return (x, y, *out[2:])

    def augmented(self, clip: Any, seed: int) -> Any:
        """`augment(clip)` under a fixed seed (see `seeded_call`)."""
        return seeded_call(self.augment, clip, seed)

    def describe(self) -> dict:
        """What the report says about the data (beside counts): its form and layout."""
        return {"format": self.format, "layout": str(self.layout),
                "with_length": self.with_length, "batch_size": self.batch_size,
                "collate": getattr(self.collate, "__name__", type(self.collate).__name__)
                if self.user_collate else "default (torch default_collate; pads by length)",
                "augment": None if self.augment is None else getattr(
                    self.augment, "__name__", type(self.augment).__name__),
                "notes": list(self.notes)}


def _read(ds: Any, i: int, role: str) -> Any:
    """`ds[i]`, or DataError when the Dataset cannot give it (not a map-style Dataset)."""
    try:
        return ds[i]
    except Exception as e:  # noqa: BLE001 — the user's __getitem__, or not a Dataset at all
        raise DataError(f"item {i} of the {role} data could not be read ({type(e).__name__}: "
                        f"{str(e)[:120]}); accepted: {ACCEPTED}") from e


def _first_item(ds: Any, role: str, tries: int = 8) -> tuple[int, Any]:
    """(index, item) of the first of the first `tries` items that can be read; DataError
    (naming the accepted forms) when none can."""
    first: DataError | None = None
    for i in range(min(tries, len(ds))):
        try:
            return i, _read(ds, i, role)
        except DataError as e:
            first = first or e
    raise first  # type: ignore[misc]


def _labels_of(ds: Any, role: str) -> tuple[list, str, dict[int, str]]:
    """(labels, where they came from, {index: error} of the items whose read raised) of
    every item of `ds`: an item that cannot be read has no label (None) when the Dataset has
    no labels attribute; one that reads but is not (clip, label[, length]) is a DataError."""
    values = _attribute_labels(ds)
    if values is not None:
        return ([_label_value(v, f"{role} labels[{i}]") for i, v in enumerate(values)],
                "attribute", {})
    out: list = []
    failed: dict[int, str] = {}
    for i in range(len(ds)):
        try:
            item = ds[i]
        except Exception as e:  # noqa: BLE001 — the user's __getitem__ on a broken clip
            failed[i] = f"{type(e).__name__}: {str(e)[:120]}"
            out.append(None)
            continue
        out.append(check_item(item, f"item {i} of the {role} Dataset")[1])
    if len(failed) == len(ds):
        _read(ds, 0, role)  # raises the DataError of the first item
    return out, "items", failed


def _carve_val(labels: list[int], fraction: float, seed: int) -> tuple[list[int], bool]:
    """Indices of a seeded validation split of `labels`, stratified when every class has 2+
    clips (scikit-learn's train_test_split), and whether it is stratified."""
    from sklearn.model_selection import train_test_split

    n = len(labels)
    k = len(set(labels))
    n_val = max(k, int(round(fraction * n)))
    if n < 4 or n - n_val < 2:
        return [], False
    idx = np.arange(n)
    try:
        _, val = train_test_split(idx, test_size=n_val, stratify=labels, random_state=seed)
        return sorted(int(i) for i in val), True
    except ValueError:  # a class with a single clip, or more classes than val places
        _, val = train_test_split(idx, test_size=max(1, int(round(fraction * n))),
                                  random_state=seed)
        return sorted(int(i) for i in val), False


def from_datasets(train: Any, val: Any = None, test: Any = None, *, seed: int = 0,
                  val_fraction: float = 0.1, classes: Sequence[str] | None = None,
                  augment: Callable | None = None) -> UserData:
    """Wrap the user's Datasets / DataLoaders; DataError naming the accepted forms for
    anything else (checked on each split's first item: (clip, label[, length]), a 4-D clip)."""
    if augment is not None and not callable(augment):
        raise DataError(f"augment= must be a callable on one clip, got a {type(augment).__name__}")
    given = {role: x for role, x in (("train", train), ("val", val), ("test", test))
             if x is not None}
    datasets, collate, batch_size, loaders = {}, None, None, 0
    for role, x in given.items():
        if not is_user_data_form(x):
            raise DataError(f"the {role} data is a {type(x).__name__}; accepted: {ACCEPTED}")
        ds, c, b = _unwrap(x, role)
        loaders += isinstance(x, torch.utils.data.DataLoader)
        if c is not None and (collate is None or role == "train"):
            collate = c
        if b is not None and (batch_size is None or role == "train"):
            batch_size = b
        if len(ds) == 0:
            raise DataError(f"the {role} Dataset is empty")
        datasets[role] = ds
    layout, with_length, first_shape = None, None, None
    labels: dict[str, list] = {}
    notes = []
    skipped: list[dict] = []  # items whose read raised (no label known): unreadable clips
    for role, ds in datasets.items():
        i, item = _first_item(ds, role)
        clip, _, length = check_item(item, f"item {i} of the {role} Dataset")
        here = detect_layout(clip, f"item {i} of the {role} Dataset")
        if layout is None:
            layout, with_length = here, length is not None
            first_shape = tuple(int(v) for v in clip.shape)
        elif here.order != layout.order:
            raise DataError(f"the {role} Dataset yields {here} clips, the train Dataset "
                            f"{layout}: every split must use one layout")
        labels[role], source, failed = _labels_of(ds, role)
        skipped += [{"path": f"{role}[{i}]", "reason": why} for i, why in failed.items()]
        if source == "attribute":
            notes.append(f"{role} labels read from the Dataset's targets/labels attribute")
    names = list(classes) if classes is not None else _class_names(datasets["train"])
    raw = [v for vs in labels.values() for v in vs if v is not None]
    if any(isinstance(v, str) for v in raw):
        names = names or sorted({v for v in raw if isinstance(v, str)})
        unknown = sorted({v for v in raw if isinstance(v, str) and v not in names})
        if unknown:
            raise DataError(f"labels {unknown[:5]} are not among the classes {names[:10]}")
        labels = {r: [names.index(v) if isinstance(v, str) else v for v in vs]
                  for r, vs in labels.items()}
        raw = [v for vs in labels.values() for v in vs if v is not None]
    if min(raw) < 0:
        raise DataError(f"label {min(raw)} is negative; labels are class indices 0..K-1")
    k = max(raw) + 1
    if names is None:
        names = [str(i) for i in range(k)]
        notes.append(f"classes named by index (0..{k - 1}): the Dataset has no `classes`")
    elif k > len(names):
        notes.append(f"labels reach {k - 1} but the Dataset names {len(names)} classes; the "
                     "extra classes are named by index")
        names = names + [str(i) for i in range(len(names), k)]
    samples = [UserSample(role, int(lab), i, role, f"{role}[{i}]")
               for role, vs in labels.items() for i, lab in enumerate(vs) if lab is not None]
    if "val" not in datasets:
        known = [i for i, lab in enumerate(labels["train"]) if lab is not None]
        val_idx, stratified = _carve_val([labels["train"][i] for i in known], val_fraction,
                                         seed)
        if val_idx:
            chosen = {known[i] for i in val_idx}
            samples = [replace(s, split="val") if s.source == "train" and s.index in chosen
                       else s for s in samples]
            notes.append(f"no val= given: {len(val_idx)} of {len(known)} training "
                         f"clips ({val_fraction:.0%}) held out as val, "
                         + ("stratified by class" if stratified else "not stratified (a class "
                            "has a single clip)") + f", seed {seed} (scikit-learn "
                         "train_test_split)")
        else:
            notes.append("no val= given and too few training clips to hold out a val split")
    return UserData(datasets, samples, names, layout, collate=collate, batch_size=batch_size,
                    with_length=bool(with_length), augment=augment, notes=notes,
                    format="dataloader" if loaders else "torch-dataset", skipped=skipped,
                    first_shape=first_shape)
