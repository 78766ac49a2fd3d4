"""Cohort input for staging: a folder of scans with labelmaps, matched to a table of stages by patient and date.

Folder layout (both forms may be mixed in one cohort folder)::

    COHORT/<patient id>/<scan>/ct.nii.gz       CT in HU (.nii.gz, .nii, .nrrd, .mha or .mhd)
    COHORT/<patient id>/<scan>/labels.nii.gz   0/1/2 labelmap on the CT grid (same extensions)
    COHORT/<patient id>/<scan>/dicom/...       or: the CT as one DICOM series folder instead of ct.*
    COHORT/<patient id>_<YYYYMMDD>.nii.gz      flat form: CT file named patient_date ...
    COHORT/labels/<patient id>_<YYYYMMDD>.nii.gz   ... with its labelmap of the same name in labels/

The scan date is the first ``YYYYMMDD`` or ``YYYY-MM-DD`` in the scan folder's (or flat file's) name; a
DICOM scan without one takes StudyDate (else SeriesDate, AcquisitionDate) from its first file.

Table: CSV (comma, semicolon or tab separated, UTF-8) or Excel (.xlsx, first sheet), one header row with
a patient id column (``patient_id``, ``patient``, ``id``, ``pid``), a date column (``scan_date``,
``date``, ``study_date``) and a stage column (``stage``, ``ajcc_stage``, ``tnm_stage``); header matching
ignores case, spaces and underscores. Dates: ISO ``YYYY-MM-DD``, ``YYYYMMDD``, ``DD.MM.YYYY`` or Excel
dates. Patient ids match case-insensitively after trimming (``123`` and ``123.0`` are the same id).

Matching: a scan takes the row of the same patient whose date is nearest, if at most ``tolerance_days``
away (0: the same day). Every other scan is excluded with its reason: no labelmap, no scan date, no table
row for the patient, date mismatch, or two equally near rows with different stages; the feature step
adds unreadable images and labelmaps off the CT grid.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from LiverTumorSegLib.core.plausibility import check_labelmap
from LiverTumorSegLib.io.atomic import atomic_write

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
PATIENT_COLUMNS = ("patientid", "patient", "id", "pid")
DATE_COLUMNS = ("scandate", "date", "studydate")
STAGE_COLUMNS = ("stage", "ajccstage", "tnmstage")
_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")
_FLAT_NAME = re.compile(r"^(?P<patient>.+?)_(?P<date>\d{8}|\d{4}-\d{2}-\d{2})(?P<rest>.*)$")


class CohortTableWarning(UserWarning):
    """A table row was skipped (missing patient id, date or stage, or an unreadable date)."""


@dataclass(frozen=True)
class Scan:
    """One scan found in the cohort folder. ``image`` is a CT file or a DICOM series folder."""

    patient_id: str
    name: str
    scan_date: date | None
    image: Path
    labels: Path | None


@dataclass(frozen=True)
class TableRow:
    patient_id: str
    scan_date: date
    stage: str
    row_number: int  # 1-based line in the table, header = 1


@dataclass(frozen=True)
class CohortCase:
    scan: Scan
    stage: str
    table_date: date
    days_apart: int


@dataclass(frozen=True)
class Exclusion:
    patient_id: str
    scan: str
    path: str
    reason: str


@dataclass
class Cohort:
    cases: list[CohortCase] = field(default_factory=list)
    excluded: list[Exclusion] = field(default_factory=list)


def normalize_patient_id(value) -> str:
    """Trimmed, case-folded id; a float with an integer value loses its ``.0`` (Excel numbers)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+\.0+", text):
        text = text.split(".")[0]
    return text.casefold()


