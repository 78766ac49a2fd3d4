"""AJCC 8th-edition staging of liver tumours from measured lesion diameters and the reader's findings.

Pure Python (no numpy, no Slicer). Diameters are the longest diameter of each lesion in millimetres.
Vascular invasion, adjacent organ invasion, perforation, N and M are not reliably visible to the
segmentation: they are inputs the reader confirms, and every explanation names them as such.

Hepatocellular carcinoma (AJCC 8th edition, liver chapter):

- T0: no evidence of primary tumour (no lesion measured).
- T1a: solitary tumour <= 2 cm, with or without vascular invasion (the 8th edition puts no vascular
  invasion condition on T1a; vascular invasion only separates T1b from T2 for solitary tumours > 2 cm).
- T1b: solitary tumour > 2 cm without vascular invasion (whatever its size: a solitary 8 cm tumour without
  vascular invasion is T1b).
- T2: solitary tumour > 2 cm with vascular invasion, or multiple tumours, none > 5 cm.
- T3: multiple tumours, at least one > 5 cm.
- T4: tumour(s) of any size involving a major branch of the portal or hepatic vein, or direct invasion of
  adjacent organs other than the gallbladder, or perforation of the visceral peritoneum.

Boundaries are compared exactly: 20 mm is T1a (20.1 mm is not); 50 mm is not > 5 cm (50.1 mm is).

Decisions documented here (the manual leaves them to the user of a measuring tool):

- ``vascular_invasion="suspected"`` (microscopic or segmental invasion suspected on imaging and confirmed
  by the reader) counts as vascular invasion present but not major: it turns a solitary tumour > 2 cm
  from T1b into T2 and changes nothing else. ``"major"`` (major branch of the portal or hepatic vein) is T4.
- No lesion measured: T0, and T0 N0 M0 has no stage group ("not applicable"). The "any T" groups still
  apply: T0 N1 M0 is IVA, T0 any N M1 is IVB. A reader-confirmed T4 finding (major vascular invasion,
  adjacent organ, perforation) with no measured lesion gives T4 ("any size"): the segmentation missed an
  infiltrative tumour rather than the reader inventing one.

Colorectal liver metastases (``tumor_type="crlm"``): a liver metastasis is distant metastasis (M1a,
one organ) and stage IVA in the colorectal system whatever T and N. T and N belong to the primary, which
is not in the liver: T is reported as TX, N as the reader gives it or NX. A reader-confirmed metastasis
beyond the liver (``m="M1"`` or ``"M1b"``) makes M1b, stage IVB; peritoneal metastasis (``m="M1c"``)
makes M1c, stage IVC.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Iterable
from dataclasses import asdict, dataclass

T1A_MAX_MM = 20.0  # solitary tumour <= 2 cm is T1a
T3_LARGEST_ABOVE_MM = 50.0  # multiple tumours with one > 5 cm are T3

VASCULAR_INVASION = ("none", "suspected", "major")
TUMOR_TYPES = ("hcc", "crlm")
HCC_N = ("N0", "N1")
HCC_M = ("M0", "M1")
CRLM_N = ("NX", "N0", "N1", "N1a", "N1b", "N1c", "N2", "N2a", "N2b")
CRLM_M = ("M0", "M1", "M1b", "M1c")  # metastasis beyond the liver; the liver lesions alone are M1a
NOT_APPLICABLE = "not applicable"

_HCC_GROUPS = {"T1a": "IA", "T1b": "IB", "T2": "II", "T3": "IIIA", "T4": "IIIB"}
_CRLM_M_STAGE = {"M0": ("M1a", "IVA"), "M1": ("M1b", "IVB"), "M1b": ("M1b", "IVB"), "M1c": ("M1c", "IVC")}
_VASCULAR_TEXT = {
    "none": "no vascular invasion",
    "suspected": "vascular invasion suspected on imaging (counted as present, not major)",
    "major": "invasion of a major branch of the portal or hepatic vein",
}


class _Labelled(enum.Enum):
    """A choice of the staging form with a readable label (Slicer's parameter-node combo boxes show ``label()``)."""

    def label(self) -> str:
        return _LABELS[type(self).__name__][self.value]


class TumorType(_Labelled):
    hcc = "hcc"
    crlm = "crlm"


class VascularInvasion(_Labelled):
    none = "none"
    suspected = "suspected"
    major = "major"


class NodalStatus(_Labelled):
    """Every N category the rules accept: N0/N1 for HCC, NX to N2b for colorectal metastases."""

    NX = "NX"
    N0 = "N0"
    N1 = "N1"
    N1a = "N1a"
    N1b = "N1b"
    N1c = "N1c"
    N2 = "N2"
    N2a = "N2a"
    N2b = "N2b"


class DistantMetastasis(_Labelled):
    """Every M input the rules accept: M0/M1 for HCC; for colorectal metastases the metastasis beyond the liver
    (M0: none, so the liver lesions make M1a; M1/M1b another organ; M1c the peritoneum)."""

    M0 = "M0"
    M1 = "M1"
    M1b = "M1b"
    M1c = "M1c"


_LABELS = {
    "TumorType": {
        "hcc": "Hepatocellular carcinoma (AJCC liver chapter)",
        "crlm": "Colorectal liver metastases (M1a, stage IVA)",
    },
    "VascularInvasion": {
        "none": "None",
        "suspected": "Suspected on imaging, not major (T2 if solitary > 2 cm)",
        "major": "Major branch of the portal or hepatic vein (T4)",
    },
    "NodalStatus": {
        "NX": "NX: cannot be assessed (colorectal)",
        "N0": "N0: no regional lymph node metastasis",
        "N1": "N1: regional lymph node metastasis",
        "N1a": "N1a: one regional node (colorectal)",
        "N1b": "N1b: two or three regional nodes (colorectal)",
        "N1c": "N1c: tumor deposits, nodes negative (colorectal)",
        "N2": "N2: four or more regional nodes (colorectal)",
        "N2a": "N2a: four to six regional nodes (colorectal)",
        "N2b": "N2b: seven or more regional nodes (colorectal)",
    },
    "DistantMetastasis": {
        "M0": "M0: no distant metastasis (colorectal: liver only, M1a)",
        "M1": "M1: distant metastasis (colorectal: another organ too, M1b)",
        "M1b": "M1b: metastases in more than one organ (colorectal)",
        "M1c": "M1c: peritoneal metastasis (colorectal)",
    },
}


def allowed_n(tumor_type) -> tuple[NodalStatus, ...]:
    """The N categories the rules accept for ``tumor_type`` (a ``TumorType`` or its value)."""
    names = HCC_N if _value(tumor_type) == "hcc" else CRLM_N
    return tuple(NodalStatus(name) for name in names)


def allowed_m(tumor_type) -> tuple[DistantMetastasis, ...]:
    """The M inputs the rules accept for ``tumor_type``."""
    names = HCC_M if _value(tumor_type) == "hcc" else CRLM_M
    return tuple(DistantMetastasis(name) for name in names)


def coerce_findings(tumor_type, n, m) -> tuple[NodalStatus, DistantMetastasis]:
    """``(n, m)`` kept when the rules of ``tumor_type`` accept them, else the type's default (HCC N0, colorectal
    NX; M0): what the form shows after the user switches the tumor type."""
    n, m = NodalStatus(_value(n)), DistantMetastasis(_value(m))
    if n not in allowed_n(tumor_type):
        n = NodalStatus.N0 if _value(tumor_type) == "hcc" else NodalStatus.NX
    if m not in allowed_m(tumor_type):
        m = DistantMetastasis.M0
    return n, m


def _value(choice):
    """The plain value of a choice given as an enum member or as its value."""
    return choice.value if isinstance(choice, enum.Enum) else choice


@dataclass(frozen=True)
class StageResult:
    """AJCC categories and stage group, written as in the manual (``T1a``, ``N0``, ``M1a``, ``IVA``).

    ``stage`` is ``"not applicable"`` where no group exists (no tumour and N0 M0). ``explanation`` is one or
    two plain sentences naming the measured lesions and the reader-confirmed findings used.
    """

    T: str
    N: str
    M: str
    stage: str
    explanation: str

    def to_dict(self) -> dict[str, str]:
        """The result as a JSON-ready dict with keys ``T``, ``N``, ``M``, ``stage``, ``explanation``."""
        return asdict(self)


def parse_diameters_mm(text: str) -> list[float]:
    """Parse longest diameters in mm from ``"18,30"`` (commas and/or spaces); ``""`` means no lesion.

    Raises ``ValueError`` naming the token that is not a number; values are checked by the stage functions.
    """
    values = []
    for token in text.replace(",", " ").split():
        try:
            values.append(float(token))
        except ValueError:
            raise ValueError(f"diameter {token!r} is not a number (expected mm, e.g. 18,30)") from None
    return values


def _check_diameters(diameters_mm: Iterable[float]) -> list[float]:
    if isinstance(diameters_mm, str):
        raise TypeError("diameters_mm must be numbers in mm, not a string (use parse_diameters_mm)")
    checked = []
    for value in diameters_mm:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"diameter {value!r} is not a number (longest diameter in mm)")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"diameter {value!r} mm is invalid: each lesion needs a finite diameter > 0 mm")
        checked.append(float(value))
    return checked


