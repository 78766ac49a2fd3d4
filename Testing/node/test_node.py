"""The auto-segmentation DICOM node (``livertumor serve``) against a real PACS: Orthanc (pynetdicom's storage SCP where
Orthanc cannot be had), with the real cascade worker for the round trip and a restart, and a fast stand-in segment
step where the cascade adds nothing."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_cases import make_volume, small_series, write_series
from node_helpers import (
    NODE_AET,
    QUIET_S,
    STAND_IN,
    check_results,
    free_port,
    orthanc_binary,
    study_of,
    wait_results,
)
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from LiverTumorSegLib import cli
from LiverTumorSegLib.io.dicom_sr import write_dicom_results
from LiverTumorSegLib.node.segmenter import WorkerSegmenter, stop_orphan_worker
from LiverTumorSegLib.node.sender import Destination, Sender
from LiverTumorSegLib.node.server import Node

DEMO_MODELS = ("demo-liver-segresnet", "demo-tumor-segresnet")


def _scu(port: int, called: str, *contexts, calling: str = "TESTSCU"):
    ae = AE(calling)
    for context in contexts:
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", port, ae_title=called)


def _local_node(tmp_path, segment_fn, **options) -> Node:
    """A node on a free port with an unreachable destination (for tests of the receiving side)."""
    return Node("TESTNODE", free_port(), "NOBODY@127.0.0.1:9", tmp_path / "work", segment_fn, bind="127.0.0.1",
                **options).start()


# --- command line ------------------------------------------------------------------------------------------


def test_help_documents_behaviour_logs_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--ae-title", "--destination AET@HOST:PORT", "--allow", "--quiet-seconds", "--job-timeout-seconds",
                     "--log-file", "exit codes: 0 stopped by SIGINT/SIGTERM; 2 invalid arguments; 3 could not start",
                     "0x0122", "fsync'd", "back-off", "resumes", "work layout", "failed/"):
        assert expected in text, expected


@pytest.fixture
def restore_logging():
    """``livertumor serve`` configures the root logger for its process; undo that for the next tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.NOTSET)
    logging.getLogger("LiverTumorSegLib.node").setLevel(logging.NOTSET)


def test_cli_exit_codes(tmp_path, capsys, restore_logging):
    base = ["serve", "--ae-title", "N", "--work", str(tmp_path / "work"), "--bind", "127.0.0.1"]
    assert cli.main([*base, "--port", "104", "--destination", "no-port-here"]) == 2
    assert "is not AET@HOST:PORT" in capsys.readouterr().err
    assert cli.main([*base, "--port", "104", "--destination", "P@h:1", "--quiet-seconds", "-1"]) == 2
    assert cli.main([*base, "--port", str(free_port()), "--destination", "P@127.0.0.1:1",
                     "--liver-model", "no-such-model"]) == 3
    assert "cannot start: unknown model 'no-such-model'" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert cli.main([*base, "--port", str(busy.getsockname()[1]), "--destination", "P@127.0.0.1:1"]) == 3
    assert "cannot start:" in capsys.readouterr().err


# --- receiving -----------------------------------------------------------------------------------------------


def test_echo_and_durable_store_before_success(tmp_path, known_labels):
    node = _local_node(tmp_path, known_labels, quiet_s=30)
    try:
        paths, _ = small_series(tmp_path / "ct", seed=1)
        assoc = _scu(node.port, "TESTNODE", Verification, CTImageStorage)
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        sent = pydicom.dcmread(str(paths[0]))
        assert assoc.send_c_store(sent).Status == 0x0000
        # success is answered and the association is still open: the file must be on disk already
        stored = tmp_path / "work" / "incoming" / sent.SeriesInstanceUID / f"{sent.SOPInstanceUID}.dcm"
        assert stored.is_file(), "success answered before the instance was on disk"
        again = pydicom.dcmread(str(stored))
        assert again.SOPInstanceUID == sent.SOPInstanceUID and again.PixelData == sent.PixelData
        assert not list(stored.parent.glob(".tmp-*"))
        assoc.release()
    finally:
        node.stop()


