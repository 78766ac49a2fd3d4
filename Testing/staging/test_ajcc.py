"""AJCC 8th-edition rules (HCC and colorectal liver metastases) and the ``tnmstaging rules`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from TNMStagingLib import cli
from TNMStagingLib.core import ajcc

# (diameters mm, reader findings, expected T): every T boundary and every finding that moves T.
T_TABLE = [
    pytest.param([], {}, "T0", id="no-lesion"),
    pytest.param([0.5], {}, "T1a", id="solitary-tiny"),
    pytest.param([20.0], {}, "T1a", id="solitary-20mm"),
    pytest.param([20.1], {}, "T1b", id="solitary-20.1mm"),
    pytest.param([20.0], {"vascular_invasion": "suspected"}, "T1a", id="solitary-20mm-suspected"),
    pytest.param([20.1], {"vascular_invasion": "suspected"}, "T2", id="solitary-20.1mm-suspected"),
    pytest.param([50.0], {}, "T1b", id="solitary-50mm"),
    pytest.param([50.1], {}, "T1b", id="solitary-50.1mm-no-vi"),
    pytest.param([80.0], {"vascular_invasion": "suspected"}, "T2", id="solitary-80mm-suspected"),
    pytest.param([18.0], {"vascular_invasion": "major"}, "T4", id="solitary-small-major"),
    pytest.param([35.0], {"vascular_invasion": "major"}, "T4", id="solitary-major"),
    pytest.param([10.0, 12.0], {}, "T2", id="multiple-small"),
    pytest.param([10.0, 50.0], {}, "T2", id="multiple-50mm"),
    pytest.param([10.0, 50.1], {}, "T3", id="multiple-50.1mm"),
    pytest.param([50.1, 10.0, 12.0], {}, "T3", id="multiple-largest-first"),
    pytest.param([10.0, 30.0], {"vascular_invasion": "suspected"}, "T2", id="multiple-suspected"),
    pytest.param([10.0, 60.0], {"vascular_invasion": "suspected"}, "T3", id="multiple-large-suspected"),
    pytest.param([10.0, 60.0], {"vascular_invasion": "major"}, "T4", id="multiple-major"),
    pytest.param([18.0], {"adjacent_organ_invasion": True}, "T4", id="adjacent-organ"),
    pytest.param([18.0], {"perforation": True}, "T4", id="perforation"),
    pytest.param([], {"vascular_invasion": "major"}, "T4", id="no-lesion-major"),
    pytest.param([], {"vascular_invasion": "suspected"}, "T0", id="no-lesion-suspected"),
]


@pytest.mark.parametrize(("diameters_mm", "findings", "expected_t"), T_TABLE)
def test_hcc_t_category(diameters_mm, findings, expected_t):
    result = ajcc.stage_hcc(diameters_mm, **findings)
    assert result.T == expected_t
    assert f": {expected_t}" in result.explanation


# (diameters mm, findings, expected (T, N, M, stage)): every stage group, and the "any T" rows.
GROUP_TABLE = [
    pytest.param([18.0], {}, ("T1a", "N0", "M0", "IA"), id="IA"),
    pytest.param([35.0], {}, ("T1b", "N0", "M0", "IB"), id="IB"),
    pytest.param([35.0], {"vascular_invasion": "suspected"}, ("T2", "N0", "M0", "II"), id="II-solitary"),
    pytest.param([30.0, 45.0], {}, ("T2", "N0", "M0", "II"), id="II-multiple"),
    pytest.param([30.0, 62.0], {}, ("T3", "N0", "M0", "IIIA"), id="IIIA"),
    pytest.param([30.0], {"vascular_invasion": "major"}, ("T4", "N0", "M0", "IIIB"), id="IIIB"),
    pytest.param([18.0], {"n": "N1"}, ("T1a", "N1", "M0", "IVA"), id="IVA-T1a"),
    pytest.param([30.0, 62.0], {"n": "N1"}, ("T3", "N1", "M0", "IVA"), id="IVA-T3"),
    pytest.param([18.0], {"m": "M1"}, ("T1a", "N0", "M1", "IVB"), id="IVB-N0"),
    pytest.param([30.0], {"perforation": True, "n": "N1", "m": "M1"}, ("T4", "N1", "M1", "IVB"), id="IVB-N1"),
    pytest.param([], {}, ("T0", "N0", "M0", ajcc.NOT_APPLICABLE), id="T0-not-applicable"),
    pytest.param([], {"n": "N1"}, ("T0", "N1", "M0", "IVA"), id="T0-IVA"),
    pytest.param([], {"m": "M1"}, ("T0", "N0", "M1", "IVB"), id="T0-IVB"),
]


@pytest.mark.parametrize(("diameters_mm", "findings", "expected"), GROUP_TABLE)
def test_hcc_stage_group(diameters_mm, findings, expected):
    result = ajcc.stage_hcc(diameters_mm, **findings)
    assert (result.T, result.N, result.M, result.stage) == expected
    assert ajcc.stage(diameters_mm, tumor_type="hcc", **findings) == result


def test_explanation_is_plain_and_names_reader_inputs():
    result = ajcc.stage_hcc([18.0])
    assert result.explanation == (
        "Solitary tumour 18 mm <= 20 mm: T1a (with or without vascular invasion). "
        "Reader-confirmed: no vascular invasion, N0, M0 -> stage IA."
    )
    suspected = ajcc.stage_hcc([35.0], vascular_invasion="suspected", adjacent_organ_invasion=False, n="N1")
    assert "Solitary tumour 35 mm > 20 mm with vascular invasion: T2." in suspected.explanation
    assert "Reader-confirmed: vascular invasion suspected on imaging" in suspected.explanation
    assert "N1, M0 -> stage IVA" in suspected.explanation
    t4 = ajcc.stage_hcc([12.0, 64.5], adjacent_organ_invasion=True, perforation=True)
    assert t4.explanation.startswith("2 tumours, largest 64.5 mm; direct invasion of an adjacent organ")
    assert "adjacent organ invasion, perforation, N0, M0 -> stage IIIB." in t4.explanation
    none = ajcc.stage_hcc([])
    assert none.explanation.startswith("No liver lesion measured: T0 (no evidence of primary tumour).")
    assert "not applicable" in none.explanation


def test_to_dict_and_frozen():
    result = ajcc.stage([18.0, 30.0])
    assert result.to_dict() == {
        "T": "T2",
        "N": "N0",
        "M": "M0",
        "stage": "II",
        "explanation": result.explanation,
    }
    with pytest.raises(AttributeError):
        result.T = "T1a"  # type: ignore[misc]


def test_numpy_diameters_and_case_insensitive_categories():
    result = ajcc.stage_hcc(np.array([21.0], dtype=np.float32), vascular_invasion="Suspected", n="n1", m="m0")
    assert (result.T, result.N, result.M, result.stage) == ("T2", "N1", "M0", "IVA")


# (diameters mm, n, m, expected (T, N, M, stage)) for colorectal liver metastases.
CRLM_TABLE = [
    pytest.param([25.0], None, "M0", ("TX", "NX", "M1a", "IVA"), id="solitary-NX"),
    pytest.param([12.0, 70.0, 8.0], "N1", "M0", ("TX", "N1", "M1a", "IVA"), id="multiple-N1"),
    pytest.param([25.0], "N2b", "M0", ("TX", "N2b", "M1a", "IVA"), id="N2b"),
    pytest.param([25.0], None, "M1", ("TX", "NX", "M1b", "IVB"), id="beyond-liver"),
    pytest.param([25.0], "N0", "M1b", ("TX", "N0", "M1b", "IVB"), id="M1b"),
    pytest.param([25.0], None, "M1c", ("TX", "NX", "M1c", "IVC"), id="peritoneum"),
    pytest.param([], None, "M0", ("TX", "NX", "M0", ajcc.NOT_APPLICABLE), id="no-lesion"),
]


@pytest.mark.parametrize(("diameters_mm", "n", "m", "expected"), CRLM_TABLE)
def test_crlm(diameters_mm, n, m, expected):
    result = ajcc.stage_crlm(diameters_mm, n=n, m=m)
    assert (result.T, result.N, result.M, result.stage) == expected
    assert ajcc.stage(diameters_mm, n=n, m=m, tumor_type="crlm") == result


def test_crlm_explanation():
    result = ajcc.stage_crlm([12.0, 70.0])
    assert result.explanation == (
        "2 tumours, largest 70 mm (colorectal liver metastases), distant metastasis confined to one organ: "
        "M1a, stage IVA in the colorectal system. T and N belong to the colorectal primary, not visible "
        "here: TX, NX."
    )
    assert "N1 (reader-confirmed)" in ajcc.stage_crlm([12.0], n="N1").explanation


def test_crlm_ignores_hcc_t_findings_and_says_so():
    plain = ajcc.stage([30.0], tumor_type="crlm")
    flagged = ajcc.stage([30.0], tumor_type="crlm", vascular_invasion="major", perforation=True)
    assert (flagged.T, flagged.N, flagged.M, flagged.stage) == (plain.T, plain.N, plain.M, plain.stage)
    assert "HCC T criteria: not used here" in flagged.explanation
    assert "HCC T criteria" not in plain.explanation


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda: ajcc.stage_hcc([-3.0]), "diameter -3.0 mm is invalid", id="negative"),
        pytest.param(lambda: ajcc.stage_hcc([0.0]), "diameter 0.0 mm is invalid", id="zero"),
        pytest.param(lambda: ajcc.stage_hcc([float("nan")]), "diameter nan mm is invalid", id="nan"),
        pytest.param(lambda: ajcc.stage_hcc([float("inf")]), "diameter inf mm is invalid", id="inf"),
        pytest.param(lambda: ajcc.stage_hcc(["18"]), "diameter '18' is not a number", id="string-item"),
        pytest.param(lambda: ajcc.stage_hcc([True]), "diameter True is not a number", id="bool"),
        pytest.param(
            lambda: ajcc.stage_hcc([18.0], n="N2"), "HCC N category 'N2' is not one of N0, N1", id="n"
        ),
        pytest.param(
            lambda: ajcc.stage_hcc([18.0], m="MX"), "HCC M category 'MX' is not one of M0, M1", id="m"
        ),
        pytest.param(
            lambda: ajcc.stage_hcc([18.0], vascular_invasion="yes"),
            "vascular invasion 'yes' is not one of none, suspected, major",
            id="vascular",
        ),
        pytest.param(
            lambda: ajcc.stage([18.0], tumor_type="icc"), "tumour type 'icc' is not one of", id="type"
        ),
        pytest.param(lambda: ajcc.stage_crlm([18.0], n="N3"), "colorectal N category 'N3'", id="crlm-n"),
        pytest.param(lambda: ajcc.stage_crlm([18.0], m="M1a"), "colorectal M category beyond", id="crlm-m"),
        pytest.param(
            lambda: ajcc.stage([18.0], tumor_type="crlm", vascular_invasion="maybe"),
            "vascular invasion 'maybe'",
            id="crlm-vascular",
        ),
        pytest.param(lambda: ajcc.parse_diameters_mm("18,3O"), "diameter '3O' is not a number", id="parse"),
    ],
)
def test_bad_input_messages(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


def test_string_diameters_are_a_type_error():
    with pytest.raises(TypeError, match="parse_diameters_mm"):
        ajcc.stage_hcc("18,30")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("  ", []),
        ("18", [18.0]),
        ("18,30", [18.0, 30.0]),
        (" 18.5, 30 ,", [18.5, 30.0]),
        ("7 9", [7, 9]),
    ],
)
def test_parse_diameters_mm(text, expected):
    assert ajcc.parse_diameters_mm(text) == expected


CLI_TABLE = [
    pytest.param(["--diameters-mm", "18"], ("T1a", "N0", "M0", "IA"), id="IA"),
    pytest.param(["--diameters-mm", "18,30"], ("T2", "N0", "M0", "II"), id="II"),
    pytest.param(
        ["--diameters-mm", "35", "--vascular-invasion", "suspected"], ("T2", "N0", "M0", "II"), id="vi"
    ),
    pytest.param(["--diameters-mm", "30,62"], ("T3", "N0", "M0", "IIIA"), id="IIIA"),
    pytest.param(
        ["--diameters-mm", "18", "--adjacent-organ-invasion"], ("T4", "N0", "M0", "IIIB"), id="adjacent"
    ),
    pytest.param(["--diameters-mm", "18", "--perforation", "--n", "N1"], ("T4", "N1", "M0", "IVA"), id="IVA"),
    pytest.param(["--diameters-mm", "18", "--m", "M1"], ("T1a", "N0", "M1", "IVB"), id="IVB"),
    pytest.param(["--diameters-mm", ""], ("T0", "N0", "M0", "not applicable"), id="empty"),
    pytest.param(["--diameters-mm", "25,40", "--type", "crlm"], ("TX", "NX", "M1a", "IVA"), id="crlm"),
    pytest.param(
        ["--diameters-mm", "25", "--type", "crlm", "--n", "N1"], ("TX", "N1", "M1a", "IVA"), id="crlm-n"
    ),
]


@pytest.mark.parametrize(("options", "expected"), CLI_TABLE)
def test_cli_rules(options, expected, capsys):
    assert cli.main(["rules", *options]) == 0
    output = json.loads(capsys.readouterr().out)
    assert list(output) == ["T", "N", "M", "stage", "explanation"]
    assert (output["T"], output["N"], output["M"], output["stage"]) == expected
    assert output["explanation"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--diameters-mm", "18,-2"], "diameter -2.0 mm is invalid"),
        (["--diameters-mm", "18,abc"], "diameter 'abc' is not a number"),
        (["--diameters-mm", "18", "--n", "N3"], "HCC N category 'N3'"),
        (["--diameters-mm", "18", "--m", "M9"], "HCC M category 'M9'"),
        (["--diameters-mm", "18", "--vascular-invasion", "yes"], "vascular invasion 'yes'"),
        (["--diameters-mm", "18", "--type", "icc"], "tumour type 'icc'"),
    ],
)
def test_cli_rules_bad_input(options, message, capsys):
    assert cli.main(["rules", *options]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("tnmstaging rules: error: ") and message in captured.err


def test_cli_requires_diameters(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["rules"])
    assert exit_info.value.code == 2
    assert "--diameters-mm" in capsys.readouterr().err


def test_cli_subprocess():
    command = [sys.executable, "-m", "TNMStagingLib.cli", "rules", "--diameters-mm", "18,60"]
    completed = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=60, check=False)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == ajcc.stage([18.0, 60.0]).to_dict()
    bad = subprocess.run([*command[:-1], "18,-1"], capture_output=True, text=True, encoding="utf-8", timeout=60, check=False)
    assert bad.returncode == 2
    assert bad.stdout == ""
    expected = (
        "tnmstaging rules: error: diameter -1.0 mm is invalid: each lesion needs a finite diameter > 0 mm"
    )
    assert bad.stderr.strip() == expected
