"""``livertumor flr``: future liver remnant of a labelmap for a resection plane and/or tumor margins."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

from LiverTumorSegLib.cli.common import read_image
from LiverTumorSegLib.core.flr import MIN_SFLR, FLRCalculator, ResectionResult, bsa_and_telv
from LiverTumorSegLib.core.resection import Plane, ResectionWarning
from LiverTumorSegLib.io.atomic import check_output_file, write_image


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flr",
        help="future liver remnant of a planned resection (volumes, FLR ratio, sFLR, verdict)",
        description="Compute resected and remnant liver from a 0/1/2 labelmap (1 parenchyma, 2 tumor) and "
        "print one JSON object with the FLR figures. Resection modes combine as a union; none given -> "
        "nothing resected; given but removing no liver (a plane beside the liver) -> verdict 'not assessed' and "
        "a warning. Remnant pieces are connected by faces (6-connectivity).",
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
    parser.add_argument("--height-cm", type=float,
                        help="patient height, 100-250 cm (with --weight-kg: BSA, TELV, sFLR)")
    parser.add_argument("--weight-kg", type=float, help="patient weight, 20-300 kg (with --height-cm)")
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
    if args.out_labels is not None:
        check_output_file(args.out_labels, inputs=[args.labels, args.resection], overwrite=args.overwrite,
                          what="--out-labels")
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
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResectionWarning)
            result = _cli_result(args)
        if args.out_labels is not None:
            write_image(result.combined_labelmap(), args.out_labels, overwrite=args.overwrite)
    except (ValueError, OSError) as error:
        print(f"livertumor flr: error: {error}", file=sys.stderr)
        return 2
    notes = [str(w.message) for w in caught if issubclass(w.category, ResectionWarning)]
    for note in notes:
        print(f"livertumor flr: warning: {note}", file=sys.stderr)
    output = result.figures.to_dict()
    if args.out_labels is not None:
        output["out_labels"] = str(args.out_labels)
    output["warnings"] = notes
    print(json.dumps(output))
    return 0
