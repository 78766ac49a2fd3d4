"""The choices of the module panel with readable labels, and the defaults the panel, the worker and the command
line share (pure Python: the module file imports this at Slicer start-up, so nothing heavy is imported here).

The choice enums have a ``label()``: Slicer's parameter-node combo boxes show it instead of the raw value. Their
values are what the computations take (``select_device``, ``flr.min_sflr``).
"""

from __future__ import annotations

import enum

MIN_TUMOR_ML = 0.1  # default smallest lesion kept by the cascade, mL


class Device(enum.Enum):
    auto = "auto"
    cpu = "cpu"

    def label(self) -> str:
        return {"auto": "Automatic (GPU when available)", "cpu": "CPU only"}[self.value]


class LiverCondition(enum.Enum):
    """The liver's condition, which sets the minimum safe standardized FLR (docs/definitions.md)."""

    normal = "normal"
    chemotherapy = "chemotherapy"
    cirrhosis = "cirrhosis"

    def label(self) -> str:
        return {"normal": "Normal liver (minimum sFLR 20 %)",
                "chemotherapy": "After extensive chemotherapy (minimum sFLR 30 %)",
                "cirrhosis": "Cirrhosis (minimum sFLR 40 %)"}[self.value]