def _choice(value: str | None, allowed: tuple[str, ...], name: str) -> str:
    """Case-insensitive match of ``value`` against ``allowed``; returns the canonical spelling."""
    for option in allowed:
        if isinstance(value, str) and value.strip().lower() == option.lower():
            return option
    raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")


def _mm(value: float) -> str:
    return f"{value:g} mm"


def _lesions_text(diameters_mm: list[float]) -> str:
    if len(diameters_mm) == 1:
        return f"Solitary tumour {_mm(diameters_mm[0])}"
    return f"{len(diameters_mm)} tumours, largest {_mm(max(diameters_mm))}"


def _hcc_t(
    diameters_mm: list[float], vascular_invasion: str, adjacent_organ_invasion: bool, perforation: bool
) -> tuple[str, str]:
    """T category and the sentence that justifies it."""
    t4_reasons = []
    if vascular_invasion == "major":
        t4_reasons.append("major branch of the portal or hepatic vein involved")
    if adjacent_organ_invasion:
        t4_reasons.append("direct invasion of an adjacent organ other than the gallbladder")
    if perforation:
        t4_reasons.append("perforation of the visceral peritoneum")
    if t4_reasons:
        lesions = _lesions_text(diameters_mm) if diameters_mm else "No lesion measured"
        return "T4", f"{lesions}; {' and '.join(t4_reasons)} (tumour of any size): T4."
    if not diameters_mm:
        return "T0", "No liver lesion measured: T0 (no evidence of primary tumour)."
    largest = max(diameters_mm)
    lesions = _lesions_text(diameters_mm)
    if len(diameters_mm) == 1:
        if largest <= T1A_MAX_MM:
            return "T1a", f"{lesions} <= 20 mm: T1a (with or without vascular invasion)."
        if vascular_invasion == "none":
            return "T1b", f"{lesions} > 20 mm without vascular invasion: T1b."
        return "T2", f"{lesions} > 20 mm with vascular invasion: T2."
    if largest > T3_LARGEST_ABOVE_MM:
        return "T3", f"{lesions} > 50 mm: T3."
    return "T2", f"{lesions}, none > 50 mm: T2."


