"""Which models the panel offers for each stage, and which one is selected when the user has not chosen (pure).

The liver stage offers the liver and multi-organ models of the manifest; the tumor stage offers the tumor models
and "None (liver only)", whose id is ``NO_TUMOR_MODEL``. An empty stored id means "not chosen yet" and resolves to
the stage's default: the model the manifest marks ``"default": true`` for that stage (chosen by measurement, see
docs/model_evaluation.md), else the first one; never "None" (a default Run segments the tumors). A stored id that is no longer in the manifest also falls back to the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from LiverTumorSegLib.models.manifest import ModelEntry

NO_TUMOR_MODEL = "none"
STAGE_TASKS = {"liver": ("liver", "multi-organ"), "tumor": ("tumor",)}


@dataclass(frozen=True)
class ModelChoice:
    """One item of a model combo box: the id stored in the parameter node and the text shown."""

    id: str
    label: str


def model_choices(manifest: Mapping[str, ModelEntry], stage: str) -> list[ModelChoice]:
    """The items of the ``stage`` ("liver" or "tumor") combo box, manifest order; the tumor stage ends with None."""
    if stage not in STAGE_TASKS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGE_TASKS)}")
    choices = [ModelChoice(entry.id, entry.display_name) for entry in manifest.values()
               if entry.task in STAGE_TASKS[stage]]
    if stage == "tumor":
        choices.append(ModelChoice(NO_TUMOR_MODEL, "None (liver only)"))
    return choices


def default_model_id(manifest: Mapping[str, ModelEntry], stage: str) -> str:
    """The stage's model marked ``default``, else its first real model ("" when the manifest has none)."""
    ids = [choice.id for choice in model_choices(manifest, stage) if choice.id != NO_TUMOR_MODEL]
    return next((model_id for model_id in ids if manifest[model_id].default), ids[0] if ids else "")


def resolve_model_id(stored: str, manifest: Mapping[str, ModelEntry], stage: str) -> str:
    """The id to select: ``stored`` when it is one of the stage's choices, else the stage's default."""
    if stored and stored in {choice.id for choice in model_choices(manifest, stage)}:
        return stored
    return default_model_id(manifest, stage)


def tumor_model_or_none(model_id: str) -> str | None:
    """The tumor model id a run takes: None for "None (liver only)" and for no choice at all."""
    return None if model_id in ("", NO_TUMOR_MODEL) else model_id
