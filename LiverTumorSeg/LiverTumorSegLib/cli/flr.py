"""``livertumor flr``: future liver remnant of a labelmap for a resection plane and/or tumor margins."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import SimpleITK as sitk

from LiverTumorSegLib.cli.common import read_image
from LiverTumorSegLib.core.flr import MIN_SFLR, FLRCalculator, ResectionResult, bsa_and_telv
from LiverTumorSegLib.core.resection import Plane


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flr",
        help="future liver remnant of a planned resection (volumes, FLR ratio, sFLR, verdict)",
        description="Compute resected and remnant liver from a 0/1/2 labelmap (1 parenchyma, 2 tumor) and "
        "print one JSON object with the FLR figures. Resection modes combine as a union; none given -> "
        "nothing resected. Remnant pieces are connected by faces (6-connectivity).",
    )
    parser.add_argument(
        "--labels", required=True, type=Path, help="labelmap: 0 outside, 1 parenchyma, 2 tumor"
    )
    parser.add_argument("--resection", type=Path, help="painted resection mask on the labelmap's grid")
    parser.add_argument(
        "--plane",
        action="append",
        default=[],
        metavar="X,Y,Z,NX,NY,NZ",
        help="resection plane: point and normal in the labelmap's physical LPS coordinates (mm); the side "
        "the normal points to is resected (repeatable, union); write --plane=-10,... when X is negative",
    )
    parser.add_argument("--margin-mm", type=float, help="resect parenchyma within this distance of any tumor")
    parser.add_argument(
        "--drop-disconnected",
        action="store_true",
        help="count remnant pieces cut off the main one as resected",
    )
    parser.add_argument("--height-cm", type=float, help="patient height (with --weight-kg: BSA, TELV, sFLR)")
    parser.add_argument("--weight-kg", type=float, help="patient weight (with --height-cm)")
    parser.add_argument("--condition", choices=sorted(MIN_SFLR), default="normal", help="liver condition")
    parser.add_argument("--out-labels", type=Path, help="write 0 outside/1 remnant/2 resected/3 tumor here")
    parser.add_argument("--overwrite", action="store_true", help="allow --out-labels to replace a file")
    parser.set_defaults(func=_run_cli)


def _cli_result(args: argparse.Namespace) -> ResectionResult:
    planes = []
    for text in args.plane:
        try:
            planes.append(Plane.parse(text))
        except ValueError as error:
            raise ValueError(f"--plane: {error}") from error
    if (args.height_cm is None) != (args.weight_kg is None):
        raise ValueError("--height-cm and --weight-kg must be given together")
    try:
        bsa_and_telv(args.height_cm, args.weight_kg)
    except ValueError as error:
        raise ValueError(f"--height-cm/--weight-kg: {error}") from error
    if args.margin_mm is not None and not (math.isfinite(args.margin_mm) and args.margin_mm >= 0):
        raise ValueError(f"--margin-mm must be >= 0, got {args.margin_mm}")
    if args.out_labels is not None and args.out_labels.exists() and not args.overwrite:
        raise ValueError(f"--out-labels {args.out_labels} exists; pass --overwrite to replace it")
    labels = read_image(args.labels, "--labels")
    try:
        calculator = FLRCalculator.from_labelmap(labels)
    except ValueError as error:
        raise ValueError(f"--labels {args.labels}: {error}") from error
    mask = read_image(args.resection, "--resection") if args.resection else None
    try:
        return calculator.compute(
            resection_mask=mask,
            planes=planes,
            margin_mm=args.margin_mm,
            drop_disconnected=args.drop_disconnected,
            height_cm=args.height_cm,
            weight_kg=args.weight_kg,
            condition=args.condition,
        )
    except ValueError as error:  # the only input left to check here is the resection mask's grid
        raise ValueError(f"--resection {args.resection}: {error}") from error


def _run_cli(args: argparse.Namespace) -> int:
    try:
        result = _cli_result(args)
        if args.out_labels is not None:
            try:
                sitk.WriteImage(result.combined_labelmap(), str(args.out_labels), useCompression=True)
            except RuntimeError as error:
                reason = str(error).strip().splitlines()[-1]
                raise ValueError(f"--out-labels {args.out_labels}: cannot write: {reason}") from error
    except (ValueError, OSError) as error:
        print(f"livertumor flr: error: {error}", file=sys.stderr)
        return 2
    output = result.figures.to_dict()
    if args.out_labels is not None:
        output["out_labels"] = str(args.out_labels)
    print(json.dumps(output))
    return 0
