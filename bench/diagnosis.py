"""Diagnosis: the whole `diagnose` on 1,000 clips at 112 px, and the wall time of each probe.

1,000 demo clips (8 classes x 125, 16 frames, 112 px) are written first (not timed). Then a
child process runs `clipdoctor.doctor` with the default configuration (resnet10t, random
weights since nothing downloads) at the default budget (120 s), from an empty cache, so the
wall time includes decoding every clip once. The report records each probe's seconds.

When py-spy is installed the child runs under `py-spy record` (sampling from outside the
process, so it barely slows it down); the top functions by own time and the clipdoctor
functions by total time go into the results (`profile`) and bench/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from common import ROOT, Result, cli, demo_data, workdir

NAME = "diagnosis"
TARGET_S = 120.0


def _child(data: str, cache: str, out: str, budget: float) -> None:
    sys.path.insert(0, str(ROOT))
    from clipdoctor.config import RunConfig, with_overrides
    from clipdoctor.data.sources import load_source
    from clipdoctor.doctor.runner import diagnose

    started = time.perf_counter()
    cfg = with_overrides(RunConfig(), {"model.pretrained": False, "data.cache_dir": cache})
    report = diagnose(load_source(data), config=cfg, budget_s=budget)
    wall = time.perf_counter() - started
    probes = {name: v.get("seconds") for name, v in report.probes.items() if isinstance(v, dict)}
    Path(out).write_text(json.dumps({
        "wall_s": wall, "report_wall_s": report.wall_s, "probe_seconds": probes,
        "findings": [f"{f.severity}:{f.code}" for f in report.findings],
        "skipped": [s["name"] for s in report.skipped], "failures": report.failures}))


def top_functions(raw: Path, n: int = 12) -> list[dict]:
    """From py-spy's collapsed stacks: functions by own time, and clipdoctor's by total time."""
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        samples += k
        frames = stack.split(";")
        own[frames[-1]] += k
        for f in set(frames):
            if "clipdoctor/" in f and "bench/" not in f:
                total[f] += k
    rows = [{"kind": "own", "function": f, "share": round(c / samples, 3)}
            for f, c in own.most_common(n)]
    rows += [{"kind": "clipdoctor total", "function": f, "share": round(c / samples, 3)}
             for f, c in total.most_common(n)]
    return rows


def measure(quick: bool) -> Result:
    result = Result(NAME)
    with workdir(NAME) as root:
        per_class = 25 if quick else 125
        t0 = time.perf_counter()
        data = demo_data(root / "data", clips_per_class=per_class, size=112)
        gen_s = time.perf_counter() - t0
        out = root / "report.json"
        cmd = [sys.executable, __file__, "--child", str(data), str(root / "cache"), str(out), "120"]
        spy = shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy")
        raw = root / "profile.txt"
        if Path(spy).exists():
            cmd = [str(spy), "record", "-r", "25", "-f", "raw", "-o", str(raw), "--"] + cmd
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        outer = time.perf_counter() - started
        if proc.returncode != 0 or not out.exists():
            result.add(f"diagnose on {per_class * 8} clips at 112 px", f"<= {TARGET_S:.0f} s",
                       "failed", False, proc.stderr.strip()[-400:])
            return result
        rep = json.loads(out.read_text())
        wall = rep["wall_s"]
        probes = {k: v for k, v in sorted(rep["probe_seconds"].items(), key=lambda kv: -(kv[1] or 0))}
        slowest = ", ".join(f"{k} {v:.1f} s" for k, v in list(probes.items())[:4] if v)
        result.add(f"whole diagnose on {per_class * 8} clips at 112 px (default budget 120 s)",
                   f"<= {TARGET_S:.0f} s", f"{wall:.1f} s", wall <= TARGET_S,
                   (f"missed by {wall / TARGET_S:.2f}x. " if wall > TARGET_S else "")
                   + f"cold cache (decoding included); slowest probes: {slowest}")
        for name, seconds in probes.items():
            result.add(f"probe `{name}`", "-", f"{seconds:.2f} s" if seconds is not None else "-",
                       None, f"{seconds / wall:.0%} of the diagnosis" if seconds else "")
        result.details = {"clips": per_class * 8, "generate_s": round(gen_s, 1),
                          "wall_s": round(wall, 1), "outer_wall_s": round(outer, 1),
                          "probe_seconds": probes, "findings": rep["findings"],
                          "skipped_checks": rep["skipped"], "failures": rep["failures"],
                          "profiler": "py-spy" if raw.exists() else None}
        if raw.exists():
            result.profile = top_functions(raw)
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5], float(sys.argv[5]))
    else:
        cli(NAME, measure)