def parse_date(value) -> date:
    """A ``date`` from ISO, ``YYYYMMDD``, ``DD.MM.YYYY`` text, or a ``date``/``datetime``; ``ValueError`` else."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    if isinstance(value, int | float) and not isinstance(value, bool):
        text = str(int(value))
    for pattern in ("%Y-%m-%d", "%Y%m%d", "%d.%m.%Y", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(text, pattern).date()
        except ValueError:
            continue
    raise ValueError(f"date {value!r} is not YYYY-MM-DD, YYYYMMDD or DD.MM.YYYY")


def date_in_name(name: str) -> date | None:
    """The first valid ``YYYYMMDD`` / ``YYYY-MM-DD`` in a file or folder name, else None."""
    for match in _DATE_IN_NAME.finditer(name):
        try:
            return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        except ValueError:
            continue
    return None


def _strip_suffix(name: str) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _dicom_date(folder: Path) -> date | None:
    import pydicom

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not a DICOM file: try the next one
            continue
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate"):
            value = str(getattr(header, keyword, "") or "")
            if value:
                try:
                    return parse_date(value)
                except ValueError:
                    continue
        return None
    return None


def _nested_scan(patient: str, folder: Path) -> Scan | Exclusion:
    image = _find_image(folder, "ct")
    dicom = folder / "dicom"
    if image is None and dicom.is_dir():
        image = dicom
    if image is None:
        return Exclusion(patient, folder.name, str(folder), "no CT (ct.nii.gz/.nrrd/... or dicom/ folder)")
    scan_date = date_in_name(folder.name)
    if scan_date is None and image.is_dir():
        scan_date = _dicom_date(image)
    return Scan(patient, folder.name, scan_date, image, _find_image(folder, "labels"))


def find_scans(root: str | Path) -> tuple[list[Scan], list[Exclusion]]:
    """Scans of a cohort folder (layout in the module docstring), sorted by patient and name, and the
    entries that are not usable scans (with the reason)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"cohort folder {root} does not exist")
    scans: list[Scan] = []
    excluded: list[Exclusion] = []
    for entry in sorted(root.iterdir()):
        stem = _strip_suffix(entry.name)
        if entry.is_file() and stem is not None:
            match = _FLAT_NAME.match(stem)
            if match is None:
                excluded.append(
                    Exclusion("", entry.name, str(entry), "file name is not <patient>_<YYYYMMDD>")
                )
                continue
            labels = _find_image(root / "labels", stem)
            scans.append(Scan(match["patient"], stem, date_in_name(stem), entry, labels))
        elif entry.is_dir() and entry.name != "labels":
            for folder in sorted(p for p in entry.iterdir() if p.is_dir()):
                result = _nested_scan(entry.name, folder)
                (scans if isinstance(result, Scan) else excluded).append(result)
    return scans, excluded


def _pick_column(header: Sequence[str], candidates: tuple[str, ...], what: str, source: Path) -> int:
    keys = [re.sub(r"[\s_\-]", "", str(h or "")).casefold() for h in header]
    for candidate in candidates:
        if candidate in keys:
            return keys.index(candidate)
    raise ValueError(
        f"{source}: no {what} column (expected one of {', '.join(candidates)}; found {list(header)})"
    )


def _read_rows(path: Path) -> list[list]:
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        from openpyxl import load_workbook

        workbook = load_workbook(path, read_only=True, data_only=True)
        try:
            return [list(row) for row in workbook.worksheets[0].iter_rows(values_only=True)]
        finally:
            workbook.close()
    text = path.read_text(encoding="utf-8-sig")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    return [row for row in csv.reader(text.splitlines(), dialect)]


def read_table(path: str | Path) -> list[TableRow]:
    """Rows (patient id, scan date, stage) of a CSV or Excel table; unusable rows are skipped with a
    ``CohortTableWarning``. ``ValueError`` when the file cannot be read or lacks a column."""
    from TNMStagingLib.core.classifier import normalize_stage

    path = Path(path)
    try:
        rows = _read_rows(path)
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as error:
        raise ValueError(f"cannot read cohort table {path}: {error}") from error
    if not rows:
        raise ValueError(f"cohort table {path} is empty")
    header = rows[0]
    columns = [
        _pick_column(header, names, what, path)
        for names, what in (
            (PATIENT_COLUMNS, "patient id"),
            (DATE_COLUMNS, "scan date"),
            (STAGE_COLUMNS, "stage"),
        )
    ]
    out = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell not in (None, "") for cell in row):
            continue
        try:
            patient, when, stage = (row[i] if i < len(row) else None for i in columns)
            if patient in (None, "") or stage in (None, ""):
                raise ValueError("missing patient id or stage")
            out.append(
                TableRow(normalize_patient_id(patient), parse_date(when), normalize_stage(stage), number)
            )
        except ValueError as error:
            warnings.warn(f"{path}: row {number} skipped: {error}", CohortTableWarning, stacklevel=2)
    return out


