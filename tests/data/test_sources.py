"""Every dataset layout -> SourceIndex, on tiny real files (encoded videos, PNG frames, .npz)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdoctor.data.sources import FORMATS, SPLITS, detect_format, load_source
from clipdoctor.data.synthetic import write_video
from clipdoctor.errors import DataError


@pytest.fixture
def clip(video_factory):
    """Write a tiny real H.264 clip at a path relative to tmp_path."""

    def make(rel: str) -> Path:
        return video_factory(rel, n=3, size=(16, 16))

    return make


def frames(folder: Path, n: int = 3) -> Path:
    """A folder of real PNG frames."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def counts(index, split: str) -> dict[str, int]:
    """Clips per class name in one split."""
    return dict(Counter(index.classes[s.label] for s in index.split(split)))


def split_of(index) -> dict[str, str]:
    return {s.name: s.split for s in index.samples}


def assert_groups_on_one_side(index) -> None:
    sides: dict[str, set[str]] = {}
    for s in index.samples:
        if s.group is not None:
            sides.setdefault(s.group, set()).add(s.split)
    assert sides, "expected grouped clips"
    assert all(len(v) == 1 for v in sides.values()), sides


# ------------------------------------------------------------------------------------ folder

def test_folder_flat_makes_stratified_80_10_10(tmp_path, clip):
    for cls in ("cat", "ant"):
        for i in range(10):
            clip(f"data/{cls}/c{i}.mp4")
    root = tmp_path / "data"
    assert detect_format(root) == "folder"
    index = load_source(root, seed=3)
    assert index.format == "folder" and index.root == root.resolve()
    assert index.classes == ["ant", "cat"]
    assert len(index.samples) == 20 and not index.skipped
    for split, n in (("train", 8), ("val", 1), ("test", 1)):
        assert counts(index, split) == {"ant": n, "cat": n}
    s = next(s for s in index.samples if s.name == "cat/c4.mp4")
    assert s.path == root.resolve() / "cat" / "c4.mp4" and s.path.is_absolute()
    assert s.label == 1 and s.group is None and s.array is None


def test_folder_frames_hidden_symlink_garbage_and_skips(tmp_path, clip):
    root = tmp_path / "d"
    frames(root / "walk" / "clip1")
    frames(root / "walk" / "clip2")
    frames(root / "run" / "r1")
    (root / "run" / "empty_frames").mkdir()
    clip("d/run/r2.mp4")
    write(root / "run" / "broken.mp4", "not a video at all")  # decoding decides later
    write(root / "run" / "notes.txt", "hello")
    write(root / "README.md", "readme")
    write(root / "run" / ".DS_Store", "junk")
    frames(root / ".cache" / "x")
    target = clip("elsewhere/real.mp4")
    os.symlink(target, root / "walk" / "linked.mp4")
    index = load_source(root)
    assert index.classes == ["run", "walk"]
    names = sorted(s.name for s in index.samples)
    assert names == ["run/broken.mp4", "run/r1", "run/r2.mp4", "walk/clip1", "walk/clip2",
                     "walk/linked.mp4"]
    linked = next(s for s in index.samples if s.name == "walk/linked.mp4")
    assert linked.path.is_file() and linked.label == 1
    reasons = {s.path: s.reason for s in index.skipped}
    # a README beside the class folders is no clip and no problem: ignored, not reported
    assert reasons == {"run/empty_frames": "frame folder holds no images",
                       "run/notes.txt": "not a video file or frame folder"}
    with pytest.raises(DataError, match=r"2 file\(s\) skipped.*empty_frames"):
        load_source(root, strict=True)


def test_folder_with_train_validation_test(tmp_path, clip):
    for split, classes in (("train", "abc"), ("validation", "ab"), ("test", "ad")):
        for cls in classes:
            for i in range(2):
                clip(f"s/{split}/{cls}/{split}{i}.mp4")
    index = load_source(tmp_path / "s")
    assert index.classes == ["a", "b", "c", "d"]  # union over splits
    assert counts(index, "train") == {"a": 2, "b": 2, "c": 2}
    assert counts(index, "val") == {"a": 2, "b": 2}
    assert counts(index, "test") == {"a": 2, "d": 2}
    assert {s.name.split("/")[0] for s in index.split("val")} == {"validation"}


