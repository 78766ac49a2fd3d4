"""Shared pytest fixtures: the headless Slicer application (slicer-core wheel) and a clean scene per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from LiverTumorSegLib.testing import headless_slicer as slicer_bootstrap

sys.path.insert(0, str(Path(__file__).resolve().parent))  # shared fixture modules beside this file

pytest_plugins = ["phantom_fixtures"]


@pytest.fixture(scope="session")
def slicer_app() -> slicer_bootstrap.HeadlessSlicer:
    """The headless application: ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` are set."""
    return slicer_bootstrap.bootstrap()


@pytest.fixture
def mrml_scene(slicer_app):
    """``slicer.mrmlScene``, empty at the start of the test and closed again after it."""
    scene = slicer_bootstrap.new_scene()
    yield scene
    slicer_bootstrap.new_scene()
