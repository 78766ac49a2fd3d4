"""The segmentation worker: one ``SegmentationJob`` (liver, then tumors) run as its own process.

    python -m LiverTumorSegLib.worker JOB.json

Progress goes to stdout, one JSON object per line: ``{"stage", "fraction", "message"}`` with the fraction
rising monotonically from 0 to 1. Outputs (``labels.nrrd``, ``segmentation.seg.nrrd``, ``results.json`` and, for a
DICOM input, ``segmentation.dcm`` and ``report.dcm``: ``worker.dicom_outputs``) are written into a temporary folder
inside OUT and moved into place only when all of them are complete.
Exit codes: 0 success, 2 bad input, 3 model missing or corrupt, 4 out of memory, 130 cancelled (SIGTERM or
SIGINT: the worker stops at the next sliding window and removes its partial output), 1 anything else;
on failure the last stdout line has ``"stage": "error"`` and stderr one line with the reason.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from LiverTumorSegLib.core.measurements import LabelmapMeasurements
from LiverTumorSegLib.core.terminology import segment_specs
from LiverTumorSegLib.io.seg_nrrd import write_seg_nrrd
from LiverTumorSegLib.worker.dicom_outputs import DICOM_OUTPUT_FILES, dicom_outputs, save_dicom_outputs
from LiverTumorSegLib.worker.job import SegmentationJob
from LiverTumorSegLib.worker.runner import (
    EXIT_BAD_INPUT,
    EXIT_MODEL,
    JobCancelled,
    JobError,
    ProgressReporter,
    as_job_error,
    check_output_dir,
    publish_outputs,
    serve,
)

OUTPUT_FILES = ("labels.nrrd", "segmentation.seg.nrrd", "results.json")


def output_files(job: SegmentationJob) -> tuple[str, ...]:
    """What a job may publish: ``OUTPUT_FILES``, and for a DICOM input the DICOM SEG and SR."""
    return OUTPUT_FILES + DICOM_OUTPUT_FILES if job.dicom is not None else OUTPUT_FILES


def load_input(job: SegmentationJob) -> tuple[sitk.Image, dict]:
    """The CT of the job as a SimpleITK image in HU, and a description of where it came from."""
    if job.dicom is not None:
        return _load_dicom_input(job)
    path = Path(job.image)
    if not path.is_file():
        raise JobError(f"input image {path} does not exist", EXIT_BAD_INPUT)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:  # SimpleITK cannot read the file
        raise JobError(f"cannot read {path}: not an image file SimpleITK knows", EXIT_BAD_INPUT) from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise JobError(f"{path}: expected a 3D scalar CT volume, got {image.GetDimension()}D "
                       f"with {image.GetNumberOfComponentsPerPixel()} components", EXIT_BAD_INPUT)
    return image, {"image": str(path)}


def _load_dicom_input(job: SegmentationJob) -> tuple[sitk.Image, dict]:
    from LiverTumorSegLib.io import dicom_io

    try:
        image = dicom_io.load_series(job.dicom, job.series_uid)
    except dicom_io.DicomInputError as error:
        raise JobError(str(error), EXIT_BAD_INPUT) from error
    return image, {"dicom": str(job.dicom), "series_uid": job.series_uid}


def load_models(job: SegmentationJob, cancel: threading.Event):
    """Resolve (verify, download if allowed) and load the liver and tumor models of the job."""
    from LiverTumorSegLib.models import networks, registry
    from LiverTumorSegLib.models.manifest import ManifestError, load_manifest

    manifest = load_manifest(job.manifest) if job.manifest else load_manifest()
    loaded = []
    for model_id in (job.liver_model, job.tumor_model):
        if model_id is None:
            loaded.append(None)
            continue
        if model_id not in manifest:
            raise JobError(f"unknown model {model_id!r}; known: {', '.join(manifest)}", EXIT_MODEL)
        entry = manifest[model_id]
        try:
            path = registry.resolve_model_file(entry, download=job.allow_download, cancel=cancel)
            loaded.append(networks.load_model(entry, path))
        except registry.DownloadCancelled as error:
            raise JobCancelled() from error
        except (registry.RegistryError, ManifestError, ValueError, OSError) as error:
            raise JobError(f"model {model_id}: {error}", EXIT_MODEL) from error
    return loaded


def run_job(job: SegmentationJob | dict, emit: Callable[[dict], None], cancel: threading.Event) -> dict:
    """Run one job; returns the results dict (also written as results.json). Raises ``JobError``."""
    from LiverTumorSegLib.core import cascade
    from LiverTumorSegLib.core.inference import select_device

    job = job if isinstance(job, SegmentationJob) else SegmentationJob.from_json(job)
    progress = ProgressReporter(emit)
    out_dir = Path(job.output_dir)
    check_output_dir(out_dir, output_files(job), overwrite=job.overwrite)
    started = time.perf_counter()
    progress("load", 0.0, "reading the CT")
    image, source = load_input(job)
    try:
        device = str(select_device(job.device))
    except (RuntimeError, ValueError) as error:
        raise JobError(str(error), EXIT_BAD_INPUT) from error
    progress("models", 0.05, f"loading models on {device}")
    liver, tumor = load_models(job, cancel)
    timings = {"load_s": time.perf_counter() - started}

    def on_cascade(stage: str, fraction: float, message: str) -> None:
        progress(stage, 0.1 + 0.8 * fraction, message)

    try:
        result = cascade.run_cascade(image, liver, tumor, device=device, min_tumor_ml=job.min_tumor_ml,
                                     progress=on_cascade, cancel=cancel)
    except Exception as error:
        known = as_job_error(error, device)
        if known is None:
            raise
        raise known from error
    timings.update({f"{name}_s" if not name.endswith("_s") else name: value
                    for name, value in result.timings_s.items()})
    progress("write", 0.92, "writing outputs")
    timings["total_s"] = time.perf_counter() - started  # everything but writing the outputs
    results = _results_document(source, image, result, liver, tumor, timings)
    measurements = LabelmapMeasurements(result.liver_volume_ml, result.liver_volume_ml - result.tumor_volume_ml,
                                        result.tumor_volume_ml, list(result.lesions))
    _write_outputs(out_dir, result.labels, results, cancel, dicom_outputs(job, result.labels, measurements, results))
    progress("done", 1.0, f"liver {results['liver_volume_ml']:.0f} mL, {len(results['lesions'])} lesion(s)")
    return results


def _model_info(loaded) -> dict | None:
    if loaded is None:
        return None
    entry = loaded.entry
    return {"id": entry.id, "title": entry.display_name, "demo_only": entry.demo_only, "sha256": entry.sha256,
            "md5": entry.md5, "version": entry.extra.get("version")}


def _results_document(source, image, result, liver, tumor, timings) -> dict[str, Any]:
    return {
        "input": source,
        "grid": {"size": list(image.GetSize()), "spacing_mm": list(image.GetSpacing()),
                 "origin_mm": list(image.GetOrigin()), "direction": list(image.GetDirection())},
        "labels": {"0": "background", "1": "liver parenchyma", "2": "liver tumor"},
        "liver_volume_ml": result.liver_volume_ml,
        "parenchyma_volume_ml": result.liver_volume_ml - result.tumor_volume_ml,
        "tumor_volume_ml": result.tumor_volume_ml,
        "lesions": [lesion.to_dict() for lesion in result.lesions],
        "models": {"liver": _model_info(liver), "tumor": _model_info(tumor)},
        "device": result.device,
        "timings_s": {key: round(value, 3) for key, value in timings.items()},
    }


def _write_outputs(out_dir: Path, labels: sitk.Image, results: dict, cancel: threading.Event,
                   dicom: dict | None = None) -> None:
    dicom = dicom or {}

    def write(staging: Path) -> None:
        sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8), str(staging / "labels.nrrd"), useCompression=True)
        write_seg_nrrd(labels, staging / "segmentation.seg.nrrd", segment_specs())
        save_dicom_outputs(staging, dicom)
        (staging / "results.json").write_text(json.dumps(results, indent=2))

    publish_outputs(out_dir, OUTPUT_FILES + tuple(dicom), write, cancel)


def main(argv: list[str] | None = None) -> int:
    return serve(sys.argv[1:] if argv is None else argv, run_job, "LiverTumorSegLib.worker")
