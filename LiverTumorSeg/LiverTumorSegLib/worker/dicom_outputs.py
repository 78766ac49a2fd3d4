"""The worker's DICOM results: ``segmentation.dcm`` (DICOM SEG) and ``report.dcm`` (TID 1500 SR) of a job whose
input is a DICOM series, published with its other outputs.

They reference the series the job loaded (``dicom_io.series_headers``: same choice rule as the loader) and name the
cascade's models with their versions (``io.dicom_seg.cascade_algorithm``). They are built in memory before
anything is published; a source the SEG cannot reference (e.g. blank UIDs left by an anonymiser) gives no DICOM
results, and ``results.json`` says why (``dicom_outputs_error``) instead of failing the segmentation.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import SimpleITK as sitk

from LiverTumorSegLib.core.measurements import LabelmapMeasurements
from LiverTumorSegLib.worker.job import SegmentationJob

# io.dicom_sr's SEG_FILE and REPORT_FILE; named here so that importing the worker needs no highdicom (imported
# only when a DICOM input is written)
DICOM_OUTPUT_FILES = ("segmentation.dcm", "report.dcm")


def dicom_outputs(job: SegmentationJob, labels: sitk.Image, measurements: LabelmapMeasurements,
                  results: dict) -> dict:
    """``{file name: data set}`` of the job's DICOM results (empty for an image-file input, or when the source
    cannot be referenced). Records the names in ``results["dicom_outputs"]`` and, when none could be made, the
    one-line reason in ``results["dicom_outputs_error"]``."""
    results["dicom_outputs"] = []
    if job.dicom is None:
        return {}
    from LiverTumorSegLib.io import dicom_io
    from LiverTumorSegLib.io.dicom_seg import cascade_algorithm
    from LiverTumorSegLib.io.dicom_sr import make_dicom_results

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dicom_io.DicomInputWarning)  # reported when the series was loaded
            headers = dicom_io.series_headers(job.dicom, job.series_uid)
        datasets = make_dicom_results(labels, headers, cascade_algorithm(results["models"]), measurements=measurements)
    except ValueError as error:
        results["dicom_outputs_error"] = f"no DICOM SEG/SR: {error}"
        return {}
    results["dicom_outputs"] = list(DICOM_OUTPUT_FILES)
    return dict(zip(DICOM_OUTPUT_FILES, datasets, strict=True))


def save_dicom_outputs(folder: Path, outputs: dict) -> None:
    """Write ``dicom_outputs``' data sets into ``folder`` (the worker's staging folder)."""
    for name, dataset in outputs.items():
        dataset.save_as(folder / name, enforce_file_format=True)
