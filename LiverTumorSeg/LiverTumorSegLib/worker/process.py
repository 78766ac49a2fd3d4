"""The segmentation worker as a child process: start, read progress, cancel the whole tree, clean up.

No Slicer and no Qt here. Inside Slicer the module passes ``slicer.util.launchConsoleProcess`` as the
launcher and ``PythonSlicer`` as the interpreter and drains ``poll()`` from a ``qt.QTimer``; scripts and
tests use ``subprocess.Popen`` and ``wait()``.

Cancel must end the real worker, not only a launcher in front of it (``PythonSlicer`` is a launcher that
starts the real interpreter as its child). The worker writes its own PID to ``worker.pid`` in the job
folder first thing. ``cancel()`` returns at once (the GUI never waits): it asks the worker to stop (a
``cancel`` file in the job folder, which the worker watches on every platform, and SIGTERM on POSIX: it
stops at the next sliding window and removes its partial output) and leaves a background thread to end the
whole process tree by force (``psutil`` when installed, else ``taskkill /F /T`` on Windows and SIGKILL on
POSIX) if it has not stopped within the grace period. ``process_alive`` tells whether a PID still runs
without signalling it (on Windows ``os.kill(pid, 0)`` would send CTRL_C_EVENT).
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
CANCEL_FILE = "cancel"  # created in the job folder to ask the worker to stop (worker.runner watches it)
CANCEL_GRACE_S = 10.0
KILL_WAIT_S = 5.0  # after a forced kill: how long to wait for the processes to be gone
_STILL_ACTIVE = 259  # Windows GetExitCodeProcess: the process has not ended


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
        self._cancel_requested = False
        self._remove_when_ended = False
        self._stopper: threading.Thread | None = None

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
        env["LIVERTUMOR_WORKER_CANCEL_FILE"] = str(self.work_dir / CANCEL_FILE)
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
        """Whether the worker runs; after ``cancel()`` until its whole tree has ended (so that ``outcome()`` and
        the clean-up never wait on a process that is still being stopped)."""
        return self._launcher_running() or (self._stopper is not None and self._stopper.is_alive())

    def _launcher_running(self) -> bool:
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
                self.cancel(wait=True)
                break
            time.sleep(0.05)
        return self.outcome(on_progress)

    def outcome(self, on_progress: Callable[[ProgressEvent], None] | None = None) -> WorkerOutcome:
        """How the run ended (waits for the process). A run ended after ``cancel()`` counts as cancelled even when
        it had to be killed (a forced kill has no exit code of its own)."""
        self._process.wait()
        if self._reader is not None:  # after a forced kill a stray descendant may hold the pipe: do not wait on it
            self._reader.join(timeout=0.5 if self._cancel_requested else 5)
        for event in self.poll():
            if on_progress:
                on_progress(event)
        code = self._process.returncode
        if code < 0 or (self._cancel_requested and code != 0):
            code = 130
        return WorkerOutcome(code, self._last_error, list(self._log))

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def cancel(self, grace_s: float = CANCEL_GRACE_S, *, wait: bool = False, remove_work_dir: bool = False) -> None:
        """Ask the worker to stop and return at once; a background thread kills the whole process tree if it is
        still running after ``grace_s`` seconds. ``wait``: block until everything has ended (scripts, tests).
        ``remove_work_dir``: remove the job folder once the tree has ended (a run nobody will ``finish()``)."""
        self._remove_when_ended = self._remove_when_ended or remove_work_dir
        if self._process is None:
            if self._remove_when_ended:
                self.cleanup()
            return
        if not self._cancel_requested:
            self._cancel_requested = True
            try:
                (self.work_dir / CANCEL_FILE).touch()
            except OSError:
                pass
            if os.name != "nt":  # on Windows the cancel file asks; a console process ignores taskkill without /F
                for pid in {self._worker_pid(), self._process.pid} - {None}:
                    _signal(pid, signal.SIGTERM)
            self._stopper = threading.Thread(target=self._end_tree, args=(grace_s,), daemon=True)
            self._stopper.start()
        elif self._remove_when_ended and self._stopper is not None and not self._stopper.is_alive():
            self.cleanup()
        if wait and self._stopper is not None:
            self._stopper.join()

    def _end_tree(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for the worker tree to end, then kill what is left; optionally remove the job
        folder. Runs in the background thread ``cancel()`` starts."""
        worker_pid = self._worker_pid()
        tree = process_tree([pid for pid in (self._process.pid, worker_pid) if pid is not None])
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (self._launcher_running() or any(process_alive(pid) for pid in tree)):
            time.sleep(0.05)
        for pid in tree:
            if process_alive(pid):
                _kill_hard(pid)
        self._process.wait()
        deadline = time.monotonic() + KILL_WAIT_S  # a killed process takes a moment to go
        while time.monotonic() < deadline and any(process_alive(pid) for pid in tree):
            time.sleep(0.02)
        if self._remove_when_ended:
            self.cleanup()

    def wait_until_stopped(self, timeout_s: float | None = None) -> bool:
        """After ``cancel()``: wait for the background stop to finish; True when everything has ended."""
        if self._stopper is not None:
            self._stopper.join(timeout_s)
            return not self._stopper.is_alive()
        return not self.running()

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


def _psutil():
    """The ``psutil`` module when installed (optional), else None."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def process_tree(pids: Sequence[int]) -> list[int]:
    """``pids`` and, with ``psutil``, all their descendants (collected now, while the parents still run)."""
    found = list(dict.fromkeys(pids))
    psutil = _psutil()
    if psutil is None:
        return found
    for pid in list(found):
        try:
            found += [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(dict.fromkeys(found))


def process_alive(pid: int | None) -> bool:
    """Whether process ``pid`` is running (an exited process not yet reaped by its parent counts as ended). Never
    sends a signal: ``os.kill(pid, 0)`` is used on POSIX only (on Windows it would send CTRL_C_EVENT)."""
    if pid is None:
        return False
    psutil = _psutil()
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True
    if os.name == "nt":
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) counts as ended
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _windows_process_alive(pid: int) -> bool:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = wintypes.DWORD()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == _STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _kill_hard(pid: int) -> None:
    """End ``pid`` (and on Windows its tree) by force."""
    psutil = _psutil()
    if psutil is not None:
        try:
            psutil.Process(pid).kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
    else:
        _signal(pid, signal.SIGKILL)
