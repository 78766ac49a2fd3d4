"""Model manifest: what each segmentation or encoder model is, as data.

The manifest (``Resources/Models/models.json``, validated against ``models-schema.json``) describes
every model the extension can run: its task, network class and arguments, input channels, the
preprocessing it was trained with (orientation, spacing, intensity transform), the sliding-window
settings, where its weights come from (URL or a file shipped beside the manifest), their size and
checksum, its license and training data, and whether it is a demo model trained on phantoms.
No torch import here: the manifest is read by the Slicer GUI before torch is installed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from LiverTumorSegLib.resources import MANIFEST_FILE, MODELS_DIR

TASKS = ("liver", "tumor", "multi-organ", "encoder")
INTENSITY_TYPES = ("clip_scale", "normalize_nonzero_scale", "sam_pixel", "medsam_unit")
_HEX_DIGITS = {"sha256": 64, "md5": 32}
# Keys of an entry that are not JSON keys (set by the loader).
_INTERNAL_FIELDS = ("extra", "manifest_dir")


class ManifestError(ValueError):
    """The manifest or one of its entries is malformed (message names the file and the entry)."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of the manifest.

    Attributes mirror the JSON keys. ``spacing_mm`` is (x, y, z) in mm in the model's orientation;
    ``roi_size`` is the sliding-window patch in voxels (x, y, z) at that spacing; ``labels`` maps a
    structure name to the output channel/label index that means it (``{"liver": 5}`` for a
    multi-organ model); ``intensity`` is ``{"type": "clip_scale", "hu_min", "hu_max", "out_min",
    "out_max"}`` or ``{"type": "normalize_nonzero_scale", "out_min", "out_max"}`` (MONAI
    NormalizeIntensity on non-zero voxels, then ScaleIntensity); encoders use ``sam_pixel`` or
    ``medsam_unit`` (fields in ``models-schema.json``). ``url`` or ``local_path`` (relative
    to the manifest folder) says where the weights are. ``manifest_dir`` is the folder of the manifest
    the entry was read from (set by ``load_manifest``; not a JSON key): ``local_path`` is relative to it.
    """

    id: str
    title: str
    task: str
    labels: Mapping[str, int]
    network: Mapping[str, Any]
    input_channels: tuple[str, ...]
    orientation: str
    spacing_mm: tuple[float, float, float] | None
    intensity: Mapping[str, Any]
    roi_size: tuple[int, ...] | None
    sw_overlap: float
    file_name: str
    checkpoint_format: str
    license: str
    training_data: str
    demo_only: bool
    url: str | None = None
    local_path: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    md5: str | None = None
    output_activation: str = "softmax"
    card: str | None = None
    pypi_wheel: Mapping[str, Any] | None = None
    pipeline: str | None = None
    citation: str | None = None
    default: bool = False
    real_ct: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    manifest_dir: str | None = field(default=None, compare=False)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "<manifest>", manifest_dir: str | Path | None = None
    ) -> ModelEntry:
        """Entry from its JSON object; ``manifest_dir`` is the folder ``local_path`` is relative to."""
        known = {f for f in cls.__dataclass_fields__ if f not in _INTERNAL_FIELDS}
        missing = [key for key in ("id", "task", "network", "file_name") if key not in data]
        if missing:
            raise ManifestError(f"{source}: model entry {data.get('id', '?')!r} lacks {', '.join(missing)}")
        if data["task"] not in TASKS:
            raise ManifestError(f"{source}: model {data['id']!r} has unknown task {data['task']!r}")
        intensity = dict(data.get("intensity", {}))
        if intensity and intensity.get("type") not in INTENSITY_TYPES:
            raise ManifestError(
                f"{source}: model {data['id']!r} has unknown intensity type {intensity.get('type')!r}"
            )
        if not (data.get("url") or data.get("local_path") or data.get("pypi_wheel")):
            raise ManifestError(f"{source}: model {data['id']!r} has neither url, local_path nor pypi_wheel")
        if not (data.get("sha256") or data.get("md5") or data.get("pypi_wheel")):
            raise ManifestError(
                f"{source}: model {data['id']!r} has no checksum (sha256, or md5 if the publisher gives no other)"
            )
        _check_wheel_spec(data, source)
        _check_digests_and_path(data, source)
        values = {key: data[key] for key in known if key in data}
        values.setdefault("title", data["id"])
        values.setdefault("labels", {})
        values.setdefault("input_channels", ("ct",))
        values.setdefault("orientation", "RAS")
        values.setdefault("spacing_mm", None)
        values.setdefault("intensity", {})
        values.setdefault("roi_size", None)
        values.setdefault("sw_overlap", 0.25)
        values.setdefault("checkpoint_format", "state_dict")
        values.setdefault("license", "unknown")
        values.setdefault("training_data", "unknown")
        values.setdefault("demo_only", False)
        for key in ("input_channels", "spacing_mm", "roi_size"):
            if values[key] is not None:
                values[key] = tuple(values[key])
        values["extra"] = {key: value for key, value in data.items() if key not in known}
        values["manifest_dir"] = str(manifest_dir) if manifest_dir is not None else None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this entry (``from_dict(entry.to_dict()) == entry``)."""
        out = {key: getattr(self, key) for key in self.__dataclass_fields__ if key not in _INTERNAL_FIELDS}
        for key in ("input_channels", "spacing_mm", "roi_size"):
            if out[key] is not None:
                out[key] = list(out[key])
        out["labels"] = dict(self.labels)
        out["network"] = dict(self.network)
        out["intensity"] = dict(self.intensity)
        if self.pypi_wheel is not None:
            out["pypi_wheel"] = dict(self.pypi_wheel)
        if not self.default:
            del out["default"]
        out.update(self.extra)
        return {key: value for key, value in out.items() if value is not None}

    @property
    def display_name(self) -> str:
        """Name shown to users; demo models always say so, phantom-trained defaults say how they measured."""
        if self.demo_only:
            return f"{self.title} [DEMO ONLY - phantom-trained, not for clinical images]"
        return f"{self.title} [{self.real_ct}]" if self.real_ct else self.title

    def liver_label(self) -> int:
        """Output label index that means liver (1 for a liver model, e.g. 5 for wholeBody_ct)."""
        try:
            return int(self.labels["liver"])
        except KeyError:
            raise ManifestError(f"model {self.id!r} does not declare which label is liver") from None

    def local_file(self) -> Path | None:
        """Absolute path of ``local_path`` (relative to the manifest folder), or None for URL-only entries."""
        if not self.local_path:
            return None
        return Path(self.manifest_dir or MODELS_DIR) / self.local_path


