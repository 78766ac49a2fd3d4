"""The node's segment step: the cascade worker as a child process on a received series, with a job timeout.

``WorkerSegmenter(series_dir, out_dir)`` runs ``python -m LiverTumorSegLib.worker`` (``worker.process``) on a
``SegmentationJob`` with the DICOM folder as input and ``out_dir`` as output; the worker writes the DICOM SEG and
SR with its other outputs (``worker.dicom_outputs``) and the step returns those two files. A worker that runs past
``timeout_s`` is stopped (SIGTERM, then killed with everything it started). ``cancel()`` (the node stopping) stops
a running worker too; the step then raises ``SegmentInterrupted`` and the job is segmented again at the next start.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from LiverTumorSegLib.worker.job import SegmentationJob
from LiverTumorSegLib.worker.process import PID_FILE, WorkerProcess
from LiverTumorSegLib.worker.runner import EXIT_BAD_INPUT, EXIT_MODEL, EXIT_OUT_OF_MEMORY

LOG = logging.getLogger("LiverTumorSegLib.node")
DEFAULT_TIMEOUT_S = 1800.0
_EXIT_MEANINGS = {EXIT_BAD_INPUT: "bad input", EXIT_MODEL: "model missing or corrupt",
                  EXIT_OUT_OF_MEMORY: "out of memory"}


class SegmentError(RuntimeError):
    """The segmentation of a job failed; ``bad_input``: the series itself cannot be segmented (not one regular CT
    volume: missing slices, gantry tilt, mixed series...)."""

    def __init__(self, message: str, *, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


class SegmentInterrupted(RuntimeError):
    """The node stopped while the job ran; it is segmented again at the next start."""


class WorkerSegmenter:
    """Segment step running the cascade worker (see the module docstring). ``manifest``: a model manifest other
    than the module's; ``python``: the interpreter for the worker (default this one)."""

    def __init__(self, liver_model: str, tumor_model: str | None, *, device: str = "auto",
                 manifest: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, python: str | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"the job timeout must be > 0 s, got {timeout_s}")
        self.liver_model, self.tumor_model = liver_model, tumor_model
        self.device, self.manifest, self.timeout_s, self.python = device, manifest, float(timeout_s), python
        self._lock = threading.Lock()
        self._process: WorkerProcess | None = None
        self._cancelled = False

    def __call__(self, series_dir: Path, out_dir: Path) -> list[Path]:
        job = SegmentationJob(liver_model=self.liver_model, tumor_model=self.tumor_model, dicom=str(series_dir),
                              output_dir=str(out_dir), device=self.device, manifest=self.manifest, overwrite=True)
        work = out_dir.parent / "worker"
        shutil.rmtree(work, ignore_errors=True)
        process = WorkerProcess(job.to_json(), work_dir=work, python=self.python)
        with self._lock:
            if self._cancelled:
                raise SegmentInterrupted()
            self._process = process
            process.start()
        started = time.monotonic()
        try:
            outcome = process.wait(self.timeout_s, on_progress=lambda e: LOG.debug("worker: %s %s", e.stage, e.message))
        finally:
            with self._lock:
                self._process = None
        if self._cancelled:
            raise SegmentInterrupted()
        if not outcome.succeeded:
            if time.monotonic() - started >= self.timeout_s:
                raise SegmentError(f"the segmentation did not finish within {self.timeout_s:.0f} s; the worker was stopped")
            reason = outcome.error or (outcome.log[-1] if outcome.log else "no message")
            meaning = _EXIT_MEANINGS.get(outcome.returncode, "failed")
            raise SegmentError(f"worker exit {outcome.returncode} ({meaning}): {reason}",
                               bad_input=outcome.returncode == EXIT_BAD_INPUT)
        return _dicom_results(out_dir)

    def cancel(self) -> None:
        """Stop a running worker (and refuse new runs): the node is stopping."""
        with self._lock:
            self._cancelled = True
            process = self._process
        if process is not None:
            process.cancel(grace_s=5.0)


def _dicom_results(out_dir: Path) -> list[Path]:
    """The worker's DICOM SEG and SR in ``out_dir``; ``SegmentError`` with the worker's reason when it made none."""
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    names = results.get("dicom_outputs") or []
    if not names:
        raise SegmentError(results.get("dicom_outputs_error") or "the worker wrote no DICOM results", bad_input=True)
    LOG.info("job %s: liver %.0f mL, tumor %.1f mL, %d lesion(s) (models %s)", out_dir.parent.name, results["liver_volume_ml"],
             results["tumor_volume_ml"], len(results["lesions"]),
             ", ".join(model["id"] for model in results["models"].values() if model))
    return [out_dir / name for name in names]


def stop_orphan_worker(work_dir: Path) -> int | None:
    """Kill the worker a crashed node left running in ``work_dir`` (its ``worker.pid``), so that a resumed job has
    one worker only; returns its PID when one was killed. Only a process whose command line is the segmentation
    worker is touched (the PID may have been reused); where ``/proc`` is missing nothing is killed."""
    try:
        pid = int((work_dir / PID_FILE).read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, ValueError):
        return None
    if b"LiverTumorSegLib.worker" not in command or pid == os.getpid():
        return None
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return None
    return pid
