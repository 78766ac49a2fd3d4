"""Lesion table and volumes of a 0/1/2 labelmap, on shapes whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.core.measurements import axial_axis, measure_labelmap, measure_lesions


def labelmap(
    array_zyx: np.ndarray,
    spacing=(1.0, 1.0, 1.0),
    origin=(0.0, 0.0, 0.0),
    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def local_mm(shape_zyx, spacing_xyz):
    """Voxel-centre coordinates (x, y, z) in mm along the image axes, as (z, y, x) arrays."""
    z, y, x = np.indices(shape_zyx, dtype=np.float64)
    return x * spacing_xyz[0], y * spacing_xyz[1], z * spacing_xyz[2]


def test_sphere_volume_and_axial_diameter():
    spacing, radius, centre = (0.7, 0.7, 1.25), 10.0, (25.0, 24.0, 26.0)
    shape = (44, 72, 72)
    x, y, z = local_mm(shape, spacing)
    array = np.zeros(shape, dtype=np.uint8)
    array[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2] = 2
    (lesion,) = measure_lesions(labelmap(array, spacing))
    assert lesion.id == 1
    assert lesion.volume_ml == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.03)
    assert abs(lesion.longest_axial_diameter_mm - 2 * radius) <= max(spacing[:2])
    np.testing.assert_allclose(lesion.centroid_mm, centre, atol=0.05)


def test_rotated_ellipse_diameter_is_its_major_axis():
    spacing, a, b, angle = (0.8, 0.8, 2.5), 15.0, 6.0, math.radians(30)
    shape = (6, 60, 60)
    x, y, _ = local_mm(shape, spacing)
    u, v = x - 24.0, y - 24.0
    major = u * math.cos(angle) + v * math.sin(angle)
    minor = -u * math.sin(angle) + v * math.cos(angle)
    array = np.zeros(shape, dtype=np.uint8)
    array[1:5][((major / a) ** 2 + (minor / b) ** 2 <= 1)[1:5]] = 2
    (lesion,) = measure_lesions(labelmap(array, spacing))
    assert abs(lesion.longest_axial_diameter_mm - 2 * a) <= spacing[0]


def test_diameter_is_taken_in_the_axial_plane_whatever_the_array_axis():
    """A 40 mm long rod of 10 mm diameter along the patient S axis: axial diameter about 10 mm."""
    shape = (30, 30, 60)  # (z, y, x) with x the long axis
    x, y, z = local_mm(shape, (1.0, 1.0, 1.0))
    rod = ((y - 15) ** 2 + (z - 15) ** 2 <= 25) & (np.abs(x - 30) <= 20)
    array = np.where(rod, 2, 0)
    sagittal_stack = (0, 0, 1, 0, 1, 0, 1, 0, 0)  # image x runs along patient S, z along L
    image = labelmap(array, direction=sagittal_stack)
    assert axial_axis(image) == 0
    (lesion,) = measure_lesions(image)
    assert abs(lesion.longest_axial_diameter_mm - 10.0) <= 1.0
    (axial_rod,) = measure_lesions(labelmap(array))  # same pixels, x lying in the axial plane
    assert axial_rod.longest_axial_diameter_mm > 40.0


def test_centroid_is_in_physical_lps_coordinates_for_an_oblique_image():
    direction = sitk.VersorTransform((0.1, 0.7, 0.2), 0.6).GetMatrix()
    spacing, origin = (0.9, 1.1, 2.0), (-120.0, 35.0, 410.0)
    array = np.zeros((20, 40, 40), dtype=np.uint8)
    array[8:13, 10:17, 20:31] = 2  # centre index (x, y, z) = (25, 13, 10)
    image = labelmap(array, spacing, origin, direction)
    (lesion,) = measure_lesions(image)
    expected = image.TransformContinuousIndexToPhysicalPoint((25.0, 13.0, 10.0))
    np.testing.assert_allclose(lesion.centroid_mm, expected, atol=1e-6)
    assert lesion.volume_ml == pytest.approx(5 * 7 * 11 * np.prod(spacing) / 1000)


def test_lesions_are_26_connected_and_ordered_by_volume():
    array = np.zeros((20, 20, 20), dtype=np.uint8)
    array[2:4, 2:4, 2:4] = 2  # 8 voxels ...
    array[4:6, 4:6, 4:6] = 2  # ... touching the first by one corner only: the same lesion (16 voxels)
    array[10:15, 10:15, 10:15] = 2  # 125 voxels
    array[17, 17, 17] = 2  # 1 voxel
    lesions = measure_lesions(labelmap(array, spacing=(2.0, 2.0, 2.0)))
    assert [lesion.id for lesion in lesions] == [1, 2, 3]
    assert [round(lesion.volume_ml * 1000 / 8) for lesion in lesions] == [125, 16, 1]
    assert lesions[2].longest_axial_diameter_mm == pytest.approx(2.0)  # one voxel: one voxel wide
    assert lesions[0].longest_axial_diameter_mm == pytest.approx(math.hypot(8, 8) + 2.0)  # centres + 1 voxel


def test_volumes_of_a_labelmap():
    array = np.zeros((10, 10, 10), dtype=np.uint8)
    array[1:9, 1:9, 1:9] = 1
    array[3:5, 3:5, 3:5] = 2
    measured = measure_labelmap(labelmap(array, spacing=(0.5, 0.5, 2.0)))
    voxel_ml = 0.5 * 0.5 * 2.0 / 1000
    assert measured.tumor_volume_ml == pytest.approx(8 * voxel_ml)
    assert measured.parenchyma_volume_ml == pytest.approx((512 - 8) * voxel_ml)
    assert measured.liver_volume_ml == pytest.approx(512 * voxel_ml)
    assert len(measured.lesions) == 1
    assert measured.to_dict()["lesions"][0]["id"] == 1


def test_empty_labelmap_has_no_lesions():
    measured = measure_labelmap(labelmap(np.zeros((5, 5, 5))))
    assert measured.lesions == [] and measured.liver_volume_ml == 0.0