def test_series_waits_for_release_then_the_quiet_period(tmp_path, log):
    calls: list[str] = []

    def record(series_dir: Path, out_dir: Path) -> list[Path]:
        calls.append(series_dir.name)
        (out_dir / "result.txt").write_text("x")
        return [out_dir / "result.txt"]

    node = _local_node(tmp_path, record, quiet_s=0.3, retry_initial_s=30, retry_max_s=30)
    try:
        paths = write_series(make_volume((16, 16, 3), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3)), tmp_path / "ct")
        assoc = _scu(node.port, "TESTNODE", CTImageStorage)
        for path in paths[:2]:
            assert assoc.send_c_store(pydicom.dcmread(str(path))).Status == 0
        time.sleep(1.0)  # more than 3x the quiet period with the association open: not complete
        assert not log.matching("received series") and not any((tmp_path / "work" / "jobs").iterdir())
        assert assoc.send_c_store(pydicom.dcmread(str(paths[2]))).Status == 0
        assoc.release()
        released = time.time()
        pattern = r"received series [0-9.]+: 3 CT instance\(s\) from TESTSCU"
        log.wait_for(pattern)
        assert 0.25 <= log.time_of(pattern) - released < 1.5
        log.wait_for(r"job 000001 end: segmented in")
        assert calls == ["input"]
    finally:
        node.stop()


def test_calling_ae_titles_can_be_restricted(tmp_path, log, known_labels):
    node = _local_node(tmp_path, known_labels, allow=["FRIEND"])
    try:
        intruder = _scu(node.port, "TESTNODE", Verification, calling="INTRUDER")
        assert not intruder.is_established and intruder.is_rejected
        log.wait_for(r"refused association from INTRUDER@127\.0\.0\.1: calling AE title not in the allow list")
        friend = _scu(node.port, "TESTNODE", Verification, calling="FRIEND")
        assert friend.is_established and friend.send_c_echo().Status == 0
        friend.release()
    finally:
        node.stop()


def test_implausible_instances_are_answered_and_logged_once(tmp_path, log, known_labels):
    """CT SOP class with Modality OT: accepted, not kept; CT without plane geometry: 0xA900; nothing is queued."""
    node = _local_node(tmp_path, known_labels, quiet_s=0.2)
    try:
        paths, _ = small_series(tmp_path / "ct", seed=2)
        assoc = _scu(node.port, "TESTNODE", CTImageStorage)
        for path in paths[:3]:
            ds = pydicom.dcmread(str(path))
            ds.Modality = "OT"
            assert assoc.send_c_store(ds).Status == 0x0000
        other_series = pydicom.uid.generate_uid()
        for path in paths[3:5]:
            ds = pydicom.dcmread(str(path))
            ds.SeriesInstanceUID = other_series
            del ds.ImagePositionPatient
            assert assoc.send_c_store(ds).Status == 0xA900
        assoc.release()
        assert len(log.wait_for(r"ignored series .*Modality 'OT'; accepted, not stored, never segmented")) == 1
        assert len(log.wait_for(r"refused series .*has no ImagePositionPatient.*status 0xA900")) == 1
        time.sleep(0.6)
        assert not any((tmp_path / "work" / "incoming").iterdir()) and not any((tmp_path / "work" / "jobs").iterdir())
    finally:
        node.stop()


# --- the real worker: an incomplete series, a job timeout ----------------------------------------------------


def _send_directly(port: int, called: str, paths: list[Path]) -> None:
    assoc = _scu(port, called, CTImageStorage)
    assert assoc.is_established
    for path in paths:
        assert assoc.send_c_store(pydicom.dcmread(str(path))).Status == 0
    assoc.release()


def test_incomplete_series_is_not_segmented_and_says_why(tmp_path, log):
    node = _local_node(tmp_path, WorkerSegmenter(*DEMO_MODELS, device="cpu"), quiet_s=0.2)
    try:
        paths, _ = small_series(tmp_path / "ct", seed=4)
        _send_directly(node.port, "TESTNODE", paths[:5] + paths[6:])  # slice 6 missing
        line = log.wait_for(r"job 000001 refused: series [0-9.]+ is not segmentable: worker exit 2 \(bad input\): "
                            r"missing slices", timeout_s=120)[0]
        assert "1 slice(s) missing" in line and "moved to" in line
        failed = tmp_path / "work" / "failed" / "000001"
        assert len(list((failed / "input").glob("*.dcm"))) == 11 and not (failed / "worker").exists()
    finally:
        node.stop()