def test_folder_train_test_only_carves_val_from_train(tmp_path, clip):
    for cls in ("x", "y"):
        for i in range(10):
            clip(f"s/train/{cls}/t{i}.mp4")
        clip(f"s/test/{cls}/q.mp4")
    index = load_source(tmp_path / "s", val_fraction=0.2)
    assert counts(index, "test") == {"x": 1, "y": 1}
    assert all(s.name.startswith("test/") for s in index.split("test"))
    # 20% of each class's 11 clips -> 3 val clips each, taken from train
    assert counts(index, "val") == {"x": 3, "y": 3}
    assert counts(index, "train") == {"x": 7, "y": 7}
    assert all(s.name.startswith("train/") for s in index.split("val"))


def ucf_names(cls: str, groups: int, clips: int) -> list[str]:
    return [f"v_{cls}_g{g:02d}_c{c:02d}" for g in range(1, groups + 1) for c in range(1, clips + 1)]


def test_generated_splits_keep_groups_and_are_seeded(tmp_path, clip):
    for cls in ("Jump", "Swim"):
        for name in ucf_names(cls, 10, 3):
            clip(f"u/{cls}/{name}.avi")
    root = tmp_path / "u"
    index = load_source(root, seed=0)
    jump_groups = {s.group for s in index.samples if s.label == 0}
    assert jump_groups == {f"Jump_g{g:02d}" for g in range(1, 11)}
    assert_groups_on_one_side(index)
    for split in ("val", "test"):  # 10% of 30 clips -> one group of 3 per class
        assert counts(index, split) == {"Jump": 3, "Swim": 3}
    assert split_of(load_source(root, seed=0)) == split_of(index)
    others = [split_of(load_source(root, seed=s)) for s in (1, 2, 3)]
    assert any(o != split_of(index) for o in others)
    for seed in (1, 2, 3):
        assert_groups_on_one_side(load_source(root, seed=seed))


def test_tiny_classes_stay_in_train_and_three_clips_spread(tmp_path, clip):
    for cls, n in (("one", 1), ("two", 2), ("three", 3), ("many", 20)):
        for i in range(n):
            clip(f"t/{cls}/{i}.mp4")
    index = load_source(tmp_path / "t")
    assert counts(index, "train")["one"] == 1 and counts(index, "train")["two"] == 2
    for split in SPLITS:
        assert counts(index, split)["three"] == 1
    assert counts(index, "val")["many"] == 2 and counts(index, "test")["many"] == 2


def test_non_ascii_names(tmp_path, clip):
    clip("nä/données/clé_é.mp4")
    clip("nä/données/b.mp4")
    clip("nä/日本/東京.mp4")
    clip("nä/日本/大阪.mp4")
    index = load_source(tmp_path / "nä")
    assert index.classes == ["données", "日本"]
    names = {s.name: s.label for s in index.samples}
    assert names["données/clé_é.mp4"] == 0 and names["日本/東京.mp4"] == 1


# ------------------------------------------------------------------------------------ ucf101

def make_ucf(tmp_path: Path, clip) -> Path:
    root = tmp_path / "ucf"
    write(root / "ucfTrainTestlist" / "classInd.txt", "1 Zoom\n2 Apple\n3 Mango\n")
    train, test = [], []
    for label, cls in enumerate(("Zoom", "Apple", "Mango"), 1):
        for name in ucf_names(cls, 7, 2):
            clip(f"ucf/UCF-101/{cls}/{name}.avi")
            group = int(name.split("_g")[1][:2])
            (test if group <= 2 else train).append((cls, name, label))
    write(root / "ucfTrainTestlist" / "trainlist01.txt",
          "".join(f"{c}/{n}.avi {lab}\r\n" for c, n, lab in train)
          + "Apple/v_Apple_g99_c01.avi 2\n")
    write(root / "ucfTrainTestlist" / "testlist01.txt",
          "".join(f"{c}/{n}.avi\n" for c, n, _ in test))
    return root


