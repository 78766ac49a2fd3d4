"""Slicer's DICOM database and DICOM objects in the scene (no Qt): the series metadata the picker ranks, and what
DICOM SEG export of a result needs.

``database`` is Slicer's ``ctkDICOMDatabase`` (``slicer.dicomDatabase``) or anything with its methods
``filesForSeries(uid)``, ``fileValue(file, "gggg,eeee")`` and ``seriesForFile(file)`` (the headless tests pass one
that reads the files with pydicom). Importing a folder into the database and loading a series with Slicer's DICOM
plugins (which set the ``DICOM.instanceUIDs`` attribute, the patient/study subject hierarchy and, for tilted or
irregular series, the acquisition regularization transform) are GUI-thread Qt work: ``gui.dicom``.
"""

from __future__ import annotations

from pathlib import Path

import slicer

from LiverTumorSegLib.io.series_choice import SeriesChoice, SeriesMetadata, choose_series

TAGS = {
    "modality": "0008,0060",
    "description": "0008,103E",
    "protocol": "0018,1030",
    "thickness": "0018,0050",
    "agent": "0018,0010",
    "image_type": "0008,0008",
    "orientation": "0020,0037",
    "bolus_start": "0018,1042",
    "acquisition_time": "0008,0032",
    "series_time": "0008,0031",
    "series_number": "0020,0011",
}
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOM plugins on a loaded volume


def _float(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _values(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(text or "").split("\\") if part.strip())


def series_metadata(database, series_uid: str) -> SeriesMetadata:
    """What the first file of ``series_uid`` says, with the number of files of the series as its slice count."""
    files = list(database.filesForSeries(series_uid))
    if not files:
        return SeriesMetadata(series_uid)
    first = files[0]

    def value(name: str) -> str:
        return str(database.fileValue(first, TAGS[name]) or "").strip()

    orientation = tuple(v for v in (_float(part) for part in _values(value("orientation"))) if v is not None)
    return SeriesMetadata(
        series_uid=series_uid,
        modality=value("modality"),
        description=value("description"),
        protocol=value("protocol"),
        slice_count=len(files),
        slice_thickness_mm=_float(value("thickness")),
        contrast_agent=value("agent"),
        image_type=_values(value("image_type")),
        orientation=orientation if len(orientation) == 6 else None,
        bolus_start_time=value("bolus_start"),
        acquisition_time=value("acquisition_time") or value("series_time"),
        series_number=value("series_number"),
    )


def series_in_folder(database, folder: str | Path) -> list[str]:
    """Series UIDs of the files under ``folder`` that the database knows, in first-seen order."""
    uids = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        uid = database.seriesForFile(str(path))
        if uid and uid not in uids:
            uids.append(uid)
    return uids


def choose_from_database(database, series_uids) -> SeriesChoice:
    """Rank ``series_uids`` of the database (``io.series_choice``): the series to load and why."""
    return choose_series([series_metadata(database, uid) for uid in series_uids])


def _reference_volume(segmentation_node):
    return segmentation_node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())


def dicom_seg_export_problems(segmentation_node) -> list[str]:
    """What would stop Slicer's DICOM SEG export (DICOMSegmentationPlugin) of ``segmentation_node``; empty when
    nothing: a reference volume loaded from DICOM (``DICOM.instanceUIDs``), the segmentation in a study of the
    subject hierarchy, a terminology and valid algorithm tags on every segment."""
    from LiverTumorSegLib.scene.results import ALGORITHM_NAME_TAG, ALGORITHM_TYPE_TAG
    from LiverTumorSegLib.scene.roles import segment_tag, type_code

    problems = []
    volume = _reference_volume(segmentation_node)
    if volume is None:
        problems.append("the segmentation has no reference volume (its CT)")
    elif not volume.GetAttribute(INSTANCE_UIDS_ATTRIBUTE):
        problems.append(f"the CT {volume.GetName()!r} was not loaded from the DICOM database (no DICOM instance "
                        "UIDs): load it with 'Load DICOM' or the DICOM module")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(segmentation_node.GetScene())
    item = hierarchy.GetItemByDataNode(segmentation_node) if hierarchy else 0
    parent = hierarchy.GetItemParent(item) if item else 0
    if not parent or hierarchy.GetItemLevel(parent) != slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy():
        problems.append("the segmentation is not in a study of the subject hierarchy")
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        if type_code(segment) is None:
            problems.append(f"segment {segment.GetName()!r} has no terminology")
        kind = segment_tag(segment, ALGORITHM_TYPE_TAG) or "MANUAL"
        if kind not in ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC"):
            problems.append(f"segment {segment.GetName()!r}: algorithm type {kind!r} is not a DICOM one")
        elif kind != "MANUAL" and not segment_tag(segment, ALGORITHM_NAME_TAG):
            problems.append(f"segment {segment.GetName()!r} is {kind.lower()} but names no algorithm")
    return problems
