"""What every benchmark shares: result rows, the results folder, timing, the machine, data.

A benchmark module `bench/<name>.py` has `measure(quick: bool) -> Result` and ends with
`cli(NAME, measure)`, so it runs alone (`python bench/<name>.py [--quick]`) or under
`bench/run.py`. Every figure it reports is a ratio of two timings taken in the same process,
one right after the other, so a machine busy with other work slows both sides alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
# `python bench/x.py` from anywhere uses this checkout's package, or the patched copy that
# bench/proposals.py names for measuring a proposed fix
PACKAGE = os.environ.get("CLIPDOCTOR_BENCH_PACKAGE", str(ROOT))
if PACKAGE not in sys.path:
    sys.path.insert(0, PACKAGE)


@dataclass
class Row:
    """One line of the README table: a figure, its target and what this run measured."""

    benchmark: str
    figure: str
    target: str  # e.g. ">= 20x"; "-" when the issue sets none (the row gives context)
    measured: str  # the ratio (or value) as shown, e.g. "23.4x"
    met: bool | None  # None: no target
    why: str = ""  # how it was measured; when missed, by how much and why


@dataclass
class Result:
    """What one benchmark writes to bench/results/<name>.json."""

    name: str
    rows: list[Row] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # raw timings and counts behind the rows
    profile: list[dict] = field(default_factory=list)  # top functions of a profiled part
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    quick: bool = False

    def add(self, figure: str, target: str, measured: str, met: bool | None, why: str = "") -> None:
        self.rows.append(Row(self.name, figure, target, measured, met, why))


def ratio_row(result: Result, figure: str, ratio: float, target: float | None, why: str,
              *, missed_because: str = "") -> None:
    """Add a 'N.Nx' row against a '>= target x' goal; a miss says by how much and why."""
    met = None if target is None else ratio >= target
    text = why
    if met is False:
        text = (f"missed by {1 - ratio / target:.1%} ({ratio:.2f}x of {target:g}x). "
                f"{missed_because} {why}")
    result.add(figure, "-" if target is None else f">= {target:g}x", f"{ratio:.2f}x", met,
               text.strip())


def write_result(result: Result) -> Path:
    from clipdoctor.io import atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result.name}.json"
    atomic_write_text(path, json.dumps(asdict(result), indent=1, default=str))
    path.chmod(0o644)
    return path


def load_results() -> dict[str, dict]:
    out = {}
    for path in sorted(RESULTS.glob("*.json")):
        out[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    return out


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Shortest of `repeat` timed calls, in seconds: the least disturbed by other work."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def interleaved(fns: dict[str, Callable[[], object]], repeat: int = 3) -> dict[str, float]:
    """Best time of each function, timed in turns (a, b, a, b, ...) so that load spikes on
    the shared machine hit every side rather than one of them."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A private temporary folder for data and caches, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"clipdoctor-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def setup_threads() -> int:
    """All cores for torch (the default on 2 cores anyway), one thread per BLAS call elsewhere."""
    import torch

    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def machine() -> dict:
    """CPU model, cores, RAM and the versions that matter for these numbers."""
    import av
    import lightning
    import numpy
    import timm
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gib = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "timm": timm.__version__, "lightning": lightning.__version__,
                "av": av.__version__, "numpy": numpy.__version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    with contextlib.suppress(ImportError):
        import sklearn

        versions["scikit-learn"] = sklearn.__version__
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib,
            "torch_threads": torch.get_num_threads(), "os": platform.platform(),
            "versions": versions}


def demo_data(root: Path, **kw) -> Path:
    """The demo data (`clipdoctor synth` defaults: 8 classes x 40 clips, 16 frames, 64 px)."""
    from clipdoctor.data.synthetic import generate

    return generate(root, **kw).root


def cli(name: str, measure: Callable[[bool], Result]) -> None:
    """`python bench/<name>.py [--quick]`: measure, write bench/results/<name>.json, print rows."""
    p = argparse.ArgumentParser(description=f"clipdoctor benchmark: {name}")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for development")
    args = p.parse_args()
    setup_threads()
    started = time.perf_counter()
    result = measure(args.quick)
    result.wall_s = round(time.perf_counter() - started, 1)
    result.quick = args.quick
    path = write_result(result)
    for row in result.rows:
        mark = {True: "met", False: "MISSED", None: "-"}[row.met]
        print(f"{row.figure}: {row.measured} (target {row.target}) {mark}")
    print(f"wrote {path.relative_to(ROOT)} in {result.wall_s:.0f} s")
