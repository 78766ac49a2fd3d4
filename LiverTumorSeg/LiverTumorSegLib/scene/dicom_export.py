"""Scene bridge for "Export to DICOM": the CURRENT segments of a segmentation as a DICOM SEG and SR (no Qt).

``export_segmentation_to_dicom`` combines the current "Liver" and "Liver tumor" segments (the user's corrections
included; ``results.current_labelmap``) into a 0/1/2 labelmap on the CT volume's grid, measures it
(``measurements.measure_labelmap``, as the measurements table does) and writes ``segmentation.dcm`` (DICOM SEG)
and ``report.dcm`` (TID 1500 SR; with the FLR when a resection was planned) into a folder, referencing the CT's
source instances:

- a volume loaded through Slicer's DICOM database carries ``DICOM.instanceUIDs`` (its SOP Instance UIDs, space
  separated); the caller resolves them to files (in Slicer: ``slicer.dicomDatabase.fileForInstance``);
- a volume loaded by this module's *Load DICOM series* (``scene.input.load_dicom_volume``) carries its folder and
  series UID.

A volume with neither has no DICOM source, which a SEG must reference: a one-line ``ValueError`` says so. The
algorithm recorded is the cascade with its models when the segmentation came from it, else this module
(SEMIAUTOMATIC). A cascade result counts as corrected (SEMIAUTOMATIC) once ``results.was_edited`` says so, which
is any change of its segments since the import, the FLR planner's output segments included. ``export_to_dicom_database`` also hands the files to
the caller's import function (in Slicer, ``DICOMUtils.importDicom``), so that they appear under the CT's study in
Slicer's DICOM database, ready to send with the DICOM module.

highdicom and pydicom are imported inside the functions: Slicer installs highdicom with the worker's packages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from LiverTumorSegLib.core.measurements import measure_labelmap
from LiverTumorSegLib.io import dicom_io
from LiverTumorSegLib.scene import flr as scene_flr
from LiverTumorSegLib.scene import results

DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOM scalar volume plugin
SOURCE_FOLDER_ATTRIBUTE = "LiverTumorSeg.SourceFolder"  # set by scene.input.load_dicom_volume
SOURCE_SERIES_ATTRIBUTE = "LiverTumorSeg.SeriesInstanceUID"
EXPORT_NAME = "LiverTumorAnalysis (Slicer export)"


def source_datasets(volume_node, file_for_instance: Callable[[str], str] | None = None) -> list:
    """The headers (pydicom data sets, no pixel data) of the CT instances ``volume_node`` was loaded from; one-line
    ``ValueError`` when it has no DICOM source or an instance's file cannot be found."""
    import pydicom

    name = volume_node.GetName()
    uids = (volume_node.GetAttribute(DICOM_UIDS_ATTRIBUTE) or "").split()
    if uids:
        if file_for_instance is None:
            raise ValueError(f"volume {name!r} comes from the DICOM database: pass file_for_instance "
                             "(slicer.dicomDatabase.fileForInstance) to find its files")
        paths = [(uid, file_for_instance(uid) or "") for uid in uids]
        missing = [uid for uid, path in paths if not path or not Path(path).is_file()]
        if missing:
            raise ValueError(f"volume {name!r}: {len(missing)} of its {len(uids)} DICOM instances have no file in the "
                             f"DICOM database (first: {missing[0]})")
        return [pydicom.dcmread(path, stop_before_pixels=True) for _, path in paths]
    folder = volume_node.GetAttribute(SOURCE_FOLDER_ATTRIBUTE)
    if folder:
        return dicom_io.series_headers(folder, volume_node.GetAttribute(SOURCE_SERIES_ATTRIBUTE) or None)
    raise ValueError(f"volume {name!r} has no DICOM source (it was not loaded from DICOM), and a DICOM SEG must "
                     "reference the CT's instances: load the CT from the DICOM database and segment that volume")


def _model_record(model_id: str | None, manifest: Mapping) -> dict | None:
    """What results.json records of a model (id, checksums, version, demo flag), from the manifest."""
    if not model_id:
        return None
    entry = manifest.get(model_id)
    if entry is None:
        return {"id": model_id}
    return {"id": entry.id, "sha256": entry.sha256, "md5": entry.md5, "version": entry.extra.get("version"),
            "demo_only": entry.demo_only}


def export_algorithm(segmentation_node, volume_node):
    """The algorithm the SEG names (see the module docstring)."""
    from LiverTumorSegLib.io.dicom_seg import SOFTWARE_VERSION, Algorithm, cascade_algorithm
    from LiverTumorSegLib.models.manifest import load_manifest

    info = results.result_info(segmentation_node)
    if not info["liver_model"]:
        return Algorithm(EXPORT_NAME, SOFTWARE_VERSION, algorithm_type="SEMIAUTOMATIC")
    manifest = load_manifest()
    models = {"liver": _model_record(info["liver_model"], manifest),
              "tumor": _model_record(info["tumor_model"], manifest)}
    return cascade_algorithm(models, corrected=results.was_edited(segmentation_node, volume_node))


def _ratio(text: str) -> float | None:
    return None if text == "n/a" else float(text) / 100.0


def planned_flr(segmentation_node) -> dict | None:
    """The FLR figures of the FLR table written for ``segmentation_node`` (as the table shows them: mL to 0.1,
    ratios to 0.1 %), or None when no resection was planned."""
    table = scene_flr.find_flr_table(segmentation_node)
    if table is None:
        return None
    values = scene_flr.table_values(table)
    if "flr_ml" not in values or "flr_ratio" not in values or values["flr_ml"][0] == "n/a":
        return None
    return {"flr_ml": float(values["flr_ml"][0]), "flr_ratio": _ratio(values["flr_ratio"][0]),
            "sflr": _ratio(values["sflr"][0]) if "sflr" in values else None}


def export_segmentation_to_dicom(segmentation_node, volume_node, out_dir: str | Path, *,
                                 file_for_instance: Callable[[str], str] | None = None,
                                 flr: Mapping | None = None) -> list[Path]:
    """Write ``segmentation.dcm`` and ``report.dcm`` of the current segments into ``out_dir`` (see the module
    docstring); ``flr``: ``FLRFigures.to_dict()`` of the planned resection (default: the segmentation's FLR table,
    if any). Returns the two paths. One-line ``ValueError`` when the CT has no DICOM source, the segmentation has
    no Liver segment, or the volume's grid is not its DICOM series' grid."""
    from LiverTumorSegLib.io.dicom_sr import write_dicom_results

    if segmentation_node is None or volume_node is None:
        raise ValueError("Export to DICOM needs a segmentation and the CT volume it was made on")
    headers = source_datasets(volume_node, file_for_instance)
    labels = results.current_labelmap(segmentation_node, volume_node)
    return write_dicom_results(out_dir, labels, headers, export_algorithm(segmentation_node, volume_node),
                               measurements=measure_labelmap(labels),
                               flr=flr if flr is not None else planned_flr(segmentation_node))


def export_to_dicom_database(segmentation_node, volume_node, out_dir: str | Path, *,
                             file_for_instance: Callable[[str], str],
                             import_files: Callable[[Sequence[Path]], None],
                             flr: Mapping | None = None) -> list[Path]:
    """``export_segmentation_to_dicom``, then ``import_files(paths)`` (in Slicer: import ``out_dir`` into the DICOM
    database, copying the files), so that the SEG and SR appear under the CT's study. Returns the paths."""
    paths = export_segmentation_to_dicom(segmentation_node, volume_node, out_dir, file_for_instance=file_for_instance,
                                         flr=flr)
    import_files(paths)
    return paths
