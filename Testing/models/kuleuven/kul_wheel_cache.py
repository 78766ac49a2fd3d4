"""Download wheels once with ``pip download`` (never installed) and reuse them from a cache folder.

Cache folder: ``$KUL_TEST_DOWNLOADS`` if set, else ``~/.cache/LiverTumorAnalysis/test-downloads``.
A wheel is fetched with ``python -m pip download --no-deps --ignore-requires-python <req> -d <tmp>``
into a temporary folder inside the cache folder, SHA-256 checked there and only then moved into
place, so an interrupted or wrong download never ends up in the cache.  A cached file whose
checksum is wrong is deleted and downloaded again.  Every failure raises :class:`WheelUnavailable`
with one message that says what was run, what pip said and how to fix it (the conftest turns it
into a test failure; the tests never skip: CI has access to the package index).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from LiverTumorSegLib.models.manifest import load_manifest
from LiverTumorSegLib.models.wheel_source import sha256_of as sha256_of_file

CACHE_ENV_VAR = "KUL_TEST_DOWNLOADS"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "LiverTumorAnalysis" / "test-downloads"

# pymirc 0.27 is the lowest version pyliverlesionseg 0.3 accepts (Requires-Dist: pymirc>=0.27);
# its zoom3d is the reference for resample.zoom3d (0.30.2 has the same kernels).
PYMIRC_WHEEL = "pymirc-0.27-py3-none-any.whl"
PYMIRC_SHA256 = "3db26fb96d191f5231f71ae7fde2b18d5559058b9cf2189453b55cbf5d7ca09a"

PIP_TIMEOUT_S = 900  # whole ``pip download`` call; the 27 MB wheel takes seconds on a normal link


class WheelUnavailable(RuntimeError):
    """The wheel could not be downloaded, or its SHA-256 is not the expected one."""


def cache_dir() -> Path:
    """``$KUL_TEST_DOWNLOADS`` or ``~/.cache/LiverTumorAnalysis/test-downloads`` (read at call time)."""
    value = os.environ.get(CACHE_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else DEFAULT_CACHE_DIR


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept) or "    (no output)"


def _download(requirement: str, filename: str, sha256: str, directory: Path | None) -> Path:
    directory = cache_dir() if directory is None else directory
    wheel = directory / filename
    hint = (f"These tests need {requirement} from the package index (CI has index access). Fix the index "
            f"access (pip honours PIP_INDEX_URL / proxies), or put {filename} (SHA-256 {sha256}) into "
            f"{directory} by hand; set {CACHE_ENV_VAR} to use another folder.")
    if wheel.is_file():
        if sha256_of_file(wheel) == sha256:
            return wheel
        wheel.unlink()  # truncated or foreign file: fetch it again
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=directory))
    except OSError as exc:
        raise WheelUnavailable(f"cannot create the download folder {directory}: {exc}\n{hint}") from exc
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
           "--disable-pip-version-check", "--no-input", requirement, "-d", str(tmp)]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise WheelUnavailable(f"`{' '.join(cmd)}` did not finish within {PIP_TIMEOUT_S} s.\n{hint}") from exc
        got = tmp / filename
        if proc.returncode != 0 or not got.is_file():
            found = sorted(p.name for p in tmp.iterdir())
            raise WheelUnavailable(
                f"`{' '.join(cmd)}` failed (exit status {proc.returncode}; files downloaded: {found or 'none'}, "
                f"expected {filename}). pip said:\n{_tail(proc.stdout + proc.stderr)}\n{hint}")
        digest = sha256_of_file(got)
        if digest != sha256:
            raise WheelUnavailable(f"downloaded {filename} has SHA-256 {digest}, expected {sha256} (the index "
                                   f"serves a different file; not cached).\n{hint}")
        os.replace(got, wheel)  # atomic within one folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return wheel


def get_wheel(directory: Path | None = None) -> Path:
    """The verified pyliverlesionseg 0.3 wheel; runs
    ``python -m pip download --no-deps --ignore-requires-python pyliverlesionseg==0.3`` once."""
    wheel = load_manifest()["kuleuven-lesion-ct"].pypi_wheel  # the manifest's file name and SHA-256
    return _download(f"{wheel['package']}=={wheel['version']}", wheel["file"], wheel["sha256"], directory)


def get_pymirc_wheel(directory: Path | None = None) -> Path:
    """The verified pymirc 0.27 wheel (source of the reference ``zoom3d``)."""
    return _download("pymirc==0.27", PYMIRC_WHEEL, PYMIRC_SHA256, directory)
