"""Table nodes: the one way this library writes, finds and reads ``vtkMRMLTableNode``s (no Qt).

Columns are ``Column(name, kind, unit, description)`` with ``kind`` "text" (a ``vtkStringArray``, values written
with ``str``) or "number" (a ``vtkDoubleArray``; NaN where a cell does not apply, read back as None). A table
written for another node carries that node's ID in an attribute, so it is found again and updated in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import vtk


@dataclass(frozen=True)
class Column:
    """One table column: name, ``"text"`` or ``"number"``, unit label and description (shown as tooltips)."""

    name: str
    kind: str = "text"
    unit: str = ""
    description: str = ""


def text_columns(names: Sequence[str]) -> tuple[Column, ...]:
    return tuple(Column(name) for name in names)


def _array(kind: str):
    if kind == "text":
        return vtk.vtkStringArray()
    if kind == "number":
        return vtk.vtkDoubleArray()
    raise ValueError(f"unknown column kind {kind!r} (text, number)")


def write_table(table_node, columns: Sequence[Column], rows: Sequence[Sequence]) -> None:
    """Replace the content of ``table_node`` by ``rows`` (one value per column) as one modification (views redraw
    once). The columns are rebuilt only when their names or kinds changed."""
    was_modifying = table_node.StartModify()
    table = table_node.GetTable()
    present = [(table.GetColumnName(i), table.GetColumn(i).GetClassName()) for i in range(table.GetNumberOfColumns())]
    wanted = [(column.name, _array(column.kind).GetClassName()) for column in columns]
    if present != wanted:
        table_node.RemoveAllColumns()
        for column in columns:
            array = _array(column.kind)
            array.SetName(column.name)
            table_node.AddColumn(array)
    for column in columns:
        table_node.SetColumnUnitLabel(column.name, column.unit)
        table_node.SetColumnDescription(column.name, column.description)
    table.SetNumberOfRows(len(rows))
    for row, values in enumerate(rows):
        for index, (column, value) in enumerate(zip(columns, values, strict=True)):
            table.GetColumn(index).SetValue(row, str(value) if column.kind == "text" else float(value))
    table.Modified()
    table_node.Modified()
    table_node.EndModify(was_modifying)


def read_rows(table_node) -> list[dict]:
    """The rows as ``{column name: value}`` (NaN number cells as None)."""
    table = table_node.GetTable()
    rows = []
    for row in range(table.GetNumberOfRows()):
        values = {}
        for column in range(table.GetNumberOfColumns()):
            value = table.GetColumn(column).GetValue(row)
            values[table.GetColumnName(column)] = None if isinstance(value, float) and math.isnan(value) else value
        rows.append(values)
    return rows


def keyed_values(table_node, key_column: str, value_columns: Sequence[str]) -> dict[str, tuple]:
    """``{key: (values of value_columns)}`` of a table with one row per key (e.g. the FLR and staging tables)."""
    return {row[key_column]: tuple(row[name] for name in value_columns) for row in read_rows(table_node)}


def find_table(scene, attribute: str, value: str):
    """The first table node of ``scene`` whose ``attribute`` equals ``value``, or None."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLTableNode")
        if node.GetAttribute(attribute) == value:
            return node
    return None
