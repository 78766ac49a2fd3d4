"""SimpleITK <-> MetaTensor conversion and the model-space transforms built from a manifest entry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.core.preprocessing import (
    PreprocessingError,
    geometry_from_ras_affine,
    metatensor_to_sitk,
    preprocess_ct,
    preprocess_mask,
    ras_affine,
    sitk_to_metatensor,
)
from LiverTumorSegLib.models.manifest import ModelEntry


def make_entry(**overrides) -> ModelEntry:
    data = {
        "id": "test-liver",
        "task": "liver",
        "file_name": "x.pt",
        "local_path": "x.pt",
        "sha256": "0" * 64,
        "labels": {"liver": 1},
        "network": {},
        "spacing_mm": [1.5, 1.5, 1.5],
        "orientation": "RAS",
        "intensity": {"type": "clip_scale", "hu_min": -100, "hu_max": 200, "out_min": 0.0, "out_max": 1.0},
    }
    data.update(overrides)
    return ModelEntry.from_dict(data)


def oblique_image(size=(40, 50, 30), spacing=(0.8, 0.9, 2.5), pixel=sitk.sitkInt16) -> sitk.Image:
    image = sitk.Image(size, pixel)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(sitk.VersorTransform((0.2, 0.5, 0.3), 0.4).GetMatrix())
    return image


def with_blob(image: sitk.Image, index, half=(3, 3, 1), value=500, background=-1000) -> sitk.Image:
    """A box of ``value`` centred on ``index`` (x, y, z) in a ``background`` image, same geometry."""
    array = np.full(sitk.GetArrayViewFromImage(image).shape, background, dtype=np.int16)
    x, y, z = index
    array[z - half[2] : z + half[2] + 1, y - half[1] : y + half[1] + 1, x - half[0] : x + half[0] + 1] = value
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def centroid_lps(tensor) -> np.ndarray:
    """Intensity-weighted centroid of a (1, x, y, z) MetaTensor, in LPS mm via its RAS affine."""
    values = tensor[0].numpy().astype(np.float64)
    weights = values / values.sum()
    ijk = [float((weights * grid).sum()) for grid in np.indices(values.shape)]
    ras = tensor.affine.numpy() @ np.array([*ijk, 1.0])
    return ras[:3] * np.array([-1.0, -1.0, 1.0])


def test_ras_affine_maps_indices_to_ras_of_the_physical_point():
    image = oblique_image()
    affine = ras_affine(image)
    for index in [(0, 0, 0), (39, 1, 7), (12, 49, 29)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = affine @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)


def test_sitk_metatensor_round_trip_is_exact():
    image = with_blob(oblique_image(), (20, 25, 12))
    tensor = sitk_to_metatensor(image, dtype=torch.int16)
    assert tensor.shape == (1, 40, 50, 30)  # (C, x, y, z)
    assert tensor[0, 20, 25, 12] == 500 and tensor[0, 0, 0, 0] == -1000
    back = metatensor_to_sitk(tensor)
    assert back.GetSize() == image.GetSize()
    assert back.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)


def test_geometry_from_ras_affine_inverts_ras_affine():
    image = oblique_image(spacing=(0.7, 1.3, 3.0))
    origin, spacing, direction = geometry_from_ras_affine(ras_affine(image))
    np.testing.assert_allclose(origin, image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(spacing, image.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(direction, image.GetDirection(), atol=1e-12)


@pytest.mark.parametrize("oblique", [False, True])
def test_preprocessing_keeps_a_blob_at_its_physical_position(oblique):
    image = oblique_image()
    if not oblique:
        image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    index = (20, 25, 12)
    blob = with_blob(image, index)
    expected = np.array(blob.TransformIndexToPhysicalPoint(index))
    tensor = preprocess_ct(blob, make_entry())
    assert tensor.dtype == torch.float32
    np.testing.assert_allclose(
        np.linalg.norm(tensor.affine.numpy()[:3, :3], axis=0), [1.5, 1.5, 1.5], rtol=1e-6
    )
    np.testing.assert_allclose(centroid_lps(tensor), expected, atol=0.5)
    if not oblique:  # an LPS-stored image really is turned to RAS: positive diagonal
        assert np.all(np.diag(tensor.affine.numpy())[:3] > 0)


def test_preprocessed_tensor_converts_back_to_the_same_physical_place():
    image = with_blob(oblique_image(), (20, 25, 12))
    back = metatensor_to_sitk(preprocess_ct(image, make_entry()))
    values = sitk.GetArrayFromImage(back).astype(np.float64)  # (z, y, x)
    weights = values / values.sum()
    zyx = [float((weights * grid).sum()) for grid in np.indices(values.shape)]
    centroid = np.array(back.TransformContinuousIndexToPhysicalPoint(zyx[::-1]))
    expected = np.array(image.TransformIndexToPhysicalPoint((20, 25, 12)))
    np.testing.assert_allclose(centroid, expected, atol=0.5)


def test_clip_scale_intensity():
    image = oblique_image(size=(8, 8, 8), spacing=(1.5, 1.5, 1.5))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # already RAS, same spacing: pixels unchanged
    values = np.array([-1000, -100, 50, 200, 3000], dtype=np.int16)
    array = np.zeros((8, 8, 8), dtype=np.int16)
    array[0, 0, :5] = values
    ct = sitk.GetImageFromArray(array)
    ct.CopyInformation(image)
    tensor = preprocess_ct(ct, make_entry())
    np.testing.assert_allclose(tensor[0, :5, 0, 0].numpy(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_normalize_nonzero_scale_intensity_spans_the_output_range():
    entry = make_entry(
        intensity={"type": "normalize_nonzero_scale", "out_min": -1.0, "out_max": 1.0}, spacing_mm=None
    )
    image = with_blob(
        oblique_image(size=(20, 20, 20), spacing=(1, 1, 1)), (10, 10, 10), value=300, background=-500
    )
    tensor = preprocess_ct(image, entry)
    assert tensor.shape == (1, 20, 20, 20)
    assert float(tensor.min()) == pytest.approx(-1.0) and float(tensor.max()) == pytest.approx(1.0)


def test_mask_preprocessing_is_nearest_neighbour():
    mask = with_blob(oblique_image(pixel=sitk.sitkUInt8), (20, 25, 12), value=1, background=0)
    tensor = preprocess_mask(sitk.Cast(mask, sitk.sitkUInt8), make_entry())
    assert set(np.unique(tensor.numpy()).tolist()) == {0.0, 1.0}


def test_unknown_intensity_type_for_segmentation_is_refused():
    entry = make_entry(intensity={"type": "sam_pixel"})
    with pytest.raises(PreprocessingError, match="test-liver"):
        preprocess_ct(oblique_image(), entry)
