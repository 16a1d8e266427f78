"""The command line: `info` output and JSON, exit codes and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clipdoctor.cli import main
from conftest import make_video


def _folder_dataset(root, per_class=3, classes=("left", "right")):
    for c in classes:
        for i in range(per_class):
            make_video(root / c / f"{c}_{i}.mp4", n=10 + i)
    return root


def test_info_json_follows_the_contract(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "d", per_class=10)
    (root / "left" / "broken.mp4").write_text("not a video")
    assert main(["info", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "folder" and out["root"] == str(root)
    assert out["classes"] == ["left", "right"]
    assert set(out["splits"]) == {"train", "val", "test"}
    assert sum(v["clips"] for v in out["splits"].values()) == 20
    assert out["splits"]["train"]["per_class"]["left"] > 0
    assert out["frames"] == {"min": 10, "max": 19}
    assert out["resolution"]["width"] == {"min": 40, "max": 40}
    assert out["fps"] == {"min": 10.0, "max": 10.0}
    assert out["skipped"] == [{"path": "left/broken.mp4",
                               "reason": "not a readable video file (Invalid data found when processing input)"}]


def test_info_human_output_lists_classes_and_skipped(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "d")
    (root / "right" / "empty.mp4").touch()
    assert main(["info", str(root)]) == 0
    out = capsys.readouterr().out
    assert "left" in out and "right" in out and "folder" in out
    assert "right/empty.mp4: file is empty (0 bytes)" in out


def test_strict_makes_unreadable_files_exit_2(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "d")
    (root / "right" / "empty.mp4").touch()
    assert main(["info", str(root), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty.mp4" in err[0] and "--strict" in err[0]


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "nope", "no such file or folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "empty"),
    (lambda p: _folder_dataset(p / "one", classes=("only",)), "only one class"),
])
def test_bad_datasets_get_one_line_and_exit_2(tmp_path, capsys, make, needle):
    path = make(tmp_path)
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]


def test_unknown_format_lists_choices(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "d")
    assert main(["info", str(root), "--format", "ucf"]) == 2
    err = capsys.readouterr().err
    assert "ucf101" in err


def test_console_script_runs_and_exits_2_on_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clipdoctor.cli", "info", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no such file or folder" in proc.stderr


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["info"])
    assert e.value.code == 2


def test_info_on_mixed_sizes_grayscale_frames_and_non_ascii_names(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from clipdoctor.config import DataConfig
    from clipdoctor.data.datamodule import ClipDataModule
    from clipdoctor.data.sources import load_source

    root = tmp_path / "données"
    for i in range(3):
        make_video(root / "clé" / f"vidéo_{i}.mp4", n=12, size=(32, 40))
        make_video(root / "日本" / f"{i}.mp4", n=12, size=(48, 64 + 2 * i))
        gray = root / "clé" / f"gris_{i}"
        gray.mkdir()
        for f in range(6):
            Image.fromarray(np.full((20, 30), 40 * f, np.uint8), mode="L").save(gray / f"f{f}.png")
    assert main(["info", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["classes"] == ["clé", "日本"] and out["skipped"] == []
    assert out["resolution"]["distinct"] == 5
    dm = ClipDataModule(load_source(root), DataConfig(frames=4, frame_size=32, size=28,
                                                      batch_size=3))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (3, 4, 3, 28, 28)