def test_ucf101(tmp_path, clip):
    root = make_ucf(tmp_path, clip)
    assert detect_format(root) == "ucf101"
    index = load_source(root)
    assert index.classes == ["Zoom", "Apple", "Mango"]  # classInd order, 1-based -> 0-based
    assert counts(index, "test") == {"Zoom": 4, "Apple": 4, "Mango": 4}
    assert counts(index, "val") == {"Zoom": 2, "Apple": 2, "Mango": 2}  # one group each
    assert counts(index, "train") == {"Zoom": 8, "Apple": 8, "Mango": 8}
    assert_groups_on_one_side(index)
    s = next(s for s in index.samples if s.name == "UCF-101/Apple/v_Apple_g01_c02.avi")
    assert s.label == 1 and s.split == "test" and s.group == "Apple_g01"
    assert [(k.path, k.reason) for k in index.skipped] == [
        ("UCF-101/Apple/v_Apple_g99_c01.avi", "listed in trainlist01.txt but not found")]


def test_ucf101_missing_fold_names_existing_files(tmp_path, clip):
    root = make_ucf(tmp_path, clip)
    with pytest.raises(DataError, match=r"fold 2: trainlist02.txt, testlist02.txt not found.*"
                                        r"found testlist01.txt, trainlist01.txt; pass --fold N"):
        load_source(root, fold=2)


@pytest.mark.parametrize("line, message", [
    ("Pear/v_Pear_g01_c01.avi 1", r"trainlist01.txt line 2: class 'Pear' is not in classInd.txt"),
    ("Apple/v_Apple_g01_c01.avi 1",
     r"trainlist01.txt line 2: label 1 is 'Zoom'.*folder is 'Apple'"),
    ("Apple/v_Apple_g01_c01.avi 9", r"trainlist01.txt line 2: label 9 is out of range 1..3"),
    ("../../etc/v_x.avi 1", r"trainlist01.txt line 2: path '../../etc/v_x.avi' escapes"),
    ("Zoom/../../v_Zoom_g02_c01.avi 1",
     r"trainlist01.txt line 2: path 'Zoom/../../v_Zoom_g02_c01.avi' escapes"),
])
def test_ucf101_bad_list_lines(tmp_path, clip, line, message):
    root = tmp_path / "u"
    clip("u/Zoom/v_Zoom_g01_c01.avi")
    write(root / "classInd.txt", "1 Zoom\n2 Apple\n3 Mango\n")
    write(root / "trainlist01.txt", f"Zoom/v_Zoom_g01_c01.avi 1\n{line}\n")
    write(root / "testlist01.txt", "")
    with pytest.raises(DataError, match=message):
        load_source(root)


def test_ucf101_lists_and_videos_in_root(tmp_path, clip):
    root = tmp_path / "flat"
    write(root / "classInd.txt", "1 B\n2 A\n")
    train, test = [], []
    for cls in ("A", "B"):
        for name in ucf_names(cls, 4, 1):
            clip(f"flat/{cls}/{name}.avi")
            (test if name.endswith("g01_c01") else train).append(f"{cls}/{name}.avi")
    write(root / "trainlist03.txt", "".join(f"{t} {1 + (t[0] == 'A')}\n" for t in train))
    write(root / "testlist03.txt", "".join(f"{t}\n" for t in test))
    index = load_source(root, format="ucf101", fold=3)
    assert index.classes == ["B", "A"]
    assert counts(index, "test") == {"A": 1, "B": 1}
    assert counts(index, "val") == {"A": 1, "B": 1} and counts(index, "train") == {"A": 2, "B": 2}
    assert split_of(index)["A/v_A_g01_c01.avi"] == "test"
    write(root / "classInd.txt", "0 B\n1 A\n")
    with pytest.raises(DataError, match=r"classInd.txt: class numbers must run 1..2"):
        load_source(root, fold=3)


# ------------------------------------------------------------------------------------ hmdb51

