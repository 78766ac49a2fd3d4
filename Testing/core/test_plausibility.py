"""The plausibility gates: a CT must look like a CT in HU, a labelmap like a labelmap (core.plausibility)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hostile_inputs import phantom_ct, phantom_labels

from LiverTumorSegLib.core.plausibility import (
    RESCALE_NOTE_KEY,
    ImplausibleInputError,
    check_ct,
    check_labelmap,
)


def _like_ct(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(phantom_ct())
    return image


def _hu() -> np.ndarray:
    return sitk.GetArrayFromImage(phantom_ct())


def _refusal(image: sitk.Image, **options) -> ImplausibleInputError:
    with pytest.raises(ImplausibleInputError) as caught:
        check_ct(image, "ct.nrrd", **options)
    message = str(caught.value)
    assert message.startswith("ct.nrrd: ") and "\n" not in message
    return caught.value


def test_a_phantom_ct_passes_without_warnings():
    assert check_ct(phantom_ct(), "ct.nrrd") == []


@pytest.mark.parametrize(("name", "make", "needle"), [
    ("slope 0: every voxel the intercept", lambda hu: np.full_like(hu, -1024), "all voxels -1024 HU"),
    ("all air", lambda hu: np.random.default_rng(1).normal(-1000, 15, hu.shape).astype(np.float32),
     "nearly constant"),
    ("rescale intercept missing: +1024", lambda hu: hu + 1024, "no air near -1000 HU"),
    ("slope 1000", lambda hu: hu.astype(np.float32) * 1000, "outside -1100..3100 HU"),
    ("a labelmap passed as the CT", lambda hu: sitk.GetArrayFromImage(phantom_labels()),
     "only 3 distinct values"),
    ("a mask scaled to HU", lambda hu: np.where(sitk.GetArrayFromImage(phantom_labels()) > 0, 60, -1000)
     .astype(np.int16), "only 2 distinct values"),
    ("no body: air and a little noise", lambda hu: np.where(np.arange(hu.size).reshape(hu.shape) % 1000 == 0, 900,
                                                            -1000 + (np.arange(hu.size) % 300).reshape(hu.shape)),
     "almost no soft tissue"),
])
def test_implausible_hu_is_refused_with_what_was_found(name, make, needle):
    error = _refusal(_like_ct(make(_hu())))
    assert needle in str(error), name
    assert error.forceable
    check_ct(_like_ct(make(_hu())), "ct.nrrd", force=True)  # the user may insist: never for NaN (below)


def test_one_infinite_voxel_and_nan_slices_are_refused_even_with_force():
    hu = _hu().astype(np.float32)
    hu[20, 30, 30] = np.inf
    for force in (False, True):
        error = _refusal(_like_ct(hu), force=force)
        assert "1 infinite voxel value(s)" in str(error) and "z = 20" in str(error) and not error.forceable
    hu = _hu().astype(np.float32)
    hu[5:7] = np.nan
    assert "8192 NaN" in str(_refusal(_like_ct(hu))) and "z = 5, 6" in str(_refusal(_like_ct(hu)))


def test_a_2d_or_vector_image_is_refused():
    assert "3D scalar" in str(_refusal(sitk.Image(64, 64, sitk.sitkInt16)))
    assert "3 value(s) per voxel" in str(_refusal(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3)))


def test_padding_outside_the_field_of_view_and_some_metal_pass():
    hu = _hu()
    hu[:, :4, :] = -3024  # outside the reconstruction circle
    hu[20, 30, 30:33] = 8000  # a metal clip on an extended HU scale
    assert check_ct(_like_ct(hu), "ct.nrrd") == []


def test_a_single_slice_warns_that_volumes_are_meaningless():
    one = phantom_ct()[:, :, 20:21]
    (warning,) = check_ct(one, "ct.nrrd")
    assert "single slice" in warning and "volumes" in warning


def test_a_slab_too_short_for_a_whole_liver_warns_that_results_are_partial():
    """A 40 mm slab (8 slices of 5 mm) cannot hold a liver: the volumes and the FLR would be of a part of it."""
    (warning,) = check_ct(phantom_ct()[:, :, 20:28], "slab.nrrd")
    assert warning.startswith("slab.nrrd covers only 40 mm") and "FLR" in warning and "scanned part only" in warning
    assert check_ct(phantom_ct(), "abdomen.nrrd") == []  # 235 mm: no warning


def test_the_dicom_loaders_rescale_note_is_named():
    shifted = _like_ct(_hu() + 1024)
    shifted.SetMetaData(RESCALE_NOTE_KEY, "Rescale Slope/Intercept missing in 47 of 47 files")
    assert "(Rescale Slope/Intercept missing in 47 of 47 files)" in str(_refusal(shifted))


def test_labelmaps_hold_only_the_documented_values_on_the_ct_grid():
    labels = phantom_labels()
    check_labelmap(labels, "labels.nrrd", reference=phantom_ct())
    check_labelmap(sitk.Cast(labels, sitk.sitkFloat32), "labels.nii")  # float files with integer labels
    with pytest.raises(ImplausibleInputError, match="looks like a CT image, not a labelmap"):
        check_labelmap(phantom_ct(), "--labels ct.nrrd")
    with pytest.raises(ImplausibleInputError, match=r"values \[3\] besides 0, 1, 2"):
        check_labelmap(labels + 1, "labels.nrrd")
    shifted = sitk.Image(labels)
    shifted.SetOrigin((5.0, 0.0, 0.0))
    with pytest.raises(ImplausibleInputError, match="not on the grid of the CT"):
        check_labelmap(shifted, "labels.nrrd", reference=phantom_ct())
