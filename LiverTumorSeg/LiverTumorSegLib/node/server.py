"""The auto-segmentation DICOM node: a storage SCP that segments complete CT series and sends the results back.

Behaviour (one log line per event, for the PACS administrator):

- **Associations**: C-ECHO and C-STORE. With an allow list, associations from other calling AE titles are
  rejected (A-ASSOCIATE-RJ, "calling AE title not recognised").
- **Receiving**: every storage SOP class is negotiated, so that a non-CT instance gets an explicit answer: status
  0x0122 "SOP Class not supported". A CT instance whose Modality is not CT is accepted (0x0000) but discarded and
  never segmented; a CT instance without pixel data or plane geometry is refused with 0xA900 "data set does not
  match SOP class"; invalid UIDs 0xC000; each logged once per series and association. A CT instance is written to
  disk (``jobs.WorkFolder.store_instance``: fsync'd) **before** success is answered; a failed write answers
  0xA700 "out of resources".
- **Series completion**: a series is complete when no association that delivered it is still open (released or
  aborted) and no instance of it arrived for ``quiet_s`` seconds (monotonic clock). It then becomes a numbered job;
  instances arriving later make a new job.
- **Jobs**: one at a time, in the order their series completed: ``segment_fn(input_dir, output_dir) -> [files]``
  (``segmenter.WorkerSegmenter``: the cascade worker). A series the worker cannot segment (not one regular CT
  volume: missing slices, tilt, ...) or any other failure moves the job to ``failed/`` with one line saying why.
- **Sending**: the results go to the destination by C-STORE, job after job (``sender``); the job folder is deleted
  only when the destination confirmed every result; while it is unreachable or refusing, later series are still
  segmented and wait.
- **Restart**: the work folder is the whole state (``jobs``); a restarted node resumes every pending job.
"""

from __future__ import annotations

import logging
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    Verification,
)

from LiverTumorSegLib.node.jobs import WorkFolder
from LiverTumorSegLib.node.segmenter import SegmentError, SegmentInterrupted, stop_orphan_worker
from LiverTumorSegLib.node.sender import Destination, Sender

LOG = logging.getLogger("LiverTumorSegLib.node")

CT_SOP_CLASSES = frozenset({str(CTImageStorage), str(EnhancedCTImageStorage),
                            str(LegacyConvertedEnhancedCTImageStorage)})
STATUS_SUCCESS = 0x0000
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5: Refused, SOP Class not supported
STATUS_OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, out of resources
STATUS_DATA_SET_DOES_NOT_MATCH = 0xA900  # PS3.4 B.2.3: Error, data set does not match SOP class
STATUS_CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Error, cannot understand
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SINGLE_FRAME_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")

SegmentFn = Callable[[Path, Path], Sequence[Path]]


@dataclass
class _Series:
    """A series being received: the open associations that delivered it, count, arrival times (epoch s) and the
    monotonic clock of the last arrival (for the quiet period)."""

    uid: str
    calling_ae: str
    first_arrival: float
    last_arrival: float
    instances: int = 0
    last_monotonic: float = field(default_factory=time.monotonic)
    open_associations: set[int] = field(default_factory=set)
    restored: bool = False


def _unusable(dataset, sop_class: str) -> str | None:
    """Why a CT instance cannot be part of a volume (no pixel data, no plane geometry), or None."""
    missing = [k for k in ("Rows", "Columns", "PixelData") if k not in dataset]
    if sop_class == str(CTImageStorage):
        missing += [k for k in SINGLE_FRAME_GEOMETRY if k not in dataset]
    elif "PerFrameFunctionalGroupsSequence" not in dataset:
        missing.append("PerFrameFunctionalGroupsSequence")
    return f"no {', '.join(missing)}" if missing else None


