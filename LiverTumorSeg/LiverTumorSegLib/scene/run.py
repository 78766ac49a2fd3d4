"""Run the segmentation worker on a volume node and bring its results into the scene (no Qt).

The Slicer widget starts a ``SegmentationRun``, drains ``poll()`` from a ``qt.QTimer`` and calls
``finish()`` when ``running()`` turns false; scripts and the self-tests call ``run_blocking()``. The scene
is changed only when the worker succeeded and the run's input nodes are still in the scene; the temporary folder
(input copy, job, outputs) is removed in every outcome. ``cancel()`` returns at once (the worker tree is ended
in the background); ``abandon()`` is the cancel of a run nobody will finish (scene closed, input changed):
nothing is imported and the job folder goes once the worker has ended. ``stale_reason`` says when a run must be
abandoned.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk

from LiverTumorSegLib.core.cancel import Cancelled
from LiverTumorSegLib.core.options import MIN_TUMOR_ML
from LiverTumorSegLib.core.plausibility import ImplausibleInputError, check_ct
from LiverTumorSegLib.scene import volumes as scene_bridge
from LiverTumorSegLib.worker.job import SegmentationJob
from LiverTumorSegLib.worker.process import ProgressEvent, WorkerProcess


class RunFailed(RuntimeError):
    """The worker ended with an error; the message is the worker's one-line reason."""


class RunCancelled(Cancelled):
    """The user cancelled the run; nothing was added to the scene."""


def slicer_launcher(args, env):
    """Start a worker from inside Slicer: ``slicer.util.launchConsoleProcess`` with Slicer's startup
    environment (what ``PythonSlicer`` expects) plus only the variables the job changed."""
    import os

    import slicer

    changed = {key: value for key, value in env.items() if os.environ.get(key) != value}
    return slicer.util.launchConsoleProcess(args, updateEnvironment=changed)


def default_python() -> str:
    """``PythonSlicer`` inside Slicer (the Slicer executable is not a Python interpreter), else this Python."""
    return shutil.which("PythonSlicer") or sys.executable


class BackgroundRun:
    """A worker run started from the scene: poll progress, cancel, then ``finish()`` brings the result in.

    Subclasses set ``self.worker`` (a ``WorkerProcess``), write their inputs in ``start()`` and read the
    outputs in ``_read_outputs()``; the job folder is removed in every outcome.
    """

    worker: WorkerProcess
    what = "run"

    def start(self) -> None:
        self.worker.start()

    def poll(self) -> list[ProgressEvent]:
        events = self.worker.poll()
        if events:
            self.last_progress = events[-1]
        return events

    def running(self) -> bool:
        return self.worker.running()

    def log_lines(self) -> list[str]:
        return self.worker.log

    def cancel(self) -> None:
        """Ask the worker to stop; returns at once (the tree is ended in the background). ``finish()`` then
        raises ``RunCancelled``."""
        self.worker.cancel()

    def abandon(self) -> None:
        """Cancel a run that will never be finished: nothing is imported, the job folder is removed as soon as
        the worker tree has ended. Returns at once."""
        self.worker.cancel(remove_work_dir=True)

    def input_nodes(self) -> tuple:
        """The scene nodes the run reads and its result refers to."""
        return ()

    def stale_reason(self, current_volume_node=None) -> str | None:
        """Why the run's result could no longer be imported, or None: an input node left the scene (closed scene,
        deleted node), or ``current_volume_node`` (the volume now selected as input) is another volume."""
        for node in self.input_nodes():
            if node is None or node.GetScene() is None:
                return f"the input of the {self.what} was removed from the scene; nothing was imported"
        volume = self.input_nodes()[0] if self.input_nodes() else None
        if current_volume_node is not None and volume is not None and current_volume_node is not volume:
            return (f"the input volume changed from {volume.GetName()!r} to {current_volume_node.GetName()!r}; "
                    f"the {self.what} was cancelled")
        return None

    def _read_outputs(self):
        raise NotImplementedError

    def finish(self):
        """After the worker ended: its imported result, or ``RunCancelled``/``RunFailed``; always cleans up. A
        result whose input nodes left the scene meanwhile is not imported (``RunCancelled``)."""
        try:
            outcome = self.worker.outcome()
            if outcome.cancelled:
                raise RunCancelled(f"{self.what.capitalize()} cancelled.")
            if not outcome.succeeded:
                raise RunFailed(outcome.error or f"the {self.what} worker failed:\n" + "\n".join(outcome.log[-5:]))
            reason = self.stale_reason()
            if reason is not None:
                raise RunCancelled(reason[0].upper() + reason[1:] + ".")
            return self._read_outputs()
        finally:
            self.worker.cleanup()

    def run_blocking(self, on_progress: Callable[[ProgressEvent], None] | None = None, timeout_s: float | None = None):
        """Start, wait (forwarding progress) and finish; returns what ``finish`` returns."""
        self.start()
        self.worker.wait(timeout_s=timeout_s, on_progress=on_progress)
        return self.finish()


