"""Motion table (issue 7): per-frame pooling x motion input x temporal head on the demo data.

Every row trains the demo configuration (clipdoctor.demo.DEMO_OVERRIDES: timm's test_resnet
end to end from random weights, 8 frames at 64 px) on the same demo data with the same seed and
the same epoch budget; only model.pool, model.rgb_diff, model.feature_diff and model.head change.
The demo classes are 4 time-reversed pairs, so only motion direction separates the two classes
of a pair. Each trained model is scored on its own test split and on a fresh held-out set (the
same generator, another seed: more clips, so a row's accuracy is less noisy).

    python bench/motion_table.py [--epochs 12] [--seeds 0] [--clips-per-class 40] [--rows all]

Writes bench/results/motion_table.json (after every row, so a cut run keeps what it measured)
and bench/results/motion_table.md. Wall times are those of the whole `train` call (decoding
into the warm frame cache, training, evaluating val and test) on whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clipdoctor.data.datamodule import ClipDataModule
from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import PAIRS, generate
from clipdoctor.demo import DEMO_OVERRIDES, demo_config
from clipdoctor.io import atomic_write_text
from clipdoctor.training.evaluate import clip_scores
from clipdoctor.training.run import train

RESULTS = Path(__file__).parent / "results"
TRANSLATION = ("move_left", "move_right", "move_up", "move_down")  # what global pooling loses

# (pool, rgb_diff, feature_diff, head): the 3 x 2 x 2 grid, then feature differences
MAIN_ROWS = [(pool, diff, False, head) for pool in ("gap", "grid", "attention")
             for diff in ("off", "shared") for head in ("bilstm", "meanpool")]
FEATDIFF_ROWS = [(pool, "off", True, head) for pool in ("gap", "grid") for head in ("bilstm", "meanpool")]


def _versions() -> dict:
    import lightning
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "lightning": lightning.__version__, "machine": platform.machine(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "system": f"{platform.system()} {platform.release()}"}


def direction_accuracy(probs: torch.Tensor, labels: torch.Tensor, classes: list[str],
                       only: tuple[str, ...] | None = None) -> float | None:
    """Share of clips whose probability for their own class beats that of its time-reversed
    pair mate: how often the prediction lands on the right member of the true pair, whatever
    the model thinks of the other pairs. `only` restricts to clips of those classes."""
    mate = {a: b for pair in PAIRS for a, b in (pair, pair[::-1])}
    hits = []
    for p, y in zip(probs, labels.tolist()):
        name = classes[y]
        if (only is not None and name not in only) or mate.get(name) not in classes:
            continue
        other = p[classes.index(mate[name])]
        hits.append(1.0 if p[y] > other else 0.5 if p[y] == other else 0.0)  # a tie is a coin flip
    return sum(hits) / len(hits) if hits else None


def _score(run, heldout) -> dict:
    """Balanced accuracy, loss and direction accuracy of a trained run on the held-out set."""
    from clipdoctor.training.evaluate import metrics_from_scores

    cfg = run.config
    dm = ClipDataModule(heldout, cfg.data, mean=run.model.info.mean, std=run.model.info.std,
                        seed=cfg.seed)
    dm.prepare()
    probs = clip_scores(run.model, dm, dm.samples)  # (N, K)
    labels = torch.tensor([s.label for s in dm.samples])
    m = metrics_from_scores(probs, labels, run.classes)
    return {"clips": m["clips"], "balanced_acc": m["balanced_acc"], "loss": m["loss"],
            "direction_acc": direction_accuracy(probs, labels, run.classes),
            "translation_direction_acc": direction_accuracy(probs, labels, run.classes, TRANSLATION)}


def run_row(index, heldout, row: tuple, seed: int, epochs: int, work: Path) -> dict:
    pool, diff, featdiff, head = row
    name = f"{pool}-{diff}-{'fd' if featdiff else 'nofd'}-{head}-s{seed}"
    config = demo_config(work / "cache", seed=seed, **{
        "model.pool": pool, "model.rgb_diff": diff, "model.feature_diff": featdiff,
        "model.head": head, "train.epochs": epochs, "train.patience": epochs,
        # a CPU measurement everywhere (deterministic, full precision), also on a GPU machine
        "train.accelerator": "cpu", "train.precision": "32"})
    started = time.perf_counter()
    run = train(index, config, work / "runs" / name)
    wall = time.perf_counter() - started
    held = _score(run, heldout)
    return {"pool": pool, "rgb_diff": diff, "feature_diff": featdiff, "head": head, "seed": seed,
            "epochs": epochs, "wall_s": round(wall, 1),
            "val_loss": run.metrics["val"]["loss"], "val_balanced_acc": run.metrics["val"]["balanced_acc"],
            "test_balanced_acc": run.metrics["test"]["balanced_acc"], "test_clips": run.metrics["test"]["clips"],
            "heldout": held,
            "parameters": sum(p.numel() for p in run.model.parameters())}


def _share(rows: list[tuple], n: int) -> list[list[tuple]]:
    """Rows dealt to n processes of about equal work (an RGB-difference row runs the backbone
    twice: cost 2), each part in table order."""
    parts: list[list[tuple]] = [[] for _ in range(n)]
    load = [0] * n
    for row in sorted(rows, key=lambda r: -(2 if r[1] != "off" else 1)):
        j = load.index(min(load))
        parts[j].append(row)
        load[j] += 2 if row[1] != "off" else 1
    return [sorted(p, key=rows.index) for p in parts]


def _order(r: dict) -> tuple:
    """Rows in the order of MAIN_ROWS + FEATDIFF_ROWS, then by seed."""
    key = (r["pool"], r["rgb_diff"], r["feature_diff"], r["head"])
    rows = MAIN_ROWS + FEATDIFF_ROWS
    return (rows.index(key) if key in rows else len(rows), r["seed"])


def _mean(rows: list[dict], key) -> float | None:
    vals = [key(r) for r in rows if key(r) is not None]
    return statistics.fmean(vals) if vals else None


def _input_name(r: dict) -> str:
    parts = ["rgb"] + (["rgb diff"] if r["rgb_diff"] != "off" else []) + (
        ["feature diff"] if r["feature_diff"] else [])
    return " + ".join(parts)


def markdown(result: dict) -> str:
    """The table: one line per configuration, means over seeds."""
    s = result["setup"]
    lines = [
        f"Demo data ({s['clips_per_class']} clips per class, 8 classes in 4 time-reversed pairs), demo "
        f"model (test_resnet from random weights, end to end, {s['frames']} frames at {s['size']} px), "
        f"**{s['epochs']} epochs** (the demo trains 20; reduced to keep the table near 25 min on 2 cores), "
        f"seed(s) {', '.join(map(str, s['seeds']))}. Held-out: {s['heldout_clips']} fresh clips of the "
        f"same generator (seed {s['heldout_seed']}). Direction = the true class scores above its "
        f"time-reversed mate (chance 0.5); translation = the move left/right/up/down clips only. "
        f"Machine: {s['machine']['cpu']}, {s['machine']['cores']} cores ({s['machine']['threads']} torch threads), torch {s['machine']['torch']}, "
        f"timm {s['machine']['timm']}, lightning {s['machine']['lightning']}; wall time = one row's "
        "`train` call with other work sharing the machine (noisy: compare within a column).",
        "",
        "| pool | input | head | seeds | held-out bal. acc (min–max) | direction acc | "
        "translation dir. acc | test-split bal. acc | val loss | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in result["rows"]:
        groups.setdefault((r["pool"], r["rgb_diff"], r["feature_diff"], r["head"]), []).append(r)

    def f(v: float | None, digits: int = 3) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    for (pool, diff, fd, head), rows in groups.items():
        lines.append(
            f"| {pool} | {_input_name(rows[0])} | {head} | {len(rows)} | "
            f"{f(_mean(rows, lambda r: r['heldout']['balanced_acc']))} "
            f"({f(min(r['heldout']['balanced_acc'] for r in rows), 2)}–"
            f"{f(max(r['heldout']['balanced_acc'] for r in rows), 2)}) | "
            f"{f(_mean(rows, lambda r: r['heldout']['direction_acc']))} | "
            f"{f(_mean(rows, lambda r: r['heldout']['translation_direction_acc']))} | "
            f"{f(_mean(rows, lambda r: r['test_balanced_acc']))} | "
            f"{f(_mean(rows, lambda r: r['val_loss']))} | "
            f"{f(_mean(rows, lambda r: r['wall_s']), 0)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--clips-per-class", type=int, default=40, help="demo data size (the demo's 40)")
    p.add_argument("--heldout-per-class", type=int, default=20)
    p.add_argument("--rows", choices=("main", "all"), default="all",
                   help="main: the 12 rows of issue 7; all: also feature differences (4 rows)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    p.add_argument("--data", type=Path, help="demo data already written with this generator's seed 0")
    p.add_argument("--heldout", type=Path, help="held-out data already written with seed 1")
    p.add_argument("--part", help="I/N: run rows I, I+N, ... only (N processes side by side)")
    p.add_argument("--out-json", type=Path, help="write only this JSON file (one part)")
    p.add_argument("--merge", type=Path, nargs="+", help="combine the JSON files of parts, then stop")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        result = {"setup": {**parts[0]["setup"], "seeds": sorted({s for r in parts for s in r["setup"]["seeds"]})},
                  "rows": sorted((row for r in parts for row in r["rows"]), key=_order),
                  "total_s": max(r.get("total_s", 0) for r in parts)}
        atomic_write_text(args.out / "motion_table.json", json.dumps(result, indent=1))
        atomic_write_text(args.out / "motion_table.md", markdown(result))
        print(markdown(result))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="clipdoctor-motion-"))
    frames, size = DEMO_OVERRIDES["data.frames"], DEMO_OVERRIDES["data.size"]
    index = load_source(args.data or generate(work / "data", clips_per_class=args.clips_per_class,
                                              seed=0).root)
    heldout_seed = 1
    heldout = load_source(args.heldout or generate(work / "heldout", clips_per_class=args.heldout_per_class,
                                                   seed=heldout_seed).root)
    assert heldout.classes == index.classes, (heldout.classes, index.classes)
    rows = MAIN_ROWS + (FEATDIFF_ROWS if args.rows == "all" else [])
    if args.part:
        i, n = map(int, args.part.split("/"))
        rows = _share(rows, n)[i]
    result = {"setup": {"clips_per_class": args.clips_per_class, "frames": frames, "size": size,
                        "epochs": args.epochs, "seeds": args.seeds, "heldout_seed": heldout_seed,
                        "heldout_clips": len(heldout.samples), "machine": _versions(),
                        "overrides": {k: str(v) for k, v in DEMO_OVERRIDES.items()}},
              "rows": []}
    started = time.perf_counter()
    for seed in args.seeds:
        for row in rows:
            r = run_row(index, heldout, row, seed, args.epochs, work)
            result["rows"].append(r)
            print(f"{time.perf_counter() - started:7.0f} s  {row} seed {seed}: held-out "
                  f"{r['heldout']['balanced_acc']:.3f}, direction {r['heldout']['direction_acc']:.3f}, "
                  f"translation {r['heldout']['translation_direction_acc']:.3f}, {r['wall_s']:.0f} s",
                  flush=True)
            result["total_s"] = round(time.perf_counter() - started, 1)
            if args.out_json:
                atomic_write_text(args.out_json, json.dumps(result, indent=1))
                continue
            atomic_write_text(args.out / "motion_table.json", json.dumps(result, indent=1))
            atomic_write_text(args.out / "motion_table.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
