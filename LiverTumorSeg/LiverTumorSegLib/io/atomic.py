"""Safe outputs: every file the project writes appears complete or not at all, and never replaces a file by accident.

- ``atomic_write(path, write)``: ``write(temporary)`` writes the whole file under a temporary name in the
  destination folder (``.tmp-<hex>-<name>``, so the extension, which picks the file format, is kept); the file
  is flushed to disk and renamed into place. Any failure (a full disk, a cancel, an exception) removes the
  temporary file: nothing is left behind. Without ``overwrite`` an existing destination is refused, before
  and at the rename (a hard link, which fails when the name exists, so a file created meanwhile survives).
- ``write_image``, ``write_text``: the two kinds of files written most, through ``atomic_write``.
- ``staged_folder`` (and ``publish_files`` under it): several files written into a temporary folder, moved
  into the output folder together when all are complete.
- ``check_output_file`` / ``check_output_folder``: refuse, before any work, an output that is a folder
  (or a file where a folder is expected), equal to or inside an input, in a folder that cannot be written,
  or on a disk without room for the expected outputs.
- ``locked_output_folder``: one run at a time per output folder; a second one fails at once.

Every refusal is an ``OutputError`` (a ``ValueError``) with a one-line message naming the path, the problem
and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import SimpleITK as sitk

TEMPORARY_PREFIX = ".tmp-"
LOCK_FILE = ".livertumor.lock"  # only where a folder itself cannot be locked (Windows)
DISK_FULL_BYTES = 1 << 20  # after a failed write, less free space than this (bytes) means the disk filled up
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


class OutputError(ValueError):
    """An output that cannot or must not be written; the one-line message names the path and what to do."""


class OutputExistsError(OutputError):
    """The destination exists and replacing it was not allowed."""


class OutputLockedError(OutputError):
    """Another run is writing into the same output folder."""


def describe_os_error(error: OSError) -> str:
    """The reason of an ``OSError`` in words, with what to do for the common ones (disk full, permission)."""
    if error.errno == errno.ENOSPC:
        return "no space left on the device (free some space or choose another folder)"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (choose a folder you can write to)"
    if error.errno == errno.EROFS:
        return "read-only file system (choose a folder you can write to)"
    if error.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return error.strerror or str(error)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def fsync_folder(folder: str | Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk; a no-op where folders cannot be
    opened (Windows)."""
    _fsync(Path(folder))


