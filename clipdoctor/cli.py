"""The `clipdoctor` command: parses arguments, calls the public API, prints.

Exit codes: 0 success; 1 diagnose found something at or above --fail-on; 2 bad input or
usage (one clear line on stderr).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import warnings
import types
import typing
from pathlib import Path

from rich.console import Console

from clipdoctor.config import RunConfig, config_fields, load_config, with_overrides
from clipdoctor.errors import ClipdoctorError

EXIT_BAD_INPUT = 2


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder, CSV manifest or .npz file (see README: layouts)")
    p.add_argument("--format", help="force a layout: folder, ucf101, hmdb51, kinetics, ssv2, csv, npz")
    p.add_argument("--fold", type=int, default=1, help="official split number (UCF101, HMDB51)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of splits made when none are given")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="let manifest / split-list paths point outside DATA ('..', absolute "
                        "paths, symbolic links out)")
    p.add_argument("--cache-dir", type=Path, help="frame cache folder (default ~/.cache/clipdoctor)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def _flag_kwargs(info) -> dict:
    """argparse keywords for one pydantic field (bool, Literal, tuple, optional scalars)."""
    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1:
        ann = args[0]
    if ann is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(ann) is typing.Literal:
        return {"choices": list(typing.get_args(ann))}
    if typing.get_origin(ann) is list:
        return {"nargs": "+", "type": typing.get_args(ann)[0]}
    if typing.get_origin(ann) is tuple:
        return {"nargs": 2, "type": typing.get_args(ann)[0], "metavar": ("LOW", "HIGH")}
    if ann is str and info.default is None:
        return {"type": str}
    return {"type": ann if ann in (int, float, str, Path) else str}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per run option (`train.lr` -> --lr); given flags override --config."""
    p.add_argument("--config", type=Path, help="YAML run config (e.g. RUN/config.yaml)")
    group = p.add_argument_group("run options (each overrides the config file)")
    for dotted, info in config_fields():
        flag = "--" + dotted.split(".")[-1].replace("_", "-")
        default = info.default
        shown = f"{default}" if not isinstance(default, tuple) else " ".join(map(str, default))
        kw = _flag_kwargs(info)
        if "type" in kw and "metavar" not in kw:
            kw["metavar"] = dotted.split(".")[-1].upper()
        group.add_argument(flag, dest=f"cfg:{dotted}", default=None,
                           help=f"{dotted} (default {shown})", **kw)


def _run_config(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    config = base or (load_config(args.config) if args.config else RunConfig())
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}
    return with_overrides(config, overrides) if overrides else config


def _load_data(path: str, config: RunConfig):
    from clipdoctor.data.sources import load_source

    d = config.data
    return load_source(path, d.format, fold=d.fold, seed=d.split_seed,
                       val_fraction=d.val_fraction, test_fraction=d.test_fraction, strict=d.strict,
                       allow_outside_root=d.allow_outside_root)


def _print_metrics(console: Console, title: str, m: dict) -> None:
    console.print(f"{title}: top-1 {m['top1']:.3f}  top-5 {m['top5']:.3f}  balanced accuracy "
                  f"[bold]{m['balanced_acc']:.3f}[/]  macro-F1 {m['macro_f1']:.3f}  "
                  f"loss {m['loss']:.3f}  ({m['clips']} clips)")


def _cmd_train(args: argparse.Namespace) -> int:
    from clipdoctor.report.terminal import progress_bar
    from clipdoctor.training.run import train

    config = _run_config(args)
    if args.resume and not args.config and (args.out / "config.yaml").exists():
        config = _run_config(args, load_config(args.out / "config.yaml"))
    data = _load_data(args.data, config)
    console = Console(soft_wrap=True)
    run = train(data, config, args.out, resume=args.resume,
                progress=progress_bar if console.is_terminal else None,
                on_event=lambda msg: console.print(f"[dim]{msg}[/]"))
    if not run.metrics:  # a DDP process other than rank 0: rank 0 reports
        return 0
    for split in ("val", "test"):
        if split in run.metrics:
            _print_metrics(console, split, run.metrics[split])
    console.print(f"run folder: [bold]{run.path}[/]")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from clipdoctor.io import atomic_write_text
    from clipdoctor.training.evaluate import evaluate, load_run

    config = load_run(args.run).config
    data = _load_data(args.data, config)
    m = evaluate(args.run, data, args.split)
    if args.json:
        atomic_write_text(args.json, json.dumps(m, indent=1, ensure_ascii=False))
    console = Console(soft_wrap=True)
    _print_metrics(console, m["split"], m)
    if args.confusion:
        from clipdoctor.report.plots import save_confusion_matrix

        save_confusion_matrix(m["confusion"], data.classes, args.confusion)
        console.print(f"confusion matrix: {args.confusion}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from clipdoctor.training.evaluate import predict

    results = predict(args.run, args.videos, topk=args.topk)
    if args.json:
        print(json.dumps(results, indent=1, ensure_ascii=False))
        return 0
    console = Console(soft_wrap=True)
    for r in results:
        if "error" in r:
            console.print(f"{r['path']}: [red]cannot read[/] ({r['error']})", highlight=False)
            continue
        labels = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"])
        console.print(f"{r['path']}: {labels}", highlight=False)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from clipdoctor.export import PARITY_TOL, export_onnx, export_torchscript
    from clipdoctor.training.evaluate import load_run

    loaded = load_run(args.run)
    d = loaded.config.data
    results = []
    if args.onnx:
        results.append(export_onnx(loaded.model, args.onnx, d.frames, d.size))
    if args.torchscript:
        results.append(export_torchscript(loaded.model, args.torchscript, d.frames, d.size))
    console = Console(soft_wrap=True)
    for r in results:
        state = "[green]ok[/]" if r.ok else f"[red]above {PARITY_TOL:g}[/]"
        console.print(f"{r.format}: {r.path}  max abs difference vs PyTorch {r.max_abs_diff:.2e} {state}")
    return 0 if all(r.ok for r in results) else 1


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from clipdoctor.doctor.findings import SEVERITIES
    from clipdoctor.doctor.runner import diagnose
    from clipdoctor.report.terminal import print_report

    if args.run is not None and args.config is not None:
        raise ClipdoctorError("give --config FILE or --run RUN, not both")
    if args.run is not None and not (args.run / "config.yaml").exists():
        raise ClipdoctorError(f"{args.run}: not a run folder (no config.yaml)")
    base = load_config(args.run / "config.yaml") if args.run is not None else None
    config = _run_config(args, base)
    model, optimizer = _keras_model(args)
    augment = _augment_function(args.augment) if args.augment else None
    data = _load_data(args.data, config)
    report = diagnose(data, config=config, model=model, optimizer=optimizer,
                      budget_s=args.budget, run=args.run, augment=augment)
    console = Console(soft_wrap=True)
    print_report(report, console)
    if args.json:
        report.to_json(args.json)
        console.print(f"JSON report: {args.json}", highlight=False)
    if args.html:
        report.to_html(args.html)
        console.print(f"HTML report: {args.html}", highlight=False)
    if args.fail_on:
        limit = SEVERITIES.index(args.fail_on)
        if any(SEVERITIES.index(f.severity) <= limit for f in report.findings):
            return 1
    return 0


def _keras_model(args: argparse.Namespace) -> tuple[object | None, object | None]:
    """(model, optimizer) for `--keras FILE`: the loaded model's adapter (one-line errors
    naming the file), and its compiled optimizer at `--lr` when --lr is given (a model saved
    without a compile config trains with Adam at the config's lr, --lr included); (None, None)
    without --keras."""
    if getattr(args, "keras", None) is None:
        return None, None
    from clipdoctor.interop.keras import KerasAdapter

    adapter = KerasAdapter.from_file(args.keras, safe_mode=not args.keras_unsafe)
    lr = getattr(args, "cfg:train.lr", None)
    if lr is not None and adapter.make_optimizer is not None:
        return adapter, adapter.make_optimizer.with_lr(lr)
    return adapter, None


def _augment_function(spec: str):
    """`module:function` or `path/to/file.py:function` -> that callable (your own clip
    augmentation, checked by inconsistent-augmentation); one-line error otherwise."""
    import importlib
    import importlib.util

    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ClipdoctorError(f"--augment {spec}: give module:function or file.py:function")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ClipdoctorError(f"--augment {spec}: no file {path}")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ClipdoctorError:
        raise
    except Exception as e:  # noqa: BLE001 — the user's module: its error, on one line
        raise ClipdoctorError(f"--augment {spec}: cannot import {where} "
                              f"({type(e).__name__}: {e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ClipdoctorError(f"--augment {spec}: {where} has no function {name}")
    return fn


def _add_keras_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keras", type=Path, metavar="MODEL.keras",
                   help="diagnose this Keras 3 model (saved with model.save('model.keras')) "
                   "instead of clipdoctor's own: pip install clipdoctor[keras]")
    p.add_argument("--keras-unsafe", action="store_true",
                   help="load a Keras model whose Lambda layers hold Python code (Keras' "
                   "safe_mode=False: only for files you trust)")


def _cmd_repair(args: argparse.Namespace) -> int:
    from clipdoctor.doctor.repair import repair
    from clipdoctor.report.terminal import print_repair, print_report

    config = _run_config(args)
    if args.keras is not None:
        return _advise_keras(args, config)
    data = _load_data(args.data, config)
    console = Console(soft_wrap=True)
    result = repair(data, config=config, out=args.out, seeds=args.seeds, epochs=args.trial_epochs,
                    budget_s=args.budget, say=lambda m: console.print(f"[dim]{m}[/]", highlight=False))
    print_report(result.report, console)
    print_repair(result, console)
    return 0


def _advise_keras(args: argparse.Namespace, config: RunConfig) -> int:
    """`repair --keras`: repair cannot re-train a Keras model; the diagnosis and each
    finding's advice (in Keras terms) are printed and written to OUT/advice.json."""
    from rich.text import Text

    from clipdoctor.doctor.repair import KERAS_NO_RETRAIN, advise
    from clipdoctor.report.terminal import print_report

    model, optimizer = _keras_model(args)
    data = _load_data(args.data, config)
    console = Console(soft_wrap=True)
    report, advice = advise(data, model, config=config, optimizer=optimizer, out=args.out,
                            budget_s=args.budget,
                            say=lambda m: console.print(f"[dim]{m}[/]", highlight=False))
    print_report(report, console)
    console.print(Text(KERAS_NO_RETRAIN + ".", style="bold yellow"))
    for a in advice:
        console.print(Text(f"advice ({a['code']}): {a['remedy']}"))
    console.print(f"advice: {args.out / 'advice.json'}", highlight=False)
    return 0


def _cmd_backbones(args: argparse.Namespace) -> int:
    from clipdoctor.models.backbones import list_backbones

    names = list_backbones(args.pattern, pretrained_only=args.pretrained)
    print("\n".join(names))
    return 0 if names else 1


def _cmd_info(args: argparse.Namespace) -> int:
    from clipdoctor.data.cache import FrameCache
    from clipdoctor.data.frames import FrameSource
    from clipdoctor.data.sources import load_source
    from clipdoctor.data.summary import summarize
    from clipdoctor.errors import DataError
    from clipdoctor.report.terminal import print_info, progress_bar

    index = load_source(args.data, args.format, fold=args.fold, seed=args.split_seed,
                        strict=args.strict, allow_outside_root=args.allow_outside_root)
    frames = FrameSource(None if args.no_cache else FrameCache(args.cache_dir))
    with progress_bar("probing clips") as progress:
        summary = summarize(index, frames, progress=progress)
    if args.strict and summary["skipped"]:
        first = summary["skipped"][0]
        raise DataError(f"{first['path']}: {first['reason']} ({len(summary['skipped'])} "
                        "unreadable file(s); drop --strict to skip them)")
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print_info(summary)
    return 0


def _synth_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clips-per-class", type=int, default=40)
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    p.add_argument("--imbalance", type=float, default=1.0, help="largest / smallest class count")
    p.add_argument("--label-noise", type=float, default=0.0, help="fraction of wrong labels")
    p.add_argument("--corrupt", type=float, default=0.0, help="fraction of broken files")
    p.add_argument("--seed", type=int, default=0)


def _generate(out: Path, args: argparse.Namespace) -> Path:
    from clipdoctor.data.synthetic import generate
    from clipdoctor.report.terminal import progress_bar

    if args.clips_per_class < 2:
        raise ClipdoctorError(f"--clips-per-class {args.clips_per_class}: needs at least 2")
    with progress_bar("writing demo clips") as progress:
        ds = generate(out, clips_per_class=args.clips_per_class, frames=args.frames,
                      size=args.size, imbalance=args.imbalance, label_noise=args.label_noise,
                      corrupt=args.corrupt, seed=args.seed, progress=progress)
    return Path(ds.root)


def _cmd_synth(args: argparse.Namespace) -> int:
    root = _generate(args.out, args)
    Console(soft_wrap=True).print(f"wrote the synthetic dataset to [bold]{root}[/]")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from clipdoctor.data.synthetic import generate
    from clipdoctor.demo import (BROKEN_DATA, DEMO_OVERRIDES, DEMO_SEED_SPREAD, demo_data,
                                 diagnose_demo, run_demo)
    from clipdoctor.report.terminal import print_report, progress_bar

    started = time.perf_counter()
    console = Console(soft_wrap=True)
    console.rule("clipdoctor demo: 1. data" + (" with planted faults" if args.broken else ""))
    if args.broken:
        for key, value in BROKEN_DATA.items():
            setattr(args, key, value)
    sizes = demo_data(broken=args.broken, clips_per_class=args.clips_per_class,
                      test_clips_per_class=args.test_clips_per_class)
    # generate() refuses bad sizes with one line (DataError)
    with progress_bar("writing demo clips") as progress:
        root = Path(generate(args.out / "data", frames=args.frames, size=args.size,
                             imbalance=args.imbalance, label_noise=args.label_noise,
                             corrupt=args.corrupt, seed=args.seed, progress=progress,
                             **sizes).root)
    console.print(f"wrote {root} (time-reversed motion pairs: only frame order tells them apart)")
    info = argparse.Namespace(data=str(root), format=None, fold=1, split_seed=0, strict=False,
                              allow_outside_root=False,
                              cache_dir=args.cache_dir, no_cache=False, json=False)
    _cmd_info(info)
    if not args.broken:
        console.rule("clipdoctor demo: 2. training on the CPU")
        console.print(f"backbone {DEMO_OVERRIDES['model.backbone']} from random weights, "
                      f"end to end, {DEMO_OVERRIDES['data.frames']} frames at "
                      f"{DEMO_OVERRIDES['data.size']} px", highlight=False)
        result = run_demo(root, args.out, seed=args.seed, cache_dir=args.cache_dir,
                          progress=console.is_terminal,
                          say=lambda m: console.print(f"[dim]{m}[/]"))
        console.rule("clipdoctor demo: 3. test split")
        if sizes.get("test_clips_per_class"):
            console.print(f"[dim]test split: {sizes['test_clips_per_class']} held-out clips per "
                          "class, never trained on[/]")
        for name, m in (("CNN-LSTM (grid + feature diff + bilstm)", result.metrics),
                        ("order-blind baseline (meanpool)", result.baseline_metrics),
                        ("seed recipe (gap + bilstm)", result.gap_metrics or {})):
            if "test" in m:
                _print_metrics(console, name, m["test"])
        default_data = (sizes, args.frames, args.size, args.imbalance, args.label_noise,
                        args.corrupt, args.seed) == (demo_data(), 16, 64, 1.0, 0.0, 0.0, 0)
        if default_data:  # the spread was measured on this data (README, "The demo")
            console.print(f"[dim]one training seed's figure: seeds {DEMO_SEED_SPREAD['seeds']} "
                          f"scored {DEMO_SEED_SPREAD['low']:.2f}-{DEMO_SEED_SPREAD['high']:.2f} "
                          "on this test split (README, \"The demo\")[/]")
        console.print(f"run folder: [bold]{result.run}[/]   baselines: {result.baseline_run}, "
                      f"{result.gap_run}")
    console.rule("clipdoctor demo: " + ("2. the doctor on the broken setup" if args.broken
                                        else "4. the doctor on the run's configuration"))
    report = diagnose_demo(root, args.out, broken=args.broken, seed=args.seed,
                           cache_dir=args.cache_dir, budget_s=args.budget)
    print_report(report, console)
    console.print(f"HTML report: [bold]{args.out / 'report.html'}[/]   "
                  f"wall time {time.perf_counter() - started:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipdoctor", description=__doc__.splitlines()[0])
    from clipdoctor import __version__

    parser.add_argument("--version", action="version", version=f"clipdoctor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="what a dataset holds, and which files cannot be read")
    _add_data_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train", help="train a CNN-LSTM on DATA into a run folder")
    p.add_argument("data", help="dataset folder, CSV manifest or .npz file")
    p.add_argument("--out", type=Path, default=Path("runs/run"), help="run folder (default runs/run)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/*/last.ckpt")
    _add_config_flags(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("diagnose", help="find out why the loss stays high, with evidence")
    p.add_argument("data", help="dataset folder, CSV manifest or .npz file")
    p.add_argument("--run", type=Path, help="diagnose the configuration of this run folder")
    p.add_argument("--json", type=Path, help="write the report as JSON (DESIGN §4)")
    p.add_argument("--html", type=Path, help="write a self-contained HTML report")
    p.add_argument("--budget", type=float, default=120.0,
                   help="seconds for all measurements (probes shrink to fit; default 120)")
    p.add_argument("--fail-on", choices=["error", "warning"],
                   help="exit 1 when a finding at or above this severity holds (for CI)")
    p.add_argument("--augment", metavar="MODULE:FUNCTION",
                   help="your own clip augmentation (module:function or file.py:function, a "
                   "callable on one (T, H, W, C) or (T, C, H, W) clip, numpy or torch), checked "
                   "by inconsistent-augmentation")
    _add_keras_options(p)
    _add_config_flags(p)
    p.set_defaults(func=_cmd_diagnose)

    p = sub.add_parser("repair", help="diagnose, apply the remedies, re-train briefly: before/after")
    p.add_argument("data", help="dataset folder, CSV manifest or .npz file")
    p.add_argument("--out", type=Path, default=Path("runs/repair"),
                   help="folder for the repaired config.yaml, repair.json and the trials")
    p.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    p.add_argument("--trial-epochs", type=int, default=None,
                   help="epochs of each brief re-training (default: up to 30 on cached "
                   "features, 8 end to end)")
    p.add_argument("--budget", type=float, default=120.0, help="seconds for the diagnosis")
    _add_keras_options(p)
    _add_config_flags(p)
    p.set_defaults(func=_cmd_repair)

    p = sub.add_parser("evaluate", help="metrics of a trained run on a split of DATA")
    p.add_argument("run", type=Path)
    p.add_argument("data")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", type=Path, help="write the metrics to this JSON file")
    p.add_argument("--confusion", type=Path, help="write the confusion matrix to this PNG file")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="top-k labels for video files or frame folders")
    p.add_argument("run", type=Path)
    p.add_argument("videos", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="ONNX / TorchScript export, checked against PyTorch")
    p.add_argument("run", type=Path)
    p.add_argument("--onnx", type=Path)
    p.add_argument("--torchscript", type=Path)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("backbones", help="list timm backbone names")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'resnet*'")
    p.add_argument("--pretrained", action="store_true", help="only names with pretrained weights")
    p.set_defaults(func=_cmd_backbones)

    p = sub.add_parser("synth", help="write the synthetic motion dataset (real .mp4 files)")
    p.add_argument("out", type=Path, help="folder to write (folder-per-class layout)")
    _synth_options(p)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("demo", help="make the demo data and run the main job on it")
    p.add_argument("--out", type=Path, default=Path("demo"), help="where to write (default ./demo)")
    p.add_argument("--cache-dir", type=Path, help="frame cache folder")
    p.add_argument("--broken", action="store_true",
                   help="plant faults (imbalance, label noise, corrupt files, a too-high LR, "
                        "per-frame augmentation) and show the doctor finding them")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds for the diagnosis (default 60: the demo data is small)")
    _synth_options(p)
    p.add_argument("--test-clips-per-class", type=int,
                   help="held-out test clips per class (default 80, beside 32 training and 4 "
                        "validation clips per class; 0: 40 clips per class split 80/10/10, as "
                        "with --broken)")
    # --clips-per-class: the training clips, 32 by default (40 without a test split): demo_data
    p.set_defaults(func=_cmd_demo, clips_per_class=None)
    return parser


def _quiet_libraries() -> None:
    """Lightning's start-up chatter (accelerator lines, tips) says nothing a user needs here.

    Lightning sets its loggers' levels when imported, so this imports it first."""
    import lightning.pytorch  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.func in (_cmd_train, _cmd_demo, _cmd_evaluate, _cmd_predict, _cmd_export,
                     _cmd_diagnose, _cmd_repair):
        _quiet_libraries()
    if args.func is _cmd_export and not (args.onnx or args.torchscript):
        parser.error("export needs --onnx FILE and/or --torchscript FILE")
    try:
        return args.func(args)
    except ClipdoctorError as e:
        print(f"clipdoctor: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # a full disk under a report, a cache or a run folder: one line
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"clipdoctor: error: {where}the disk is full ({e.strerror}); free space there "
              "or write elsewhere, then run again", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("clipdoctor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