def match_scans(scans: Sequence[Scan], rows: Sequence[TableRow], tolerance_days: int = 0) -> Cohort:
    """Pair each scan with the nearest-dated table row of its patient (see module docstring)."""
    by_patient: dict[str, list[TableRow]] = {}
    for row in rows:
        by_patient.setdefault(row.patient_id, []).append(row)
    cohort = Cohort()
    for scan in scans:
        reason = None
        candidates = by_patient.get(normalize_patient_id(scan.patient_id), [])
        if scan.labels is None:
            reason = "no labelmap (labels.* beside the CT)"
        elif scan.scan_date is None:
            reason = "no scan date (name without YYYYMMDD and no DICOM date)"
        elif not candidates:
            reason = "no table row for this patient"
        else:
            gaps = [abs((row.scan_date - scan.scan_date).days) for row in candidates]
            nearest = [row for row, gap in zip(candidates, gaps, strict=True) if gap == min(gaps)]
            if min(gaps) > tolerance_days:
                reason = (
                    f"date mismatch: nearest table date {nearest[0].scan_date.isoformat()} is {min(gaps)} days "
                    f"from the scan ({scan.scan_date.isoformat()}; tolerance {tolerance_days} days)"
                )
            elif len({row.stage for row in nearest}) > 1:
                rows_text = ", ".join(f"row {r.row_number}: {r.stage}" for r in nearest)
                reason = f"ambiguous: equally near table rows with different stages ({rows_text})"
            else:
                cohort.cases.append(CohortCase(scan, nearest[0].stage, nearest[0].scan_date, min(gaps)))
        if reason is not None:
            cohort.excluded.append(Exclusion(scan.patient_id, scan.name, str(scan.image), reason))
    return cohort


def load_cohort(root: str | Path, table: str | Path, tolerance_days: int = 0) -> Cohort:
    """Find the scans of ``root``, read ``table`` and match them; folder problems are listed as exclusions."""
    scans, excluded = find_scans(root)
    cohort = match_scans(scans, read_table(table), tolerance_days)
    cohort.excluded = excluded + cohort.excluded
    return cohort