def test_job_timeout_stops_the_worker(tmp_path, log):
    node = _local_node(tmp_path, WorkerSegmenter(*DEMO_MODELS, device="cpu", timeout_s=1.0), quiet_s=0.2)
    try:
        paths, _ = small_series(tmp_path / "ct", seed=5)
        _send_directly(node.port, "TESTNODE", paths)
        log.wait_for(r"job 000001 failed after .*SegmentError: the segmentation did not finish within 1 s; the worker "
                     r"was stopped", timeout_s=60)
        assert (tmp_path / "work" / "failed" / "000001" / "input").is_dir()
        time.sleep(0.5)
        leftovers = subprocess.run(["pgrep", "-f", f"{tmp_path}/work/jobs/000001/worker/job.json"],
                                   capture_output=True, text=True).stdout.split()
        assert not leftovers, f"worker processes left running: {leftovers}"
    finally:
        node.stop()


# --- with the PACS -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_phantom_round_trip_with_the_real_cascade(small_phantom_dicom, tmp_path, log, pacs, start_node):
    """Orthanc sends the phantom to the node; the cascade runs in the worker; SEG + SR arrive in Orthanc, reference
    the series and the SEG decodes to the cascade's labels.nrrd voxel for voxel."""
    kept = tmp_path / "cascade_labels.nrrd"
    segmenter = WorkerSegmenter(*DEMO_MODELS, device="cpu")

    def cascade_keeping_labels(series_dir: Path, out_dir: Path) -> list[Path]:
        results = segmenter(series_dir, out_dir)
        shutil.copy(out_dir / "labels.nrrd", kept)  # the job folder is deleted once Orthanc confirmed the results
        return results

    start_node(cascade_keeping_labels, quiet_s=1.0)
    paths = sorted(small_phantom_dicom["dicom"].iterdir())
    key = pacs.upload(paths)
    started = time.time()
    ok, detail = pacs.send_series(key)
    assert ok, detail
    segs, srs, seg_seen = wait_results(pacs, study_of(paths), timeout_s=300)
    assert len(segs) == 1 and len(srs) == 1
    labels = sitk.ReadImage(str(kept))
    assert np.count_nonzero(sitk.GetArrayViewFromImage(labels) == 1) > 0
    check_results(segs[0], srs[0], paths, labels)
    assert "DEMO models" in segs[0].SeriesDescription
    log.wait_for(r"job 000001 sent 2 result\(s\)")
    assert f"{len(paths)} CT instance(s)" in log.matching("received series")[0]
    assert not any((tmp_path / "work" / "jobs").iterdir()), "job folder kept after the results were confirmed"
    report = os.environ.get("LIVERTUMOR_NODE_REPORT")  # the round trip's log and timing, for the record
    if report:
        Path(report).write_text(json.dumps({"pacs": pacs.name, "series_received_to_seg_in_pacs_s": seg_seen - started,
                                            "log": log.text().splitlines()}, indent=1))


def _job_caught_running(tmp_path, pacs, start_node, known_labels, seed: int):
    """A series sent by the PACS whose (stand-in) segmentation has started and waits for the gate."""
    known_labels.gate.clear()
    start_node()
    paths, labels = small_series(tmp_path / "ct", seed=seed)
    known_labels.add(paths, labels)
    ok, detail = pacs.send_series(pacs.upload(paths))
    assert ok, detail
    assert known_labels.started.wait(30)
    return paths, labels


def test_destination_down_then_back(tmp_path, log, pacs, start_node, known_labels):
    paths, labels = _job_caught_running(tmp_path, pacs, start_node, known_labels, seed=6)
    pacs.stop()  # the destination goes down while the job runs
    try:
        known_labels.gate.set()
        retries = log.wait_for(r"job 000001: sending 2 result\(s\) to .* failed: .*; retry \d+ in", count=3)
        assert [float(re.search(r"retry \d+ in ([0-9.]+) s", line).group(1)) for line in retries[:3]] == [0.2, 0.4, 0.8]
    finally:
        pacs.start()
    segs, srs, _ = wait_results(pacs, study_of(paths))
    assert len(segs) == 1 and len(srs) == 1
    check_results(segs[0], srs[0], paths, labels)
    log.wait_for(r"job 000001 sent 2 result\(s\)")


def test_refusing_destination_is_retried(tmp_path, log, pacs, start_node, known_labels):
    paths, labels = _job_caught_running(tmp_path, pacs, start_node, known_labels, seed=7)
    pacs.refuse_node()  # up, but refusing the node's results
    try:
        known_labels.gate.set()
        retries = log.wait_for(r"job 000001: sending 2 result\(s\) to .* failed: .*; retry \d+ in", count=2)
        # Orthanc accepts the association and aborts it at the C-STORE; pynetdicom's SCP rejects it
        assert all(re.search(r"association rejected|aborted or closed the association|status 0x", line)
                   for line in retries)
        assert not pacs.datasets(study_of(paths), "SEG")
    finally:
        pacs.accept_node()
    segs, srs, _ = wait_results(pacs, study_of(paths))
    check_results(segs[0], srs[0], paths, labels)


