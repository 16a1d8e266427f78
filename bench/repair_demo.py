"""`repair` on an imbalanced, high-LR configuration over 3 seeds (issue 4, Done when).

Data: the demo generator's 8 motion classes at 5:1 imbalance (seed 1). Configuration: the
demo's CNN-LSTM with a frozen backbone whose weights come from a run trained on clean demo
clips (seed 0: other clips; the stand-in for pretrained weights, which cannot be downloaded
here), broken on purpose with --lr 3 and --class-weighting none. `repair` diagnoses it, applies
the remedies, re-trains each configuration with 3 seeds and keeps the remedies that helped.

    python bench/repair_demo.py [--seeds 3] [--budget 60]

Writes bench/results/repair_demo.json (repair.json of the run) and repair_demo.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.demo import demo_config
from clipdoctor.doctor.repair import repair


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=60.0)
    p.add_argument("--work", type=Path, default=Path("bench/work/doctor_faults"))
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args()
    cache = args.work / "cache"
    clean, data = args.work / "clean", args.work / "imbalanced"
    for path, seed, kw in ((clean, 0, {}), (data, 1, {"imbalance": 5.0})):
        if not (path / "synthetic.json").exists():
            generate(path, clips_per_class=40, seed=seed, **kw)
    weights = args.work / "clean-run" / "checkpoints" / "best.ckpt"
    if not weights.exists():  # the same run bench/doctor_faults.py trains
        from clipdoctor.training.run import train

        train(load_source(clean), demo_config(cache), args.work / "clean-run")
    config = demo_config(cache, **{"model.freeze_backbone": True, "model.weights": str(weights),
                                   "train.lr": 3.0, "train.class_weighting": "none"})
    out = args.work / "repair"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = repair(load_source(data), config=config, out=out, seeds=args.seeds,
                    budget_s=args.budget, say=print)
    wall = time.perf_counter() - started
    d = result.to_dict()
    d["wall_s"] = round(wall, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "repair_demo.json").write_text(json.dumps(d, indent=1))

    lines = render(d, args.seeds, wall)
    (args.out / "repair_demo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def render(d: dict, seeds: int, wall: float) -> list[str]:
    """The markdown table of a repair.json: before, every remedy, each remedy next to the
    trial without it, after."""
    def cells(s: dict) -> str:
        return f"{s['balanced_acc']:.3f} ± {s['balanced_acc_std']:.3f} | {s['val_loss']}"

    lines = [f"`repair` on the demo data at 5:1 imbalance, --lr 3, --class-weighting none "
             f"(frozen backbone trained on other, clean demo clips); {seeds} seeds, "
             f"{wall:.0f} s in all. LR candidates (every remedy applied): "
             + ", ".join(f"{lr}: {s['balanced_acc']:.3f} / {s['val_loss']}"
                         for lr, s in d.get("lr_candidates", {}).items()) + ".", "",
             "| configuration | changes | answers | val balanced accuracy | val loss | kept |",
             "|---|---|---|---|---|---|",
             f"| before (as given) | | | {cells(d['before'])} | |"]
    if d.get("all"):
        lines.append(f"| every remedy | | | {cells(d['all'])} | |")
    for r in d["remedies"]:
        changes = ", ".join(f"{k}={v}" for k, v in r["changes"].items())
        without = cells(r["without"]) if r["without"] else "| "
        lines.append(f"| without *{r['name']}* | {changes} | {', '.join(r['codes'])} | {without} "
                     f"| {'yes' if r['kept'] else 'no'} |")
    lines.append(f"| **after** (kept remedies) | | | {cells(d['after'])} | |")
    change = d["change"]
    lines += ["", f"Change over {seeds} seeds: balanced accuracy {change['balanced_acc']:+.3f}, "
              f"validation loss {change['val_loss'] if change['val_loss'] is not None else 'n/a'}."]
    return lines


if __name__ == "__main__":
    main()
