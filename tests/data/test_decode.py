"""Decoding returns the frames that were encoded, whatever the container, size or colour format."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from clipdoctor.data.decode import list_frame_files, natural_key, probe, read_frames
from clipdoctor.data.synthetic import write_video
from clipdoctor.errors import DecodeError
from conftest import frame_number, make_video, numbered_frames


def test_probe_counts_frames_and_reads_size(tmp_path):
    info = probe(make_video(tmp_path / "a.mp4", n=30, size=(32, 48), fps=15))
    assert (info.frames, info.width, info.height) == (30, 48, 32)
    assert info.fps == pytest.approx(15)
    assert info.duration == pytest.approx(2.0, rel=0.01)
    assert len(info.pts) == 30 and list(info.pts) == sorted(info.pts)


@pytest.mark.parametrize("indices", [[0], [3, 1, 2], [0, 5, 5, 9], list(range(40)), [39, 0, 20]])
def test_read_frames_returns_the_encoded_frames(tmp_path, indices):
    path = make_video(tmp_path / "a.mp4", n=40)
    frames = read_frames(path, indices)
    assert frames.dtype == np.uint8 and frames.shape == (len(indices), 32, 40, 3)
    assert [frame_number(f) for f in frames] == indices


def test_seeking_in_a_long_video_finds_far_frames(tmp_path):
    frames = numbered_frames(240, size=(32, 32))
    path = tmp_path / "long.mp4"
    with av.open(str(path), "w") as c:  # short GOPs so seeking has keyframes to land on
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.options = {"g": "12", "crf": "18"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    wanted = [2, 100, 101, 230, 239]
    got = read_frames(path, wanted)
    assert [frame_number(f) for f in got] == wanted


def test_variable_frame_rate_is_read_by_index(tmp_path):
    """Frames with irregular timestamps: index -> frame must follow the real timestamps."""
    frames = numbered_frames(20, size=(32, 32))
    path = tmp_path / "vfr.mkv"
    gaps = [1, 3, 1, 1, 5, 2, 1, 1, 4, 1, 1, 2, 1, 3, 1, 1, 1, 6, 1, 1]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        s.time_base = Fraction(1, 30)
        pts = 0
        for f, g in zip(frames, gaps):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = pts
            pts += g
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = probe(path)
    assert info.frames == 20
    got = read_frames(path, [0, 4, 5, 17, 19], info=info)
    assert [frame_number(f) for f in got] == [0, 4, 5, 17, 19]


def test_odd_size_and_resize(tmp_path):
    path = make_video(tmp_path / "odd.mp4", n=10, size=(33, 61))
    out = read_frames(path, [0, 9], size=24)
    assert out.shape == (2, 24, 24, 3)
    assert [frame_number(f) for f in out] == [0, 9]


def test_webm_and_avi_containers(tmp_path):
    for name, codec in [("a.webm", "libvpx-vp9"), ("a.avi", "mpeg4")]:
        path = write_video(tmp_path / name, numbered_frames(12), fps=10, codec=codec)
        assert probe(path).frames == 12
        assert [frame_number(f) for f in read_frames(path, [0, 6, 11])] == [0, 6, 11]


def test_frame_folder_natural_order_grayscale_and_rgba(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    frames = numbered_frames(12, size=(20, 24))
    for i, f in enumerate(frames):
        if i % 3 == 0:
            Image.fromarray(f[..., 0], mode="L").save(folder / f"f{i}.png")  # grayscale
        elif i % 3 == 1:
            rgba = np.concatenate([f, np.full(f.shape[:2] + (1,), 255, np.uint8)], -1)
            Image.fromarray(rgba, mode="RGBA").save(folder / f"f{i}.png")
        else:
            Image.fromarray(f).save(folder / f"f{i}.png")
    (folder / ".DS_Store").write_text("x")
    assert [p.name for p in list_frame_files(folder)][:4] == ["f0.png", "f1.png", "f2.png", "f3.png"]
    assert probe(folder).frames == 12
    got = read_frames(folder, [2, 10, 11, 0])
    assert got.shape == (4, 20, 24, 3)
    assert [frame_number(f) for f in got] == [2, 10, 11, 0]


def test_natural_key():
    names = ["f10.jpg", "f2.jpg", "f1.jpg", "F3.jpg"]
    assert sorted(names, key=natural_key) == ["f1.jpg", "f2.jpg", "F3.jpg", "f10.jpg"]


def test_mixed_frame_sizes_in_a_folder_come_out_one_size(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, size in enumerate([(20, 24), (40, 48), (21, 25)]):
        Image.fromarray(numbered_frames(1, size=size, offset=i)[0]).save(folder / f"{i}.png")
    got = read_frames(folder, [0, 1, 2])
    assert got.shape == (3, 20, 24, 3)
    assert [frame_number(f) for f in got] == [0, 1, 2]


def _no_frames_file(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=8000)
        for _ in range(3):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate = 8000
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.mark.parametrize("kind, reason", [
    ("text", "not a readable video"),
    ("empty", "empty (0 bytes)"),
    ("truncated", "not a readable video"),
    ("audio-only", "no video stream"),
    ("missing", "not found"),
    ("empty-folder", "no images"),
    ("bad-image", "cannot read image"),
])
def test_unreadable_input_raises_decode_error_with_reason(tmp_path, kind, reason):
    path = tmp_path / "x.mp4"
    if kind == "text":
        path.write_text("this is not a video")
    elif kind == "empty":
        path.touch()
    elif kind == "truncated":
        data = make_video(tmp_path / "full.mp4", n=30).read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "audio-only":
        _no_frames_file(path)
    elif kind == "empty-folder":
        path = tmp_path / "frames"
        path.mkdir()
    elif kind == "bad-image":
        path = tmp_path / "frames"
        path.mkdir()
        (path / "0001.jpg").write_text("not an image")
    with pytest.raises(DecodeError) as e:
        probe(path)
        read_frames(path, [0])
    assert reason in e.value.reason
    assert str(path) in str(e.value)


def test_index_out_of_range_is_a_decode_error(tmp_path):
    path = make_video(tmp_path / "a.mp4", n=5)
    with pytest.raises(DecodeError, match="out of range"):
        read_frames(path, [5])
