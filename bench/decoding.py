"""Decoding: clipdoctor's clip loading vs plain PyAV, seeking in long videos, and cache reads.

Three comparisons, each timed in turns in one process (`common.interleaved`):

1. The demo clips (16 frames, 64 px): the 8 frames uniform sampling picks for evaluation,
   read by `decode.read_frames` (probe results known, as in every epoch after the first),
   vs plain PyAV decoding from the start and converting the same frames to RGB. Also the
   first-epoch cost (probe included) and the datamodule path without a cache.
2. A long video (60 s at 30 fps, 320 x 240, keyframes every 2 s and x264's default 250):
   the same 8 frames; plain PyAV decodes everything up to the last one, clipdoctor seeks.
3. Frame-cache reads (`FrameCache.take`: plain reads of the chosen frames from the .npy
   entry, what training does from epoch 1 on) vs decoding the same frames at the cached size.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from common import Result, cli, demo_data, interleaved, ratio_row, workdir

NAME = "decoding"
T = 8  # frames per clip, the default `data.frames`


def pyav_frames(path: Path, wanted: list[int]) -> np.ndarray:
    """The straightforward way: decode from the first frame, keep the wanted ones as RGB,
    stop after the last one."""
    want = set(wanted)
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in want:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return np.stack([got[i] for i in wanted])  # (T, H, W, 3)


def write_long_video(path: Path, seconds: float, fps: int = 30, keyint: int = 60,
                     size: tuple[int, int] = (240, 320)) -> Path:
    """A textured frame scrolling sideways, H.264 with a keyframe every `keyint` frames."""
    h, w = size
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (h, w * 2, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28",
                          "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0"}
        for i in range(int(seconds * fps)):
            x = (i * 3) % w
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, x:x + w]),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _eval_indices(num_frames: int) -> list[int]:
    from clipdoctor.data.sampling import uniform_segments

    return uniform_segments(num_frames, T, train=False).indices.tolist()


def _short_clips(result: Result, data: Path, quick: bool) -> None:
    from clipdoctor.config import DataConfig
    from clipdoctor.data import decode
    from clipdoctor.data.datamodule import ClipDataModule
    from clipdoctor.data.sources import load_source

    index = load_source(data)
    samples = index.samples[: 32 if quick else 64]
    infos = [decode.probe(s.path) for s in samples]
    wanted = [_eval_indices(info.frames) for info in infos]
    frames = len(samples) * T
    dm = ClipDataModule(index, DataConfig(cache=False))
    ds = dm.dataset("val", train=False, samples=samples)
    for i in range(len(ds)):  # the dataset keeps each clip's probe result after its first read
        ds[i]

    def clipdoctor_warm():
        for s, idx, info in zip(samples, wanted, infos):
            decode.read_frames(s.path, idx, info=info)

    def clipdoctor_cold():
        for s, idx in zip(samples, wanted):
            decode.read_frames(s.path, idx)

    def plain():
        for s, idx in zip(samples, wanted):
            pyav_frames(s.path, idx)

    def datamodule():
        for i in range(len(ds)):
            ds[i]

    t = interleaved({"pyav": plain, "read_frames": clipdoctor_warm,
                     "read_frames_probe": clipdoctor_cold, "datamodule": datamodule})
    fps = {k: frames / v for k, v in t.items()}
    result.details["short_clips"] = {"clips": len(samples), "frames_per_clip": infos[0].frames,
                                     "size": [infos[0].width, infos[0].height],
                                     "frames_per_s": {k: round(v) for k, v in fps.items()}}
    ratio_row(result, "demo clips: read_frames vs plain PyAV, frames/s",
              fps["read_frames"] / fps["pyav"], 0.8,
              f"{fps['read_frames']:.0f} vs {fps['pyav']:.0f} frames/s, {T} of "
              f"{infos[0].frames} frames of {len(samples)} 64 px clips, probe known",
              missed_because="A 16-frame clip is one GOP: nothing to skip, and each read "
                             "seeks once before decoding.")
    ratio_row(result, "demo clips: first read (probe + read_frames) vs plain PyAV",
              fps["read_frames_probe"] / fps["pyav"], None,
              "the first epoch also demuxes every packet once to learn the timestamps "
              f"({fps['read_frames_probe']:.0f} frames/s); later epochs reuse them")
    ratio_row(result, "demo clips: datamodule item (no cache) vs plain PyAV",
              fps["datamodule"] / fps["pyav"], None,
              f"{fps['datamodule']:.0f} frames/s: decode + resize to 128 px + crop to 112 + "
              "normalise, vs decode only")


def _long_video(result: Result, root: Path, quick: bool) -> None:
    from clipdoctor.data import decode

    seconds = 20 if quick else 60
    out = {}
    for keyint in (60, 250):
        path = write_long_video(root / f"long_k{keyint}.mp4", seconds, keyint=keyint)
        info = decode.probe(path)
        idx = _eval_indices(info.frames)
        t = interleaved({"pyav": lambda: pyav_frames(path, idx),
                         "read_frames": lambda: decode.read_frames(path, idx, info=info),
                         "probe": lambda: decode.probe(path)}, repeat=2)
        out[keyint] = {"frames": info.frames, "seconds": seconds, "keyint": keyint,
                       "time_s": {k: round(v, 4) for k, v in t.items()}}
        ratio_row(result, f"long video ({seconds} s, 30 fps, keyframe every {keyint}): "
                          "read_frames vs plain PyAV",
                  t["pyav"] / t["read_frames"], 1.0,
                  f"{T} frames of {info.frames}: {t['read_frames'] * 1e3:.0f} ms seeking vs "
                  f"{t['pyav'] * 1e3:.0f} ms decoding up to the last one; probing the file "
                  f"once costs {t['probe'] * 1e3:.0f} ms")
    result.details["long_video"] = out
    k = out[250]["time_s"]
    result.notes.append(
        f"Decoding: with keyframes 250 frames apart (x264's default) clipdoctor's seeking took "
        f"{k['read_frames'] * 1e3:.0f} ms vs {k['pyav'] * 1e3:.0f} ms for decoding straight "
        "through: `_decode_video` seeks whenever the next wanted frame is more than 48 frames "
        "ahead, even when that frame lies in the group of pictures being decoded, so the seek "
        "goes back to the same keyframe and decodes those frames again. "
        "bench/proposals/keyframe-aware-seeking.diff records keyframe indices in `probe` and "
        "seeks only when that lands past the current frame (before/after in the proposals rows).")


def _cache_vs_decode(result: Result, data: Path, root: Path, quick: bool) -> None:
    from clipdoctor.config import DataConfig
    from clipdoctor.data import decode
    from clipdoctor.data.cache import FrameCache
    from clipdoctor.data.datamodule import ClipDataModule
    from clipdoctor.data.frames import kept_indices, read_sample
    from clipdoctor.data.sources import load_source

    index = load_source(data)
    samples = index.samples[: 32 if quick else 64]
    cache = FrameCache(root / "cache", frame_size=128, max_frames=32)
    cache.fill(samples)
    infos = [decode.probe(s.path) for s in samples]
    # the same frames both ways: what the cache holds of the 8 evaluation frames, at 128 px
    picks = [_eval_indices(cache.count(s)) for s in samples]
    src_idx = [kept_indices(info.frames, cache.max_frames)[p].tolist()
               for p, info in zip(picks, infos)]

    def from_cache():
        for s, p in zip(samples, picks):
            cache.take(s, p)

    def from_video():
        for s, idx, info in zip(samples, src_idx, infos):
            read_sample(s, idx, 128, info)

    with_cache = ClipDataModule(index, DataConfig(cache_dir=root / "cache")).dataset(
        "val", train=False, samples=samples)
    no_cache = ClipDataModule(index, DataConfig(cache=False)).dataset(
        "val", train=False, samples=samples)
    for i in range(len(no_cache)):
        no_cache[i]  # probes remembered, as after the first epoch

    def items(ds):
        return lambda: [ds[i] for i in range(len(ds))]

    t = interleaved({"cache": from_cache, "decode": from_video,
                     "item_cache": items(with_cache), "item_decode": items(no_cache)})
    frames = len(samples) * T
    result.details["cache_vs_decode"] = {"clips": len(samples),
                                         "frames_per_s": {k: round(frames / v) for k, v in t.items()}}
    ratio_row(result, "frame cache (.npy entries, read as training does) vs decoding, frames/s",
              t["decode"] / t["cache"], 20,
              f"{frames / t['cache']:.0f} vs {frames / t['decode']:.0f} frames/s, the same "
              f"{T} frames per clip at 128 px")
    ratio_row(result, "dataset item with cache vs without (transform included)",
              t["item_decode"] / t["item_cache"], None,
              f"{frames / t['item_cache']:.0f} vs {frames / t['item_decode']:.0f} frames/s; the "
              "shared crop + normalise transform bounds the gain")


def measure(quick: bool) -> Result:
    result = Result(NAME)
    with workdir(NAME) as root:
        data = demo_data(root / "demo", clips_per_class=8)
        _short_clips(result, data, quick)
        _long_video(result, root, quick)
        _cache_vs_decode(result, data, root, quick)
    return result


if __name__ == "__main__":
    cli(NAME, measure)