def _hcc_group(t: str, n: str, m: str) -> tuple[str, str]:
    """Stage group and the words that follow the arrow in the explanation."""
    if m == "M1":
        return "IVB", "stage IVB (any T, any N, M1)"
    if n == "N1":
        return "IVA", "stage IVA (any T, N1, M0)"
    if t in _HCC_GROUPS:
        return _HCC_GROUPS[t], f"stage {_HCC_GROUPS[t]}"
    return NOT_APPLICABLE, f"no stage group for {t} {n} {m} (not applicable)"


def stage_hcc(
    diameters_mm: Iterable[float],
    *,
    vascular_invasion: str = "none",
    adjacent_organ_invasion: bool = False,
    perforation: bool = False,
    n: str = "N0",
    m: str = "M0",
) -> StageResult:
    """AJCC 8th-edition T, N, M and stage group of hepatocellular carcinoma.

    ``diameters_mm``: longest diameter of each lesion (mm, > 0; empty -> T0). ``vascular_invasion``:
    ``none | suspected | major`` (see the module docstring for how "suspected" counts). ``n``: N0/N1,
    ``m``: M0/M1. Raises ``ValueError`` on an invalid diameter or an unknown category.
    """
    diameters = _check_diameters(diameters_mm)
    vascular = _choice(vascular_invasion, VASCULAR_INVASION, "vascular invasion")
    n = _choice(n, HCC_N, "HCC N category")
    m = _choice(m, HCC_M, "HCC M category")
    t, t_sentence = _hcc_t(diameters, vascular, bool(adjacent_organ_invasion), bool(perforation))
    group, group_text = _hcc_group(t, n, m)
    findings = [_VASCULAR_TEXT[vascular]]
    if adjacent_organ_invasion:
        findings.append("adjacent organ invasion")
    if perforation:
        findings.append("perforation")
    explanation = f"{t_sentence} Reader-confirmed: {', '.join(findings)}, {n}, {m} -> {group_text}."
    return StageResult(T=t, N=n, M=m, stage=group, explanation=explanation)


