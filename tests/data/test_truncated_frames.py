"""A frame folder with a truncated JPEG is an unreadable clip like any other: `info` lists it
with the frame file named, decoding raises DecodeError, training drops it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from clipdoctor.config import DataConfig
from clipdoctor.data import decode
from clipdoctor.data.cache import FrameCache
from clipdoctor.data.datamodule import ClipDataModule
from clipdoctor.data.frames import FrameSource
from clipdoctor.data.sources import load_source
from clipdoctor.data.summary import summarize
from clipdoctor.errors import DecodeError
from conftest import numbered_frames

BAD = "left/clip_1"  # the clip with the truncated frame
CUT = "004.jpg"  # its truncated frame


def jpeg_dataset(root: Path) -> Path:
    """Two classes of three frame-folder clips (8 JPEG frames each); frame CUT of clip BAD
    keeps the first half of its bytes."""
    for c in ("left", "right"):
        for i in range(3):
            folder = root / c / f"clip_{i}"
            folder.mkdir(parents=True)
            for n, frame in enumerate(numbered_frames(8, size=(48, 64), offset=4 * i)):
                Image.fromarray(frame).save(folder / f"{n:03d}.jpg", quality=95)
    cut = root / BAD / CUT
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return root


def test_pillow_never_loads_truncated_images():
    """Pillow's lenient mode would fill a truncated frame with grey; nothing turns it on."""
    import clipdoctor.cli  # noqa: F401
    import clipdoctor.training.run  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_probe_and_read_name_the_truncated_frame(tmp_path):
    folder = jpeg_dataset(tmp_path / "d") / BAD
    with pytest.raises(DecodeError) as probed:
        decode.probe(folder)
    with pytest.raises(DecodeError) as read:
        decode.read_frames(folder, [2, 4])
    for e in (probed.value, read.value):
        assert e.path == str(folder / CUT)
        assert CUT in e.reason and "truncated" in e.reason.lower(), e.reason
    assert decode.read_frames(folder, [0, 7]).shape == (2, 48, 64, 3)  # the other frames read


@pytest.mark.parametrize("cached", [True, False])
def test_info_lists_the_clip_as_unreadable(tmp_path, cached):
    index = load_source(jpeg_dataset(tmp_path / "d"))
    frames = FrameSource(FrameCache(tmp_path / "cache") if cached else None)
    for _ in range(2):  # a second `info` (probe cache warm) says the same
        summary = summarize(index, frames)
        assert summary["clips"] == 5 and summary["frames"] == {"min": 8, "max": 8}
        [skipped] = summary["skipped"]
        assert skipped["path"] == BAD
        assert CUT in skipped["reason"] and "truncated" in skipped["reason"].lower()


def test_info_json_skips_the_clip(tmp_path, capsys):
    """`clipdoctor info DIR --json`: the clip is under skipped, the frame file in the reason."""
    from clipdoctor.cli import main

    root = jpeg_dataset(tmp_path / "d")
    assert main(["info", str(root), "--json", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["clips"] == 5
    [skipped] = out["skipped"]
    assert skipped["path"] == BAD and CUT in skipped["reason"], skipped


@pytest.mark.parametrize("cache", [True, False])
def test_training_drops_the_clip(tmp_path, cache):
    dm = ClipDataModule(load_source(jpeg_dataset(tmp_path / "d")),
                        DataConfig(frames=4, frame_size=32, size=28, cache=cache,
                                   cache_dir=tmp_path / "cache"))
    dm.prepare()
    assert len(dm.samples) == 5 and BAD not in {s.name for s in dm.samples}
    [skipped] = [s for s in dm.skipped if s.path == BAD]
    assert CUT in skipped.reason
