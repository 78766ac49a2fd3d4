"""What every background worker shares: the job's failure types and exit codes, progress lines on stdout,
cancellation by signal, by a cancel file the parent creates (``LIVERTUMOR_WORKER_CANCEL_FILE``; the one way to
ask a console process on Windows) or by a vanished parent, and outputs published all at once.

``serve(argv, run, program)`` is the ``main`` of the segmentation worker (``python -m LiverTumorSegLib.worker``)
and of the staging worker (``python -m TNMStagingLib.worker``): it reads the job file, calls ``run(job, emit,
cancel)`` and turns any failure into one ``{"stage": "error", ...}`` line, one line on stderr and an exit code.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from LiverTumorSegLib.core.cancel import Cancelled, is_out_of_memory
from LiverTumorSegLib.io.atomic import OutputError, staged_folder

EXIT_OTHER = 1
EXIT_BAD_INPUT = 2
EXIT_MODEL = 3
EXIT_OUT_OF_MEMORY = 4
EXIT_CANCELLED = 130
EXIT_CODES_HELP = ("exit codes: 0 done; 1 unexpected error; 2 bad input (file, series, option); 3 model missing, "
                   "corrupt or unknown; 4 out of memory; 130 cancelled (Ctrl-C, SIGTERM)")


class JobError(Exception):
    """A failure with its exit code and a one-line message for the user."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class JobCancelled(JobError, Cancelled):
    """The job was cancelled (signal, parent gone, or the caller's event); nothing was published."""

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message, EXIT_CANCELLED)


def out_of_memory_error(device: str) -> JobError:
    """The ``JobError`` for running out of memory on ``device``, with what to do about it."""
    if device.startswith("cuda"):
        return JobError("out of GPU memory: run on the CPU (device cpu) or choose a coarser model",
                        EXIT_OUT_OF_MEMORY)
    return JobError("out of memory: close other programs, or choose a coarser model", EXIT_OUT_OF_MEMORY)


def as_job_error(error: BaseException, device: str = "cpu") -> JobError | None:
    """``error`` as the job failure it means (cancel, out of memory), or None when it is none of these."""
    if isinstance(error, JobError):
        return error
    if isinstance(error, Cancelled):
        return JobCancelled()
    if is_out_of_memory(error):
        return out_of_memory_error(device)
    return None


class ProgressReporter:
    """Emits ``{"stage", "fraction", "message"}`` lines; fractions never go backwards."""

    def __init__(self, emit: Callable[[dict], None]) -> None:
        self._emit = emit
        self._fraction = 0.0

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        self._fraction = max(self._fraction, min(1.0, float(fraction)))
        self._emit({"stage": stage, "fraction": round(self._fraction, 4), "message": message})


def publish_outputs(out_dir: Path, names: tuple[str, ...], write: Callable[[Path], None],
                    cancel: threading.Event, overwrite: bool = True) -> None:
    """``write(folder)`` writes ``names`` into a temporary folder inside ``out_dir``; they are moved into place
    together only when all are complete and the job was not cancelled (no partial output in any case). Without
    ``overwrite`` an output that appeared meanwhile is not replaced. A failed write (disk full, permission) is a
    ``JobError`` naming the folder and the reason."""
    try:
        with staged_folder(out_dir, names, overwrite=overwrite) as staging:
            write(staging)
            if cancel.is_set():
                raise JobCancelled()
    except OutputError as error:
        raise JobError(str(error), EXIT_BAD_INPUT) from error


def check_output_dir(out_dir: Path, names: tuple[str, ...], overwrite: bool) -> None:
    """Refuse to replace earlier outputs unless the job allows it; refuse an output folder that is a file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise JobError(f"output folder {out_dir} is a file, not a folder; give a folder for the outputs",
                       EXIT_BAD_INPUT)
    existing = [name for name in names if (out_dir / name).exists()]
    if existing and not overwrite:
        raise JobError(f"{out_dir} already holds {', '.join(existing)}; choose another folder or allow overwriting "
                       "(--overwrite)", EXIT_BAD_INPUT)


def _install_signal_handlers(cancel: threading.Event) -> None:
    def request_cancel(signum, frame) -> None:
        cancel.set()

    signal.signal(signal.SIGTERM, request_cancel)
    signal.signal(signal.SIGINT, request_cancel)


def _announce_pid() -> None:
    """Write our PID where the parent asked (it may have started us through a launcher process)."""
    pid_file = os.environ.get("LIVERTUMOR_WORKER_PID_FILE")
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))


def _watch_parent(cancel: threading.Event, interval_s: float = 0.2) -> None:
    """Cancel when the parent process goes away (Slicer closed or crashed: no orphan keeps computing) or when
    the cancel file the parent names in ``LIVERTUMOR_WORKER_CANCEL_FILE`` appears."""
    parent = os.getppid()
    cancel_file = os.environ.get("LIVERTUMOR_WORKER_CANCEL_FILE")

    def watch() -> None:
        while not cancel.wait(interval_s):
            if os.getppid() != parent or (cancel_file and os.path.exists(cancel_file)):
                cancel.set()

    threading.Thread(target=watch, daemon=True).start()


def serve(argv: list[str], run: Callable[[dict, Callable[[dict], None], threading.Event], Any], program: str) -> int:
    """The ``main`` of every background worker: read the job file, run it with JSON progress on stdout,
    turn failures into one error record and an exit code. Shared by the segmentation and staging workers."""
    if len(argv) != 1:
        print(f"usage: python -m {program} JOB.json", file=sys.stderr)
        return EXIT_BAD_INPUT
    cancel = threading.Event()
    _install_signal_handlers(cancel)
    _announce_pid()
    _watch_parent(cancel)

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)

    def fail(message: str, exit_code: int) -> int:
        emit({"stage": "error" if exit_code != EXIT_CANCELLED else "cancelled", "fraction": None, "message": message})
        print(f"{program}: {message}", file=sys.stderr, flush=True)
        return exit_code

    try:
        job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        run(job, emit, cancel)
        return 0
    except JobError as error:
        return fail(str(error), error.exit_code)
    except (OSError, ValueError, KeyError) as error:
        return fail(f"bad job {argv[0]}: {error}", EXIT_BAD_INPUT)
    except Exception as error:  # the last line must still tell the GUI what happened
        known = as_job_error(error)
        if known is not None:
            return fail(str(known), known.exit_code)
        return fail(f"{type(error).__name__}: {error}", EXIT_OTHER)
