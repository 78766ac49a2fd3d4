"""Sending the node's results to the destination (a PACS) with C-STORE, retried with exponential back-off.

A result counts as delivered when the destination answered success (0x0000) or a warning (0xBxxx); each delivered
file gets a marker in the job's ``sent/`` folder at once, so a resend after a crash sends only what was not
confirmed (the same files with the same SOP Instance UIDs, which a PACS stores once). A refused or aborted
association, a connection error or a failure status raises ``SendError``; ``deliver`` retries after
``retry_initial_s``, doubling up to ``retry_max_s``, with one log line per attempt.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE, build_context

LOG = logging.getLogger("LiverTumorSegLib.node")
STATUS_SUCCESS = 0x0000


@dataclass(frozen=True)
class Destination:
    """Where the results go: a DICOM C-STORE SCP (AE title, host, port)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AET@HOST:PORT``; ``ValueError`` (one line) when malformed."""
        match = re.fullmatch(r"([^@]{1,16})@([^:@]+):(\d{1,5})", text.strip())
        if not match or not 0 < int(match.group(3)) < 65536:
            raise ValueError(f"destination {text!r} is not AET@HOST:PORT (AE title of 1 to 16 characters, port 1-65535)")
        return cls(match.group(1).strip(), match.group(2), int(match.group(3)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class SendError(RuntimeError):
    """Sending to the destination failed: no connection, association refused or aborted, or a failure status."""


def _association_lost(assoc, wait_s: float = 0.5) -> bool:
    """True when the peer aborted or closed the association (pynetdicom notices within ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() <= deadline:
        if assoc.is_aborted or not assoc.is_established:
            return True
        time.sleep(0.02)
    return False


def _store(assoc, path: Path, dataset) -> None:
    """C-STORE one data set on an open association; ``SendError`` unless success or a warning is answered."""
    status = assoc.send_c_store(dataset)
    code = int(status.Status) if status and "Status" in status else None
    if code is None and _association_lost(assoc):
        raise SendError(f"the destination aborted or closed the association while storing {path.name}")
    if code is None:
        raise SendError(f"no C-STORE response for {path.name} (connection lost or timed out)")
    if code != STATUS_SUCCESS and not 0xB000 <= code <= 0xBFFF:
        raise SendError(f"{path.name} answered status 0x{code:04X}")
    if code != STATUS_SUCCESS:
        LOG.warning("%s stored with warning status 0x%04X", path.name, code)


def send_files(calling_ae: str, destination: Destination, paths: Sequence[Path],
               on_confirmed: Callable[[Path], None]) -> None:
    """C-STORE ``paths`` to ``destination`` in one association, calling ``on_confirmed(path)`` after each
    confirmed file; ``SendError`` on the first failure."""
    datasets = [(path, pydicom.dcmread(str(path))) for path in paths]
    ae = AE(ae_title=calling_ae)
    for sop_class in sorted({str(ds.SOPClassUID) for _, ds in datasets}):
        ae.add_requested_context(build_context(sop_class).abstract_syntax,
                                 [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except (OSError, RuntimeError) as error:
        raise SendError(f"cannot connect ({error})") from error
    if not assoc.is_established:
        raise SendError("association rejected" if assoc.is_rejected
                        else "no association (connection refused, aborted or timed out)")
    try:
        for path, dataset in datasets:
            _store(assoc, path, dataset)
            on_confirmed(path)
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()


@dataclass
class Sender:
    """Delivers jobs' results to ``destination`` as ``calling_ae``, retrying with back-off until ``stop`` is set."""

    calling_ae: str
    destination: Destination
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0

    def deliver(self, job_name: str, unsent: Callable[[], list[Path]], mark_sent: Callable[[Path], None],
                stop: threading.Event) -> bool:
        """Send ``unsent()`` until nothing is left (True) or ``stop`` is set (False); one log line per failed
        attempt, with the attempt number and the delay before the next."""
        delay, attempt = self.retry_initial_s, 0
        while True:
            pending = unsent()
            if not pending:  # checked before ``stop``: a job confirmed just before a stop is finished now
                return True
            if stop.is_set():
                return False
            try:
                send_files(self.calling_ae, self.destination, pending, mark_sent)
            except SendError as error:
                attempt += 1
                LOG.warning("job %s: sending %d result(s) to %s failed: %s; retry %d in %.1f s", job_name,
                            len(pending), self.destination, error, attempt, delay)
                if stop.wait(delay):
                    return False
                delay = min(delay * 2.0, self.retry_max_s)
