"""DICOM Structured Report (TID 1500 Measurement Report, Comprehensive 3D SR) of the liver and tumor measurements.

Every value is one item of a TID 1411 volumetric measurement group that references, with a ReferencedSegment,
the segment of the DICOM SEG (``io.dicom_seg``) it was measured on. Units are UCUM:

=====================  ===========  ======================================================  ==============
group (tracking id)    segment      measurements                                            units
=====================  ===========  ======================================================  ==============
Liver                  Liver        SCT 118565006 Volume (total liver volume)               ml
Liver tumor            Liver tumor  Volume; DCM 111406 Number of similar findings (lesions)  ml; {lesions}
Liver tumor lesion N   Liver tumor  Volume; SCT 103339001 Long axis (longest axial           ml; mm
                                    diameter, ``core.measurements``)
Future liver remnant   Liver        Volume; 99LTA FLRR "Future liver remnant ratio";        ml; 1; 1
(when planned)                      99LTA SFLR "Standardized future liver remnant"
                                    (when height and weight were given)
=====================  ===========  ======================================================  ==============

Lesion N is the N-th largest (the lesion table's id); TID 1411 has no point item, so its centroid is not encoded.
DICOM has no concepts for the FLR ratio and sFLR: they use the private coding scheme "99LTA", declared in the
Coding Scheme Identification Sequence. The observer is the algorithm, as a device; the evidence is the SEG and
every source CT instance. ``write_dicom_results`` writes the SEG and the SR of one labelmap together.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import pydicom
import SimpleITK as sitk
from highdicom.sr.coding import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from LiverTumorSegLib.core.measurements import LabelmapMeasurements, measure_labelmap
from LiverTumorSegLib.core.terminology import load_segment_definitions
from LiverTumorSegLib.io.atomic import atomic_write
from LiverTumorSegLib.io.dicom_seg import (
    LIVER_TYPE_CODES,
    MANUFACTURER,
    TUMOR_TYPE_CODES,
    Algorithm,
    coded,
    result_identity,
    segment_infos,
    series_description,
    write_segmentation,
)

LOCAL_SCHEME = "99LTA"
VOLUME = CodedConcept("118565006", "SCT", "Volume")
LONG_AXIS = CodedConcept("103339001", "SCT", "Long axis")
LESION_COUNT = CodedConcept("111406", "DCM", "Number of similar findings")
FLR_FINDING = CodedConcept("FLR", LOCAL_SCHEME, "Future liver remnant")
FLR_RATIO = CodedConcept("FLRR", LOCAL_SCHEME, "Future liver remnant ratio")
SFLR = CodedConcept("SFLR", LOCAL_SCHEME, "Standardized future liver remnant")
UNIT_ML = CodedConcept("ml", "UCUM", "milliliter")
UNIT_MM = CodedConcept("mm", "UCUM", "millimeter")
UNIT_RATIO = CodedConcept("1", "UCUM", "no units")
UNIT_LESIONS = CodedConcept("{lesions}", "UCUM", "lesions")
SEG_FILE, REPORT_FILE = "segmentation.dcm", "report.dcm"


def _finite(value, what: str) -> float:
    """``value`` as a float; ``ValueError`` naming ``what`` unless it is finite and >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"measurement {what} is not a number: {value!r}") from error
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"measurement {what} must be finite and >= 0, got {value!r}")
    return number


def _flr_values(flr: Mapping | None) -> dict | None:
    """The FLR figures the report holds (``FLRFigures.to_dict()`` keys ``flr_ml``, ``flr_ratio``, ``sflr``)."""
    if flr is None:
        return None
    missing = [key for key in ("flr_ml", "flr_ratio") if key not in flr]
    if missing:
        raise ValueError(f"FLR figures lack {missing}; expected the dict of FLRFigures.to_dict()")
    return {"flr_ml": _finite(flr["flr_ml"], "flr_ml"), "flr_ratio": _finite(flr["flr_ratio"], "flr_ratio"),
            "sflr": None if flr.get("sflr") is None else _finite(flr["sflr"], "sflr")}


def _segment_number(seg: Dataset, type_codes: frozenset, what: str) -> int:
    """Number of the first SEG segment whose property type is one of ``type_codes``."""
    for info in segment_infos(seg):
        if info.property_type and (info.property_type[0], info.property_type[1]) in type_codes:
            return info.number
    raise ValueError(f"SEG {seg.SOPInstanceUID} has no {what} segment (types {sorted(type_codes)})")


