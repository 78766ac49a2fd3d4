"""Fixtures of the KU Leuven (pyliverlesionseg 0.3) port tests.

* ``KERAS_BACKEND=torch`` is set here, before any test module of this folder is imported: the
  oracles run Keras 3 on the torch backend (TensorFlow is not a dependency), and Keras reads the
  variable once, at its first import.  :func:`keras_torch` fails loudly if Keras was nevertheless
  imported earlier with another backend.
* :func:`kul_wheel` / :func:`pymirc_wheel` download the reference wheels once per cache folder
  (see ``kul_wheel_cache``).  A failed download fails every test that needs the wheel (reported
  by pytest as an error at setup, pip is run only once per session) with one message that shows the
  pip command, pip's output and how to fix it; nothing is skipped.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"

import pytest  # noqa: E402
from kul_wheel_cache import WheelUnavailable, get_pymirc_wheel, get_wheel  # noqa: E402


@pytest.fixture(scope="session")
def keras_torch():  # noqa: ANN201
    """The ``keras`` module, checked to run on the torch backend."""
    import keras

    backend = keras.backend.backend()
    if backend != "torch":
        pytest.fail(f"Keras was imported with the {backend!r} backend before Testing/models/kuleuven/conftest.py "
                    "set KERAS_BACKEND=torch; these tests need the torch backend.", pytrace=False)
    return keras


def _wheel_or_fail(get: Callable[[], Path], requirement: str) -> Path:
    try:
        return get()
    except WheelUnavailable as exc:
        message = f"{requirement} wheel unavailable: {exc}"
    pytest.fail(message, pytrace=False)  # outside `except`: no chained traceback, one message


@pytest.fixture(scope="session")
def kul_wheel() -> Path:
    """``pyliverlesionseg-0.3-py3-none-any.whl`` (SHA-256 checked), downloaded once."""
    return _wheel_or_fail(get_wheel, "pyliverlesionseg==0.3")


@pytest.fixture(scope="session")
def pymirc_wheel() -> Path:
    """``pymirc-0.27-py3-none-any.whl`` (SHA-256 checked), downloaded once."""
    return _wheel_or_fail(get_pymirc_wheel, "pymirc==0.27")
