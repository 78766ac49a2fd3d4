"""CT display windows (width/level in Hounsfield units), kept as data.

The presets live in ``Resources/hu_window_presets.json`` so that a radiologist can read and change them
without touching code. A window maps HU to display intensity linearly between ``lower_hu`` and
``upper_hu``; values outside are clipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from LiverTumorSegLib.resources import PRESETS_FILE


@dataclass(frozen=True)
class HUWindow:
    """A display window: ``width_hu`` wide, centred on ``level_hu``."""

    id: str
    label: str
    width_hu: float
    level_hu: float
    note: str = ""

    def __post_init__(self) -> None:
        if not self.width_hu > 0:
            raise ValueError(f"HU window {self.id!r}: width must be positive, got {self.width_hu}")

    @property
    def lower_hu(self) -> float:
        return self.level_hu - self.width_hu / 2.0

    @property
    def upper_hu(self) -> float:
        return self.level_hu + self.width_hu / 2.0

    @classmethod
    def from_range(cls, id: str, label: str, lower_hu: float, upper_hu: float, note: str = "") -> HUWindow:
        """Window covering ``[lower_hu, upper_hu]`` (e.g. a model's clipping range)."""
        return cls(id, label, upper_hu - lower_hu, (upper_hu + lower_hu) / 2.0, note)

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """Map HU values to display intensities in [0, 1] (float32, same shape as ``hu``)."""
        scaled = (np.asarray(hu, dtype=np.float32) - np.float32(self.lower_hu)) / np.float32(self.width_hu)
        return np.clip(scaled, 0.0, 1.0)


def load_presets(path: str | Path = PRESETS_FILE) -> dict[str, HUWindow]:
    """Read the presets file; returns ``{preset id: HUWindow}`` in file order."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["presets"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"Cannot read HU window presets from {path}: {error}") from error
    presets: dict[str, HUWindow] = {}
    for entry in entries:
        window = HUWindow(
            entry["id"],
            entry["label"],
            float(entry["width_hu"]),
            float(entry["level_hu"]),
            entry.get("note", ""),
        )
        if window.id in presets:
            raise ValueError(f"{path}: duplicate HU window preset id {window.id!r}")
        presets[window.id] = window
    return presets


def get_preset(preset_id: str, path: str | Path = PRESETS_FILE) -> HUWindow:
    """One preset by id, with an error listing the known ids."""
    presets = load_presets(path)
    try:
        return presets[preset_id]
    except KeyError:
        raise KeyError(f"Unknown HU window preset {preset_id!r}; known: {', '.join(presets)}") from None


def model_input_window(intensity: Mapping[str, Any], id: str = "model_input") -> HUWindow | None:
    """The HU window a model sees, from a manifest ``intensity`` spec; None when it has no fixed window.

    ``{"type": "clip_scale", "hu_min": -100, "hu_max": 200, ...}`` (HU clipped to [hu_min, hu_max] then
    scaled) gives the window ``[hu_min, hu_max]`` (here W 300 / L 50). Other intensity types (e.g.
    ``normalize_nonzero_scale``, whose range depends on each image) give None.
    """
    if intensity.get("type") != "clip_scale":
        return None
    try:
        hu_min, hu_max = float(intensity["hu_min"]), float(intensity["hu_max"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"clip_scale intensity spec needs numeric hu_min and hu_max, got {dict(intensity)!r}"
        ) from error
    if not hu_max > hu_min:
        raise ValueError(f"clip_scale intensity spec needs hu_min < hu_max, got {hu_min:g} and {hu_max:g}")
    return HUWindow.from_range(
        id,
        f"Model input ({hu_min:g}..{hu_max:g} HU)",
        hu_min,
        hu_max,
        "Input window of the model: HU clipped to this range then scaled.",
    )