class SegmentationRun(BackgroundRun):
    """One run of the cascade on ``volume_node`` (a CT in HU).

    ``device`` is ``"auto"`` or ``"cpu"`` (the latter also hides GPUs from the worker with
    ``CUDA_VISIBLE_DEVICES=-1``). ``launcher`` is ``slicer.util.launchConsoleProcess``-compatible
    (``launcher(args, env) -> Popen``); the default starts a plain subprocess. ``force``: segment a volume the
    CT plausibility gate finds implausible (``core.plausibility.check_ct``), which ``start`` otherwise refuses
    before starting the worker (``ImplausibleInputError``, a ``ValueError``). ``allow_download``: the worker fetches
    models missing from the cache first (progress and cancel as for the segmentation); the caller asks the user.
    """

    def __init__(self, volume_node, *, liver_model: str, tumor_model: str | None, device: str = "auto",
                 min_tumor_ml: float = MIN_TUMOR_ML, per_lesion_segments: bool = False, python: str | None = None,
                 launcher=None, manifest: str | Path | None = None, force: bool = False,
                 allow_download: bool = False) -> None:
        if volume_node is None or volume_node.GetImageData() is None:
            raise ValueError("No CT volume selected: load or select a CT volume first.")
        self.volume_node = volume_node
        self.per_lesion_segments = per_lesion_segments
        self.job_options = {"liver_model": liver_model, "tumor_model": tumor_model, "device": device,
                            "min_tumor_ml": float(min_tumor_ml),
                            "manifest": None if manifest is None else str(manifest), "force": force,
                            "allow_download": allow_download}
        extra_env = {"CUDA_VISIBLE_DEVICES": "-1"} if device == "cpu" else {}
        options = {"python": python or default_python(), "extra_env": extra_env}
        if launcher is not None:
            options["launcher"] = launcher
        self.worker = WorkerProcess({}, **options)
        self.last_progress: ProgressEvent | None = None

    what = "segmentation"

    def input_nodes(self) -> tuple:
        return (self.volume_node,)

    def start(self) -> None:
        """Check that the volume looks like a CT in HU (fail fast, before a worker starts), write it to the job
        folder as NRRD (HU, LPS geometry of its own frame: a parent transform is not applied, the result is placed
        under the same transform) and start the worker (which checks it again)."""
        image = scene_bridge.image_from_volume_node(self.volume_node, local_frame=True)
        try:
            check_ct(image, f"volume {self.volume_node.GetName()!r}", force=self.job_options["force"])
        except ImplausibleInputError:
            self.worker.cleanup()
            raise
        input_path = self.worker.work_dir / "input.nrrd"
        sitk.WriteImage(image, str(input_path))
        job = SegmentationJob(image=str(input_path), output_dir=str(self.worker.output_dir), **self.job_options)
        self.worker.job.update(job.to_json())
        self.worker.start()

    def _read_outputs(self):
        """The new segmentation node made from the worker's outputs."""
        from LiverTumorSegLib.scene.results import import_results

        return import_results(self.worker.output_dir, self.volume_node, per_lesion_segments=self.per_lesion_segments)
