"""Background worker: one segmentation job, run as its own process.

    python -m LiverTumorSegLib.worker JOB.json

The job file (written by the Slicer module or by ``livertumor segment``) says what to segment and where
to write::

    {"input": {"image": "ct.nrrd"} | {"dicom": "DIR", "series_uid": null},
     "output_dir": "OUT", "liver_model": "<model id>", "tumor_model": "<model id>" | null,
     "device": "auto" | "cpu", "min_tumor_ml": 0.1, "allow_download": false, "overwrite": false}

Progress goes to stdout, one JSON object per line: ``{"stage", "fraction", "message"}`` with the fraction
rising monotonically from 0 to 1. Outputs (``labels.nrrd``, ``segmentation.seg.nrrd``, ``results.json``) are
written into a temporary folder inside OUT and moved into place only when all of them are complete.
Exit codes: 0 success, 2 bad input, 3 model missing or corrupt, 4 out of memory, 130 cancelled (SIGTERM or
SIGINT: the worker stops at the next sliding window and removes its partial output), 1 anything else;
on failure the last stdout line has ``"stage": "error"`` and stderr one line with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from .seg_nrrd import write_seg_nrrd
from .segment_terminology import segment_specs

OUTPUT_FILES = ("labels.nrrd", "segmentation.seg.nrrd", "results.json")
EXIT_BAD_INPUT, EXIT_MODEL, EXIT_OUT_OF_MEMORY, EXIT_CANCELLED, EXIT_OTHER = 2, 3, 4, 130, 1


class JobError(Exception):
    """A failure with its exit code and a one-line message for the user."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ProgressReporter:
    """Emits ``{"stage", "fraction", "message"}`` lines; fractions never go backwards."""

    def __init__(self, emit: Callable[[dict], None]) -> None:
        self._emit = emit
        self._fraction = 0.0

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        self._fraction = max(self._fraction, min(1.0, float(fraction)))
        self._emit({"stage": stage, "fraction": round(self._fraction, 4), "message": message})


def load_input(job_input: dict[str, Any]) -> tuple[sitk.Image, dict]:
    """The CT of the job as a SimpleITK image in HU, and a description of where it came from."""
    if "dicom" in job_input:
        return _load_dicom_input(job_input)
    path = Path(job_input["image"])
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


def _load_dicom_input(job_input: dict[str, Any]) -> tuple[sitk.Image, dict]:
    from . import dicom_io

    try:
        image = dicom_io.load_series(job_input["dicom"], job_input.get("series_uid"))
    except dicom_io.DicomInputError as error:
        raise JobError(str(error), EXIT_BAD_INPUT) from error
    return image, {"dicom": str(job_input["dicom"]), "series_uid": job_input.get("series_uid")}


def load_models(job: dict, cancel: threading.Event):
    """Resolve (verify, download if allowed) and load the liver and tumor models of the job."""
    from . import model_registry, networks
    from .model_manifest import ManifestError, load_manifest

    manifest = load_manifest(job["manifest"]) if job.get("manifest") else load_manifest()
    loaded = []
    for key in ("liver_model", "tumor_model"):
        model_id = job.get(key)
        if model_id is None:
            loaded.append(None)
            continue
        if model_id not in manifest:
            raise JobError(f"unknown model {model_id!r}; known: {', '.join(manifest)}", EXIT_MODEL)
        entry = manifest[model_id]
        try:
            path = model_registry.resolve_model_file(entry, download=bool(job.get("allow_download")), cancel=cancel)
            loaded.append(networks.load_model(entry, path))
        except model_registry.DownloadCancelled as error:
            raise JobError("cancelled", EXIT_CANCELLED) from error
        except (model_registry.RegistryError, ManifestError, ValueError, OSError) as error:
            raise JobError(f"model {model_id}: {error}", EXIT_MODEL) from error
    return loaded


