"""Cancelling a worker never blocks the caller, and ends the whole process tree, even one that ignores SIGTERM.

A stub worker module (written into a temporary folder) ignores SIGTERM and the cancel file and starts a child
process, as a launcher in front of an interpreter would: only the forced kill after the grace period ends them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from LiverTumorSegLib.worker import process as worker_process
from LiverTumorSegLib.worker.process import WorkerProcess, process_alive

STUBBORN = """
import json, os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(os.environ["LIVERTUMOR_WORKER_PID_FILE"], "w").write(str(os.getpid()))
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
print(json.dumps({"stage": "child", "fraction": 0.1, "message": str(child.pid)}), flush=True)
time.sleep(600)
"""


@pytest.fixture
def stubborn_worker(tmp_path):
    (tmp_path / "stubborn_worker.py").write_text(STUBBORN)
    process = WorkerProcess({}, module="stubborn_worker", python_path=[tmp_path], work_dir=tmp_path / "job")
    process.start()
    deadline = time.monotonic() + 30
    child = None
    while time.monotonic() < deadline and child is None:
        child = next((int(event.message) for event in process.poll() if event.stage == "child"), None)
        time.sleep(0.02)
    assert child is not None, "the stub worker did not start its child"
    yield process, child
    for pid in (child, process._worker_pid()):
        if pid and process_alive(pid):
            os.kill(pid, 9)


def test_cancel_returns_at_once_and_the_tree_is_killed_after_the_grace_period(stubborn_worker):
    process, child = stubborn_worker
    worker_pid = process._worker_pid()
    started = time.monotonic()
    process.cancel(grace_s=1.0, remove_work_dir=True)
    assert time.monotonic() - started < 0.2, "cancel blocked the caller"
    assert process_alive(worker_pid), "the stub ignores SIGTERM: still alive within the grace period"
    assert process.wait_until_stopped(15)
    assert time.monotonic() - started >= 1.0
    assert not process_alive(worker_pid) and not process_alive(child), "a process of the tree survived"
    assert process.outcome().cancelled
    assert not process.work_dir.exists(), "the job folder of an abandoned run was not removed"


def test_without_psutil_the_worker_and_its_launcher_still_end(stubborn_worker, monkeypatch):
    process, child = stubborn_worker
    monkeypatch.setattr(worker_process, "_psutil", lambda: None)
    worker_pid = process._worker_pid()
    process.cancel(grace_s=0.5)
    assert process.wait_until_stopped(15)
    assert not process_alive(worker_pid) and not process.running()
    assert process.outcome().cancelled


def test_process_alive_never_signals_on_windows(monkeypatch):
    """``os.kill(pid, 0)`` sends CTRL_C_EVENT on Windows: the Windows branch must ask the OS instead."""
    calls = []
    monkeypatch.setattr(worker_process, "_psutil", lambda: None)
    monkeypatch.setattr(worker_process.os, "name", "nt")
    monkeypatch.setattr(worker_process.os, "kill", lambda *args: calls.append(args))
    monkeypatch.setattr(worker_process, "_windows_process_alive", lambda pid: pid == 1234)
    assert worker_process.process_alive(1234) and not worker_process.process_alive(99)
    assert calls == []


def test_process_alive_on_this_platform():
    assert process_alive(os.getpid())
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert not process_alive(ended.pid) and not process_alive(None)
