"""Scene bridge for the CT input: DICOM series -> volume node, and HU windows on volume nodes.

Imports ``slicer`` MRML classes only (no Qt), so the module's logic and the headless tests share it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from LiverTumorSegLib.core.hu_windows import get_preset
from LiverTumorSegLib.io import dicom_io
from LiverTumorSegLib.scene import volumes as scene_bridge


def load_dicom_volume(folder: str | Path, series_uid: str | None = None, *, scene=None,
                      resample_nonuniform: bool = False):
    """Load one CT series of ``folder`` (searched recursively) into a new scalar volume node.

    The series is read and checked by the compute core (HU, slice order along the normal, missing
    slices, gantry tilt, mixed series, non-CT modality), so a bad folder raises
    ``dicom_io.DicomInputError`` before anything is added to the scene. Returns
    ``(volume_node, messages)`` where ``messages`` are the loader's warnings as text (for example which
    series was chosen among several). The node is named after the series description (or UID).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dicom_io.DicomInputWarning)
        series = _choose_series(folder, series_uid)
        image = dicom_io.load_series(folder, series.series_uid, resample_nonuniform=resample_nonuniform)
    messages = [str(w.message) for w in caught if issubclass(w.category, dicom_io.DicomInputWarning)]
    name = series.series_description or f"CT {series.series_uid[-12:]}"
    volume_node = scene_bridge.volume_node_from_image(image, name, scene=scene)
    volume_node.SetAttribute("LiverTumorSeg.SeriesInstanceUID", series.series_uid)
    volume_node.SetAttribute("LiverTumorSeg.SourceFolder", str(Path(folder).resolve()))
    return volume_node, messages


def _choose_series(folder: str | Path, series_uid: str | None) -> dicom_io.SeriesInfo:
    """The series ``load_series`` will load, for naming the node (same choice rule as the loader)."""
    all_series = dicom_io.scan_folder(folder)
    if series_uid is not None:
        for series in all_series:
            if series.series_uid == series_uid:
                return series
        # let the loader raise its error, which lists the available series
        dicom_io.load_series(folder, series_uid)
    ct_series = [s for s in all_series if s.modality == "CT"] or all_series
    return max(ct_series, key=lambda s: max(s.num_instances, s.num_frames))


def apply_window_preset(volume_node, preset_id: str) -> None:
    """Apply the HU window preset ``preset_id`` (see ``Resources/hu_window_presets.json``)."""
    if volume_node is None:
        raise ValueError("No CT volume selected: load or select a CT before choosing a window.")
    scene_bridge.apply_hu_window(volume_node, get_preset(preset_id))
