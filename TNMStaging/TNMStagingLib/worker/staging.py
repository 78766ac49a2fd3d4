"""Background staging worker: the learned stage of one CT and its liver/tumor labelmap, as its own process.

    python -m TNMStagingLib.worker JOB.json

The job file (written by the TNMStaging module through ``LiverTumorSegLib.worker.process.WorkerProcess``)::

    {"image": "ct.nrrd", "labels": "labels.nrrd", "model": "model.tnm" | null (the demo model),
     "checkpoint": "sam_vit_b_01ec64.pth" | null, "device": "auto" | "cpu", "output_dir": "OUT"}

``labels`` is a 0/1/2 labelmap (background, liver parenchyma, tumor) on the CT's grid. Progress, exit codes
and cancellation are those of the segmentation worker (``LiverTumorSegLib.worker``): one JSON object per line
on stdout, exit 0 / 2 bad input / 3 model / 4 out of memory / 130 cancelled. The result,
``OUT/staging.json``, is ``core.predict.predict_case``'s dictionary (stage probabilities, the model's
cross-validation metrics, demo flag, encoder provenance, measured features) plus the model file and timings;
it appears only when the job completed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk

from LiverTumorSegLib.core.cancel import Cancelled
from LiverTumorSegLib.core.plausibility import check_finite, check_labelmap, check_scalar_3d
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
from TNMStagingLib.resources import DEMO_MODEL_FILE

OUTPUT_FILE = "staging.json"


def read_case(job: dict) -> tuple[sitk.Image, sitk.Image]:
    """The job's CT (float32, HU) and labelmap (uint8 0/1/2), checked to share one voxel grid; a labelmap with
    other values (a CT given as labels) is refused before the uint8 cast could wrap it around."""
    images = []
    for key in ("image", "labels"):
        path = Path(job[key])
        if not path.is_file():
            raise JobError(f"{key} file {path} does not exist", EXIT_BAD_INPUT)
        try:
            images.append(sitk.ReadImage(str(path)))
        except RuntimeError as error:
            raise JobError(f"cannot read {path}: {str(error).strip().splitlines()[-1]}", EXIT_BAD_INPUT) from error
    ct, labels = images
    try:
        check_scalar_3d(ct, f"image {job['image']}")
        check_finite(sitk.GetArrayViewFromImage(ct), f"image {job['image']}")
        check_labelmap(labels, f"labels {job['labels']}", reference=ct, reference_what=f"image {job['image']}")
    except ValueError as error:
        raise JobError(str(error), EXIT_BAD_INPUT) from error
    ct, labels = sitk.Cast(ct, sitk.sitkFloat32), sitk.Cast(labels, sitk.sitkUInt8)
    if not (sitk.GetArrayViewFromImage(labels) > 0).any():
        raise JobError(f"{job['labels']} holds no liver: segment the liver first", EXIT_BAD_INPUT)
    return ct, labels


def load_staging_model(job: dict):
    from TNMStagingLib.core import classifier

    path = Path(job.get("model") or DEMO_MODEL_FILE)
    try:
        return path, classifier.load_model(path)
    except (OSError, ValueError, KeyError) as error:
        raise JobError(f"staging model {path}: {error}", EXIT_MODEL) from error


def run_job(job: dict, emit: Callable[[dict], None], cancel: threading.Event) -> dict:
    """Run one staging job; returns the result (also written as ``staging.json``). Raises ``JobError``."""
    from LiverTumorSegLib.models.registry import RegistryError
    from TNMStagingLib.core.predict import predict_case

    progress = ProgressReporter(emit)
    out_dir = Path(job["output_dir"])
    check_output_dir(out_dir, (OUTPUT_FILE,), overwrite=bool(job.get("overwrite")))
    started = time.perf_counter()
    progress("load", 0.0, "reading the CT and the segmentation")
    ct, labels = read_case(job)
    model_path, model = load_staging_model(job)
    progress("features", 0.05, f"model {model_path.name}{' (demo only)' if model.demo_only else ''}")

    def on_features(fraction: float, message: str) -> None:
        progress("features", 0.05 + 0.9 * fraction, message)

    checkpoint = Path(job["checkpoint"]) if job.get("checkpoint") else None
    try:
        result = predict_case(model, ct, labels, checkpoint=checkpoint, device=job.get("device", "auto"),
                              progress=on_features, cancel=cancel)
    except RegistryError as error:
        if isinstance(error, Cancelled):
            raise JobCancelled() from error
        raise JobError(f"image encoder weights: {error}", EXIT_MODEL) from error
    except ValueError as error:  # model and case do not fit together (features, encoder weights)
        raise JobError(str(error), EXIT_BAD_INPUT) from error
    except Exception as error:
        known = as_job_error(error, str(job.get("device", "auto")))
        if known is None:
            raise
        raise known from error
    result = result | {"model": str(model_path), "seconds": round(time.perf_counter() - started, 3)}

    def write(folder: Path) -> None:
        (folder / OUTPUT_FILE).write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")

    publish_outputs(out_dir, (OUTPUT_FILE,), write, cancel)
    progress("done", 1.0, f"learned stage {result['stage']}")
    return result


def main(argv: list[str] | None = None) -> int:
    return serve(sys.argv[1:] if argv is None else argv, run_job, "TNMStagingLib.worker")


if __name__ == "__main__":
    sys.exit(main())
