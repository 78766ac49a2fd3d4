"""``livertumor export-seg``: a DICOM SEG (and optionally the SR) of any 0/1/2 labelmap on a CT series' grid, e.g. a
segmentation corrected after the cascade."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.cli.common import read_image
from LiverTumorSegLib.core.grid import check_same_grid
from LiverTumorSegLib.io import dicom_io

PROGRAM = "livertumor export-seg"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-seg",
        help="DICOM SEG (and SR) of a 0/1/2 labelmap on a CT series' grid, e.g. a corrected segmentation",
        description="Write a binary DICOM Segmentation with the segments Liver (labels 1 and 2: the whole liver) and "
        "Liver tumor (label 2), referencing the CT series (study, series, frame of reference, every instance), and "
        "with --report a TID 1500 measurement report (liver and tumor volumes, lesions, FLR with --flr). The "
        "labelmap must lie on the series' voxel grid and hold only 0, 1 and 2. Prints one JSON line; exit code 2 "
        "with a one-line error on bad input, before anything is written.",
    )
    parser.add_argument("--labels", required=True, type=Path, help="labelmap: 0 background, 1 liver, 2 tumor")
    parser.add_argument("--dicom", required=True, type=Path, help="folder with the CT series the labels were made on")
    parser.add_argument("--series", metavar="UID", help="Series Instance UID when the folder holds several")
    parser.add_argument("--out", required=True, type=Path, help="the DICOM SEG file to write (e.g. seg.dcm)")
    parser.add_argument("--report", type=Path, help="also write the DICOM SR (measurement report) here")
    parser.add_argument("--flr", type=Path, metavar="FLR.json",
                        help="FLR figures for the report: the JSON line `livertumor flr` printed")
    parser.add_argument("--results", type=Path, metavar="results.json",
                        help="results.json of the cascade the labels come from: its models (ids, versions) are "
                        "recorded as the algorithm; the segments are marked SEMIAUTOMATIC (corrected)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=_run_cli)


def _json_file(path: Path, what: str) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{what} {path}: cannot read JSON ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path}: expected a JSON object")
    return value


def _algorithm(results_path: Path | None):
    """The cascade's models from ``--results`` (SEMIAUTOMATIC: corrected), else this command (SEMIAUTOMATIC)."""
    from LiverTumorSegLib.io.dicom_seg import SOFTWARE_VERSION, Algorithm, cascade_algorithm

    if results_path is None:
        return Algorithm("LiverTumorAnalysis export-seg", SOFTWARE_VERSION, algorithm_type="SEMIAUTOMATIC")
    models = _json_file(results_path, "--results").get("models")
    if not isinstance(models, dict) or not all(isinstance(m, dict) and "id" in m for m in models.values() if m):
        raise ValueError(f'--results {results_path}: expected "models": {{"liver": {{"id": ...}}, ...}} of results.json')
    return cascade_algorithm(models, corrected=True)


def _labels(path: Path) -> sitk.Image:
    """The labelmap of ``--labels`` as uint8; one-line ``ValueError`` unless it is a 3D 0/1/2 integer image."""
    labels = read_image(path, "--labels")
    array = sitk.GetArrayViewFromImage(labels)
    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1 or not np.issubdtype(
            array.dtype, np.integer):
        raise ValueError(f"--labels {path}: expected a 3D integer labelmap, got {labels.GetDimension()}D "
                         f"{labels.GetPixelIDTypeAsString()}")
    other = sorted(set(np.unique(array).tolist()) - {0, 1, 2})
    if other:
        raise ValueError(f"--labels {path}: values {other[:10]} are not 0 (background), 1 (liver) or 2 (tumor)")
    return sitk.Cast(labels, sitk.sitkUInt8)


def _outputs(args: argparse.Namespace) -> list[Path]:
    outputs = [args.out] + ([args.report] if args.report else [])
    if args.flr and not args.report:
        raise ValueError("--flr goes into the report: give --report too")
    if args.report and Path(args.report).resolve() == Path(args.out).resolve():
        raise ValueError("--out and --report must be different files")
    existing = [str(path) for path in outputs if Path(path).exists()]
    if existing and not args.overwrite:
        raise ValueError(f"{', '.join(existing)} exists; pass --overwrite to replace it")
    return outputs


def _export(args: argparse.Namespace) -> dict:
    """Check every input, then write the SEG (and SR); returns the JSON summary."""
    from LiverTumorSegLib.core.measurements import measure_labelmap
    from LiverTumorSegLib.io.dicom_seg import source_series, write_segmentation
    from LiverTumorSegLib.io.dicom_sr import make_dicom_results, save_dicom

    outputs = _outputs(args)
    labels = _labels(args.labels)
    algorithm = _algorithm(args.results)
    flr = _json_file(args.flr, "--flr") if args.flr else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dicom_io.DicomInputWarning)  # a series chosen among several: named below
        headers = dicom_io.series_headers(args.dicom, args.series)
    source = source_series(headers)
    check_same_grid(labels, source.grid, f"--labels {args.labels}",
                    f"the CT series {source.series_uid} in {args.dicom}")
    measurements = measure_labelmap(labels)
    if args.report:
        datasets = make_dicom_results(labels, headers, algorithm, measurements=measurements, flr=flr)
    else:
        datasets = (write_segmentation(labels, headers, algorithm),)
    for dataset, path in zip(datasets, outputs, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_dicom(dataset, path)
    return {"seg": str(args.out), "report": str(args.report) if args.report else None,
            "series_uid": source.series_uid, "seg_sop_instance_uid": str(datasets[0].SOPInstanceUID),
            "liver_volume_ml": round(measurements.liver_volume_ml, 3),
            "tumor_volume_ml": round(measurements.tumor_volume_ml, 3), "lesions": len(measurements.lesions),
            "algorithm_type": algorithm.algorithm_type}


def _run_cli(args: argparse.Namespace) -> int:
    try:
        summary = _export(args)
    except (ValueError, OSError) as error:  # DicomInputError is a ValueError
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
