"""The default model choice: a default Run segments liver and tumors (the tumor default is never "None")."""

from __future__ import annotations

from LiverTumorSegLib.models.manifest import load_manifest
from LiverTumorSegLib.models.selection import (
    NO_TUMOR_MODEL,
    default_model_id,
    model_choices,
    resolve_model_id,
    tumor_model_or_none,
)


def test_a_default_run_gets_a_tumor_model():
    manifest = load_manifest()
    assert resolve_model_id("", manifest, "tumor") == "kuleuven-lesion-ct"  # the default by measurement
    assert tumor_model_or_none(resolve_model_id("", manifest, "tumor")) == "kuleuven-lesion-ct"
    assert resolve_model_id("", manifest, "liver") == default_model_id(manifest, "liver")
    assert manifest[default_model_id(manifest, "liver")].task in ("liver", "multi-organ")


def test_an_explicit_none_stays_and_unknown_ids_fall_back():
    manifest = load_manifest()
    assert resolve_model_id(NO_TUMOR_MODEL, manifest, "tumor") == NO_TUMOR_MODEL
    assert tumor_model_or_none(NO_TUMOR_MODEL) is None
    assert resolve_model_id("removed-model", manifest, "tumor") == "kuleuven-lesion-ct"
    assert resolve_model_id("demo-liver-segresnet", manifest, "liver") == "demo-liver-segresnet"
    assert resolve_model_id("demo-liver-segresnet", manifest, "tumor") == "kuleuven-lesion-ct"


def test_choices_label_demo_models_and_end_with_none():
    manifest = load_manifest()
    tumor = model_choices(manifest, "tumor")
    assert tumor[-1].id == NO_TUMOR_MODEL and tumor[-1].label == "None (liver only)"
    assert all("DEMO ONLY" in choice.label for choice in tumor if choice.id.startswith("demo"))
    assert NO_TUMOR_MODEL not in {choice.id for choice in model_choices(manifest, "liver")}
