"""``livertumor dicom list DIR`` and ``livertumor dicom convert DIR --out FILE.nrrd``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from LiverTumorSegLib.io.atomic import OutputError, check_free_space, check_output_file, write_image
from LiverTumorSegLib.io.dicom_io import DicomInputError, DicomInputWarning, load_series, scan_folder


def register(subparsers) -> None:
    """``livertumor dicom list DIR`` and ``livertumor dicom convert DIR --out FILE.nrrd``."""
    parser = subparsers.add_parser("dicom", help="list DICOM series of a folder, convert a CT series to NRRD")
    commands = parser.add_subparsers(dest="dicom_command", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="print one JSON object per series found under DIR")
    listing.add_argument("folder", metavar="DIR", type=Path)
    listing.set_defaults(func=_cli_list)
    convert = commands.add_parser("convert", help="load a CT series (HU) and write it with SimpleITK")
    convert.add_argument("folder", metavar="DIR", type=Path)
    convert.add_argument(
        "--series", metavar="UID", help="Series Instance UID (default: the largest CT series)"
    )
    convert.add_argument(
        "--resample-nonuniform",
        action="store_true",
        help="resample missing/irregular slices onto a uniform grid instead of failing",
    )
    convert.add_argument("--out", metavar="FILE.nrrd", type=Path, required=True,
                         help="output image file (outside DIR; written all at once)")
    convert.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    convert.set_defaults(func=_cli_convert)


def _cli_list(args: argparse.Namespace) -> int:
    def run() -> int:
        for series in scan_folder(args.folder):
            print(json.dumps(series.to_json()))
        return 0

    return _cli_run(run)


def _cli_convert(args: argparse.Namespace) -> int:
    def run() -> int:
        if not args.folder.is_dir():  # the input's own error first, then the output's, then the work
            raise DicomInputError(f"{args.folder}: no such folder")
        check_output_file(args.out, inputs=[args.folder], overwrite=args.overwrite)
        image = load_series(args.folder, args.series, resample_nonuniform=args.resample_nonuniform)
        voxel_bytes = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
        check_free_space(args.out, voxel_bytes, "--out")  # uncompressed: the worst case
        write_image(image, args.out, overwrite=args.overwrite)
        print(args.out)
        return 0

    return _cli_run(run)


def _cli_run(action) -> int:
    """Run ``action``; warnings as one line each on stderr; a ``DicomInputError`` or ``OutputError`` -> exit code 2."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DicomInputWarning)
        try:
            code = action()
        except (DicomInputError, OutputError) as error:
            code = 2
            message = f"livertumor dicom: error: {error}"
        else:
            message = None
    for warning in caught:
        print(f"livertumor dicom: warning: {warning.message}", file=sys.stderr)
    if message:
        print(message, file=sys.stderr)
    return code
