"""The segmentation worker as a child process: start, read progress, cancel the whole tree, clean up.

No Slicer and no Qt here. Inside Slicer the module passes ``slicer.util.launchConsoleProcess`` as the
launcher and ``PythonSlicer`` as the interpreter and drains ``poll()`` from a ``qt.QTimer``; scripts and
tests use ``subprocess.Popen`` and ``wait()``.

Cancel must end the real worker, not only a launcher in front of it (``PythonSlicer`` is a launcher that
starts the real interpreter as its child). The worker writes its own PID to ``worker.pid`` in the job
folder first thing, so ``cancel()`` signals the worker itself (SIGTERM: it stops at the next sliding window
and removes its partial output), waits, then kills what is left, launcher included.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from LiverTumorSegLib.resources import LIBRARY_PARENT

PID_FILE = "worker.pid"


@dataclass
class ProgressEvent:
    """One progress line of the worker: stage name, overall fraction (None on error) and message."""

    stage: str
    fraction: float | None
    message: str


@dataclass
class WorkerOutcome:
    """How a run ended: ``returncode`` 0 success, 130 cancelled, else failure with ``error``."""

    returncode: int
    error: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0

    @property
    def cancelled(self) -> bool:
        return self.returncode == 130


def default_launcher(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
                            bufsize=1)


class WorkerProcess:
    """One worker run of one job.

    ``job`` is the job dict of the worker ``module`` (default the segmentation worker,
    ``LiverTumorSegLib.worker``) without ``output_dir`` (set here to a folder in the job's temporary folder
    unless given). ``python`` is the interpreter (``PythonSlicer`` in Slicer). ``python_path`` lists folders
    the worker imports from besides the one holding ``LiverTumorSegLib`` (e.g. the TNMStaging module folder).
    ``extra_env`` is added to the environment (e.g. ``CUDA_VISIBLE_DEVICES=-1`` to force the CPU).
    """

    def __init__(self, job: dict[str, Any], *, python: str | None = None,
                 launcher: Callable[[Sequence[str], dict[str, str]], subprocess.Popen] = default_launcher,
                 extra_env: dict[str, str] | None = None, work_dir: str | Path | None = None,
                 module: str = "LiverTumorSegLib.worker", python_path: Sequence[str | Path] = ()) -> None:
        self.module = module
        self._python_path = [str(folder) for folder in python_path] + [str(LIBRARY_PARENT)]
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="LiverTumorSeg-job-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.job = dict(job)
        self.job.setdefault("output_dir", str(self.work_dir / "output"))
        self.python = python or sys.executable
        self._launcher = launcher
        self._extra_env = dict(extra_env or {})
        self._queue: queue.Queue = queue.Queue()
        self._log: list[str] = []
        self._last_error = ""
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @property
    def output_dir(self) -> Path:
        return Path(self.job["output_dir"])

    @property
    def log(self) -> list[str]:
        """Lines the worker printed that are not progress records (warnings, tracebacks)."""
        return list(self._log)

    def start(self) -> None:
        job_file = self.work_dir / "job.json"
        job_file.write_text(json.dumps(self.job, indent=2))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [*self._python_path, env.get("PYTHONPATH", "")]))
        env["LIVERTUMOR_WORKER_PID_FILE"] = str(self.work_dir / PID_FILE)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self._extra_env)
        self._process = self._launcher([self.python, "-m", self.module, str(job_file)], env)
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        for line in self._process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def poll(self) -> list[ProgressEvent]:
        """Progress events received since the last call (never blocks); other lines go to the log."""
        events = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                continue
            event = _parse_progress(line)
            if event is None:
                self._log.append(line)
                continue
            if event.stage in ("error", "cancelled"):
                self._last_error = event.message
            events.append(event)
        return events

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self, timeout_s: float | None = None, on_progress: Callable[[ProgressEvent], None] | None = None
             ) -> WorkerOutcome:
        """Block until the worker ends (or ``timeout_s`` passes: then cancel), forwarding progress."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.running():
            for event in self.poll():
                if on_progress:
                    on_progress(event)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                break
            time.sleep(0.05)
        return self.outcome(on_progress)

    def outcome(self, on_progress: Callable[[ProgressEvent], None] | None = None) -> WorkerOutcome:
        self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        for event in self.poll():
            if on_progress:
                on_progress(event)
        return WorkerOutcome(self._process.returncode if self._process.returncode >= 0 else 130,
                             self._last_error, list(self._log))

    def cancel(self, grace_s: float = 10.0) -> None:
        """Stop the worker and everything it started; its partial output is removed by the worker or here."""
        if self._process is None:
            return
        worker_pid = self._worker_pid()
        for pid in {worker_pid, self._process.pid} - {None}:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (self.running() or _alive(worker_pid)):
            time.sleep(0.05)
        for pid in {worker_pid, self._process.pid} - {None}:
            if _alive(pid):
                _kill_hard(pid)
        self._process.wait()

    def _worker_pid(self) -> int | None:
        try:
            return int((self.work_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        """Remove the job folder (input copy, job file, outputs not yet imported)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)


def _parse_progress(line: str) -> ProgressEvent | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or "stage" not in record:
        return None
    return ProgressEvent(str(record["stage"]), record.get("fraction"), str(record.get("message", "")))


def _signal(pid: int, signum: int) -> None:
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_hard(pid: int) -> None:
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
    else:
        _signal(pid, signal.SIGKILL)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    if os.name == "nt":
        result = subprocess.run(["tasklist", "/FI", f"PID eq {pid}"], capture_output=True, text=True, check=False)
        return str(pid) in result.stdout
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) counts as ended
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