_WHEEL_KEYS = ("package", "version", "file", "sha256", "member", "member_sha256", "converter", "config")
PIPELINES = ("kuleuven_liver", "kuleuven_lesion")


def _check_wheel_spec(data: Mapping[str, Any], source: str) -> None:
    spec, pipeline = data.get("pypi_wheel"), data.get("pipeline")
    if pipeline is not None and pipeline not in PIPELINES:
        raise ManifestError(f"{source}: model {data['id']!r} has unknown pipeline {pipeline!r} ({', '.join(PIPELINES)})")
    if spec is None:
        return
    missing = [key for key in _WHEEL_KEYS if not spec.get(key)]
    if missing:
        raise ManifestError(f"{source}: model {data['id']!r}: pypi_wheel lacks {', '.join(missing)}")
    for key in ("sha256", "member_sha256"):
        if not re.fullmatch("[0-9a-f]{64}", str(spec[key])):
            raise ManifestError(f"{source}: model {data['id']!r}: pypi_wheel {key} {spec[key]!r} is not a SHA-256")


def _check_digests_and_path(data: Mapping[str, Any], source: str) -> None:
    for algorithm, digits in _HEX_DIGITS.items():
        value = data.get(algorithm)
        if value is not None and not re.fullmatch(f"[0-9a-f]{{{digits}}}", str(value)):
            raise ManifestError(
                f"{source}: model {data['id']!r} has a malformed {algorithm} {value!r} "
                f"(expected {digits} lower-case hex digits)"
            )
    local_path = data.get("local_path")
    if local_path:
        parts = PurePosixPath(str(local_path).replace("\\", "/"))
        if parts.is_absolute() or ".." in parts.parts or re.match(r"^[A-Za-z]:", str(local_path)):
            raise ManifestError(
                f"{source}: model {data['id']!r} local_path {local_path!r} must be relative "
                "to the manifest folder and stay inside it"
            )


def load_manifest(path: str | Path = MANIFEST_FILE) -> dict[str, ModelEntry]:
    """Read a manifest file; returns ``{model id: ModelEntry}`` in file order."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ManifestError(f"Cannot read model manifest {path}: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("models", []), list):
        raise ManifestError(f"{path}: expected a JSON object with a list under 'models'")
    entries: dict[str, ModelEntry] = {}
    for data in document.get("models", []):
        entry = ModelEntry.from_dict(data, source=str(path), manifest_dir=path.parent)
        if entry.id in entries:
            raise ManifestError(f"{path}: duplicate model id {entry.id!r}")
        entries[entry.id] = entry
    return entries