def _wait_file(path: Path, text: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{path} never contained {text!r}:\n{path.read_text(errors='replace') if path.exists() else ''}")


def test_node_killed_mid_job_then_restarted(tmp_path, pacs, node_port):
    """``livertumor serve`` with the real worker, killed (SIGKILL) while segmenting: the restarted node stops the
    orphaned worker, segments again and delivers exactly once; SIGTERM then stops it with exit code 0."""
    work, log_file = tmp_path / "work", tmp_path / "node.log"
    command = [sys.executable, "-m", "LiverTumorSegLib.cli", "serve", "--ae-title", NODE_AET, "--port", str(node_port),
               "--bind", "127.0.0.1", "--destination", f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}", "--work", str(work),
               "--quiet-seconds", str(QUIET_S), "--device", "cpu", "--retry-initial-seconds", "0.2",
               "--retry-max-seconds", "1", "--log-file", str(log_file),
               "--liver-model", DEMO_MODELS[0], "--tumor-model", DEMO_MODELS[1]]
    paths, _ = small_series(tmp_path / "ct", seed=8)
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_file(log_file, "listening on")
        ok, detail = pacs.send_series(pacs.upload(paths))
        assert ok, detail
        _wait_file(log_file, "job 000001 start")
        _wait_file(work / "jobs" / "000001" / "worker" / "worker.pid", "")  # the worker runs
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        job = work / "jobs" / "000001"
        assert (job / "input").is_dir() and not (job / "output").exists()
        assert not pacs.datasets(study_of(paths), "SEG")
        second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            segs, srs, _ = wait_results(pacs, study_of(paths), timeout_s=180)
            text = _wait_file(log_file, "job 000001 sent 2 result(s)")
            time.sleep(1.0)  # anything sent twice would have arrived by now
            segs, srs = pacs.datasets(study_of(paths), "SEG"), pacs.datasets(study_of(paths), "SR")
            assert len(segs) == 1 and len(srs) == 1, f"{len(segs)} SEG and {len(srs)} SR arrived"
            check_results(segs[0], srs[0], paths, None)
            assert "job 000001: resuming, segmentation starts again" in text and not job.exists()
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
        assert "node LIVERNODE stopped" in log_file.read_text()
    finally:
        if first.poll() is None:
            first.kill()


def test_two_series_at_once_are_processed_in_order(tmp_path, log, pacs, start_node, known_labels):
    start_node()
    series = [small_series(tmp_path / f"ct{i}", seed=9 + i) for i in range(2)]
    for paths, labels in series:
        known_labels.add(paths, labels)
    keys = [pacs.upload(paths) for paths, _ in series]
    handles = [pacs.send_series_async(key) for key in keys]  # two concurrent associations
    assert [pacs.wait_sent(h) for h in handles] == ["Success", "Success"]
    for paths, labels in series:
        segs, srs, _ = wait_results(pacs, study_of(paths))
        assert len(segs) == 1 and len(srs) == 1
        check_results(segs[0], srs[0], paths, labels)
    log.wait_for(r"job 000002 sent 2 result\(s\)")
    events = [line.split(" ", 3)[3].split(":")[0] for line in log.matching(r"job 00000[12] (start|end)")]
    assert events == ["job 000001 start", "job 000001 end", "job 000002 start", "job 000002 end"], events
    queued = [re.search(r"received series ([0-9.]+)", line).group(1) for line in log.matching("received series")]
    assert queued == known_labels.calls and len(set(queued)) == 2  # segmented in the order they completed


def test_non_ct_series_is_refused_and_nothing_is_sent(tmp_path, log, pacs, start_node, known_labels):
    start_node()
    paths, _ = small_series(tmp_path / "mr", seed=11, modality="MR")
    ok, detail = pacs.send_series(pacs.upload(paths))
    assert not ok, f"the PACS reported success for a refused series: {detail}"
    log.wait_for(r"refused series [0-9.]+ from \S+ \(MR, MR Image Storage\): only CT is segmented \(status 0x0122")
    time.sleep(QUIET_S + 0.7)
    assert not any((tmp_path / "work" / "incoming").iterdir()) and not any((tmp_path / "work" / "jobs").iterdir())
    assert not pacs.datasets(study_of(paths), "SEG") and not pacs.datasets(study_of(paths), "SR")
    assert not log.matching("job 0") and not known_labels.calls