def stage_crlm(diameters_mm: Iterable[float], *, n: str | None = None, m: str = "M0") -> StageResult:
    """Colorectal liver metastases: M1a and stage IVA in the colorectal (AJCC 8th) system.

    T is TX (the primary is not in the liver); ``n`` is the primary's N as the reader gives it (None ->
    NX). ``m`` is metastasis beyond the liver: M0 (liver only -> M1a, IVA), M1 or M1b (another organ ->
    M1b, IVB), M1c (peritoneum -> M1c, IVC). No lesion measured: stage not applicable here.
    """
    diameters = _check_diameters(diameters_mm)
    n = "NX" if n is None else _choice(n, CRLM_N, "colorectal N category")
    m = _choice(m, CRLM_M, "colorectal M category beyond the liver")
    primary = f"T and N belong to the colorectal primary, not visible here: TX, {n}"
    primary += " (reader-confirmed)." if n != "NX" else "."
    if not diameters:
        explanation = (
            f"No liver lesion measured: the colorectal stage depends on the primary and the metastatic sites "
            f"({m} beyond the liver, reader-confirmed), not assessable here. {primary}"
        )
        return StageResult(T="TX", N=n, M=m, stage=NOT_APPLICABLE, explanation=explanation)
    m_category, group = _CRLM_M_STAGE[m]
    if m == "M0":
        sites = "distant metastasis confined to one organ"
    else:
        beyond = "the peritoneum" if m == "M1c" else "another organ"
        sites = f"with reader-confirmed metastasis in {beyond} as well"
    explanation = (
        f"{_lesions_text(diameters)} (colorectal liver metastases), {sites}: {m_category}, "
        f"stage {group} in the colorectal system. {primary}"
    )
    return StageResult(T="TX", N=n, M=m_category, stage=group, explanation=explanation)


def stage(
    diameters_mm: Iterable[float],
    *,
    vascular_invasion: str = "none",
    adjacent_organ_invasion: bool = False,
    perforation: bool = False,
    n: str | None = None,
    m: str = "M0",
    tumor_type: str = "hcc",
) -> StageResult:
    """Stage by tumour type: ``"hcc"`` -> :func:`stage_hcc` (``n`` None -> N0), ``"crlm"`` -> :func:`stage_crlm`.
    Choices may be given as the enum members of this module (``TumorType.hcc``) or as their values.

    For ``"crlm"`` the HCC T findings (vascular invasion, adjacent organ, perforation) are validated but do
    not change the result; the explanation says so when one is set.
    """
    tumor_type = _choice(_value(tumor_type), TUMOR_TYPES, "tumour type")
    vascular = _choice(_value(vascular_invasion), VASCULAR_INVASION, "vascular invasion")
    n, m = (None if n is None else _value(n)), _value(m)
    if tumor_type == "hcc":
        return stage_hcc(
            diameters_mm,
            vascular_invasion=vascular,
            adjacent_organ_invasion=adjacent_organ_invasion,
            perforation=perforation,
            n="N0" if n is None else n,
            m=m,
        )
    result = stage_crlm(diameters_mm, n=n, m=m)
    if vascular != "none" or adjacent_organ_invasion or perforation:
        note = (
            " Vascular invasion, adjacent organ invasion and perforation are HCC T criteria: not used here."
        )
        result = StageResult(result.T, result.N, result.M, result.stage, result.explanation + note)
    return result
