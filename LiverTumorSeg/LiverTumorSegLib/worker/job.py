"""The segmentation worker's job: what to segment, with which models, where to write.

One dataclass for the job file that the Slicer module, ``livertumor segment`` and the DICOM node write and the
worker reads (``python -m LiverTumorSegLib.worker JOB.json``). The file is JSON::

    {"input": {"image": "ct.nrrd"} | {"dicom": "DIR", "series_uid": null},
     "output_dir": "OUT", "liver_model": "<model id>", "tumor_model": "<model id>" | null,
     "device": "auto" | "cpu", "min_tumor_ml": 0.1, "allow_download": false, "overwrite": false,
     "manifest": null | "models.json", "force": false, "resample_nonuniform": false}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from LiverTumorSegLib.core.options import MIN_TUMOR_ML
from LiverTumorSegLib.io.atomic import write_text


@dataclass
class SegmentationJob:
    """One cascade run. Exactly one of ``image`` (a CT file in HU) and ``dicom`` (a folder holding the CT series;
    ``series_uid`` picks one when it holds several) is given. ``tumor_model`` None runs the liver stage alone.
    ``min_tumor_ml``: smaller tumor components are dropped. ``manifest``: a model manifest other than the
    module's (tests, research models). ``force``: segment an image the CT plausibility gate finds implausible
    (``core.plausibility``; never a non-3D or non-finite one). ``resample_nonuniform``: resample a DICOM series
    with missing slices or irregular spacing onto a uniform grid instead of refusing it."""

    liver_model: str
    tumor_model: str | None = None
    image: str | None = None
    dicom: str | None = None
    series_uid: str | None = None
    output_dir: str = ""
    device: str = "auto"
    min_tumor_ml: float = MIN_TUMOR_ML
    allow_download: bool = False
    overwrite: bool = False
    manifest: str | None = None
    force: bool = False
    resample_nonuniform: bool = False

    def __post_init__(self) -> None:
        if (self.image is None) == (self.dicom is None):
            raise ValueError("a segmentation job needs exactly one input: an image file or a DICOM folder")
        if not self.liver_model:
            raise ValueError("a segmentation job needs a liver model")
        if not self.min_tumor_ml >= 0:
            raise ValueError(f"min_tumor_ml must be >= 0 mL, got {self.min_tumor_ml}")

    @property
    def input(self) -> dict[str, Any]:
        """The ``input`` object of the job file."""
        if self.dicom is not None:
            return {"dicom": self.dicom, "series_uid": self.series_uid}
        return {"image": self.image}

    def to_json(self) -> dict[str, Any]:
        """The job file's object (see the module docstring)."""
        return {"input": self.input, "output_dir": self.output_dir, "liver_model": self.liver_model,
                "tumor_model": self.tumor_model, "device": self.device, "min_tumor_ml": self.min_tumor_ml,
                "allow_download": self.allow_download, "overwrite": self.overwrite, "manifest": self.manifest,
                "force": self.force, "resample_nonuniform": self.resample_nonuniform}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SegmentationJob:
        """A job from the job file's object; ``KeyError``/``ValueError`` name what is missing or wrong."""
        source = data["input"]
        if not isinstance(source, dict):
            raise ValueError(f"'input' must be an object with 'image' or 'dicom', got {source!r}")
        return cls(liver_model=data["liver_model"], tumor_model=data.get("tumor_model"),
                   image=None if source.get("image") is None else str(source["image"]),
                   dicom=None if source.get("dicom") is None else str(source["dicom"]),
                   series_uid=source.get("series_uid"), output_dir=str(data["output_dir"]),
                   device=data.get("device", "auto"), min_tumor_ml=float(data.get("min_tumor_ml", MIN_TUMOR_ML)),
                   allow_download=bool(data.get("allow_download", False)),
                   overwrite=bool(data.get("overwrite", False)), manifest=data.get("manifest"),
                   force=bool(data.get("force", False)),
                   resample_nonuniform=bool(data.get("resample_nonuniform", False)))

    def write(self, path: str | Path) -> Path:
        """Write the job file (JSON) to ``path``."""
        return write_text(path, json.dumps(self.to_json(), indent=2), overwrite=True)
