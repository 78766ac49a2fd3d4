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

import contextlib
import json
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.core.cascade import NoLiverFoundWarning
from LiverTumorSegLib.core.measurements import LabelmapMeasurements
from LiverTumorSegLib.core.plausibility import ImplausibleInputError, check_ct
from LiverTumorSegLib.core.terminology import segment_specs
from LiverTumorSegLib.io.atomic import (
    OutputError,
    check_free_space,
    check_output_folder,
    locked_output_folder,
    write_image,
)
from LiverTumorSegLib.io.dicom_checks import DicomInputWarning
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
REPORTED_WARNINGS = (DicomInputWarning, NoLiverFoundWarning)  # shown as progress and kept in results.json


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
    return image, {"image": str(path)}


def _load_dicom_input(job: SegmentationJob) -> tuple[sitk.Image, dict]:
    from LiverTumorSegLib.io import dicom_io

    try:
        image = dicom_io.load_series(job.dicom, job.series_uid, resample_nonuniform=job.resample_nonuniform)
    except dicom_io.DicomInputError as error:
        raise JobError(str(error), EXIT_BAD_INPUT) from error
    return image, {"dicom": str(job.dicom), "series_uid": job.series_uid}


def input_name(job: SegmentationJob) -> str:
    """How messages name the job's CT: the image file, or the DICOM folder (and series)."""
    if job.dicom is None:
        return f"input image {job.image}"
    return f"CT series {job.series_uid} in {job.dicom}" if job.series_uid else f"CT series in {job.dicom}"


def check_input(image: sitk.Image, job: SegmentationJob) -> list[str]:
    """The CT plausibility gate (``core.plausibility.check_ct``) as a ``JobError``; returns its warnings."""
    try:
        return check_ct(image, input_name(job), force=job.force)
    except ImplausibleInputError as error:
        hint = "; if it is a CT in HU nonetheless, pass --force" if error.forceable else ""
        raise JobError(f"{error}{hint}", EXIT_BAD_INPUT) from error


def expected_output_bytes(image: sitk.Image) -> int:
    """Room the outputs need at most (bytes): labels.nrrd and segmentation.seg.nrrd at one byte per voxel,
    uncompressed (the worst case), and 1 MB for results.json and the headers."""
    return 2 * int(np.prod(image.GetSize())) + 1_000_000


def _download_progress(progress: ProgressReporter | None, model_id: str):
    """A registry progress callback that reports ``downloading MODEL: x of y MB`` (at most one line per MB)."""
    if progress is None:
        return None
    shown = [-1]

    def report(done: int, total: int | None) -> None:
        megabytes = done // 1_000_000
        if megabytes != shown[0]:
            shown[0] = megabytes
            of_total = f" of {total / 1e6:.1f}" if total else ""
            fraction = 0.05 + 0.05 * (done / total if total else 0.0)  # loading the models spans 0.05..0.1
            progress("models", fraction, f"downloading {model_id}: {done / 1e6:.1f}{of_total} MB")

    return report


def load_models(job: SegmentationJob, cancel: threading.Event, progress: ProgressReporter | None = None):
    """Resolve (verify, download if allowed, reporting progress) and load the liver and tumor models of the job."""
    from LiverTumorSegLib.models import networks, registry
    from LiverTumorSegLib.models.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(job.manifest) if job.manifest else load_manifest()
    except ManifestError as error:  # the message names the file
        raise JobError(str(error), EXIT_MODEL) from error
    loaded = []
    for model_id in (job.liver_model, job.tumor_model):
        if model_id is None:
            loaded.append(None)
            continue
        if model_id not in manifest:
            raise JobError(f"unknown model {model_id!r}; known: {', '.join(manifest)}", EXIT_MODEL)
        entry = manifest[model_id]
        try:
            path = registry.resolve_model_file(entry, download=job.allow_download, cancel=cancel,
                                               progress=_download_progress(progress, model_id))
            loaded.append(networks.load_model(entry, path))
        except registry.DownloadCancelled as error:
            raise JobCancelled() from error
        except (registry.RegistryError, ManifestError, ValueError, OSError) as error:
            raise JobError(f"model {model_id}: {error}", EXIT_MODEL) from error
    return loaded


def run_job(job: SegmentationJob | dict, emit: Callable[[dict], None], cancel: threading.Event) -> dict:
    """Run one job; returns the results dict (also written as results.json). Raises ``JobError``.

    Everything that can be checked is checked before the models run: the input exists, the output folder
    (writable, not a file, not inside the input, free of earlier outputs unless ``overwrite``, room for the
    outputs), the device and the CT (plausibility gate). The output folder is locked for the whole job: a second
    job into the same folder fails at once.
    """
    job = job if isinstance(job, SegmentationJob) else SegmentationJob.from_json(job)
    progress = ProgressReporter(emit)
    out_dir = Path(job.output_dir)
    started = time.perf_counter()
    _check_input_exists(job)
    _check_output_folder(out_dir, job)
    device = _device(job)
    try:
        with locked_output_folder(out_dir):
            check_output_dir(out_dir, output_files(job), overwrite=job.overwrite)
            results = _segment_into(out_dir, job, device, progress, cancel, started)
    except OutputError as error:  # the folder is locked by another job, or cannot be created
        raise JobError(str(error), EXIT_BAD_INPUT) from error
    progress("done", 1.0, f"liver {results['liver_volume_ml']:.0f} mL, {len(results['lesions'])} lesion(s)")
    return results


