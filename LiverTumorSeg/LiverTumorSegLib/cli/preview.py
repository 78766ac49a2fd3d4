"""``livertumor preview``: HU-window preview PNGs of a CT with liver/tumor contours."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from LiverTumorSegLib.cli.common import read_image
from LiverTumorSegLib.core.hu_windows import get_preset, load_presets
from LiverTumorSegLib.io.preview import check_volume, default_center_mm, label_masks, write_previews


def _parse_center(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected x,y,z in mm (LPS), got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preview",
        help="write HU-window preview PNGs (axial, coronal, sagittal) with liver/tumor contours",
        description="Write <window>_<plane>.png previews of a CT in the radiological convention and print "
        "one JSON line with their paths.",
    )
    parser.add_argument("--image", required=True, type=Path, help="CT volume in HU (NRRD, NIfTI, MHA, ...)")
    parser.add_argument("--labels", type=Path, help="label map in the CT's physical space: 1 liver, 2 tumor")
    parser.add_argument(
        "--window",
        action="append",
        choices=list(load_presets()),
        help="HU window preset id (repeatable; default abdomen)",
    )
    parser.add_argument(
        "--center-mm",
        type=_parse_center,
        metavar="X,Y,Z",
        help="LPS point (mm) the planes pass through (default: liver centroid, else image centre); "
        "write --center-mm=X,Y,Z when X is negative",
    )
    parser.add_argument("--fill-alpha", type=float, default=0.0, help="opacity of the mask fill (default 0)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.set_defaults(func=_run_cli)


def _read_volume(path: Path, what: str):
    image = read_image(path, what)
    check_volume(image, f"{what} {path}")
    return image


def _run_cli(args: argparse.Namespace) -> int:
    try:
        ct = _read_volume(args.image, "CT image")
        masks = label_masks(_read_volume(args.labels, "label map")) if args.labels else {}
        center = args.center_mm or default_center_mm(ct, masks)
        previews: dict[str, dict[str, str]] = {}
        for window_id in args.window or ["abdomen"]:
            paths = write_previews(
                ct,
                args.out,
                window=get_preset(window_id),
                masks=masks,
                center_mm=center,
                prefix=f"{window_id}_",
                fill_alpha=args.fill_alpha,
            )
            previews[window_id] = {plane: str(path) for plane, path in paths.items()}
    except (ValueError, OSError) as error:
        print(f"livertumor preview: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"center_mm": [float(c) for c in center], "previews": previews}))
    return 0