def test_hmdb51(tmp_path, clip):
    root = tmp_path / "hmdb"
    splits = root / "test_train_splits" / "testTrainMulti_7030_splits"
    for cls in ("wave", "clap"):
        lines1, lines2 = [], []
        for i in range(8):
            clip(f"hmdb/{cls}/{cls}_{i}.avi")
            lines1.append(f"{cls}_{i}.avi {(0, 1, 1, 1, 1, 1, 2, 2)[i]} \n")
            lines2.append(f"{cls}_{i}.avi {(2, 2, 1, 1, 1, 1, 1, 0)[i]} \n")
        lines1.append(f"{cls}_gone.avi 1\n")
        write(splits / f"{cls}_test_split1.txt", "".join(lines1))
        write(splits / f"{cls}_test_split2.txt", "".join(lines2))
    assert detect_format(root) == "hmdb51"
    index = load_source(root)
    assert index.classes == ["clap", "wave"]
    assert len(index.samples) == 14  # the 0 rows are left out
    assert counts(index, "test") == {"clap": 2, "wave": 2}
    assert counts(index, "val") == {"clap": 1, "wave": 1}
    assert counts(index, "train") == {"clap": 4, "wave": 4}
    assert "wave/wave_0.avi" not in split_of(index)
    assert sorted(k.path for k in index.skipped) == ["clap/clap_gone.avi", "wave/wave_gone.avi"]
    fold2 = load_source(root, fold=2)
    assert split_of(fold2)["wave/wave_0.avi"] == "test" and "wave/wave_7.avi" not in split_of(fold2)
    with pytest.raises(DataError, match=r"fold 3.*found folds \[1, 2\].*--fold"):
        load_source(root, fold=3)
    write(splits / "clap_test_split1.txt", "clap_0.avi 1\nclap_1.avi 7\n")
    with pytest.raises(DataError, match=r"clap_test_split1.txt line 2: expected"):
        load_source(root)


# ------------------------------------------------------------------------------------ kinetics

def test_kinetics(tmp_path, clip):
    root = tmp_path / "k"
    header = "label,youtube_id,time_start,time_end,split\n"
    train = [("riding bike", f"rb{i}", i, i + 10) for i in range(4)]
    train += [("abseiling", f"ab{i}", 0, 10) for i in range(4)]
    for label, yid, start, end in train[:3] + train[4:]:
        clip(f"k/{label}/{yid}_{start:06d}_{end:06d}.mp4")
    write(root / "train.csv", header + "".join(f"{l},{y},{s},{e},train\n" for l, y, s, e in train))
    clip("k/validate/riding_bike/vr_000005_000015.mp4")
    clip("k/abseiling/va_000005_000015.mp4")
    write(root / "validate.csv", header + "riding bike,vr,5.0,15.0,validate\n"
                                          "abseiling,va,5,15,val\n,unl,0,10,test\n")
    assert detect_format(root) == "kinetics"
    assert detect_format(root / "train.csv") == "kinetics"
    index = load_source(root)
    assert index.classes == ["abseiling", "riding bike"]
    assert counts(index, "val") == {"abseiling": 1, "riding bike": 1}
    assert counts(index, "train") == {"abseiling": 4, "riding bike": 3}
    assert "validate/riding_bike/vr_000005_000015.mp4" in split_of(index)
    assert [(k.path, k.reason) for k in index.skipped] == [
        ("riding bike/rb3_000003_000013.mp4", "listed in train.csv but not found")]
    write(root / "validate.csv", header + "abseiling,va,5,15,holdout\n")
    with pytest.raises(DataError, match=r"validate.csv line 2: unknown split 'holdout'"):
        load_source(root)


# ------------------------------------------------------------------------------------ ssv2

