"""``livertumor preview``: HU-window preview PNGs of a CT with liver/tumor contours."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import SimpleITK as sitk

from LiverTumorSegLib.cli.common import read_image
from LiverTumorSegLib.core.hu_windows import get_preset, load_presets
from LiverTumorSegLib.core.plausibility import check_finite, check_labelmap, check_scalar_3d
from LiverTumorSegLib.io.atomic import check_output_folder, staged_folder
from LiverTumorSegLib.io.preview import PLANES, default_center_mm, label_masks, write_previews


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
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (the PNGs appear together when all are written)")
    parser.add_argument("--overwrite", action="store_true", help="replace previews already in --out")
    parser.set_defaults(func=_run_cli)


def _read_ct(path: Path) -> sitk.Image:
    """The --image volume: 3D, one value per voxel, finite (the preview of NaN is no preview)."""
    image = read_image(path, "--image")
    check_scalar_3d(image, f"--image {path}")
    check_finite(sitk.GetArrayViewFromImage(image), f"--image {path}")
    return image


def _read_labels(path: Path) -> sitk.Image:
    """The --labels labelmap: integers 0, 1, 2 only (a CT given as labels is refused)."""
    labels = read_image(path, "--labels")
    check_labelmap(labels, f"--labels {path}")
    return labels


def _output_names(windows: list[str]) -> list[str]:
    return [f"{window}_{plane}.png" for window in windows for plane in PLANES]


def _run_cli(args: argparse.Namespace) -> int:
    windows = args.window or ["abdomen"]
    try:
        ct = _read_ct(args.image)
        masks = label_masks(_read_labels(args.labels)) if args.labels else {}
        check_output_folder(args.out, inputs=[args.image, args.labels])
        existing = [name for name in _output_names(windows) if (args.out / name).exists()]
        if existing and not args.overwrite:
            raise ValueError(f"--out {args.out} already holds {', '.join(existing)}; choose another folder or "
                             "pass --overwrite to replace them")
        center = args.center_mm or default_center_mm(ct, masks)
        previews: dict[str, dict[str, str]] = {}
        with staged_folder(args.out, _output_names(windows), overwrite=args.overwrite) as staging:
            for window_id in windows:
                paths = write_previews(ct, staging, window=get_preset(window_id), masks=masks, center_mm=center,
                                       prefix=f"{window_id}_", fill_alpha=args.fill_alpha)
                previews[window_id] = {plane: str(args.out / path.name) for plane, path in paths.items()}
    except (ValueError, OSError) as error:
        print(f"livertumor preview: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"center_mm": [float(c) for c in center], "previews": previews}))
    return 0
