"""What the hostile-input tests share: the console scripts run as users run them, broken CTs and DICOM series,
a full disk and folders that even root cannot use.

- ``livertumor(*args)`` / ``tnmstaging(*args)``: the commands as subprocesses (``python -m ...cli``, the code
  under test), returning the ``CompletedProcess``; ``unprivileged=True`` runs them without root's power over
  file permissions (see below).
- ``assert_refused(result, *needles)``: exit code 2 (or ``code``), no traceback, nothing on stdout, the last
  stderr line names every needle.
- ``tiny_disk``: a fixture mounting a 256 kB tmpfs (the full disk); ``fill(folder)`` fills it up.
- Permissions: root ignores them, so a folder made unreadable or unwritable (``chmod``) binds root only when the
  command runs without the capabilities CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (dropped from the bounding set
  before ``exec``; uid 0 keeps access to the interpreter under /root). As another user ``chmod`` binds anyway.
  ``require_permissions_bind()`` skips, with the reason, when neither works.
- ``phantom_ct()``: a small phantom CT (64 x 64 x 47, HU); ``write_dicom_series(ct, folder, edit)`` writes it as
  a DICOM series and applies ``edit(dataset, index)`` to every file (``set_rescale_slope("0")``,
  ``remove_rescale_tags``...).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.synthetic.phantom import make_phantom

LIVERTUMOR = [sys.executable, "-m", "LiverTumorSegLib.cli"]
TNMSTAGING = [sys.executable, "-m", "TNMStagingLib.cli"]
TINY_DISK_SIZE = "256k"
_PR_CAPBSET_DROP = 24
_FILE_OVERRIDE_CAPABILITIES = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


def _drop_file_override() -> None:
    """In the child before ``exec``: drop root's permission override from the capability bounding set."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in _FILE_OVERRIDE_CAPABILITIES:
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _run(command: list[str], args, unprivileged: bool, timeout: float) -> subprocess.CompletedProcess:
    preexec = _drop_file_override if unprivileged and os.geteuid() == 0 else None
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, encoding="utf-8",
                          timeout=timeout, preexec_fn=preexec)


def livertumor(*args, unprivileged: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """``livertumor ARGS`` as a subprocess running the code under test."""
    return _run(LIVERTUMOR, args, unprivileged, timeout)


def tnmstaging(*args, unprivileged: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """``tnmstaging ARGS`` as a subprocess running the code under test."""
    return _run(TNMSTAGING, args, unprivileged, timeout)


def assert_refused(result: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """The command refused with ``code`` in one clear line (the last of stderr, holding every needle), without
    a traceback or a result on stdout. Returns that line."""
    assert result.returncode == code, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip() == "", result.stdout
    last = result.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, f"{needle!r} not in {last!r}"
    return last


def leftovers(folder: Path) -> list[str]:
    """Every file and folder below ``folder`` (relative paths, sorted); [] when it does not exist."""
    if not folder.exists():
        return []
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def require_permissions_bind(folder: Path) -> None:
    """Skip (with the reason) unless a folder made unwritable binds the commands: as non-root always; as root
    when the capabilities can be dropped (checked with a probe in ``folder``)."""
    if os.geteuid() != 0:
        return
    probe = folder / "permission-probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        result = subprocess.run([sys.executable, "-c", f"open({str(probe / 'x')!r}, 'w')"], capture_output=True,
                                preexec_fn=_drop_file_override, timeout=60)
    except OSError as error:
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE ({error}): permissions do not bind")
    finally:
        probe.chmod(0o755)
        probe.rmdir()
    if result.returncode == 0:
        pytest.skip("running as root and dropping CAP_DAC_OVERRIDE did not make a read-only folder bind")


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 kB tmpfs (root), to fill up; skipped with the reason where it cannot be mounted."""
    folder = tmp_path / "tiny_disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tiny tmpfs, and mounting one needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TINY_DISK_SIZE}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk test: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path, leave_bytes: int = 0) -> Path:
    """Fill the disk of ``folder`` with one file, leaving about ``leave_bytes`` free; returns the file."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as stream:  # unbuffered: closing has nothing left to write
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError:
            pass
    if leave_bytes:
        os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))
    return filler


@cache
def phantom_ct() -> sitk.Image:
    """A small phantom CT in HU (int16, 64 x 64 x 47 voxels, 5 mm slices): plausible, segmentable in seconds."""
    return make_phantom(2, size_xy=64, slice_thickness_mm=5.0, n_tumors=2).ct


@cache
def phantom_labels() -> sitk.Image:
    """The truth labels (0/1/2) of ``phantom_ct``."""
    return make_phantom(2, size_xy=64, slice_thickness_mm=5.0, n_tumors=2).labels


def write_dicom_series(ct: sitk.Image, folder: Path,
                       edit: Callable[[pydicom.Dataset, int], None] | None = None) -> Path:
    """``ct`` as a DICOM CT series in ``folder``; ``edit(dataset, slice_index)`` changes each file first."""
    from LiverTumorSegLib.io.dicom_write import write_ct_series

    for index, path in enumerate(write_ct_series(ct, folder)):
        if edit is not None:
            dataset = pydicom.dcmread(path)
            edit(dataset, index)
            dataset.save_as(path)
    return folder


def set_rescale_slope(value: str) -> Callable[[pydicom.Dataset, int], None]:
    """A ``write_dicom_series`` edit writing RescaleSlope ``value`` into every file."""
    def edit(dataset: pydicom.Dataset, index: int) -> None:
        dataset.RescaleSlope = value
    return edit


def remove_rescale_tags(dataset: pydicom.Dataset, index: int) -> None:
    """A ``write_dicom_series`` edit deleting Rescale Slope and Intercept (stored values then read as HU)."""
    del dataset.RescaleSlope
    del dataset.RescaleIntercept