def test_ssv2(tmp_path):
    root = tmp_path / "ss"
    videos = root / "20bn-something-something-v2"
    labels = {"Pushing something from left to right": "1",
              "Holding something next to something": "0"}
    write(root / "labels.json", json.dumps(labels))
    train, val = [], []
    for i in range(6):
        template = ("Holding [something] next to [something]",
                    "Pushing [something] from left to right")[i % 2]
        item = {"id": str(100 + i), "label": "a cup", "template": template}
        (train if i < 4 else val).append(item)
        if i != 3:
            write_video(videos / f"{100 + i}.webm", np.zeros((3, 16, 16, 3), np.uint8),
                        codec="libvpx")
    write(root / "train.json", json.dumps(train))
    write(root / "validation.json", json.dumps(val))
    assert detect_format(root) == "ssv2"
    index = load_source(root)
    assert index.classes == ["Holding something next to something",
                             "Pushing something from left to right"]
    assert split_of(index) == {"20bn-something-something-v2/100.webm": "train",
                               "20bn-something-something-v2/101.webm": "train",
                               "20bn-something-something-v2/102.webm": "train",
                               "20bn-something-something-v2/104.webm": "val",
                               "20bn-something-something-v2/105.webm": "val"}
    assert [s.label for s in index.samples] == [0, 1, 0, 0, 1]
    assert index.skipped[0].reason == "listed in train.json but not found"
    train.append({"id": "9", "template": "Dropping [something]"})
    write(root / "train.json", json.dumps(train))
    with pytest.raises(DataError,
                       match=r"train.json entry 4 \(id 9\): template 'Dropping \[something\]'"):
        load_source(root)
    write(root / "train.json", '[{"id": "1",\n "template": }]')
    with pytest.raises(DataError, match=r"train.json line 2: invalid JSON"):
        load_source(root)


# ------------------------------------------------------------------------------------ csv

def test_csv_manifest_file_and_folder(tmp_path, clip):
    root = tmp_path / "m"
    for i in range(3):
        clip(f"m/vids/a{i}.mp4")
        clip(f"m/vids/b{i}.mp4")
    frames(root / "vids" / "frames_c")
    rows = [f"vids/a{i}.mp4,10,train" for i in range(3)]
    rows += [f"vids/b{i}.mp4,2,test" for i in range(3)]
    rows += ["vids/frames_c,1,val", "vids/missing.mp4,2,train"]
    write(root / "manifest.csv", "path,label,split\n" + "\n".join(rows) + "\n")
    for target in (root, root / "manifest.csv"):
        assert detect_format(target) == "csv"
        index = load_source(target)
        assert index.classes == ["1", "2", "10"]  # integer labels sort numerically
        assert counts(index, "train") == {"10": 3} and counts(index, "test") == {"2": 3}
        assert counts(index, "val") == {"1": 1}
        assert split_of(index)["vids/frames_c"] == "val"
        assert [(k.path, k.reason) for k in index.skipped] == [
            ("vids/missing.mp4", "listed in manifest.csv line 9 but not found")]


def test_csv_keras_example_split_files(tmp_path, clip):
    root = tmp_path / "keras"
    for split, groups in (("train", range(10)), ("test", range(20, 22))):
        names = [f"v_{c}_g{g:02d}_c01.avi" for c in ("Punch", "Drum") for g in groups]
        for name in names:
            clip(f"keras/{split}/{name}")
        write(root / f"{split}.csv", "video_name,tag\n" + "".join(
            f"{name},{name.split('_')[1]}\n" for name in names))
    index = load_source(root)
    assert index.format == "csv" and index.classes == ["Drum", "Punch"]
    assert counts(index, "test") == {"Drum": 2, "Punch": 2}
    assert counts(index, "val") == {"Drum": 2, "Punch": 2}  # 10% of 12 clips per class
    assert counts(index, "train") == {"Drum": 8, "Punch": 8}
    assert all(s.name.startswith("train/") for s in index.split("val"))
    assert_groups_on_one_side(index)


@pytest.mark.parametrize("row, message", [
    ("../outside.mp4,a", r"manifest.csv line 3: path '../outside.mp4' escapes the dataset root"),
    ("/etc/passwd,a", r"manifest.csv line 3: path '/etc/passwd' is absolute and escapes"),
    ("link.mp4,a", r"manifest.csv line 3: path 'link.mp4' \(a link to .*outside.mp4\) escapes"),
    ("x.mp4,", r"manifest.csv line 3: empty label"),
    ("x.mp4,a,holdout", r"manifest.csv line 3: unknown split 'holdout'; allowed: train, val, test"),
])
def test_csv_bad_rows(tmp_path, clip, row, message):
    outside = clip("outside.mp4")
    root = tmp_path / "m"
    clip("m/x.mp4")
    os.symlink(outside, root / "link.mp4")
    write(root / "manifest.csv", f"path,label,split\nx.mp4,b,train\n{row}\n")
    with pytest.raises(DataError, match=message):
        load_source(root / "manifest.csv")