def _referenced_segment(seg: Dataset, number: int) -> hd.sr.ReferencedSegment:
    """ReferencedSegment of segment ``number``: its frames' source images, or the source series if it is empty."""
    try:
        return hd.sr.ReferencedSegment.from_segmentation(seg, number)
    except (ValueError, AttributeError):  # a segment without frames (no tumor found)
        return hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID))


def _num(name: CodedConcept, value: float, unit: CodedConcept) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit)


class _Groups:
    """Builds the TID 1411 groups of one report: tracking id, finding, finding site Liver, segment, algorithm."""

    def __init__(self, seg: Dataset, algorithm: Algorithm) -> None:
        definitions = load_segment_definitions()
        self.liver_code, self.tumor_code = coded(definitions["liver"].type), coded(definitions["liver_tumor"].type)
        self.liver = _referenced_segment(seg, _segment_number(seg, LIVER_TYPE_CODES, "Liver"))
        self.tumor = _referenced_segment(seg, _segment_number(seg, TUMOR_TYPE_CODES, "Liver tumor"))
        self.algorithm = hd.sr.AlgorithmIdentification(name=algorithm.name[:64], version=algorithm.version[:64],
                                                       parameters=algorithm.parameter_strings() or None)

    def group(self, tracking_id: str, finding: CodedConcept, segment: hd.sr.ReferencedSegment,
              measurements: list[hd.sr.Measurement]) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=tracking_id),
            referenced_segment=segment, finding_type=finding, finding_sites=[hd.sr.FindingSite(self.liver_code)],
            algorithm_id=self.algorithm, measurements=measurements)


def _measurement_groups(measurements: LabelmapMeasurements, flr: dict | None, groups: _Groups) -> list:
    lesions = measurements.lesions
    result = [
        groups.group("Liver", groups.liver_code, groups.liver,
                     [_num(VOLUME, _finite(measurements.liver_volume_ml, "liver_volume_ml"), UNIT_ML)]),
        groups.group("Liver tumor", groups.tumor_code, groups.tumor,
                     [_num(VOLUME, _finite(measurements.tumor_volume_ml, "tumor_volume_ml"), UNIT_ML),
                      _num(LESION_COUNT, len(lesions), UNIT_LESIONS)]),
    ]
    for lesion in lesions:
        result.append(groups.group(f"Liver tumor lesion {lesion.id}", groups.tumor_code, groups.tumor, [
            _num(VOLUME, _finite(lesion.volume_ml, f"lesion {lesion.id} volume_ml"), UNIT_ML),
            _num(LONG_AXIS, _finite(lesion.longest_axial_diameter_mm, f"lesion {lesion.id} longest_axial_diameter_mm"),
                 UNIT_MM)]))
    if flr is not None:
        values = [_num(VOLUME, flr["flr_ml"], UNIT_ML), _num(FLR_RATIO, flr["flr_ratio"], UNIT_RATIO)]
        if flr["sflr"] is not None:
            values.append(_num(SFLR, flr["sflr"], UNIT_RATIO))
        result.append(groups.group("Future liver remnant", FLR_FINDING, groups.liver, values))
    return result