def run_job(job: dict, emit: Callable[[dict], None], cancel: threading.Event) -> dict:
    """Run one job; returns the results dict (also written as results.json). Raises JobError."""
    from . import cascade
    from .inference import InferenceCancelled, select_device

    progress = ProgressReporter(emit)
    out_dir = Path(job["output_dir"])
    check_output_dir(out_dir, OUTPUT_FILES, overwrite=bool(job.get("overwrite")))
    started = time.perf_counter()
    progress("load", 0.0, "reading the CT")
    image, source = load_input(job["input"])
    try:
        device = str(select_device(job.get("device", "auto")))
    except RuntimeError as error:
        raise JobError(str(error), EXIT_BAD_INPUT) from error
    progress("models", 0.05, f"loading models on {device}")
    liver, tumor = load_models(job, cancel)
    timings = {"load_s": time.perf_counter() - started}

    def on_cascade(stage: str, fraction: float, message: str) -> None:
        progress(stage, 0.1 + 0.8 * fraction, message)

    try:
        result = cascade.run_cascade(image, liver, tumor, device=device, min_tumor_ml=float(job.get("min_tumor_ml", 0.1)),
                                     progress=on_cascade, cancel=cancel)
    except InferenceCancelled as error:
        raise JobError("cancelled", EXIT_CANCELLED) from error
    except MemoryError as error:
        raise JobError(_out_of_memory_hint(device), EXIT_OUT_OF_MEMORY) from error
    except RuntimeError as error:
        if "out of memory" in str(error).lower():
            raise JobError(_out_of_memory_hint(device), EXIT_OUT_OF_MEMORY) from error
        raise
    timings.update({f"{name}_s" if not name.endswith("_s") else name: value
                    for name, value in result.timings_s.items()})
    progress("write", 0.92, "writing outputs")
    timings["total_s"] = time.perf_counter() - started  # everything but writing the outputs
    results = _results_document(job, source, image, result, liver, tumor, timings)
    _write_outputs(out_dir, result.labels, results, cancel)
    progress("done", 1.0, f"liver {results['liver_volume_ml']:.0f} mL, {len(results['lesions'])} lesion(s)")
    return results


def _out_of_memory_hint(device: str) -> str:
    if device.startswith("cuda"):
        return "out of GPU memory: run on the CPU (device cpu) or choose a coarser model"
    return "out of memory: close other programs, or choose a coarser model"


def _model_info(loaded) -> dict | None:
    if loaded is None:
        return None
    entry = loaded.entry
    return {"id": entry.id, "title": entry.display_name, "demo_only": entry.demo_only, "sha256": entry.sha256,
            "md5": entry.md5}


def _results_document(job, source, image, result, liver, tumor, timings) -> dict:
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


def _write_outputs(out_dir: Path, labels: sitk.Image, results: dict, cancel: threading.Event) -> None:
    def write(staging: Path) -> None:
        sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8), str(staging / "labels.nrrd"), useCompression=True)
        write_seg_nrrd(labels, staging / "segmentation.seg.nrrd", segment_specs())
        (staging / "results.json").write_text(json.dumps(results, indent=2))

    publish_outputs(out_dir, OUTPUT_FILES, write, cancel)


