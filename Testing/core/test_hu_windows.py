"""CT display windows kept as data: presets file, window arithmetic, the model-input window."""

from __future__ import annotations

import json

import numpy as np
import pytest

from LiverTumorSegLib.core.hu_windows import HUWindow, get_preset, load_presets, model_input_window


def test_presets_match_the_clinical_definitions():
    presets = load_presets()
    assert list(presets)[:2] == ["abdomen", "liver"]
    assert (presets["abdomen"].width_hu, presets["abdomen"].level_hu) == (350.0, 40.0)
    assert (presets["liver"].width_hu, presets["liver"].level_hu) == (150.0, 30.0)
    thesis = presets["model_input_thesis"]
    assert (thesis.lower_hu, thesis.upper_hu) == (-100.0, 200.0)


def test_apply_maps_window_linearly_and_clips():
    window = get_preset("abdomen")  # [-135, 215] HU
    out = window.apply(np.array([-1000.0, -135.0, 40.0, 215.0, 3000.0]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_get_preset_unknown_lists_known_ids():
    with pytest.raises(KeyError, match="abdomen"):
        get_preset("lung")


def test_bad_presets_file_is_named(tmp_path):
    duplicate = tmp_path / "presets.json"
    entry = {"id": "a", "label": "A", "width_hu": 100, "level_hu": 0}
    duplicate.write_text(json.dumps({"presets": [entry, entry]}))
    with pytest.raises(ValueError, match="duplicate.*'a'"):
        load_presets(duplicate)
    with pytest.raises(ValueError, match="missing.json"):
        load_presets(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="width must be positive"):
        HUWindow("zero", "Zero", 0.0, 40.0)


def test_model_input_window_from_manifest_intensity():
    window = model_input_window(
        {"type": "clip_scale", "hu_min": -100, "hu_max": 200, "out_min": 0.0, "out_max": 1.0}
    )
    assert (window.width_hu, window.level_hu, window.lower_hu, window.upper_hu) == (
        300.0,
        50.0,
        -100.0,
        200.0,
    )
    assert window.id == "model_input" and "-100..200" in window.label
    np.testing.assert_allclose(window.apply(np.array([-100.0, 50.0, 200.0])), [0.0, 0.5, 1.0])
    assert model_input_window({"type": "normalize_nonzero_scale", "out_min": -1, "out_max": 1}) is None
    assert model_input_window({}) is None
    with pytest.raises(ValueError, match="hu_max"):
        model_input_window({"type": "clip_scale", "hu_min": -100})
    with pytest.raises(ValueError, match="hu_min < hu_max"):
        model_input_window({"type": "clip_scale", "hu_min": 200, "hu_max": -100})