def test_restart_sends_only_unconfirmed_results(tmp_path, log, pacs, start_node):
    """State a crash left after the SEG was confirmed: the restarted node sends the SR alone; numbering goes on."""
    paths, labels = small_series(tmp_path / "ct", seed=12)
    work = tmp_path / "work"
    job = work / "jobs" / "000007"
    write_dicom_results(job / "output", labels, [pydicom.dcmread(p, stop_before_pixels=True) for p in paths],
                        STAND_IN)
    (job / "output" / "_results.json").write_text('{"results": ["segmentation.dcm", "report.dcm"]}')
    (job / "sent").mkdir()
    (job / "sent" / "segmentation.dcm").write_text("")
    uid = pydicom.dcmread(str(paths[0]), stop_before_pixels=True).SeriesInstanceUID
    (job / "job.json").write_text(json.dumps({"series_uid": uid, "calling_ae": "X", "instances": 12,
                                              "first_arrival": time.time(), "last_arrival": time.time()}))
    start_node(work=work)
    log.wait_for(r"job 000007 sent 2 result\(s\)")
    assert len(pacs.datasets(study_of(paths), "SR")) == 1 and pacs.datasets(study_of(paths), "SEG") == []
    assert not job.exists()
    ok, _ = pacs.send_series(pacs.upload(small_series(tmp_path / "ct2", seed=13)[0]))
    assert ok
    log.wait_for(r"queued as job 000008")
    assert (work / "last_job_number").read_text() == "8"


def test_series_received_before_a_restart_is_completed(tmp_path, log, pacs, start_node, known_labels):
    paths, labels = small_series(tmp_path / "ct", seed=14)
    known_labels.add(paths, labels)
    incoming = tmp_path / "work" / "incoming" / str(pydicom.dcmread(str(paths[0])).SeriesInstanceUID)
    incoming.mkdir(parents=True)
    for path in paths:
        (incoming / f"{pydicom.dcmread(str(path), stop_before_pixels=True).SOPInstanceUID}.dcm").write_bytes(
            path.read_bytes())
    (incoming / ".tmp-0badc0de-half-written.dcm").write_bytes(b"partial")  # a crash mid-write
    start_node()
    log.wait_for(r"series [0-9.]+: 12 instance\(s\) received before the restart")
    log.wait_for(r"received series [0-9.]+: 12 CT instance\(s\) before the restart; queued as job 000001")
    segs, srs, _ = wait_results(pacs, study_of(paths))
    check_results(segs[0], srs[0], paths, labels)


def test_a_restart_kills_only_a_real_orphaned_worker(tmp_path):
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "LiverTumorSegLib.worker"])
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        for process, folder in ((orphan, tmp_path / "a"), (bystander, tmp_path / "b")):
            folder.mkdir()
            (folder / "worker.pid").write_text(str(process.pid))
        assert stop_orphan_worker(tmp_path / "b") is None  # a reused PID is not a worker: left alone
        assert stop_orphan_worker(tmp_path / "a") == orphan.pid
        assert orphan.wait(10) == -signal.SIGKILL and bystander.poll() is None
        assert stop_orphan_worker(tmp_path / "missing") is None
    finally:
        for process in (orphan, bystander):
            process.kill()
            process.wait()


def test_orthanc_install_script_is_run_by_make_test_and_quiet_when_orthanc_is_there():
    script = Path(__file__).resolve().parents[1] / "tools" / "ensure_orthanc.sh"
    assert "bash Testing/tools/ensure_orthanc.sh" in (script.parents[2] / "Makefile").read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if orthanc_binary()[0] is None:  # running it here could install a package: that is make test's job
        pytest.skip("Orthanc is not installed: the script's quiet path cannot be checked")
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_a_job_confirmed_just_before_a_stop_is_finished_not_resent():
    sender = Sender("N", Destination.parse("NOBODY@127.0.0.1:9"), 0.1, 0.1)
    stopped = threading.Event()
    stopped.set()
    assert sender.deliver("000001", lambda: [], lambda path: None, stopped) is True  # all confirmed: done
    assert sender.deliver("000002", lambda: [Path("x.dcm")], lambda path: None, stopped) is False  # nothing tried
