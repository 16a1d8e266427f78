"""Memory: training on a dataset whose decoded frames exceed a memory cap set for the run.

The training runs in a child process under `RLIMIT_DATA` (the kernel refuses heap and
anonymous memory beyond it; mapped files do not count). `RLIMIT_AS` / `ulimit -v` cannot be
used: torch's CUDA build maps several GB of address space at import, and even RLIMIT_DATA
needs about 1.2 GiB for the libraries' writable segments, so the cap is 1.5 GiB and the data
is made larger than that: 256 demo clips of 32 frames cached at 320 x 320 px decode to
about 2.4 GB. The run must stream from the memory-mapped frame cache and finish; the parent
samples the child's resident memory (anonymous vs file-backed) from /proc every 0.2 s and
takes its peak RSS from `wait4`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import ROOT, Result, cli, demo_data, workdir

NAME = "memory"
CAP_MIB = 1536
FRAMES, CACHE_PX = 32, 320


def _child(data: str, cache: str, out: str, cap_mib: int) -> None:
    """Runs in the capped process: default training, frozen backbone, two epochs."""
    resource.setrlimit(resource.RLIMIT_DATA, (cap_mib << 20, cap_mib << 20))
    sys.path.insert(0, str(ROOT))
    from clipdoctor.config import RunConfig, with_overrides
    from clipdoctor.data.sources import load_source
    from clipdoctor.training.run import train

    cfg = with_overrides(RunConfig(), {
        "model.pretrained": False, "data.size": 64, "data.frame_size": CACHE_PX,
        "data.cache_frames": FRAMES, "data.cache_dir": cache, "train.epochs": 2})
    run = train(load_source(data), cfg, out)
    print(json.dumps({"val_balanced_acc": run.metrics["val"]["balanced_acc"]}))


def _sample(pid: int, peaks: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                peaks[key] = max(peaks.get(key, 0), int(value.split()[0]) // 1024)  # MiB
        stop.wait(0.2)


def measure(quick: bool) -> Result:
    result = Result(NAME)
    with workdir(NAME) as root:
        data = demo_data(root / "demo", clips_per_class=10 if quick else 32, frames=FRAMES)
        clips = sum(1 for _ in data.rglob("*.mp4"))
        decoded_mib = clips * FRAMES * CACHE_PX * CACHE_PX * 3 / 2**20
        cmd = [sys.executable, __file__, "--child", str(data), str(root / "cache"),
               str(root / "run"), str(CAP_MIB)]
        started = time.perf_counter()
        logs = [open(root / "child.out", "w"), open(root / "child.err", "w")]  # files: no pipe to fill
        proc = subprocess.Popen(cmd, stdout=logs[0], stderr=logs[1],
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        peaks: dict = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(proc.pid, peaks, stop), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        stop.set()
        for f in logs:
            f.close()
        out, err = (root / "child.out").read_text(), (root / "child.err").read_text()
        proc.returncode = os.waitstatus_to_exitcode(status)
        ok = proc.returncode == 0
        maxrss_mib = usage.ru_maxrss / 1024
        cache_mib = sum(p.stat().st_size for p in (root / "cache").rglob("*.npy")) / 2**20
        result.details = {"clips": clips, "frames_cached": FRAMES, "cache_px": CACHE_PX,
                          "decoded_dataset_mib": round(decoded_mib),
                          "cache_on_disk_mib": round(cache_mib),
                          "rlimit_data_mib": CAP_MIB, "exit_code": proc.returncode,
                          "wall_s": round(wall, 1), "peak_rss_mib": round(maxrss_mib),
                          "peak_sampled_mib": peaks, "child_stdout": out.strip()[-300:],
                          "child_stderr_tail": "" if ok else err.strip()[-600:]}
        met = ok and decoded_mib > CAP_MIB
        anon = peaks.get("RssAnon")
        result.add("training under a memory cap smaller than the decoded data", "finishes",
                   "finished" if ok else f"failed (exit {proc.returncode})", met,
                   f"RLIMIT_DATA {CAP_MIB} MiB, decoded frames {decoded_mib:.0f} MiB "
                   f"({clips} clips x {FRAMES} x {CACHE_PX}^2 x 3), {wall:.0f} s"
                   + ("" if ok else f": {err.strip().splitlines()[-1] if err.strip() else ''}"))
        result.add("peak RSS / decoded dataset size", "< 1x",
                   f"{maxrss_mib / decoded_mib:.2f}x", maxrss_mib < decoded_mib,
                   f"peak RSS {maxrss_mib:.0f} MiB (wait4), of which anonymous at most "
                   f"{anon} MiB and file-backed (libraries + mapped cache pages) at most "
                   f"{peaks.get('RssFile')} MiB (sampled); the rest stays on disk")
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5], int(sys.argv[5]))
    else:
        cli(NAME, measure)
