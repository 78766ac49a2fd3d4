"""``livertumor phantom``: a synthetic abdominal CT phantom (DICOM series, truth labelmap, JSON)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from LiverTumorSegLib.io.atomic import check_output_folder
from LiverTumorSegLib.synthetic.phantom import PHANTOM_OUTPUTS, make_phantom, phantom_summary, write_phantom


def _run_cli(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        phantom = make_phantom(
            args.seed,
            size_xy=args.size,
            spacing_xy_mm=args.spacing_mm,
            slice_thickness_mm=args.slice_thickness_mm,
            n_slices=args.slices,
            n_tumors=args.tumors,
            max_tumors=args.max_tumors,
        )
    except ValueError as error:
        print(f"livertumor phantom: {error}", file=sys.stderr)
        return 2
    try:
        _check_out(args.out, args.overwrite)
    except ValueError as error:
        print(f"livertumor phantom: error: {error}", file=sys.stderr)
        return 2
    paths = write_phantom(phantom, args.out)
    summary = {
        "out_dir": str(paths["dir"].resolve()),
        "dicom_dir": str(paths["dicom"].resolve()),
        "truth": str(paths["truth"].resolve()),
        "json": str(paths["json"].resolve()),
        **phantom_summary(phantom),
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(summary))
    return 0


def _check_out(out_dir: Path, overwrite: bool) -> None:
    """``--out`` can be written and holds no earlier phantom (unless ``overwrite``)."""
    check_output_folder(out_dir)
    earlier = [str(path.relative_to(out_dir)) for pattern in PHANTOM_OUTPUTS for path in sorted(out_dir.glob(pattern))]
    if earlier and not overwrite:
        shown = ", ".join(earlier[:3]) + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else "")
        raise ValueError(f"--out {out_dir} already holds a phantom ({shown}); choose another folder or pass "
                         "--overwrite to replace it")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write a synthetic abdominal CT phantom (DICOM series + truth labelmap + JSON)",
        description="Write a synthetic portal-venous abdominal CT (DICOM), its truth labels (0 background, "
        "1 liver, 2 tumor; truth.nrrd) and phantom.json; print one JSON summary line.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a phantom already in --out")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    parser.add_argument(
        "--size", type=int, default=512, help="in-plane matrix (default 512); the field of view stays"
    )
    parser.add_argument(
        "--spacing-mm", type=float, help="in-plane pixel size (default: drawn, 360-460 mm field of view)"
    )
    parser.add_argument(
        "--slice-thickness-mm", type=float, help="slice spacing (default: drawn among 2.5, 3, 4, 5)"
    )
    parser.add_argument("--slices", type=int, help="number of slices (default: the liver plus margins)")
    parser.add_argument("--tumors", type=int, help="number of tumors (default: drawn in 0..--max-tumors)")
    parser.add_argument(
        "--max-tumors", type=int, default=5, help="upper bound of the drawn tumor count (default 5)"
    )
    parser.set_defaults(func=_run_cli)
