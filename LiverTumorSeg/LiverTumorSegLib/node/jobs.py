"""The node's persistent work folder: everything it knows is on disk, so that nothing is lost and a restart resumes.

Layout (``WorkFolder``)::

    incoming/<SeriesInstanceUID>/<SOPInstanceUID>.dcm  received instances, each written to a temporary file,
                                                       fsync'd, renamed, folder fsync'd: before C-STORE success
    jobs/<NNNNNN>/input/                               a complete series (moved there by one rename)
    jobs/<NNNNNN>/job.json                             series UID, calling AE title, instance count, arrival times
    jobs/<NNNNNN>/worker/, output.partial/             the segment step's folders (discarded on restart)
    jobs/<NNNNNN>/output/                              the results; appears by one rename once the step succeeded,
                                                       with _results.json listing the files to send
    jobs/<NNNNNN>/sent/<file>                          one marker per result the destination confirmed
    failed/<NNNNNN>/                                   jobs whose segmentation failed (kept for the administrator)
    last_job_number                                    job numbers never repeat, across restarts too

A job folder is deleted only after the destination confirmed every result.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from LiverTumorSegLib.io.atomic import TEMPORARY_PREFIX, fsync_folder, write_bytes

RESULTS_FILE = "_results.json"


def write_json(path: Path, value: dict) -> None:
    write_bytes(path, json.dumps(value, indent=1).encode("utf-8"), overwrite=True)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Resumed:
    """What a restart finds: series still being received (``incoming``: UID -> instance count and first arrival,
    epoch s), jobs to segment again and jobs whose results still have to be sent, both in job order."""

    incoming: dict[str, tuple[int, float]]
    to_segment: list[Path]
    to_send: list[Path]


class WorkFolder:
    """The work folder's layout and its durable operations (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()  # the worker and the log get absolute paths
        self.incoming = self.root / "incoming"
        self.jobs = self.root / "jobs"
        self.failed = self.root / "failed"
        self._counter = self.root / "last_job_number"
        self._last_number = 0

    def create(self) -> None:
        """Create the folders (``OSError`` when ``root`` is not writable)."""
        for folder in (self.incoming, self.jobs, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".write-test-{os.getpid()}"
        write_bytes(probe, b"", overwrite=True)
        probe.unlink()

    def store_instance(self, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Durably store one received instance (before its C-STORE success is answered)."""
        folder = self.incoming / series_uid
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{sop_uid}.dcm"
        write_bytes(path, data, overwrite=True)
        return path

    def resume(self) -> Resumed:
        """Clean what a crash left half-done (temporary files, partial outputs) and list the pending work."""
        incoming = {}
        for folder in sorted(p for p in self.incoming.iterdir() if p.is_dir()):
            for stale in folder.glob(f"{TEMPORARY_PREFIX}*"):
                stale.unlink()
            files = list(folder.glob("*.dcm"))
            first = min((f.stat().st_mtime for f in files), default=time.time())
            incoming[folder.name] = (len(files), first)
        to_segment, to_send = [], []
        for job in sorted(p for p in self.jobs.iterdir() if p.is_dir() and p.name.isdigit()):
            if (job / "output").is_dir():
                to_send.append(job)
            else:
                for partial in ("output.partial", "worker", "sent"):
                    shutil.rmtree(job / partial, ignore_errors=True)
                to_segment.append(job)
        numbered = [int(p.name) for folder in (self.jobs, self.failed) for p in folder.iterdir() if p.name.isdigit()]
        stored = int(self._counter.read_text().strip() or 0) if self._counter.is_file() else 0
        self._last_number = max([stored, *numbered])
        return Resumed(incoming, to_segment, to_send)

    def make_job(self, series_uid: str, info: dict) -> Path | None:
        """Move the received series into a new numbered job (one rename) with its ``job.json``; None when nothing
        of it is on disk. Call with the node's receive lock held (no instance is written meanwhile)."""
        source = self.incoming / series_uid
        if not source.is_dir() or not any(source.glob("*.dcm")):
            shutil.rmtree(source, ignore_errors=True)
            return None
        self._last_number += 1
        write_bytes(self._counter, str(self._last_number).encode(), overwrite=True)
        job = self.jobs / f"{self._last_number:06d}"
        job.mkdir()
        os.replace(source, job / "input")
        fsync_folder(self.incoming)
        write_json(job / "job.json", {"series_uid": series_uid, **info,
                                      "instances": sum(1 for _ in (job / "input").glob("*.dcm")),
                                      "queued": time.time()})
        fsync_folder(self.jobs)
        return job

    @staticmethod
    def info(job: Path) -> dict:
        return read_json(job / "job.json")

    @staticmethod
    def partial_output(job: Path) -> Path:
        """A fresh, empty ``output.partial`` for the segment step."""
        partial = job / "output.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        return partial

    @staticmethod
    def publish_output(job: Path, names: list[str], seconds: float) -> None:
        """``output.partial`` becomes ``output`` (one rename), with the list of results to send."""
        partial = job / "output.partial"
        write_json(partial / RESULTS_FILE, {"results": names, "segmented": time.time(), "seconds": round(seconds, 3)})
        os.replace(partial, job / "output")
        shutil.rmtree(job / "worker", ignore_errors=True)
        fsync_folder(job)

    @staticmethod
    def results(job: Path) -> list[Path]:
        """The result files of a segmented job, in sending order."""
        return [job / "output" / name for name in read_json(job / "output" / RESULTS_FILE)["results"]]

    @staticmethod
    def unsent(job: Path) -> list[Path]:
        """The results the destination has not confirmed yet."""
        sent = job / "sent"
        return [path for path in WorkFolder.results(job) if not (sent / path.name).exists()]

    @staticmethod
    def mark_sent(job: Path, name: str) -> None:
        (job / "sent").mkdir(exist_ok=True)
        write_bytes(job / "sent" / name, b"", overwrite=True)

    def finish(self, job: Path) -> None:
        """Delete a job whose results were all confirmed."""
        shutil.rmtree(job)
        fsync_folder(self.jobs)

    def fail(self, job: Path) -> Path:
        """Move a job whose segmentation failed to ``failed/`` (kept, never retried); returns its new folder."""
        target = self.failed / job.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(job / "worker", ignore_errors=True)
        os.replace(job, target)
        fsync_folder(self.jobs)
        return target
