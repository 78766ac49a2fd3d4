"""Session-scoped phantom fixtures shared by the test suite (registered as a plugin in conftest.py).

``small_phantom``: a 128 x 128 x 48 synthetic CT (3.5 mm pixels, 5 mm slices, the whole liver, three
tumors: one hypodense, two rim-enhancing, all touching a major vessel, one at the liver surface),
generated in about a second. ``small_phantom_dicom``: the same phantom written by ``write_phantom``
(DICOM series, truth NRRD, JSON); returns its paths (keys ``dir``, ``dicom``, ``truth``, ``json``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from LiverTumorSegLib.synthetic.phantom import Phantom, make_phantom, write_phantom

SMALL_PHANTOM = {"seed": 2, "size_xy": 128, "slice_thickness_mm": 5.0, "n_tumors": 3}


@pytest.fixture(scope="session")
def small_phantom() -> Phantom:
    return make_phantom(**SMALL_PHANTOM)


@pytest.fixture(scope="session")
def small_phantom_dicom(small_phantom, tmp_path_factory) -> dict[str, Path]:
    return write_phantom(small_phantom, tmp_path_factory.mktemp("small_phantom"))