class Node:
    """The DICOM node (see the module docstring): ``start()`` listens and runs its threads, ``stop()`` ends them."""

    def __init__(self, ae_title: str, port: int, destination: Destination | str, work_dir: str | Path,
                 segment_fn: SegmentFn, *, allow: Sequence[str] | None = None, quiet_s: float = 5.0,
                 bind: str = "0.0.0.0", retry_initial_s: float = 2.0, retry_max_s: float = 300.0,
                 poll_s: float = 0.1) -> None:
        if not 0 < len(ae_title.strip()) <= 16:
            raise ValueError(f"AE title {ae_title!r} must have 1 to 16 characters")
        if quiet_s < 0 or retry_initial_s <= 0 or retry_max_s < retry_initial_s:
            raise ValueError("the quiet period must be >= 0 s and 0 < first retry delay <= longest retry delay")
        self.ae_title, self.port, self.bind = ae_title.strip(), int(port), bind
        destination = destination if isinstance(destination, Destination) else Destination.parse(destination)
        self.sender = Sender(self.ae_title, destination, float(retry_initial_s), float(retry_max_s))
        self.work = WorkFolder(work_dir)
        self.segment_fn = segment_fn
        self.allow = [a.strip() for a in allow] if allow else None
        self.quiet_s, self.poll_s = float(quiet_s), poll_s
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._logged: set[tuple[int, str]] = set()  # (association, series) refusals already logged
        self._segment_queue: queue.Queue[Path] = queue.Queue()
        self._send_queue: queue.Queue[Path] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None

    @property
    def destination(self) -> Destination:
        return self.sender.destination

    # --- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Node:
        """Create the work folders, resume pending work, listen, start the scheduler, segmenter and sender.
        ``OSError`` when the work folder is not writable or the port cannot be bound."""
        self.work.create()
        self._resume()
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = 0  # no limit on what we receive: fewer PDUs for large CT series
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.allow:
            ae.require_calling_aet = self.allow
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_RELEASED, self._on_association_end), (evt.EVT_ABORTED, self._on_association_end),
                    (evt.EVT_REJECTED, self._on_rejected)]
        self._server = ae.start_server((self.bind, self.port), block=False, evt_handlers=handlers)
        LOG.info("node %s listening on %s:%d (allow: %s); results go to %s; quiet period %.1f s; work %s",
                 self.ae_title, self.bind, self.port, ",".join(self.allow) if self.allow else "any calling AE title",
                 self.destination, self.quiet_s, self.work.root)
        for name, target in (("scheduler", self._schedule_loop), ("segmenter", self._segment_loop),
                             ("sender", self._send_loop)):
            thread = threading.Thread(target=target, name=f"node-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop listening, stop a running segmentation (its job resumes at the next start) and end the threads."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        cancel = getattr(self.segment_fn, "cancel", None)
        if cancel is not None:
            cancel()
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._threads.clear()
        LOG.info("node %s stopped", self.ae_title)

    def _resume(self) -> None:
        """Queue what the work folder holds from before (see ``jobs.WorkFolder.resume``), after stopping a worker a
        crashed node left running."""
        for worker_dir in sorted(self.work.jobs.glob("*/worker")):
            pid = stop_orphan_worker(worker_dir)
            if pid is not None:
                LOG.warning("job %s: stopped worker process %d left running by the previous node", worker_dir.parent.name,
                            pid)
        resumed = self.work.resume()
        now = time.time()
        for uid, (count, first) in resumed.incoming.items():
            self._series[uid] = _Series(uid, "?", first, now, count, restored=True)
            LOG.info("series %s: %d instance(s) received before the restart; complete after %.1f s of quiet",
                     uid, count, self.quiet_s)
        for job in resumed.to_send:
            LOG.info("job %s: resuming, results not yet all sent", job.name)
            self._send_queue.put(job)
        for job in resumed.to_segment:
            LOG.info("job %s: resuming, segmentation starts again", job.name)
            self._segment_queue.put(job)

    # --- DICOM handlers ------------------------------------------------------------------------------------

    @staticmethod
    def _peer(event) -> str:
        requestor = event.assoc.requestor
        return f"{requestor.ae_title}@{requestor.address}"

    def _on_echo(self, event) -> int:
        LOG.debug("C-ECHO from %s", self._peer(event))
        return STATUS_SUCCESS

    def _on_rejected(self, event) -> None:
        reason = ": calling AE title not in the allow list" if self.allow else ""
        LOG.warning("refused association from %s%s", self._peer(event), reason)

    def _log_once(self, event, series_uid: str, message: str) -> None:
        key = (id(event.assoc), series_uid)
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        LOG.warning("%s", message)

    def _on_store(self, event) -> int:
        """C-STORE: refuse what cannot be segmented, else store the instance durably, then answer success."""
        sop_class = str(event.request.AffectedSOPClassUID)
        try:
            dataset = event.dataset
            series_uid, sop_uid = str(dataset.get("SeriesInstanceUID", "")), str(dataset.get("SOPInstanceUID", ""))
            modality = str(dataset.get("Modality", ""))
        except Exception as error:  # noqa: BLE001 - an undecodable data set
            LOG.warning("refused an instance from %s: cannot decode the data set (%s)", self._peer(event), error)
            return STATUS_CANNOT_UNDERSTAND
        where = f"series {series_uid or '?'} from {self._peer(event)}"
        if sop_class not in CT_SOP_CLASSES:
            self._log_once(event, series_uid, f"refused {where} ({modality or '?'}, {UID(sop_class).name}): only CT "
                           "is segmented (status 0x0122 SOP class not supported)")
            return STATUS_SOP_CLASS_NOT_SUPPORTED
        if modality != "CT":
            self._log_once(event, series_uid, f"ignored {where}: CT SOP class but Modality {modality!r}; accepted, "
                           "not stored, never segmented")
            return STATUS_SUCCESS
        if not all(_UID.match(uid) and len(uid) <= 64 for uid in (series_uid, sop_uid)):
            LOG.warning("refused an instance of %s: invalid Series/SOP Instance UID %r/%r (status 0xC000)", where,
                        series_uid, sop_uid)
            return STATUS_CANNOT_UNDERSTAND
        problem = _unusable(dataset, sop_class)
        if problem:
            self._log_once(event, series_uid, f"refused {where}: CT instance {sop_uid} has {problem}, so it cannot "
                           "be part of a volume (status 0xA900 data set does not match SOP class)")
            return STATUS_DATA_SET_DOES_NOT_MATCH
        return self._persist(event, series_uid, sop_uid)

    def _persist(self, event, series_uid: str, sop_uid: str) -> int:
        now = time.time()
        with self._lock:
            series = self._series.get(series_uid)
            if series is None:
                series = self._series[series_uid] = _Series(series_uid, event.assoc.requestor.ae_title, now, now)
            series.open_associations.add(id(event.assoc))  # not complete while this association is open
        try:
            self.work.store_instance(series_uid, sop_uid, event.encoded_dataset(include_meta=True))
        except OSError as error:
            LOG.error("could not store instance %s of series %s: %s (status 0xA700)", sop_uid, series_uid, error)
            return STATUS_OUT_OF_RESOURCES
        with self._lock:
            series.instances += 1
            series.last_arrival, series.last_monotonic = time.time(), time.monotonic()
        return STATUS_SUCCESS

    def _on_association_end(self, event) -> None:
        association = id(event.assoc)
        aborted = event.event is evt.EVT_ABORTED
        with self._lock:
            self._logged = {key for key in self._logged if key[0] != association}
            for series in self._series.values():
                if association in series.open_associations:
                    series.open_associations.discard(association)
                    if aborted:
                        LOG.warning("association from %s aborted while sending series %s (%d instance(s) so far); "
                                    "it is processed after the quiet period", self._peer(event), series.uid,
                                    series.instances)

    # --- scheduler: complete series become jobs -----------------------------------------------------------

    def _schedule_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._queue_complete_series()
            except Exception:  # noqa: BLE001 - keep the node alive, say what happened
                LOG.exception("scheduler error")

    def _queue_complete_series(self) -> None:
        now = time.monotonic()
        with self._lock:
            ready = [s for s in self._series.values()
                     if not s.open_associations and now - s.last_monotonic >= self.quiet_s]
            for series in sorted(ready, key=lambda s: s.last_monotonic):
                del self._series[series.uid]
                job = self.work.make_job(series.uid, {"calling_ae": series.calling_ae,
                                                      "first_arrival": series.first_arrival,
                                                      "last_arrival": series.last_arrival})
                if job is None:
                    continue
                count = self.work.info(job)["instances"]
                span = series.last_arrival - series.first_arrival
                origin = "before the restart" if series.restored else f"from {series.calling_ae} in {span:.1f} s"
                LOG.info("received series %s: %d CT instance(s) %s; queued as job %s", series.uid, count, origin,
                         job.name)
                self._segment_queue.put(job)

    # --- segmenter: one job at a time -----------------------------------------------------------------------

    def _jobs_from(self, source: queue.Queue, handle: Callable[[Path], None], doing: str) -> None:
        """Take jobs from ``source`` one at a time, in order, until the node stops."""
        while not self._stop.is_set():
            try:
                job = source.get(timeout=self.poll_s)
            except queue.Empty:
                continue
            try:
                handle(job)
            except Exception:  # noqa: BLE001 - keep the node alive, say what happened
                LOG.exception("job %s: unexpected error while %s", job.name, doing)

    def _segment_loop(self) -> None:
        self._jobs_from(self._segment_queue, self._segment_and_queue, "segmenting")

    def _segment_and_queue(self, job: Path) -> None:
        if self._segment(job):
            self._send_queue.put(job)

    def _segment(self, job: Path) -> bool:
        """Run the segment step on the job; True when its results are ready to send."""
        if self._stop.is_set():
            return False
        info = self.work.info(job)
        partial = self.work.partial_output(job)
        LOG.info("job %s start: series %s (%d instances)", job.name, info["series_uid"], info["instances"])
        started = time.time()
        try:
            names = _result_names(self.segment_fn(job / "input", partial), partial)
        except SegmentInterrupted:
            LOG.warning("job %s interrupted by the node stopping; it is segmented again at the next start", job.name)
            return False
        except Exception as error:  # noqa: BLE001 - any failure fails the job, not the node
            if self._stop.is_set():
                LOG.warning("job %s interrupted by the node stopping (%s); segmented again at the next start",
                            job.name, error)
                return False
            target = self.work.fail(job)
            if isinstance(error, SegmentError) and error.bad_input:
                LOG.error("job %s refused: series %s is not segmentable: %s; moved to %s", job.name,
                          info["series_uid"], error, target)
            else:
                LOG.error("job %s failed after %.1f s: %s: %s; moved to %s", job.name, time.time() - started,
                          type(error).__name__, error, target)
            return False
        elapsed = time.time() - started
        self.work.publish_output(job, names, elapsed)
        LOG.info("job %s end: segmented in %.1f s, %d result file(s)", job.name, elapsed, len(names))
        return True

    # --- sender: results to the destination ------------------------------------------------------------------

    def _send_loop(self) -> None:
        self._jobs_from(self._send_queue, self._deliver, "sending")

    def _deliver(self, job: Path) -> None:
        started = time.time()
        count = len(self.work.results(job))
        done = self.sender.deliver(job.name, lambda: self.work.unsent(job),
                                   lambda path: self.work.mark_sent(job, path.name), self._stop)
        if not done:
            return
        info = self.work.info(job)
        self.work.finish(job)  # every result confirmed: the job is done
        LOG.info("job %s sent %d result(s) to %s in %.1f s; series %s: %.1f s from first instance received to "
                 "results stored", job.name, count, self.destination, time.time() - started, info["series_uid"],
                 time.time() - info["first_arrival"])


def _result_names(results: Sequence[Path], partial: Path) -> list[str]:
    """Names of the segment step's result files, which must lie directly in ``partial``."""
    if not results:
        raise SegmentError("the segment step returned no result files")
    names = []
    for path in map(Path, results):
        resolved = path if path.is_absolute() else partial / path
        if resolved.resolve().parent != partial.resolve() or not resolved.is_file():
            raise SegmentError(f"{path}: a result must be an existing file directly in {partial}")
        names.append(resolved.name)
    return names


def serve(node: Node) -> None:
    """Start ``node`` and run until SIGINT or SIGTERM, then stop it."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        node.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            node.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
