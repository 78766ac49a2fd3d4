"""``tnmstaging rules``: the AJCC 8th-edition stage of given lesion diameters and reader findings."""

from __future__ import annotations

import argparse
import json
import sys

from TNMStagingLib.core.ajcc import parse_diameters_mm, stage


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tnmstaging rules``: print the AJCC result of the given lesions and findings as one JSON object."""
    parser = subparsers.add_parser(
        "rules",
        help="AJCC 8th-edition T, N, M and stage group from lesion diameters and the reader's findings",
        description="Apply the AJCC 8th-edition rules (HCC, or colorectal liver metastases) and print one JSON "
        "object with keys T, N, M, stage, explanation. Vascular invasion, N and M are reader-confirmed inputs.",
    )
    parser.add_argument(
        "--diameters-mm",
        required=True,
        metavar="D1,D2,...",
        help='longest diameter of each lesion in mm, comma separated; "" means no lesion',
    )
    parser.add_argument(
        "--vascular-invasion",
        default="none",
        metavar="{none,suspected,major}",
        help="none; suspected (microscopic/segmental, counted as present, not major); major (portal/hepatic "
        "vein branch: T4)",
    )
    parser.add_argument(
        "--adjacent-organ-invasion",
        action="store_true",
        help="direct invasion of an adjacent organ other than the gallbladder (T4)",
    )
    parser.add_argument(
        "--perforation", action="store_true", help="perforation of the visceral peritoneum (T4)"
    )
    parser.add_argument("--n", metavar="N0|N1", help="regional lymph nodes (default N0; crlm: NX, N0-N2b)")
    parser.add_argument(
        "--m", default="M0", metavar="M0|M1", help="distant metastasis (crlm: beyond the liver)"
    )
    parser.add_argument("--type", default="hcc", metavar="{hcc,crlm}", help="tumour type (default hcc)")
    parser.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    try:
        diameters = parse_diameters_mm(args.diameters_mm)
        result = stage(
            diameters,
            vascular_invasion=args.vascular_invasion,
            adjacent_organ_invasion=args.adjacent_organ_invasion,
            perforation=args.perforation,
            n=args.n,
            m=args.m,
            tumor_type=args.type,
        )
    except ValueError as error:
        print(f"tnmstaging rules: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0
