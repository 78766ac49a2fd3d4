"""kuleuven.resample against the code the package really runs.

* ``zoom3d`` vs pymirc 0.27's own ``zoom3d.py`` source (taken from the wheel, which the
  ``pymirc_wheel`` fixture downloads once; executed as plain Python with a stand-in for numba's
  ``njit`` / ``prange``) - numba itself is not needed.
* ``binary_zoom_any`` vs ``scipy.ndimage.zoom(float, order=1, prefilter=False) > 0``.
* ``median_filter3`` vs ``scipy.ndimage.median_filter(size=3)``.
"""
from __future__ import annotations

import sys
import types
import zipfile

import numpy as np
import pytest
from scipy import ndimage

from LiverTumorSegLib.models.kuleuven.resample import (
    binary_zoom_any,
    median_filter3,
    package_zoom_to_shape,
    zoom3d,
    zoom3d_output_shape,
    zoom3d_region,
    zoom3d_rows_touching,
)


@pytest.fixture(scope="module")
def pymirc_zoom3d(pymirc_wheel):  # noqa: ANN001, ANN201
    """pymirc 0.27's ``zoom3d`` (wheel from the ``pymirc_wheel`` fixture: a failed download fails)."""
    with zipfile.ZipFile(pymirc_wheel) as zf:
        text = zf.read("pymirc/image_operations/zoom3d.py").decode()
    fake_numba = types.ModuleType("numba")
    fake_numba.njit = lambda *a, **k: (lambda f: f)  # type: ignore[attr-defined]
    fake_numba.prange = range  # type: ignore[attr-defined]
    saved = sys.modules.get("numba")
    sys.modules["numba"] = fake_numba
    try:
        ns: dict = {"__name__": "pymirc_zoom3d_reference"}
        exec(compile(text, "pymirc/image_operations/zoom3d.py", "exec"), ns)
    finally:
        if saved is None:
            del sys.modules["numba"]
        else:
            sys.modules["numba"] = saved
    return ns["zoom3d"]


@pytest.mark.parametrize(
    "shape,spacing_in,spacing_out",
    [
        ((17, 13, 9), (0.8, 0.8, 2.5), (1.5, 1.5, 1.5)),  # liver step 1: down in x/y, up in z
        ((20, 16, 11), (1.5, 1.5, 1.5), (3.0, 3.0, 3.0)),  # liver step 2: factor 0.5
        ((15, 12, 7), (0.9766, 0.9766, 2.0), (1.0, 1.0, 3.0)),  # lesion: real sample spacing
        ((9, 8, 6), (3.0, 3.0, 3.0), (1.0, 1.0, 3.0)),  # lesion on the 3 mm sample: up x/y, z = 1
        ((11, 10, 3), (0.8105, 0.8105, 1.0), (1.5, 1.5, 1.5)),  # 3-slice sample
    ],
)
def test_zoom3d_matches_pymirc(pymirc_zoom3d, shape, spacing_in, spacing_out) -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 300, shape)
    zoom = np.array(spacing_in) / np.array(spacing_out)  # same expression as the package
    ref = pymirc_zoom3d(vol, zoom, cval=0)
    got = zoom3d(vol, zoom, cval=0)
    assert got.shape == ref.shape == zoom3d_output_shape(shape, zoom)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_zoom3d_cval_quirk_matches_pymirc(pymirc_zoom3d) -> None:
    vol = np.random.default_rng(1).normal(0, 1, (7, 6, 5))
    zoom = np.array([1.7, 0.6, 1.3])
    np.testing.assert_allclose(zoom3d(vol, zoom, cval=-3.0), pymirc_zoom3d(vol, zoom, cval=-3.0), atol=1e-9)


@pytest.mark.parametrize("shape_in,shape_out", [((41, 37, 17), (512, 512, 20)), ((30, 29, 28), (122, 101, 112)), ((410, 410, 167), (512, 512, 200)), ((13, 7, 1), (40, 21, 3))])
def test_binary_zoom_any_matches_scipy(shape_in, shape_out) -> None:
    rng = np.random.default_rng(2)
    mask = np.zeros(shape_in, bool)
    for _ in range(5):
        c = [rng.integers(0, s) for s in shape_in]
        mask[tuple(slice(max(0, ci - 3), ci + 3) for ci in c)] = True
    ref = ndimage.zoom(mask.astype(np.float64), np.array(shape_out) / np.array(shape_in), order=1, prefilter=False) > 0
    np.testing.assert_array_equal(binary_zoom_any(mask, shape_out), ref)


def test_package_zoom_int16_rounds() -> None:
    """The liver back-mapping uses int16 input: scipy rounds, so '> 0' means 'interpolated >= 0.5'."""
    a = np.zeros((5, 1, 1), np.int16)
    a[2] = 1
    out = package_zoom_to_shape(a, (15, 1, 1))[:, 0, 0]
    ref = ndimage.zoom(a.astype(float), (3, 1, 1), order=1, prefilter=False)[:, 0, 0]
    np.testing.assert_array_equal(out > 0, ref >= 0.5)


def test_median_filter3_matches_scipy() -> None:
    vol = np.random.default_rng(3).normal(0, 100, (23, 19, 11)).round(1)
    np.testing.assert_array_equal(median_filter3(vol), ndimage.median_filter(vol, size=3))


@pytest.mark.parametrize("zoom", [(0.8, 0.8, 2.5 / 3), (3.0, 3.0, 1.0), (0.9766, 0.9766, 2 / 3), (1.7, 0.6, 1.3)])
def test_zoom3d_region_is_bit_identical(zoom) -> None:
    vol = np.random.default_rng(4).normal(0, 1, (40, 33, 21)).astype(np.float32)
    full = zoom3d(vol, np.array(zoom))
    region = tuple(slice(n // 5, n - n // 4) for n in full.shape)
    part = zoom3d_region(vol, np.array(zoom), region)
    np.testing.assert_array_equal(part, full[region])


def test_rows_touching_cover_dependencies() -> None:
    vol = np.zeros((50, 5, 5))
    vol[20:27] = 1.0
    for z in (0.8, 1.7, 3.0):
        out = zoom3d(vol, np.array([z, 1.0, 1.0]))[:, 2, 2]
        r0, r1 = zoom3d_rows_touching(50, z, 20, 27)
        nz = np.nonzero(out)[0]
        assert r0 <= nz.min() and nz.max() < r1 and r1 - r0 <= nz.size + 2  # conservative superset (explicit 0 weights)
