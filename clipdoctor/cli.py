"""The `clipdoctor` command: parses arguments, calls the public API, prints.

Exit codes: 0 success; 1 diagnose found something at or above --fail-on; 2 bad input or
usage (one clear line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from clipdoctor.errors import ClipdoctorError

EXIT_BAD_INPUT = 2


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder, CSV manifest or .npz file (see README: layouts)")
    p.add_argument("--format", help="force a layout: folder, ucf101, hmdb51, kinetics, ssv2, csv, npz")
    p.add_argument("--fold", type=int, default=1, help="official split number (UCF101, HMDB51)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of splits made when none are given")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    p.add_argument("--cache-dir", type=Path, help="frame cache folder (default ~/.cache/clipdoctor)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")


def _cmd_info(args: argparse.Namespace) -> int:
    from clipdoctor.data.cache import FrameCache
    from clipdoctor.data.sources import load_source
    from clipdoctor.data.summary import summarize
    from clipdoctor.errors import DataError
    from clipdoctor.report.terminal import print_info, progress_bar

    index = load_source(args.data, args.format, fold=args.fold, seed=args.split_seed,
                        strict=args.strict)
    cache = None if args.no_cache else FrameCache(args.cache_dir)
    with progress_bar("probing clips") as progress:
        summary = summarize(index, cache, progress=progress)
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
    Console().print(f"wrote the synthetic dataset to [bold]{root}[/]")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    console = Console()
    data = args.out / "data"
    console.rule("clipdoctor demo: 1. data")
    root = _generate(data, args)
    console.print(f"wrote {root} (time-reversed motion pairs: only frame order tells them apart)")
    info = argparse.Namespace(data=str(root), format=None, fold=1, split_seed=0, strict=False,
                              cache_dir=args.cache_dir, no_cache=False, json=False)
    return _cmd_info(info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipdoctor", description=__doc__.splitlines()[0])
    from clipdoctor import __version__

    parser.add_argument("--version", action="version", version=f"clipdoctor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="what a dataset holds, and which files cannot be read")
    _add_data_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("synth", help="write the synthetic motion dataset (real .mp4 files)")
    p.add_argument("out", type=Path, help="folder to write (folder-per-class layout)")
    _synth_options(p)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("demo", help="make the demo data and run the main job on it")
    p.add_argument("--out", type=Path, default=Path("demo"), help="where to write (default ./demo)")
    p.add_argument("--cache-dir", type=Path, help="frame cache folder")
    _synth_options(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ClipdoctorError as e:
        print(f"clipdoctor: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("clipdoctor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
