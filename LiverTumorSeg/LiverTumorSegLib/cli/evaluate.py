"""``livertumor evaluate``: DSC, HD95, ASSD, precision and recall of predicted labelmaps against the truth."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from LiverTumorSegLib.io.atomic import OutputExistsError, check_output_folder
from LiverTumorSegLib.training.evaluation import REPORT_FILES, evaluate_folders, write_reports


def _run_cli(args: argparse.Namespace) -> int:
    check_output_folder(args.out, inputs=[args.predicted, args.truth])
    existing = [name for name in REPORT_FILES if (args.out / name).exists()]
    if existing and not args.overwrite:
        raise OutputExistsError(f"--out {args.out} already holds {', '.join(existing)}; choose another folder or "
                                "pass --overwrite to replace them")
    try:
        metrics, summary = evaluate_folders(args.predicted, args.truth)
    except ValueError as error:  # a labelmap on another grid than its truth
        print(f"livertumor evaluate: error: {error}", file=sys.stderr)
        return 2
    paths = write_reports(metrics, summary, args.out, overwrite=args.overwrite)
    print(json.dumps({"summary": summary, "files": {k: str(v) for k, v in paths.items()}}, default=float))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="DSC, HD95, ASSD, precision, recall of predicted labelmaps",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predicted", required=True, type=Path, help="folder of predicted 0/1/2 labelmaps")
    parser.add_argument("--truth", required=True, type=Path, help="folder of truth labelmaps (same file names)")
    parser.add_argument("--out", required=True, type=Path, help="folder for per_case.csv, summary.json/.md")
    parser.add_argument("--overwrite", action="store_true", help="replace reports already in --out")
    parser.set_defaults(func=_run_cli)