def read_image(path: Path) -> sitk.Image:
    """A CT or labelmap file, or the largest DICOM series of a folder; ``ValueError`` naming the path."""
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path)) or []
            files = max((reader.GetGDCMSeriesFileNames(str(path), s) for s in series), key=len, default=())
            if not files:
                raise ValueError("no DICOM series in the folder")
            reader.SetFileNames(files)
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except (RuntimeError, ValueError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next(
            (line for line in lines if "ERROR:" in line), lines[-1] if lines else type(error).__name__
        )
        raise ValueError(f"cannot read {path}: {detail.split('ERROR:')[-1].strip()}") from error


def read_scan(scan: Scan) -> tuple[sitk.Image, sitk.Image]:
    """(CT as float32 HU, labelmap as uint8) of a scan; ``ValueError`` when unreadable or when the labelmap
    holds other values than 0, 1, 2 (a CT given as labels would wrap around in uint8)."""
    if scan.labels is None:
        raise ValueError(f"scan {scan.image} has no labelmap")
    ct = sitk.Cast(read_image(scan.image), sitk.sitkFloat32)
    labels = read_image(scan.labels)
    check_labelmap(labels, f"labelmap {scan.labels}")
    return ct, sitk.Cast(labels, sitk.sitkUInt8)


def write_exclusions(excluded: Sequence[Exclusion], path: str | Path, *, overwrite: bool = True) -> Path:
    """CSV with columns patient_id, scan, path, reason (one row per excluded scan), written all at once
    (``io.atomic``; an existing file is replaced only with ``overwrite``)."""
    return write_csv(path, [["patient_id", "scan", "path", "reason"],
                             *([e.patient_id, e.scan, e.path, e.reason] for e in excluded)], overwrite)


def write_csv(path: str | Path, rows: Iterable[Sequence[Any]], overwrite: bool = True) -> Path:
    """``rows`` as a UTF-8 CSV file, written all at once (``io.atomic.atomic_write``)."""
    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            csv.writer(stream).writerows(rows)

    return atomic_write(path, write, overwrite=overwrite)


# Feature table: one row per case, these columns first, then one column per feature.
FEATURE_TABLE_META = (
    "patient_id",
    "scan",
    "scan_date",
    "stage",
    "encoder",
    "weights",
    "encoder_seed",
    "input_mode",
    "n_slices",
    "feature_config",
)


@dataclass
class FeatureTable:
    """Features of a cohort: ``meta`` (one dict of ``FEATURE_TABLE_META`` per row), ``X`` (rows, features)
    float64 with NaN for empty cells, the feature names, and the feature configuration / encoder shared by
    every row (``feature_config``: ``FeatureConfig.to_dict()``; ``encoder``: name, input_mode, weights, seed).
    """

    meta: list[dict[str, str]]
    feature_names: list[str]
    X: object  # numpy.ndarray (n_rows, n_features)
    feature_config: dict
    encoder: dict

    @property
    def patient_ids(self) -> list[str]:
        return [row["patient_id"] for row in self.meta]

    @property
    def stages(self) -> list[str]:
        return [row["stage"] for row in self.meta]


def write_feature_table(path: str | Path, records: Sequence[dict], feature_names: Sequence[str], *,
                        overwrite: bool = True) -> Path:
    """CSV of ``records`` (dicts with the meta columns and every feature name; float values written with
    ``repr`` precision, NaN as an empty cell), written all at once (``io.atomic``)."""
    rows = [[*FEATURE_TABLE_META, *feature_names]]
    for record in records:
        values = [record[name] for name in feature_names]
        cells = ["" if value != value else repr(float(value)) for value in values]
        rows.append([record.get(key, "") for key in FEATURE_TABLE_META] + cells)
    return write_csv(path, rows, overwrite)


def read_feature_table(path: str | Path) -> FeatureTable:
    """Read a table written by ``write_feature_table``; ``ValueError`` naming the file on any problem
    (missing columns, non-numeric cells, rows from different encoders or feature settings)."""
    import json

    import numpy as np

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
    except OSError as error:
        raise ValueError(f"cannot read feature table {path}: {error}") from error
    if not rows or list(rows[0][: len(FEATURE_TABLE_META)]) != list(FEATURE_TABLE_META):
        raise ValueError(
            f"{path} is not a feature table (expected columns {', '.join(FEATURE_TABLE_META)} first)"
        )
    if len(rows) < 2:
        raise ValueError(f"feature table {path} has no rows")
    width = len(FEATURE_TABLE_META)
    names = rows[0][width:]
    meta = [dict(zip(FEATURE_TABLE_META, row[:width], strict=True)) for row in rows[1:]]
    try:
        X = np.array(
            [[float(c) if c != "" else np.nan for c in row[width:]] for row in rows[1:]], dtype=np.float64
        )
    except ValueError as error:
        raise ValueError(f"feature table {path}: non-numeric feature value ({error})") from None
    if X.shape != (len(meta), len(names)):
        raise ValueError(f"feature table {path}: rows have different numbers of cells")
    settings = {
        (m["encoder"], m["weights"], m["encoder_seed"], m["input_mode"], m["feature_config"]) for m in meta
    }
    if len(settings) != 1:
        raise ValueError(
            f"feature table {path} mixes rows from different encoders, weights or feature settings"
        )
    encoder_name, weights, seed, input_mode, config_json = settings.pop()
    encoder = {
        "name": encoder_name,
        "input_mode": input_mode,
        "weights": weights,
        "seed": int(seed) if seed not in ("", "None") else None,
    }
    return FeatureTable(meta, names, X, json.loads(config_json), encoder)


def feature_record(case, result, config, encoder) -> dict[str, Any]:
    """One row of a feature table: the scan's identity and stage, the encoder's provenance and the features
    of ``result`` (``features.case_features``) computed with ``config`` and ``encoder``."""
    return {
        "patient_id": case.scan.patient_id,
        "scan": case.scan.name,
        "scan_date": case.scan.scan_date.isoformat(),
        "stage": case.stage,
        "encoder": result.encoder,
        "weights": result.weights,
        "encoder_seed": "" if encoder is None or encoder.seed is None else encoder.seed,
        "input_mode": result.input_mode,
        "n_slices": len(result.slices),
        "feature_config": json.dumps(config.to_dict(), sort_keys=True),
        **result.values,
    }


def describe_feature_table(table, path: Path) -> str:
    """One line for a model card: scans, patients and stages of the feature table read from ``path``."""
    counts = Counter(table.stages)
    stages = ", ".join(f"{stage}: {counts[stage]}" for stage in sorted(counts))
    return f"{len(table.meta)} scans of {len(set(table.patient_ids))} patients from {path.name} (stages {stages})"


def extract_features(found, config, encoder, *, batch_size: int = 2, device: str = "auto",
                     log=None) -> tuple[list[dict[str, Any]], list]:
    """Feature rows of every matched scan of ``found`` (``load_cohort``'s result) and the exclusions (those of
    the matching plus every scan whose features cannot be computed, with the reason). ``log(line)`` gets one
    progress line per encoder step."""
    from TNMStagingLib.core import features

    records, excluded = [], list(found.excluded)
    for number, case in enumerate(found.cases, start=1):
        prefix = f"[{number}/{len(found.cases)}] {case.scan.patient_id}/{case.scan.name}"
        try:
            ct, labels = read_scan(case.scan)
            result = features.case_features(
                ct, labels, config, encoder, batch_size=batch_size, device=device,
                progress=None if log is None else (lambda fraction, message, p=prefix: log(f"{p}: {message}")),
            )
        except ValueError as error:
            excluded.append(Exclusion(case.scan.patient_id, case.scan.name, str(case.scan.image), str(error)))
            continue
        records.append(feature_record(case, result, config, encoder))
    return records, excluded
