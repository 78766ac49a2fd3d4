"""Getting the KU Leuven weights: ``models fetch`` through pip, ``models import`` of the wheel or the HDF5 member,
checksums, conversion errors that name the layer, nothing partial left in the cache, and the first-run consent text.

pip runs for real, pointed by its own environment variables (``PIP_NO_INDEX``, ``PIP_FIND_LINKS``) at a folder
holding the wheel that ``kul_wheel_cache`` downloaded once: the same command a user's configured index answers.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from kul_wheel_cache import get_wheel

from LiverTumorSegLib.models import registry, wheel_source
from LiverTumorSegLib.models.kuleuven.config import LESION_CONFIG, conv_specs
from LiverTumorSegLib.models.manifest import load_manifest
from LiverTumorSegLib.models.networks import load_model

LIVERTUMOR = [sys.executable, "-m", "LiverTumorSegLib.cli"]


@pytest.fixture(scope="module")
def wheel() -> Path:
    return get_wheel()


@pytest.fixture()
def local_index(wheel, tmp_path, monkeypatch) -> Path:
    """pip answers from a folder with the wheel only (no network); returns the model cache folder."""
    links = tmp_path / "links"
    links.mkdir()
    (links / wheel.name).symlink_to(wheel)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    cache = tmp_path / "cache"
    monkeypatch.setenv(registry.CACHE_ENV, str(cache))
    return cache


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


def leftovers(cache: Path) -> list[str]:
    """Files in the cache that are not a finished wheel, model or sidecar."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.is_file() and (p.name.startswith(".tmp") or p.suffix in (".part", ".tmp")))


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_models_fetch_gets_the_wheel_with_pip_converts_and_verifies(local_index, manifest):
    result = subprocess.run([*LIVERTUMOR, "models", "fetch", "kuleuven-lesion-ct", "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    converted = Path(row["path"])
    assert row["verified"] and converted == local_index / "kuleuven-lesion-ct" / "kuleuven_lesion_ct.pt"
    sidecar = json.loads((converted.parent / (converted.name + ".source.json")).read_text())
    entry = manifest["kuleuven-lesion-ct"]
    assert sidecar["member_sha256"] == entry.pypi_wheel["member_sha256"]
    assert sidecar["wheel_sha256"] == entry.pypi_wheel["sha256"]
    assert sidecar["sha256"] == hashlib.sha256(converted.read_bytes()).hexdigest()
    assert (local_index / "_wheels" / entry.pypi_wheel["file"]).is_file()  # kept for the liver model
    state = torch.load(converted, weights_only=True)
    assert state["convs.conv3d_21.weight"].shape == (1, 20, 1, 1, 1)
    loaded = load_model(entry, converted)
    assert loaded.stage is not None and loaded.module.cfg.output_size == (92, 84, 42)
    listed = subprocess.run([*LIVERTUMOR, "models", "list"], capture_output=True, text=True, timeout=120)
    rows = {r["id"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert rows["kuleuven-lesion-ct"]["available"] and rows["kuleuven-lesion-ct"]["source"] == "pypi_wheel"
    assert not rows["kuleuven-liver-ct"]["available"]
    assert leftovers(local_index) == []


def test_a_damaged_converted_file_is_refused_and_fetched_again(local_index, manifest):
    entry = manifest["kuleuven-liver-ct"]
    path = registry.resolve_model_file(entry)
    with open(path, "r+b") as stream:  # one flipped byte inside the weights
        stream.seek(path.stat().st_size // 2)
        byte = stream.read(1)
        stream.seek(-1, 1)
        stream.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(registry.ChecksumMismatchError, match="changed since it was converted"):
        registry.verify_entry_file(entry, path)
    with pytest.warns(registry.CorruptCacheWarning):
        again = registry.resolve_model_file(entry)
    registry.verify_entry_file(entry, again)


def test_offline_resolution_says_how_to_fetch_or_import(local_index, manifest):
    with pytest.raises(registry.ModelNotAvailableError) as raised:
        registry.resolve_model_file(manifest["kuleuven-liver-ct"], download=False)
    message = str(raised.value)
    assert "livertumor models fetch kuleuven-liver-ct" in message
    assert "pip download --no-deps --ignore-requires-python pyliverlesionseg==0.3" in message
    assert "livertumor models import kuleuven-liver-ct pyliverlesionseg-0.3-py3-none-any.whl" in message


def test_import_accepts_the_wheel_or_its_hdf5_member(wheel, tmp_path, manifest):
    cache = tmp_path / "cache"
    lesion, liver = manifest["kuleuven-lesion-ct"], manifest["kuleuven-liver-ct"]
    from_wheel = registry.import_model_file(lesion, wheel, cache=cache)
    registry.verify_entry_file(lesion, from_wheel)
    member = tmp_path / "liver.hdf5"
    with zipfile.ZipFile(wheel) as archive:
        member.write_bytes(archive.read(liver.pypi_wheel["member"]))
    from_member = registry.import_model_file(liver, member, cache=cache)
    registry.verify_entry_file(liver, from_member)
    assert from_member == registry.cached_path(liver, cache)
    with pytest.raises(registry.ChecksumMismatchError, match=r"liver\.hdf5: SHA-256 591ea17c[0-9a-f]+, expected 0dc9bc87"):
        registry.import_model_file(lesion, member, cache=tmp_path / "other")  # the liver file for the lesion model
    assert not (tmp_path / "other" / "kuleuven-lesion-ct").exists()


def test_a_wheel_with_another_checksum_is_refused_and_nothing_is_kept(wheel, tmp_path, manifest):
    tampered = tmp_path / wheel.name
    data = bytearray(wheel.read_bytes())
    data[-10] ^= 0xFF  # inside the zip's central directory end record: still a zip file, other checksum
    tampered.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(registry.ChecksumMismatchError, match=rf"{wheel.name}: SHA-256 [0-9a-f]+, expected ffe1576a"):
        registry.import_model_file(manifest["kuleuven-lesion-ct"], tampered, cache=cache)
    assert files_in(cache) == []


def _hdf5_without_a_layer(missing: str, wrong_shape: str | None = None) -> bytes:
    """A Keras-2-like weight file of the lesion model with layer ``missing`` left out (or one kernel of the wrong
    shape), as an offline site might hold after a broken copy or a different model."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        names = []
        for spec in conv_specs(LESION_CONFIG):
            if spec.name == missing:
                continue
            kernel_shape = (*spec.kernel, spec.in_channels, spec.out_channels)
            if spec.name == wrong_shape:
                kernel_shape = (*spec.kernel, spec.in_channels + 1, spec.out_channels)
            group = f.create_group(spec.name)
            group.attrs["weight_names"] = [f"{spec.name}/kernel:0".encode(), f"{spec.name}/bias:0".encode()]
            inner = group.create_group(spec.name)
            inner.create_dataset("kernel:0", data=np.zeros(kernel_shape, np.float32))
            inner.create_dataset("bias:0", data=np.zeros(spec.out_channels, np.float32))
            names.append(spec.name.encode())
        f.attrs["layer_names"] = names
    return buffer.getvalue()


@pytest.mark.parametrize(("missing", "wrong_shape", "message"), [
    ("conv3d_7", None, "conv3d_7"),
    ("", "conv3d_12", "conv3d_12"),
])
def test_a_layer_missing_or_of_the_wrong_shape_is_named_and_nothing_is_kept(tmp_path, manifest, missing,
                                                                              wrong_shape, message):
    data = _hdf5_without_a_layer(missing, wrong_shape)
    source = tmp_path / "weights.hdf5"
    source.write_bytes(data)
    entry = manifest["kuleuven-lesion-ct"]
    entry = replace(entry, pypi_wheel=dict(entry.pypi_wheel, member_sha256=hashlib.sha256(data).hexdigest()))
    cache = tmp_path / "cache"
    with pytest.raises(registry.ChecksumMismatchError, match=rf"weights\.hdf5.*{message}"):
        registry.import_model_file(entry, source, cache=cache)
    assert files_in(cache) == []


def test_cancel_stops_pip_and_leaves_no_wheel(local_index, manifest):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(registry.DownloadCancelled):
        registry.resolve_model_file(manifest["kuleuven-lesion-ct"], cancel=cancel)
    assert not (local_index / "_wheels" / "pyliverlesionseg-0.3-py3-none-any.whl").exists()
    assert leftovers(local_index) == []


def test_consent_names_model_size_licence_source_and_citation(manifest, tmp_path):
    missing = registry.missing_models([manifest["demo-liver-segresnet"], manifest["kuleuven-lesion-ct"],
                                       manifest["kuleuven-liver-ct"]], cache=tmp_path)
    assert [entry.id for entry in missing] == ["kuleuven-lesion-ct", "kuleuven-liver-ct"]  # the demo model ships
    text = registry.consent_text(missing)
    for expected in ("KU Leuven liver-lesion CNN", "27.5 MB", "Apache-2.0", "pyliverlesionseg 0.3",
                     "nothing is installed", "Tang X et al.", "DeepVoxNet", "one download"):
        assert expected in text, expected
    assert wheel_source.requirement(manifest["kuleuven-liver-ct"]) == "pyliverlesionseg==0.3"