def test_csv_without_header(tmp_path, clip):
    clip("m/x.mp4")
    write(tmp_path / "m" / "list.csv", "x.mp4,a\n")
    with pytest.raises(DataError, match=r"list.csv line 1: expected a header row"):
        load_source(tmp_path / "m" / "list.csv")


# ------------------------------------------------------------------------------------ npz

def test_npz_arrays(tmp_path):
    X = np.random.default_rng(0).integers(0, 256, (20, 4, 8, 8, 3), dtype=np.uint8)
    y = np.arange(20) % 2
    np.savez(tmp_path / "data.npz", X=X, y=y, classes=np.array(["no", "yes"]))
    assert detect_format(tmp_path) == "npz" and detect_format(tmp_path / "data.npz") == "npz"
    index = load_source(tmp_path)
    assert index.classes == ["no", "yes"]
    assert counts(index, "train") == {"no": 8, "yes": 8}
    assert counts(index, "val") == {"no": 1, "yes": 1}
    s = next(s for s in index.samples if s.name == "data.npz[7]")
    assert s.path is None and s.label == 1 and s.array.dtype == np.uint8
    np.testing.assert_array_equal(s.array, X[7])

    np.savez(tmp_path / "data.npz", X=X, y=y, X_test=X[:4], y_test=y[:4])
    index = load_source(tmp_path / "data.npz")
    assert index.classes == ["0", "1"] and counts(index, "test") == {"0": 2, "1": 2}
    assert len(index.split("val")) == 4 and len(index.split("train")) == 16  # val from X
    assert "data.npz:X_test[3]" in split_of(index)


@pytest.mark.parametrize("arrays, message", [
    (dict(X=np.zeros((4, 2, 8, 8, 3), np.float32), y=np.array([0, 1, 0, 1])),
     r"X is float32; scale the frames to 0..255 and cast to uint8"),
    (dict(X=np.zeros((4, 2, 8, 8, 3), np.uint8), y=np.array([0, 1, 0])),
     r"X holds 4 clips but y 3 labels"),
    (dict(X=np.zeros((4, 2, 8, 8), np.uint8), y=np.array([0, 1, 0, 1])),
     r"expected \(N, T, H, W, C\); add a channel axis"),
    (dict(X=np.zeros((4, 2, 8, 8, 3), np.uint8), y=np.array([0, 1, 0, 2]),
          classes=np.array(["a", "b"])),
     r"labels run 0..2 but there are 2 classes"),
])
def test_npz_bad_arrays(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_source(tmp_path / "bad.npz")


def test_npz_unreadable_files(tmp_path):
    write(tmp_path / "bad.npz", "garbage")
    with pytest.raises(DataError, match=r"cannot read bad.npz: not an .npz \(zip\) archive"):
        load_source(tmp_path / "bad.npz")
    X, y = np.zeros((2, 2, 4, 4, 3), np.uint8), np.array([0, 1])
    np.savez(tmp_path / "obj.npz", X=X, y=y, classes=np.array(["a", "b"], dtype=object))
    with pytest.raises(DataError, match=r"obj.npz: an array holds Python objects"):
        load_source(tmp_path / "obj.npz")
    with pytest.raises(DataError, match=r"exactly one .npz in .*found bad.npz, obj.npz"):
        load_source(tmp_path, format="npz")


def test_npz_with_all_splits_given(tmp_path):
    X = np.zeros((6, 2, 4, 4, 1), np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", X=X, y=y, X_val=X[:3], y_val=y[:3], X_test=X[:2], y_test=y[:2])
    index = load_source(tmp_path / "d.npz", seed=5)
    assert [len(index.split(s)) for s in SPLITS] == [6, 3, 2]
    assert index.classes == ["0", "1", "2"]
    assert index.split("val")[2].name == "d.npz:X_val[2]" and index.split("val")[2].label == 2


@pytest.mark.parametrize("layout", ["hmdb51", "kinetics", "ssv2"])
def test_annotation_paths_cannot_escape(tmp_path, clip, layout):
    root = tmp_path / "d"
    clip("d/a/a1.mp4")
    clip("outside.mp4")
    if layout == "hmdb51":
        write(root / "a_test_split1.txt", "a1.mp4 1\n../../outside.mp4 1\n")
        message = r"a_test_split1.txt line 2: path 'a/../../outside.mp4' escapes the dataset root"
    elif layout == "kinetics":
        write(root / "k.csv", "label,youtube_id,time_start,time_end,split\n"
                              "a,x,0,1,train\nb,../../y,0,1,train\n")
        message = r"k.csv line 3: path 'b/../../y_000000_000001.mp4' escapes the dataset root"
    else:
        write(root / "labels.json", '{"do x": "0", "do y": "1"}')
        write(root / "train.json", '[{"id": "1", "template": "do x"}, '
                                   '{"id": "../../etc/p", "template": "do [y]"}]')
        message = r"train.json entry 1: path '../../etc/p.webm' escapes the dataset root"
    assert detect_format(root) == layout
    with pytest.raises(DataError, match=message):
        load_source(root)


# ------------------------------------------------------------------------------------ general

def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: no such file or folder"):
        load_source(tmp_path / "nowhere")


def test_empty_folder_lists_layouts(tmp_path):
    (tmp_path / "e").mkdir()
    write(tmp_path / "e" / ".hidden", "x")
    with pytest.raises(DataError, match=r"is empty; expected one of the layouts: folder .*ucf101"):
        load_source(tmp_path / "e")


def test_unknown_layout_suggests_format(tmp_path):
    write(tmp_path / "u" / "notes.txt", "x")
    (tmp_path / "u" / "misc").mkdir()
    with pytest.raises(DataError, match=r"cannot tell the layout.*1 folders? \(misc/\) and 1 file "
                                        r"\(notes.txt\).*pass --format NAME"):
        load_source(tmp_path / "u")


def test_only_one_class(tmp_path, clip):
    clip("one/x/a.mp4")
    clip("one/x/b.mp4")
    with pytest.raises(DataError, match=r"only one class \('x'\) found in .*one; a classifier "
                                        r"needs at least 2 classes"):
        load_source(tmp_path / "one")


def test_unknown_format_name_and_forcing(tmp_path, clip):
    root = tmp_path / "f"
    for cls in ("a", "b"):
        for i in range(3):
            clip(f"f/{cls}/{i}.mp4")
    write(root / "index.csv", "path,label\na/0.mp4,a\nb/0.mp4,b\n")
    assert detect_format(root) == "csv"
    assert len(load_source(root).samples) == 2
    forced = load_source(root, format="Folder")
    assert forced.format == "folder" and len(forced.samples) == 6
    assert forced.skipped == []  # the CSV beside the class folders is ignored
    with pytest.raises(DataError, match=r"unknown format 'ucf' \(did you mean 'ucf101'\?\); "
                                        r"valid formats: folder, ucf101, hmdb51, kinetics, ssv2, "
                                        r"csv, npz"):
        load_source(root, format="ucf")
    with pytest.raises(DataError, match=r"no classInd.txt"):
        load_source(root, format="ucf101")
    with pytest.raises(DataError, match=r"val_fraction 0.5 \+ test_fraction 0.5"):
        load_source(root, val_fraction=0.5, test_fraction=0.5)


def test_formats_registry_loaders_work_directly(tmp_path, clip):
    for cls in ("a", "b"):
        for i in range(3):
            clip(f"r/{cls}/{i}.mp4")
    assert set(FORMATS) == {"folder", "ucf101", "hmdb51", "kinetics", "ssv2", "csv", "npz"}
    index = FORMATS["folder"](tmp_path / "r", seed=1)
    assert index.format == "folder" and all(s.split in SPLITS for s in index.samples)


def test_single_video_file_is_not_a_dataset(tmp_path, clip):
    with pytest.raises(DataError, match=r"is a '.mp4' file; DATA must be a dataset folder"):
        load_source(clip("a.mp4"))


def test_folder_reports_a_video_outside_any_class_folder(tmp_path, video_factory):
    for c in ("a", "b"):
        for i in range(3):
            video_factory(f"d/{c}/{i}.mp4", n=4)
    video_factory("d/stray.mp4", n=4)
    index = load_source(tmp_path / "d")
    assert [(k.path, k.reason) for k in index.skipped] == [
        ("stray.mp4", "video outside a class folder: its class is unknown")]