def publish_outputs(out_dir: Path, names: tuple[str, ...], write: Callable[[Path], None],
                    cancel: threading.Event) -> None:
    """``write(folder)`` writes ``names`` into a temporary folder inside ``out_dir``; they are moved into place
    together only when all are complete and the job was not cancelled (no partial output in any case)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write(staging)
        if cancel.is_set():
            raise JobError("cancelled", EXIT_CANCELLED)
        for name in names:
            (staging / name).replace(out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_output_dir(out_dir: Path, names: tuple[str, ...], overwrite: bool) -> None:
    """Refuse to replace earlier outputs unless the job allows it."""
    existing = [name for name in names if (out_dir / name).exists()]
    if existing and not overwrite:
        raise JobError(f"{out_dir} already holds {', '.join(existing)}; choose another folder or allow overwriting",
                       EXIT_BAD_INPUT)


def _install_signal_handlers(cancel: threading.Event) -> None:
    def request_cancel(signum, frame) -> None:
        cancel.set()

    signal.signal(signal.SIGTERM, request_cancel)
    signal.signal(signal.SIGINT, request_cancel)


def _announce_pid() -> None:
    """Write our PID where the parent asked (it may have started us through a launcher process)."""
    pid_file = os.environ.get("LIVERTUMOR_WORKER_PID_FILE")
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))


def _watch_parent(cancel: threading.Event, interval_s: float = 1.0) -> None:
    """Cancel when the parent process goes away (Slicer closed or crashed): no orphan keeps computing."""
    parent = os.getppid()

    def watch() -> None:
        while not cancel.wait(interval_s):
            if os.getppid() != parent:
                cancel.set()

    threading.Thread(target=watch, daemon=True).start()


def serve(argv: list[str], run: Callable[[dict, Callable[[dict], None], threading.Event], Any], program: str) -> int:
    """The ``main`` of every background worker: read the job file, run it with JSON progress on stdout,
    turn failures into one error record and an exit code. Shared by the segmentation and staging workers."""
    if len(argv) != 1:
        print(f"usage: python -m {program} JOB.json", file=sys.stderr)
        return EXIT_BAD_INPUT
    cancel = threading.Event()
    _install_signal_handlers(cancel)
    _announce_pid()
    _watch_parent(cancel)

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)

    def fail(message: str, exit_code: int) -> int:
        emit({"stage": "error" if exit_code != EXIT_CANCELLED else "cancelled", "fraction": None, "message": message})
        print(f"{program}: {message}", file=sys.stderr, flush=True)
        return exit_code

    try:
        job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        run(job, emit, cancel)
        return 0
    except JobError as error:
        return fail(str(error), error.exit_code)
    except (OSError, ValueError, KeyError) as error:
        return fail(f"bad job {argv[0]}: {error}", EXIT_BAD_INPUT)
    except Exception as error:  # the last line must still tell the GUI what happened
        return fail(f"{type(error).__name__}: {error}", EXIT_OTHER)


def main(argv: list[str] | None = None) -> int:
    return serve(sys.argv[1:] if argv is None else argv, run_job, "LiverTumorSegLib.worker")


if __name__ == "__main__":
    sys.exit(main())


def _segment_cli(args) -> int:
    """``livertumor segment``: the worker's job, run in this process, with readable progress on stderr."""
    job = {
        "input": {"dicom": str(args.dicom), "series_uid": args.series} if args.dicom else {"image": str(args.image)},
        "output_dir": str(args.out),
        "liver_model": args.liver_model,
        "tumor_model": None if args.no_tumor else args.tumor_model,
        "device": args.device,
        "min_tumor_ml": args.min_tumor_ml,
        "allow_download": args.download,
        "overwrite": args.overwrite,
    }
    cancel = threading.Event()

    def show(record: dict) -> None:
        percent = "" if record["fraction"] is None else f"{100 * record['fraction']:5.1f}% "
        print(f"[{percent}{record['stage']}] {record['message']}", file=sys.stderr, flush=True)

    try:
        results = run_job(job, show, cancel)
    except JobError as error:
        print(f"livertumor segment: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("livertumor segment: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    summary = {"output_dir": str(Path(args.out).resolve()), "liver_volume_ml": round(results["liver_volume_ml"], 1),
               "tumor_volume_ml": round(results["tumor_volume_ml"], 1), "lesions": len(results["lesions"]),
               "models": {k: v and v["id"] for k, v in results["models"].items()}, "device": results["device"],
               "timings_s": results["timings_s"]}
    print(json.dumps(summary))
    return 0


def register_cli(subparsers) -> None:
    from .model_manifest import load_manifest

    models = load_manifest()
    liver_default = next((m.id for m in models.values() if m.task == "liver"), None)
    tumor_default = next((m.id for m in models.values() if m.task == "tumor"), None)
    parser = subparsers.add_parser("segment", help="segment liver and tumors of a CT (the cascade)",
                                   description="Liver, then tumors inside the liver, on a DICOM series or an image "
                                   "file. Writes labels.nrrd, segmentation.seg.nrrd and results.json into --out.")
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
    parser.add_argument("--min-tumor-ml", type=float, default=0.1, help="drop tumor components below this volume")
    parser.add_argument("--download", action="store_true", help="download missing model weights")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs already in --out")
    parser.set_defaults(func=_segment_cli)
