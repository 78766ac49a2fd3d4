"""``livertumor evaluate``: DSC, HD95, ASSD, precision and recall of predicted labelmaps against the truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from LiverTumorSegLib.training.evaluation import evaluate_folders, write_reports


def _run_cli(args: argparse.Namespace) -> int:
    metrics, summary = evaluate_folders(args.predicted, args.truth)
    paths = write_reports(metrics, summary, args.out)
    print(json.dumps({"summary": summary, "files": {k: str(v) for k, v in paths.items()}}, default=float))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="DSC, HD95, ASSD, precision, recall of predicted labelmaps",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predicted", required=True, type=Path, help="folder of predicted 0/1/2 labelmaps")
    parser.add_argument("--truth", required=True, type=Path, help="folder of truth labelmaps (same file names)")
    parser.add_argument("--out", required=True, type=Path, help="folder for per_case.csv, summary.json/.md")
    parser.set_defaults(func=_run_cli)