def _observation_context(algorithm: Algorithm) -> hd.sr.ObservationContext:
    """Observer = the algorithm, as a device (TID 1004)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name=algorithm.name[:64],
                                                       manufacturer_name=MANUFACTURER)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))


def write_measurement_report(measurements: LabelmapMeasurements, seg: Dataset, source_datasets: Sequence[Dataset],
                             algorithm: Algorithm, *, flr: Mapping | None = None, series_number: int = 902,
                             series_instance_uid: str | None = None, sop_instance_uid: str | None = None) -> Dataset:
    """A TID 1500 Comprehensive 3D SR of ``measurements`` (and ``flr``, ``FLRFigures.to_dict()``, when a resection
    was planned) referencing the segments of ``seg`` (it needs a Liver and a Liver tumor segment), with ``seg``
    and ``source_datasets`` (the CT) as evidence. One-line ``ValueError`` on a missing segment or a value that is
    not finite and >= 0."""
    groups = _measurement_groups(measurements, _flr_values(flr), _Groups(seg, algorithm))
    report = hd.sr.MeasurementReport(observation_context=_observation_context(algorithm),
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return hd.sr.Comprehensive3DSR(
            evidence=[seg, *source_datasets],
            content=report,
            **result_identity(series_number, series_instance_uid, sop_instance_uid),
            is_complete=True,
            series_description=series_description("Liver measurements", algorithm),
            coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=LOCAL_SCHEME, name="LiverTumorAnalysis local codes")],
        )


def save_dicom(dataset: Dataset, path: str | Path) -> Path:
    """Save ``dataset`` at ``path`` through ``io.atomic`` (complete or absent; an existing file is replaced)."""
    return atomic_write(path, lambda temporary: dataset.save_as(temporary, enforce_file_format=True), overwrite=True)


def make_dicom_results(labels: sitk.Image, source_datasets: Sequence[Dataset], algorithm: Algorithm, *,
                       measurements: LabelmapMeasurements | None = None, flr: Mapping | None = None
                       ) -> tuple[Dataset, Dataset]:
    """The DICOM SEG of ``labels`` (0/1/2 on the CT's grid) and its SR (``measurements``, default
    ``measure_labelmap(labels)``; ``flr`` when a resection was planned), in memory."""
    seg = write_segmentation(labels, source_datasets, algorithm)
    values = measurements if measurements is not None else measure_labelmap(labels)
    return seg, write_measurement_report(values, seg, source_datasets, algorithm, flr=flr)


def write_dicom_results(out_dir: str | Path, labels: sitk.Image, source_datasets: Sequence[Dataset],
                        algorithm: Algorithm, *, measurements: LabelmapMeasurements | None = None,
                        flr: Mapping | None = None, seg_name: str = SEG_FILE,
                        report_name: str | None = REPORT_FILE) -> list[Path]:
    """Write ``make_dicom_results`` into ``out_dir`` as ``seg_name`` and ``report_name`` (None: the SEG alone);
    each file appears complete or not at all. Returns their paths (SEG first)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if report_name is None:
        return [save_dicom(write_segmentation(labels, source_datasets, algorithm), out_dir / seg_name)]
    seg, report = make_dicom_results(labels, source_datasets, algorithm, measurements=measurements, flr=flr)
    return [save_dicom(seg, out_dir / seg_name), save_dicom(report, out_dir / report_name)]


# --- reading ------------------------------------------------------------------------------------------------


def _children(item) -> list:
    return list(item.get("ContentSequence", []))


def _named(item, value: str, scheme: str) -> bool:
    concept = item.get("ConceptNameCodeSequence")
    return bool(concept) and concept[0].CodeValue == value and concept[0].CodingSchemeDesignator == scheme


def _concept(item) -> tuple[str, str, str]:
    code = item.ConceptNameCodeSequence[0]
    return (str(code.CodeValue), str(code.CodingSchemeDesignator), str(code.CodeMeaning))


def _read_group(group) -> dict:
    result: dict = {"tracking_id": None, "finding": None, "segment": None, "measurements": []}
    for item in _children(group):
        kind = item.ValueType
        if kind == "TEXT" and _named(item, "112039", "DCM"):  # Tracking Identifier
            result["tracking_id"] = str(item.TextValue)
        elif kind == "CODE" and _named(item, "121071", "DCM"):  # Finding
            code = item.ConceptCodeSequence[0]
            result["finding"] = (str(code.CodeValue), str(code.CodingSchemeDesignator), str(code.CodeMeaning))
        elif kind == "IMAGE" and _named(item, "121191", "DCM"):  # Referenced Segment
            reference = item.ReferencedSOPSequence[0]
            result["segment"] = (str(reference.ReferencedSOPInstanceUID), int(reference.ReferencedSegmentNumber))
        elif kind == "NUM":
            measured = item.MeasuredValueSequence[0]
            result["measurements"].append({"name": _concept(item), "value": float(measured.NumericValue),
                                           "unit": str(measured.MeasurementUnitsCodeSequence[0].CodeValue)})
    return result


def read_measurement_report(source: str | Path | Dataset) -> list[dict]:
    """The measurement groups of a TID 1500 SR, read from the raw content tree, one dict per group:
    ``tracking_id``, ``finding`` (value, scheme, meaning), ``segment`` (SEG SOP Instance UID, segment number) and
    ``measurements`` (``{"name": (value, scheme, meaning), "value": float, "unit": UCUM code}``)."""
    sr = source if isinstance(source, Dataset) else pydicom.dcmread(str(source))
    return [_read_group(group)
            for container in _children(sr) if _named(container, "126010", "DCM")  # Imaging Measurements
            for group in container.get("ContentSequence", []) if _named(group, "125007", "DCM")]  # Measurement Group


__all__ = ["REPORT_FILE", "SEG_FILE", "make_dicom_results", "read_measurement_report", "save_dicom",
           "write_dicom_results", "write_measurement_report"]
