"""Which series of a DICOM study to segment, and why: the portal-venous-looking axial CT series (pure Python).

The liver models are trained on portal-venous contrast CT. A multiphase liver study holds several CT series
(native, arterial, portal venous, delayed), thin and thick reconstructions of each, coronal reformats and a
localizer; "the CT series with the most slices" is then often a thin arterial reconstruction. The choice here
reads what the headers say (``SeriesMetadata``: from Slicer's DICOM database in the module,
``scene.dicom_database``) and ranks the series:

1. not CT, or a localizer / scout (Image Type LOCALIZER, or fewer than ``MIN_SLICES`` slices): never chosen;
2. the contrast phase (``phase_of``): portal venous first, then delayed, contrast of unknown phase, arterial,
   unknown, non-contrast last. The phase comes from the series description or protocol name (keywords of
   ``PHASE_PATTERNS``), else from the delay between Contrast/Bolus Start Time and the acquisition time (arterial
   below 45 s, portal venous 45-120 s, delayed beyond), else "contrast, phase unknown" when a contrast agent is
   recorded;
3. axial acquisitions before reformats (a slice normal far from the patient's S-I axis, Image Type DERIVED /
   SECONDARY, or "MPR", "MIP", "coronal", "sagittal" in the description);
4. slice thickness 1.5-5 mm (the models' 2.5 mm training spacing) before thinner (noisier, more slices for the
   same anatomy) and thicker ones;
5. then the most slices.

``choose_series`` returns the best candidate with one sentence for the picker ("why this one").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MIN_SLICES = 10
PHASE_ORDER = ("portal venous", "delayed", "contrast, phase unknown", "arterial", "unknown", "non-contrast")
# (phase, pattern on the lower-case description and protocol name); the first match wins, so "non-contrast" is
# tried before the contrast phases.
PHASE_PATTERNS = (
    ("non-contrast", r"non[- ]?contrast|non[- ]?con\b|\bw/?o\b|without|\bnativ|plain|unenhanced|pre[- ]?contrast|\bnc\b"),
    ("portal venous", r"portal|\bp\.?v\.?p?\b|\bvenous|\bvenös|\bvp\b|\b70 ?s\b"),
    ("delayed", r"delay|equilib|\blate\b|spät|\bdel\b|\beq\b"),
    ("arterial", r"arterial|arteriell|\bart\b|\bhap\b|\blap\b|early|\b[2-4]0 ?s\b"),
)
REFORMAT_PATTERN = r"\bmpr\b|\bmip\b|\bcor(onal)?\b|\bsag(ittal)?\b|reformat|\b3d\b|\bvr\b"


@dataclass(frozen=True)
class SeriesMetadata:
    """What the headers of one series say (first file; counts over the series). Text fields are '' when absent."""

    series_uid: str
    modality: str = ""
    description: str = ""
    protocol: str = ""
    slice_count: int = 0
    slice_thickness_mm: float | None = None
    contrast_agent: str = ""
    image_type: tuple[str, ...] = ()
    orientation: tuple[float, ...] | None = None  # Image Orientation (Patient): row and column cosines
    bolus_start_time: str = ""  # HHMMSS[.frac]
    acquisition_time: str = ""  # HHMMSS[.frac]
    series_number: str = ""

    @property
    def label(self) -> str:
        return self.description or self.protocol or f"series {self.series_number or self.series_uid[-8:]}"


@dataclass(frozen=True)
class RankedSeries:
    """A candidate with its rank key (larger is better; None: never chosen) and the reasons, for the picker."""

    series: SeriesMetadata
    key: tuple | None
    phase: str
    phase_evidence: str
    notes: tuple[str, ...]


@dataclass(frozen=True)
class SeriesChoice:
    """The series to load (None when no candidate is a CT volume), why, and every candidate ranked."""

    best: SeriesMetadata | None
    reason: str
    ranked: tuple[RankedSeries, ...]


def _seconds(time_text: str) -> float | None:
    """Seconds since midnight of a DICOM TM value (HHMMSS.frac, also HH:MM:SS)."""
    text = time_text.strip().replace(":", "")
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", text)
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    return int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) + float(fraction or 0.0)


def phase_of(series: SeriesMetadata) -> tuple[str, str]:
    """(phase, evidence) of a series: one of ``PHASE_ORDER`` and where it was read (see the module docstring)."""
    text = f"{series.description} {series.protocol}".lower()
    for phase, pattern in PHASE_PATTERNS:
        if re.search(pattern, text):
            return phase, "from the series description"
    start, acquired = _seconds(series.bolus_start_time), _seconds(series.acquisition_time)
    if start is not None and acquired is not None:
        delay = (acquired - start) % 86400
        phase = "arterial" if delay < 45 else "portal venous" if delay <= 120 else "delayed"
        return phase, f"{delay:.0f} s after the contrast bolus"
    if series.contrast_agent.strip():
        return "contrast, phase unknown", f"contrast agent {series.contrast_agent.strip()!r}, no phase in the header"
    return "unknown", "no phase or contrast information in the header"


def _is_axial(orientation: Sequence[float] | None) -> bool:
    if not orientation or len(orientation) != 6:
        return True  # unknown: do not penalise
    row, column = orientation[:3], orientation[3:]
    normal = (row[1] * column[2] - row[2] * column[1], row[2] * column[0] - row[0] * column[2],
              row[0] * column[1] - row[1] * column[0])
    length = sum(value * value for value in normal) ** 0.5 or 1.0
    return abs(normal[2]) / length >= 0.8  # within ~37 degrees of the S-I axis (gantry tilt stays axial)


def rank(series: SeriesMetadata) -> RankedSeries:
    """The rank key and the notes of one series (see the module docstring)."""
    phase, evidence = phase_of(series)
    image_type = {value.strip().upper() for value in series.image_type}
    if series.modality.upper() != "CT":
        return RankedSeries(series, None, phase, evidence, (f"modality {series.modality or 'none'}, not CT",))
    if "LOCALIZER" in image_type or series.slice_count < MIN_SLICES:
        return RankedSeries(series, None, phase, evidence, (f"localizer or scout ({series.slice_count} slice(s))",))
    notes = []
    reformat = (not _is_axial(series.orientation) or image_type & {"DERIVED", "SECONDARY"}
                or re.search(REFORMAT_PATTERN, series.description.lower()))
    if reformat:
        notes.append("reformat or derived series, not the axial acquisition")
    thickness = series.slice_thickness_mm
    if thickness is None:
        thickness_rank = 1
    elif 1.5 <= thickness <= 5.0:
        thickness_rank = 2
    else:
        thickness_rank = 1 if thickness < 1.5 else 0
        notes.append(f"{thickness:g} mm slices ({'thin: noisier' if thickness < 1.5 else 'thick'})")
    key = (len(PHASE_ORDER) - PHASE_ORDER.index(phase), not reformat, thickness_rank, series.slice_count)
    return RankedSeries(series, key, phase, evidence, tuple(notes))


def describe(ranked: RankedSeries) -> str:
    """One line for the picker: phase (with its evidence), thickness, slices, notes."""
    series = ranked.series
    parts = [f"{ranked.phase} ({ranked.phase_evidence})"]
    if series.slice_thickness_mm is not None:
        parts.append(f"{series.slice_thickness_mm:g} mm")
    parts.append(f"{series.slice_count} slices")
    return f"{series.label}: " + ", ".join(parts + list(ranked.notes))


def choose_series(candidates: Sequence[SeriesMetadata]) -> SeriesChoice:
    """The series to segment among ``candidates`` and why (see the module docstring)."""
    ranked = sorted((rank(series) for series in candidates),
                    key=lambda item: (item.key is not None, item.key or ()), reverse=True)
    usable = [item for item in ranked if item.key is not None]
    if not usable:
        reasons = "; ".join(f"{item.series.label}: {item.notes[0]}" for item in ranked) or "no series"
        return SeriesChoice(None, f"No CT volume series to segment ({reasons}).", tuple(ranked))
    best = usable[0]
    reason = f"Chosen: {describe(best)}."
    if best.phase != "portal venous":
        reason += " No series looks portal venous: check the phase before segmenting."
    others = [item.series.label for item in usable[1:]]
    if others:
        reason += f" Also available: {', '.join(others)}."
    return SeriesChoice(best.series, reason, tuple(ranked))


@dataclass(frozen=True)
class PickerRow:
    """One row of the series picker: the cells (series, modality, slices, thickness, phase), whether it can be
    loaded, its tooltip (the notes) and the series UID it stands for."""

    series_uid: str
    cells: tuple[str, str, str, str, str]
    selectable: bool
    tooltip: str


def picker_rows(choice: SeriesChoice) -> list[PickerRow]:
    """The picker's rows, best first (the first row is the chosen series when there is one)."""
    rows = []
    for item in choice.ranked:
        series = item.series
        thickness = "" if series.slice_thickness_mm is None else f"{series.slice_thickness_mm:g}"
        tooltip = "; ".join([f"{item.phase} ({item.phase_evidence})", *item.notes])
        rows.append(PickerRow(series.series_uid, (series.label, series.modality, str(series.slice_count), thickness,
                                                  item.phase), item.key is not None, tooltip))
    return rows