def _fsync(path: Path) -> None:
    """Flush ``path``'s data to the disk (a power cut after the rename must not leave an empty file)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _exists_message(path: Path) -> str:
    return f"{path} exists; choose another name or allow replacing it (--overwrite)"


def _move_into_place(temporary: Path, path: Path, overwrite: bool) -> None:
    """Rename ``temporary`` to ``path``; without ``overwrite`` fail (``OutputExistsError``) when ``path`` exists,
    even when it appeared after the checks (a hard link never replaces a name)."""
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise OutputExistsError(_exists_message(path)) from None
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        if path.exists():  # no hard links on this file system: check, then rename (a small window remains)
            raise OutputExistsError(_exists_message(path)) from None
        os.rename(temporary, path)  # on Windows rename itself refuses an existing destination
        return
    temporary.unlink()


def output_failure_reason(folder: Path, error: BaseException) -> str:
    """Why writing into ``folder`` raised ``error`` (an ``OSError``, or a library's error such as SimpleITK's
    ``RuntimeError``, whose text hides a full disk: then the free space tells), in words."""
    if isinstance(error, OSError):
        return describe_os_error(error)
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < DISK_FULL_BYTES:
            return "no space left on the device (free some space or choose another folder)"
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def _write_failure(path: Path, error: BaseException) -> OutputError:
    """The ``OutputError`` for a write into ``path`` that raised ``error``; call it before removing the partial
    file (a full disk is recognised by its free space)."""
    return OutputError(f"cannot write {path}: {output_failure_reason(path.parent, error)}")


def atomic_write(path: str | Path, write: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    """Write the file ``path`` all at once: ``write(temporary)`` writes it completely under a temporary name in
    the same folder, then it is renamed into place (see the module docstring). Missing folders are created.

    Raises ``OutputExistsError`` when ``path`` exists and ``overwrite`` is false, ``OutputError`` (one line,
    the reason in words) when writing fails; in every failure the temporary file and the folders this call
    created are removed and ``path`` is unchanged. Returns ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give a file name")
    if not overwrite and path.exists():
        raise OutputExistsError(_exists_message(path))
    try:
        created = make_folders(path.parent)
    except OSError as error:
        raise OutputError(f"cannot create the folder of {path}: {describe_os_error(error)}") from error
    temporary = path.with_name(f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        write(temporary)
        if not temporary.is_file():
            raise OutputError(f"cannot write {path}: the writer produced no file")
        _fsync(temporary)
        _move_into_place(temporary, path, overwrite)
        _fsync(path.parent)  # the rename itself survives a power cut
    except BaseException as error:  # also a cancel (KeyboardInterrupt, SystemExit): no partial file either
        failure = _write_failure(path, error) if isinstance(error, OSError | RuntimeError) else None
        _unlink_quietly(temporary)
        remove_empty_folders(created)
        if failure is not None:  # OSError, or RuntimeError from SimpleITK's writers
            raise failure from error
        raise
    return path


def write_image(image: sitk.Image, path: str | Path, *, overwrite: bool = False, compress: bool = True) -> Path:
    """``sitk.WriteImage`` through ``atomic_write`` (the file format follows ``path``'s extension), the written
    file read back before it is published (``check_written_image``)."""
    def write(temporary: Path) -> None:
        sitk.WriteImage(image, str(temporary), useCompression=compress)
        check_written_image(temporary, image)

    return atomic_write(path, write, overwrite=overwrite)


def check_written_image(path: Path, image: sitk.Image) -> None:
    """Raise unless ``path`` reads back as ``image``'s size. SimpleITK does not report every failed write: on a
    full disk its NRRD writer returns normally and leaves an empty or truncated file. The header is always read
    back; the whole file when the disk is (nearly) full. A file that does not read back on a full disk raises
    ``OSError`` ENOSPC, otherwise ``OutputError``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    full = shutil.disk_usage(path.parent).free < DISK_FULL_BYTES
    try:
        size = reader.Execute().GetSize() if full else (reader.ReadImageInformation(), reader.GetSize())[1]
    except RuntimeError as error:
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
        raise OutputError(f"the file written for {path.name} cannot be read back") from error
    if tuple(size) != tuple(image.GetSize()):
        raise OutputError(f"the file written for {path.name} reads back as {size} voxels, not {image.GetSize()}")


def write_bytes(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """``data`` written to ``path`` through ``atomic_write`` (complete and on the disk, or absent)."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data), overwrite=overwrite)


def write_text(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """UTF-8 ``text`` into ``path`` through ``atomic_write``."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), overwrite=overwrite)


def publish_files(staging: Path, out_dir: Path, names: Sequence[str], *, overwrite: bool = False) -> None:
    """Move the complete files ``names`` from ``staging`` into ``out_dir`` (same file system). Without
    ``overwrite`` none of them may exist in ``out_dir`` (checked for all before the first move)."""
    if not overwrite:
        existing = [name for name in names if (out_dir / name).exists()]
        if existing:
            raise OutputExistsError(f"{out_dir} already holds {', '.join(existing)}; choose another folder or "
                                    "allow replacing them (--overwrite)")
    for name in names:
        _fsync(staging / name)
        _move_into_place(staging / name, out_dir / name, overwrite)


@contextlib.contextmanager
def staged_folder(out_dir: str | Path, names: Sequence[str] | None = None, *,
                  overwrite: bool = False) -> Iterator[Path]:
    """Several output files appearing together: the block writes them into the yielded temporary folder inside
    ``out_dir`` (created if needed); when it ends without an exception ``names`` (default: every file written)
    are moved into ``out_dir`` (``publish_files``). On any failure nothing is left: the temporary folder and the
    folders created here are removed; an ``OSError`` or a writer's ``RuntimeError`` becomes an ``OutputError``
    naming ``out_dir`` and the reason (a full disk included)."""
    out_dir = Path(out_dir)
    try:
        created = make_folders(out_dir)
        staging = out_dir / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    except OSError as error:
        raise OutputError(f"cannot write into {out_dir}: {describe_os_error(error)}") from error
    try:
        yield staging
        written = sorted(item.name for item in staging.iterdir()) if names is None else list(names)
        publish_files(staging, out_dir, written, overwrite=overwrite)
    except OutputError as error:  # from an atomic write inside: name the destination, not the temporary folder
        raise type(error)(str(error).replace(str(staging), str(out_dir))) from error
    except (OSError, RuntimeError) as error:  # RuntimeError: SimpleITK's writers
        raise OutputError(f"cannot write into {out_dir}: {output_failure_reason(out_dir, error)}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty_folders(created)


# --- checks before the work ---------------------------------------------------------------------------------


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_not_an_input(path: Path, inputs: Iterable[str | Path | None], what: str) -> None:
    """Refuse ``path`` when it is one of ``inputs`` (the same file, also through a link) or lies inside one."""
    target = _resolved(path)
    for source in inputs:
        if source is None:
            continue
        source_path = _resolved(Path(source))
        same_file = False
        with contextlib.suppress(OSError):
            same_file = target.exists() and os.path.samefile(target, source_path)
        if same_file or target == source_path:
            raise OutputError(f"{what} {path} is the input {source}; write the output somewhere else")
        if source_path.is_dir() and _inside(target, source_path):
            raise OutputError(f"{what} {path} is inside the input folder {source}; choose an output outside it")


def _existing_ancestor(path: Path, what: str) -> Path:
    """The nearest existing folder at or above ``path``; ``OutputError`` when a file stands in the way."""
    current = Path(os.path.abspath(path))
    while not current.exists():
        current = current.parent
    if not current.is_dir():
        raise OutputError(f"{what} {path}: {current} is a file, not a folder; choose another output folder")
    return current


def _probe_writable(folder: Path, path: Path, what: str) -> None:
    """Create and remove a file in ``folder``: the only test that binds root too (read-only mounts)."""
    try:
        descriptor, name = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}probe-", dir=folder)
    except OSError as error:
        raise OutputError(f"{what} {path}: cannot write into {folder}: {describe_os_error(error)}") from error
    os.close(descriptor)
    _unlink_quietly(Path(name))


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count / 1e3:.0f} kB"


def check_output_folder(out_dir: str | Path, *, inputs: Iterable[str | Path | None] = (), needed_bytes: int = 0,
                        what: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file, equal to or inside an input, not writable, or
    on a disk with less than ``needed_bytes`` free. The folder may not exist yet (its nearest existing parent is
    checked). ``what`` names the option in messages."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{what} {out_dir} is a file, not a folder; give a folder for the outputs")
    _check_not_an_input(out_dir, inputs, what)
    folder = _existing_ancestor(out_dir, what)
    _probe_writable(folder, out_dir, what)
    check_free_space(out_dir, needed_bytes, what)


def check_free_space(path: str | Path, needed_bytes: int, what: str = "--out") -> None:
    """``OutputError`` when the disk holding ``path`` (a folder or a file, existing or not; else its nearest
    existing parent) has less than ``needed_bytes`` free."""
    if needed_bytes <= 0:
        return
    path = Path(path)
    folder = _existing_ancestor(path.parent if path.is_file() else path, what)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OutputError(f"{what} {path}: not enough free space on its disk (about {_megabytes(needed_bytes)} "
                          f"needed, {_megabytes(free)} free); free some space or choose another folder")


def check_output_file(path: str | Path, *, inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
                      needed_bytes: int = 0, what: str = "--out") -> None:
    """Refuse, before any work, an output file that is a folder, exists (unless ``overwrite``), is an input
    or lies inside one, cannot be created, or does not fit on its disk (``needed_bytes``)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    _check_not_an_input(path, inputs, what)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{what} {path} exists; choose another name or pass --overwrite to replace it")
    folder = _existing_ancestor(path.parent, what)
    _probe_writable(folder, path, what)
    check_free_space(path.parent, needed_bytes, what)


def make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders this call created, outermost first."""
    missing = []
    current = Path(os.path.abspath(folder))
    while not current.exists():
        missing.append(current)
        current = current.parent
    created = []
    for item in reversed(missing):
        try:
            item.mkdir()
        except FileExistsError:
            continue
        created.append(item)
    return created


def remove_empty_folders(created: Sequence[Path]) -> None:
    """Remove the folders ``make_folders`` created that are still empty, innermost first."""
    for item in reversed(created):
        try:
            item.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def locked_output_folder(out_dir: str | Path) -> Iterator[Path]:
    """Hold ``out_dir`` (created if needed) for one run: a second run on the same folder fails at once with
    ``OutputLockedError``. The lock is the operating system's (released when the process ends, even killed).
    On leaving, folders this call created are removed again when still empty (a failed run leaves nothing)."""
    out_dir = Path(out_dir)
    try:
        created = make_folders(out_dir)
    except OSError as error:
        raise OutputError(f"cannot create {out_dir}: {describe_os_error(error)}") from error
    try:
        with _os_lock(out_dir):
            yield out_dir
    finally:
        remove_empty_folders(created)


@contextlib.contextmanager
def _os_lock(out_dir: Path) -> Iterator[None]:
    busy = OutputLockedError(f"{out_dir} is in use by another run writing into it; wait for it to finish or "
                             "choose another output folder")
    if os.name == "nt":  # a folder cannot be opened on Windows: lock a file inside it
        import msvcrt

        lock_path = out_dir / LOCK_FILE
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT)
        try:
            try:
                msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
            except OSError:
                raise busy from None
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)
        finally:
            os.close(descriptor)
            _unlink_quietly(lock_path)
        return
    import fcntl

    descriptor = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock
