"""The staging form's state in the scene (no Qt): the lesion table the rules read, and results that cannot go stale.

**Lesions.** The rules take one longest diameter per lesion. They live in a table node ("TNM lesions": Lesion,
Longest axial diameter (mm), Source), filled from the measured tumor components of the segmentation
(``fill_lesion_table``) and editable by the reader: correct a diameter in the table view, add a lesion the
segmentation missed (``add_lesion``), remove a false one (``remove_lesions``). ``lesion_diameters`` reads it back
and names the row of any value that is not a diameter.

**Stale results.** ``StagingSession`` holds the rule stage and the learned stage with the inputs they were computed
from (``StagingInputs``). Whenever the inputs change, what no longer matches is dropped: the rule stage on any
change (CT, segmentation or its voxels, lesions, findings), the learned stage when the CT, the segmentation, its
voxels or the model change. A learned stage that finishes after its inputs changed is not accepted. So the result
table never shows one patient's stage beside another's, or the stage of the CT before the last change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import vtk

from LiverTumorSegLib.scene.observers import DebouncedObserver
from LiverTumorSegLib.scene.results import SEGMENTATION_EVENTS
from LiverTumorSegLib.scene.tables import Column, read_rows, write_table
from TNMStagingLib.core import ajcc
from TNMStagingLib.scene.staging import staging_rows

LESION_TABLE_NAME = "TNM lesions"
DIAMETER_COLUMN = "Longest axial diameter (mm)"
LESION_COLUMNS = (
    Column("Lesion", "text", "", "Lesion name (measured lesions in order of decreasing volume)"),
    Column(DIAMETER_COLUMN, "number", "mm", "Longest axial diameter: edit to correct a measurement"),
    Column("Source", "text", "", "measured from the segmentation, or added by the reader"),
)
MEASURED, ADDED = "measured", "added by the reader"


def _rows(table_node) -> list[tuple]:
    return [(row["Lesion"], row[DIAMETER_COLUMN], row["Source"]) for row in read_rows(table_node)] \
        if table_node.GetNumberOfColumns() else []


def new_lesion_table(scene):
    """An empty lesion table node."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(LESION_TABLE_NAME))
    write_table(table, LESION_COLUMNS, [])
    return table


def fill_lesion_table(table_node, diameters_mm) -> None:
    """Replace the rows by the measured lesions ("Lesion 1", ... with their diameters, largest volume first)."""
    write_table(table_node, LESION_COLUMNS,
                [(f"Lesion {index}", float(d), MEASURED) for index, d in enumerate(diameters_mm, start=1)])


def add_lesion(table_node, diameter_mm: float) -> None:
    """Append a lesion the reader adds ("Added k")."""
    rows = _rows(table_node)
    number = 1 + sum(1 for row in rows if row[2] == ADDED)
    write_table(table_node, LESION_COLUMNS, [*rows, (f"Added {number}", float(diameter_mm), ADDED)])


def remove_lesions(table_node, row_indices) -> None:
    """Remove the rows ``row_indices`` (0-based; indices out of range are ignored)."""
    drop = set(row_indices)
    write_table(table_node, LESION_COLUMNS, [row for i, row in enumerate(_rows(table_node)) if i not in drop])


def lesion_diameters(table_node) -> list[float]:
    """The diameters (mm) of the table, in row order; ``ValueError`` naming the row of a missing, non-positive or
    non-finite value. No table: no lesion."""
    if table_node is None:
        return []
    diameters = []
    for name, value, _ in _rows(table_node):
        if value is None or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: the longest diameter must be a number of millimetres above 0, not {value!r}")
        diameters.append(float(value))
    return diameters


@dataclass(frozen=True)
class StagingInputs:
    """What a stage depends on: node ids, the segmentation's content key, the lesions, the reader's findings
    (values of the ``ajcc`` choices) and the staging model path ('' = the demo model)."""

    volume_id: str | None
    segmentation_id: str | None
    segments_key: tuple
    lesions: tuple
    findings: tuple
    model_path: str = ""

    @property
    def learned_key(self) -> tuple:
        return (self.volume_id, self.segmentation_id, self.segments_key, self.model_path)


def segmentation_key(segmentation_node) -> tuple:
    """Changes whenever a segment is added, removed, renamed or edited (ids, names, label values, layer times)."""
    if segmentation_node is None:
        return ()
    segmentation = segmentation_node.GetSegmentation()
    source = segmentation.GetSourceRepresentationName()
    key = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        representation = segment.GetRepresentation(source)
        key.append((segmentation.GetNthSegmentID(index), segment.GetName(), segment.GetLabelValue(),
                    representation.GetMTime() if representation is not None else 0))
    return tuple(key)


def staging_inputs(volume_node, segmentation_node, lesion_table, findings: dict, model_path: str = "") -> StagingInputs:
    """The ``StagingInputs`` of the current form (``findings``: keywords of ``ajcc.stage``, enums or values)."""
    lesions = tuple(_rows(lesion_table)) if lesion_table is not None and lesion_table.GetScene() is not None else ()
    values = tuple(sorted((name, getattr(value, "value", value)) for name, value in findings.items()))
    return StagingInputs(volume_node.GetID() if volume_node else None,
                         segmentation_node.GetID() if segmentation_node else None,
                         segmentation_key(segmentation_node), lesions, values, str(model_path or ""))


class StagingSession(DebouncedObserver):
    """The rule and learned stages of the form, dropped as soon as their inputs change (module docstring).

    ``update(inputs)`` is called with the current inputs on every change of the form; ``watch(segmentation,
    lesion_table)`` observes the nodes whose edits do not touch the parameter node and calls ``schedule_update``
    (the GUI's timer re-reads the inputs). ``rows()`` are the result table's rows (none when nothing is valid).
    """

    def __init__(self, schedule_update=None) -> None:
        super().__init__(schedule_update)
        self.rules: tuple[ajcc.StageResult, list[float]] | None = None
        self.learned: dict | None = None
        self._rules_inputs: StagingInputs | None = None
        self._learned_key: tuple | None = None
        self.inputs: StagingInputs | None = None

    def watch(self, segmentation_node, lesion_table) -> None:
        """Observe the edits of the segments and of the lesion table (either may be None)."""
        segmentation = [segmentation_node.GetSegmentation()] if segmentation_node is not None else []
        self.observe("segments", segmentation, SEGMENTATION_EVENTS)
        self.observe("lesions", [lesion_table] if lesion_table is not None else [], [vtk.vtkCommand.ModifiedEvent])

    def update(self, inputs: StagingInputs) -> bool:
        """Take the current inputs; drop the results they invalidate. True when something was dropped."""
        self._start_update()
        self.inputs = inputs
        dropped = False
        if self.rules is not None and inputs != self._rules_inputs:
            self.rules, self._rules_inputs, dropped = None, None, True
        if self.learned is not None and inputs.learned_key != self._learned_key:
            self.learned, self._learned_key, dropped = None, None, True
        return dropped

    def set_rules(self, result: ajcc.StageResult, diameters_mm: list[float], inputs: StagingInputs) -> None:
        self.update(inputs)
        self.rules, self._rules_inputs = (result, list(diameters_mm)), inputs

    def start_learned(self, inputs: StagingInputs) -> tuple:
        """The token a background learned stage carries: its inputs' learned key."""
        self.update(inputs)
        self.learned, self._learned_key = None, None
        return inputs.learned_key

    def finish_learned(self, token: tuple, result: dict) -> bool:
        """Accept a finished learned stage only when its inputs are still the current ones."""
        if self.inputs is None or token != self.inputs.learned_key:
            return False
        self.learned, self._learned_key = result, token
        return True

    def rows(self) -> list[tuple[str, str, str, str]]:
        rules, diameters = self.rules if self.rules else (None, None)
        return staging_rows(rules, diameters, self.learned)