def _segment_into(out_dir: Path, job: SegmentationJob, device: str, progress: ProgressReporter,
                  cancel: threading.Event, started: float) -> dict:
    """Load and check the CT, load the models, run the cascade and publish the outputs into ``out_dir`` (locked
    by the caller); ``started``: ``time.perf_counter()`` at the start of the job. Returns the results dict."""
    progress("load", 0.0, "reading the CT")
    with _reported_warnings() as notes:
        image, source = load_input(job)
        notes += check_input(image, job)
    _show(progress, notes, 0.05)
    _check_free_space(out_dir, image)
    progress("models", 0.05, f"loading models on {device}")
    liver, tumor = load_models(job, cancel, progress)
    timings = {"load_s": time.perf_counter() - started}
    with _reported_warnings() as cascade_notes:
        result = _run_cascade(image, liver, tumor, job, device, progress, cancel)
    _show(progress, cascade_notes, 0.9)
    timings.update({f"{name}_s" if not name.endswith("_s") else name: value
                    for name, value in result.timings_s.items()})
    progress("write", 0.92, "writing outputs")
    timings["total_s"] = time.perf_counter() - started  # everything but writing the outputs
    results = _results_document(source, image, result, liver, tumor, timings, notes + cascade_notes)
    measurements = LabelmapMeasurements(result.liver_volume_ml, result.liver_volume_ml - result.tumor_volume_ml,
                                        result.tumor_volume_ml, list(result.lesions))
    dicom = dicom_outputs(job, result.labels, measurements, results)
    _write_outputs(out_dir, result.labels, results, cancel, job.overwrite, dicom)
    return results


def _run_cascade(image: sitk.Image, liver, tumor, job: SegmentationJob, device: str, progress: ProgressReporter,
                 cancel: threading.Event):
    """``core.cascade.run_cascade`` with its progress mapped to 0.1..0.9; cancel and out of memory as
    ``JobError``."""
    from LiverTumorSegLib.core import cascade

    def on_cascade(stage: str, fraction: float, message: str) -> None:
        progress(stage, 0.1 + 0.8 * fraction, message)

    try:
        return cascade.run_cascade(image, liver, tumor, device=device, min_tumor_ml=job.min_tumor_ml,
                                   progress=on_cascade, cancel=cancel)
    except Exception as error:
        known = as_job_error(error, device)
        if known is None:
            raise
        raise known from error


@contextlib.contextmanager
def _reported_warnings() -> Iterator[list[str]]:
    """Collect the messages of the warnings users must see (``REPORTED_WARNINGS``) raised inside the block
    into the yielded list (other warnings are dropped, as before they only reached a console)."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield notes
    notes += [str(w.message) for w in caught if issubclass(w.category, REPORTED_WARNINGS)]


def _show(progress: ProgressReporter, notes: list[str], fraction: float) -> None:
    for note in notes:
        progress("warning", fraction, note)


def _check_input_exists(job: SegmentationJob) -> None:
    """The input image is a file, the DICOM input a folder (named first: a wrong input explains more)."""
    if job.image is not None and not Path(job.image).is_file():
        found = ("is a folder (give the CT file, or the folder with --dicom)" if Path(job.image).is_dir()
                 else "does not exist")
        raise JobError(f"input image {job.image} {found}", EXIT_BAD_INPUT)
    if job.dicom is not None and not Path(job.dicom).is_dir():
        raise JobError(f"DICOM folder {job.dicom}: no such folder", EXIT_BAD_INPUT)


def _check_output_folder(out_dir: Path, job: SegmentationJob) -> None:
    """The output folder can be written and is not the input (``io.atomic.check_output_folder``)."""
    try:
        check_output_folder(out_dir, inputs=(job.image, job.dicom), what="output folder")
    except OutputError as error:
        raise JobError(str(error), EXIT_BAD_INPUT) from error


def _check_free_space(out_dir: Path, image: sitk.Image) -> None:
    try:
        check_free_space(out_dir, expected_output_bytes(image), what="output folder")
    except OutputError as error:
        raise JobError(str(error), EXIT_BAD_INPUT) from error


def _device(job: SegmentationJob) -> str:
    """The torch device of the job, as text; ``JobError`` (bad input) for an unknown or unavailable one."""
    from LiverTumorSegLib.core.inference import select_device

    try:
        return str(select_device(job.device))
    except (RuntimeError, ValueError) as error:
        raise JobError(str(error), EXIT_BAD_INPUT) from error


def _model_info(loaded) -> dict | None:
    if loaded is None:
        return None
    entry = loaded.entry
    return {"id": entry.id, "title": entry.display_name, "demo_only": entry.demo_only, "sha256": entry.sha256,
            "md5": entry.md5, "version": entry.extra.get("version")}


def _results_document(source, image, result, liver, tumor, timings, notes: list[str]) -> dict[str, Any]:
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
        "warnings": notes,
    }


def _write_outputs(out_dir: Path, labels: sitk.Image, results: dict, cancel: threading.Event,
                   overwrite: bool, dicom: dict | None = None) -> None:
    dicom = dicom or {}

    def write(staging: Path) -> None:
        write_image(sitk.Cast(labels, sitk.sitkUInt8), staging / "labels.nrrd")
        write_seg_nrrd(labels, staging / "segmentation.seg.nrrd", segment_specs())
        save_dicom_outputs(staging, dicom)
        (staging / "results.json").write_text(json.dumps(results, indent=2))

    publish_outputs(out_dir, OUTPUT_FILES + tuple(dicom), write, cancel, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    return serve(sys.argv[1:] if argv is None else argv, run_job, "LiverTumorSegLib.worker")
