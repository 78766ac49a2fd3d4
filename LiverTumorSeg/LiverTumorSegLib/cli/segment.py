"""``livertumor segment``: the cascade on a DICOM series or an image file, in this process."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from LiverTumorSegLib.cli.common import default_model_ids
from LiverTumorSegLib.core.cascade import MIN_TUMOR_ML
from LiverTumorSegLib.worker.job import SegmentationJob
from LiverTumorSegLib.worker.runner import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_CODES_HELP, JobError
from LiverTumorSegLib.worker.segmentation import run_job


def _run(args) -> int:
    """``livertumor segment``: the worker's job, run in this process, with readable progress on stderr.
    Ctrl-C and SIGTERM cancel: one line, exit 130, no partial output."""
    try:
        job = SegmentationJob(
            liver_model=args.liver_model, tumor_model=None if args.no_tumor else args.tumor_model,
            image=None if args.dicom else str(args.image), dicom=str(args.dicom) if args.dicom else None,
            series_uid=args.series, output_dir=str(args.out), device=args.device, min_tumor_ml=args.min_tumor_ml,
            allow_download=not args.offline, overwrite=args.overwrite, manifest=args.manifest and str(args.manifest),
            force=args.force, resample_nonuniform=args.resample_nonuniform)
    except ValueError as error:
        print(f"livertumor segment: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cancel = threading.Event()

    def show(record: dict) -> None:
        if record["stage"] == "warning":
            print(f"livertumor segment: warning: {record['message']}", file=sys.stderr, flush=True)
            return
        percent = "" if record["fraction"] is None else f"{100 * record['fraction']:5.1f}% "
        print(f"[{percent}{record['stage']}] {record['message']}", file=sys.stderr, flush=True)

    try:
        results = run_job(job, show, cancel)
    except JobError as error:
        print(f"livertumor segment: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (cli.common.run_parsed)
        print("livertumor segment: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    summary = {"output_dir": str(Path(args.out).resolve()), "liver_volume_ml": round(results["liver_volume_ml"], 1),
               "tumor_volume_ml": round(results["tumor_volume_ml"], 1), "lesions": len(results["lesions"]),
               "models": {k: v and v["id"] for k, v in results["models"].items()}, "device": results["device"],
               "timings_s": results["timings_s"], "dicom_outputs": results.get("dicom_outputs", []),
               "warnings": results["warnings"]}
    if results.get("dicom_outputs_error"):
        summary["dicom_outputs_error"] = results["dicom_outputs_error"]
    print(json.dumps(summary))
    return 0


def register(subparsers) -> None:
    liver_default, tumor_default = default_model_ids()
    parser = subparsers.add_parser("segment", help="segment liver and tumors of a CT (the cascade)",
                                   description="Liver, then tumors inside the liver, on a DICOM series or an image "
                                   "file. Writes labels.nrrd, segmentation.seg.nrrd and results.json into --out, and "
                                   "for --dicom also segmentation.dcm (DICOM SEG) and report.dcm (DICOM SR, TID 1500 "
                                   "measurement report) referencing the series, ready to send to a PACS (all at once, "
                                   "or nothing). Before the models run, the CT must look like a CT in HU and --out must "
                                   "be writable, outside the input, with room for the outputs; one run at a time per "
                                   "--out.", epilog=EXIT_CODES_HELP)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dicom", type=Path, help="folder with the CT series (searched recursively)")
    source.add_argument("--image", type=Path, help="CT image file in HU (NRRD, NIfTI, ...)")
    parser.add_argument("--series", default=None, help="series instance UID when the folder holds several")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--liver-model", "--model", dest="liver_model", default=liver_default,
                        help=f"liver-stage model id (default {liver_default}); see `livertumor models list`")
    parser.add_argument("--tumor-model", default=tumor_default, help=f"tumor-stage model id (default {tumor_default})")
    parser.add_argument("--no-tumor", action="store_true", help="run the liver stage only")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) or cpu")
    parser.add_argument("--min-tumor-ml", type=float, default=MIN_TUMOR_ML,
                        help=f"drop tumor components below this volume (default {MIN_TUMOR_ML} mL)")
    parser.add_argument("--offline", action="store_true",
                        help="never download: a model missing from the cache is an error that says how to import it "
                        "(by default missing models are fetched into the cache and verified first)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs already in --out")
    parser.add_argument("--force", action="store_true",
                        help="segment a CT the plausibility check finds implausible (no air, no soft tissue, values "
                        "outside -1100..3100 HU, few distinct values); never a non-3D or NaN/inf image")
    parser.add_argument("--resample-nonuniform", action="store_true",
                        help="resample a DICOM series with missing slices or irregular spacing onto a uniform "
                        "grid instead of refusing it")
    parser.add_argument("--manifest", type=Path, help="model manifest other than the module's (research models)")
    parser.set_defaults(func=_run)
