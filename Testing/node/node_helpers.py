"""Helpers of the node tests: free ports, the node's log lines, a fast stand-in segment step, waiting for results in
the PACS and checking them."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from dicom_cases import sitk_read

from LiverTumorSegLib.io import dicom_io
from LiverTumorSegLib.io.dicom_seg import Algorithm, pipeline_label_map, read_segmentation
from LiverTumorSegLib.io.dicom_sr import read_measurement_report, write_dicom_results

NODE_AET = "LIVERNODE"
QUIET_S = 0.5
NODE_LOGGER = "LiverTumorSegLib.node"


def orthanc_binary() -> tuple[str | None, str]:
    """(path of the Orthanc binary, "") or (None, why not)."""
    if os.environ.get("LIVERTUMOR_PACS_BACKEND") == "pynetdicom":
        return None, "LIVERTUMOR_PACS_BACKEND=pynetdicom"
    found = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                             if os.access(p, os.X_OK)), None)
    return (found, "") if found else (None, "Orthanc is not installed (make test installs it where root and apt-get "
                                            "are available: Testing/tools/ensure_orthanc.sh)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LogLines(logging.Handler):
    """Collects the node's log lines (formatted as ``livertumor serve`` writes them) with their arrival time."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.time(), self.format(record)))

    def matching(self, pattern: str) -> list[str]:
        return [line for _, line in self.lines if re.search(pattern, line)]

    def time_of(self, pattern: str) -> float:
        return next(t for t, line in self.lines if re.search(pattern, line))

    def wait_for(self, pattern: str, count: int = 1, timeout_s: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.matching(pattern)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no {count} log line(s) matching {pattern!r}; log:\n{self.text()}")

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


STAND_IN = Algorithm("pytest stand-in (known labels)", "1.0", (("labels", "known"),))


class KnownLabels:
    """A fast stand-in segment step: SEG + SR of labels registered per Series Instance UID (``add``). With ``gate``
    cleared it signals ``started`` and waits for the gate, so a test can take the PACS down mid-job."""

    def __init__(self) -> None:
        self.labels: dict[str, sitk.Image] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.calls: list[str] = []

    def add(self, paths: list[Path], labels: sitk.Image) -> None:
        self.labels[str(pydicom.dcmread(str(paths[0]), stop_before_pixels=True).SeriesInstanceUID)] = labels

    def __call__(self, series_dir: Path, out_dir: Path) -> list[Path]:
        headers = dicom_io.series_headers(series_dir)
        uid = str(headers[0].SeriesInstanceUID)
        self.calls.append(uid)
        self.started.set()
        if not self.gate.wait(60):
            raise TimeoutError("the test never opened the gate")
        return write_dicom_results(out_dir, self.labels[uid], headers, STAND_IN)


def study_of(paths: list[Path]) -> str:
    return str(pydicom.dcmread(str(paths[0]), stop_before_pixels=True).StudyInstanceUID)


def wait_results(pacs, study_uid: str, timeout_s: float = 60.0) -> tuple[list, list, float]:
    """Poll the PACS until the study holds a SEG and an SR: (SEGs, SRs, when the SEG was first seen)."""
    deadline, seg_seen = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        segs = pacs.datasets(study_uid, "SEG")
        if segs and seg_seen is None:
            seg_seen = time.time()
        srs = pacs.datasets(study_uid, "SR") if segs else []
        if segs and srs:
            return segs, srs, seg_seen
        time.sleep(0.1)
    raise AssertionError(f"no SEG and SR of study {study_uid} in the PACS within {timeout_s} s")


def check_results(seg, sr, source_paths: list[Path], expected_labels: sitk.Image | None) -> None:
    """SEG and SR reference the source series; the SEG decodes onto SimpleITK's reading of the series to exactly
    ``expected_labels`` (None: to some 0/1/2 labelmap)."""
    sources = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in source_paths]
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == sources[0].StudyInstanceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == {s.SOPInstanceUID for s in sources}
    decoded = sitk.GetArrayFromImage(read_segmentation(seg, sitk_read(source_paths),
                                                       label_for_segment=pipeline_label_map(seg)))
    if expected_labels is None:
        assert set(np.unique(decoded)) <= {0, 1, 2}
    else:
        assert np.array_equal(decoded, sitk.GetArrayFromImage(expected_labels)), "the SEG does not decode to the labels"
    groups = read_measurement_report(sr)
    assert {g["segment"][0] for g in groups} == {seg.SOPInstanceUID}
    evidence = {s.SeriesInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                for s in st.ReferencedSeriesSequence}
    assert sources[0].SeriesInstanceUID in evidence
