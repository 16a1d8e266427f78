"""Run every benchmark, write bench/results/<name>.json and regenerate bench/README.md.

    python bench/run.py                      # everything (under 30 minutes on 2 cores)
    python bench/run.py --only decoding      # one part (repeatable); the README keeps the rest
    python bench/run.py --quick              # smaller sizes, for development
    python bench/run.py --readme             # only rebuild the README from bench/results/

Each part runs in its own process with a time limit, so one that hangs or crashes is reported
in the table instead of stopping the others, and memory figures are not polluted by earlier
parts. Parts run one after another: they would otherwise compete for the two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import BENCH, ROOT, Result, machine, setup_threads, write_result

# (name, time limit in seconds): the limits add up to under 30 minutes
PARTS: list[tuple[str, int]] = [
    ("decoding", 110),
    ("epoch_cost", 360),
    ("time_to_accuracy", 540),
    ("inference", 190),
    ("memory", 190),
    ("diagnosis", 300),
    ("proposals", 110),
]


def run_part(name: str, limit: int, quick: bool) -> dict:
    cmd = [sys.executable, str(BENCH / f"{name}.py")] + (["--quick"] if quick else [])
    started = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=env)
        ok, tail = proc.returncode == 0, (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    except subprocess.TimeoutExpired:
        ok, tail = False, [f"stopped after its {limit} s limit"]
    wall = time.perf_counter() - started
    if not ok:  # the table says so instead of silently keeping an older result
        failed = Result(name, wall_s=round(wall, 1), quick=quick)
        failed.add("(whole part)", "runs", "failed", False, " | ".join(tail)[-400:])
        write_result(failed)
    print(f"{name}: {'ok' if ok else 'FAILED'} in {wall:.0f} s", flush=True)
    return {"name": name, "ok": ok, "wall_s": round(wall, 1), "limit_s": limit}


def main() -> None:
    p = argparse.ArgumentParser(description="clipdoctor benchmarks (bench/README.md)")
    p.add_argument("--only", action="append", choices=[n for n, _ in PARTS],
                   help="run only this part (repeatable)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for development")
    p.add_argument("--readme", action="store_true", help="only rebuild bench/README.md")
    args = p.parse_args()
    from readme import write_readme

    if not args.readme:
        setup_threads()
        load_at_start = os.getloadavg()
        started = time.perf_counter()
        parts = [run_part(n, limit, args.quick) for n, limit in PARTS
                 if not args.only or n in args.only]
        run = {"machine": machine(), "parts": parts, "quick": args.quick, "only": args.only,
               "wall_s": round(time.perf_counter() - started, 1),
               "date": time.strftime("%Y-%m-%d %H:%M %Z"),
               "load_avg_at_start": load_at_start}
        record = BENCH / "results" / "run.json"
        if args.only and record.exists():  # keep the other parts' record, note the re-run
            previous = json.loads(record.read_text(encoding="utf-8"))
            rerun = {p["name"]: {**p, "rerun": run["date"]} for p in parts}
            previous["parts"] = [rerun.pop(p["name"], p) for p in previous.get("parts", [])]
            previous["parts"] += list(rerun.values())
            run = previous
        from clipdoctor.io import atomic_write_text

        atomic_write_text(record, json.dumps(run, indent=1))
        print(f"all parts in {run['wall_s']:.0f} s")
    path = write_readme()
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
