"""Self-test scenarios shared by Slicer's self-test and the headless pytest suite.

Each scenario is ``(scene) -> None`` and raises ``AssertionError`` on failure.
"""

from __future__ import annotations

from collections.abc import Callable

from . import ajcc

# (diameters mm, reader findings, expected T, expected stage) - one line per AJCC 8th stage group.
RULES_TABLE = [
    ([18.0], {}, "T1a", "IA"),
    ([35.0], {}, "T1b", "IB"),
    ([35.0], {"vascular_invasion": "suspected"}, "T2", "II"),
    ([30.0, 45.0], {}, "T2", "II"),
    ([30.0, 62.0], {}, "T3", "IIIA"),
    ([30.0], {"vascular_invasion": "major"}, "T4", "IIIB"),
    ([30.0], {"n": "N1"}, "T1b", "IVA"),
    ([30.0], {"m": "M1"}, "T1b", "IVB"),
]


def rules_table(scene=None) -> None:
    """The rules give the expected T category and stage group for one case per group."""
    for diameters_mm, findings, expected_t, expected_stage in RULES_TABLE:
        result = ajcc.stage(diameters_mm, **findings)
        assert (result.T, result.stage) == (expected_t, expected_stage), (diameters_mm, findings, result)
        assert result.explanation, "every stage comes with its explanation"


SCENARIOS: dict[str, Callable[..., None]] = {"rules_table": rules_table}


def run(name: str, scene=None) -> None:
    SCENARIOS[name](scene)
