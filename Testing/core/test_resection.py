"""Resection geometry: planes (oblique directions too), painted masks, tumor margins, disconnected pieces,
exact voxel accounting. Brute-force references use SimpleITK's own index -> physical point mapping."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import SimpleITK as sitk

from LiverTumorSegLib.core.grid import check_same_grid
from LiverTumorSegLib.core.resection import (
    Plane,
    ResectionGeometry,
    ResectionWarning,
    labelmap_masks,
)


def _image(array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _rotation(axis, angle_deg) -> tuple[float, ...]:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(angle_deg)
    return tuple((np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k).ravel())


def _centres_lps(image: sitk.Image, zyx: np.ndarray) -> np.ndarray:
    """Physical centres (N, 3) of voxels given as (N, 3) z, y, x indices, via SimpleITK."""
    return np.array([image.TransformIndexToPhysicalPoint((int(x), int(y), int(z))) for z, y, x in zyx])


def _flags_to_array(geometry: ResectionGeometry, flags: np.ndarray) -> np.ndarray:
    return sitk.GetArrayFromImage(geometry.flags_to_image(flags)).astype(bool)


def test_plane_validates_and_normalises():
    plane = Plane((1, 2, 3), (0, 0, 2))
    assert plane.normal == (0.0, 0.0, 1.0)
    assert plane.point_mm == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="non-zero"):
        Plane((0, 0, 0), (0, 0, 0))
    with pytest.raises(ValueError, match="finite"):
        Plane((0, math.nan, 0), (1, 0, 0))
    assert Plane.parse("-1, 2,3.5,0,-3,0") == Plane((-1, 2, 3.5), (0, -1, 0))
    for bad in ("1,2,3", "1,2,3,a,0,0", "1,2,3,4,5,6,7"):
        with pytest.raises(ValueError, match="six numbers"):
            Plane.parse(bad)


def test_plane_on_box_phantom_exact_count():
    # Parenchyma box x 2..11, y 1..8, z 1..6 (10 x 8 x 6 = 480 voxels) at spacing 0.5 x 1 x 2, origin (-5, 10, 20).
    array = np.zeros((8, 10, 14), np.uint8)
    array[1:7, 1:9, 2:12] = 1
    image = _image(array, spacing=(0.5, 1.0, 2.0), origin=(-5.0, 10.0, 20.0))
    geometry = ResectionGeometry(image)
    # x centre of index i is -5 + 0.5 i; the plane x = -1.25 lies between i = 7 and 8: i = 8..11 resected.
    flags = geometry.plane_flags(Plane((-1.25, 0.0, 0.0), (1.0, 0.0, 0.0)))
    assert int(flags.sum()) == 4 * 8 * 6
    expected = np.zeros_like(array, bool)
    expected[1:7, 1:9, 8:12] = True
    np.testing.assert_array_equal(_flags_to_array(geometry, flags), expected)
    # The normal's direction chooses the side: the opposite normal resects i = 2..7.
    opposite = geometry.plane_flags(Plane((-1.25, 0.0, 0.0), (-1.0, 0.0, 0.0)))
    assert int(opposite.sum()) == 6 * 8 * 6


def test_voxel_centres_on_the_plane_stay():
    array = np.ones((3, 3, 5), np.uint8)
    geometry = ResectionGeometry(_image(array, spacing=(0.1, 0.1, 0.1), origin=(0.3, 0.0, 0.0)))
    # x centres 0.3, 0.4, 0.5, 0.6, 0.7; the plane through x = 0.5 (not exactly representable sums).
    flags = geometry.plane_flags(Plane((0.5, 0.0, 0.0), (1.0, 0.0, 0.0)))
    assert int(flags.sum()) == 2 * 9


@pytest.mark.parametrize("seed", range(4))
def test_plane_with_oblique_direction_matches_physical_points(seed):
    rng = np.random.default_rng(seed)
    array = (rng.random((7, 9, 8)) < 0.6).astype(np.uint8)
    direction = _rotation(rng.normal(size=3), rng.uniform(20, 160))
    image = _image(array, spacing=(0.7, 1.3, 2.1), origin=tuple(rng.uniform(-50, 50, 3)), direction=direction)
    geometry = ResectionGeometry(image)
    zyx = np.argwhere(array)
    centres = _centres_lps(image, zyx)
    plane = Plane(tuple(centres.mean(axis=0) + rng.normal(size=3)), tuple(rng.normal(size=3)))
    flags = geometry.plane_flags(plane)
    expected = np.zeros(array.shape, bool)
    side = plane.signed_distance_mm(centres) > 0
    expected[tuple(zyx[side].T)] = True
    np.testing.assert_array_equal(_flags_to_array(geometry, flags), expected)
    assert 0 < flags.sum() < flags.size  # the plane really cuts this liver


def test_several_planes_resect_their_union():
    array = np.ones((4, 6, 6), np.uint8)
    geometry = ResectionGeometry(_image(array))
    flags = geometry.resected_flags(planes=[Plane((3.5, 0, 0), (1, 0, 0)), Plane((0, 3.5, 0), (0, 1, 0))])
    # x >= 4 or y >= 4: 6*6 - 4*4 = 20 per slice.
    assert int(flags.sum()) == 4 * 20


def test_painted_mask_and_grid_checks():
    array = np.ones((4, 5, 6), np.uint8)
    labels = _image(array, spacing=(1.0, 1.0, 2.5))
    geometry = ResectionGeometry(labels)
    painted = np.zeros_like(array)
    painted[:, :, :2] = 1
    mask = _image(painted, spacing=(1.0, 1.0, 2.5))
    assert int(geometry.mask_flags(mask).sum()) == 4 * 5 * 2
    with pytest.raises(ValueError, match=r"resection mask is not on the grid.*spacing"):
        geometry.mask_flags(_image(painted, spacing=(1.0, 1.0, 2.0)))
    with pytest.raises(ValueError, match=r"size"):
        geometry.mask_flags(_image(painted[:, :, :5], spacing=(1.0, 1.0, 2.5)))
    with pytest.raises(ValueError, match=r"origin"):
        check_same_grid(_image(painted, origin=(0, 0, 1)), _image(painted), "mask", "labels")
    with pytest.raises(ValueError, match=r"tumor mask is not on the grid.*direction"):
        ResectionGeometry(labels, _image(array, spacing=(1.0, 1.0, 2.5), direction=_rotation((0, 0, 1), 90)))


def _brute_force_margin(
    image: sitk.Image, parenchyma: np.ndarray, tumor: np.ndarray, margin: float
) -> np.ndarray:
    tumor_points = _centres_lps(image, np.argwhere(tumor))
    zyx = np.argwhere(parenchyma)
    centres = _centres_lps(image, zyx)
    distance = np.sqrt(((centres[:, None, :] - tumor_points[None, :, :]) ** 2).sum(-1)).min(axis=1)
    expected = np.zeros(parenchyma.shape, bool)
    expected[tuple(zyx[distance <= margin + 1e-9].T)] = True
    return expected


@pytest.mark.parametrize("margin_mm", [0.0, 1.0, 2.5, 3.0, 5.0])
def test_margin_around_single_voxel_tumor_on_anisotropic_grid(margin_mm):
    labels = np.ones((7, 9, 11), np.uint8)
    labels[3, 4, 5] = 2
    image = _image(labels, spacing=(0.8, 1.0, 2.5), direction=_rotation((1, 1, 0), 30))
    parenchyma, tumor = labelmap_masks(image)
    geometry = ResectionGeometry(parenchyma, tumor)
    flags = geometry.margin_flags(margin_mm)
    expected = _brute_force_margin(image, labels == 1, labels == 2, margin_mm)
    np.testing.assert_array_equal(_flags_to_array(geometry, flags), expected)
    # Hand count for 2.5 mm: x +-1..3 (0.8 mm steps: 0.8, 1.6, 2.4), y +-1..2, z +-1 (2.5 mm), and the
    # in-plane combinations within 2.5 mm.
    if margin_mm == 2.5:
        in_plane = sum(
            1
            for i in range(-3, 4)
            for j in range(-2, 3)
            if (i, j) != (0, 0) and (0.8 * i) ** 2 + j**2 <= 6.25
        )
        assert int(flags.sum()) == in_plane + 2


def test_margin_around_sphere_tumor_matches_brute_force():
    z, y, x = np.ogrid[:12, :14, :16]
    labels = np.ones((12, 14, 16), np.uint8)
    labels[((x - 8) * 0.7) ** 2 + ((y - 6) * 0.9) ** 2 + ((z - 5) * 2.0) ** 2 <= 9.0] = 2
    labels[0, 0, 0] = 0
    image = _image(labels, spacing=(0.7, 0.9, 2.0), origin=(3.0, -2.0, 7.0))
    geometry = ResectionGeometry(*labelmap_masks(image))
    for margin_mm in (2.0, 4.5):
        flags = geometry.margin_flags(margin_mm)
        expected = _brute_force_margin(image, labels == 1, labels == 2, margin_mm)
        np.testing.assert_array_equal(_flags_to_array(geometry, flags), expected)
        assert 0 < flags.sum() < flags.size


def test_margin_without_tumor_warns_and_resects_nothing():
    geometry = ResectionGeometry(_image(np.ones((3, 3, 3))))
    with pytest.warns(ResectionWarning, match="no tumor"):
        assert not geometry.margin_flags(10.0).any()
    with pytest.raises(ValueError, match="margin"):
        geometry.margin_flags(-1.0)


def test_disconnected_pieces_are_reported_and_dropped_on_request():
    labels = np.zeros((3, 4, 20), np.uint8)
    labels[:, :, :] = 1  # 240 voxels
    image = _image(labels)
    geometry = ResectionGeometry(image)
    painted = np.zeros_like(labels)
    painted[:, :, 10] = 1  # cuts x = 11..19 (108 voxels) off the main x = 0..9 (120 voxels)
    painted[:, :, 15] = 1  # and x = 16..19 (48 voxels) off x = 11..14 (48 voxels)
    flags = geometry.resected_flags(resection_mask=_image(painted))
    kept = geometry.split_remnant(flags)
    assert kept.disconnected_counts == (48, 48)
    assert int(kept.resected.sum()) == 24 and int(kept.remnant.sum()) == 216
    dropped = geometry.split_remnant(flags, drop_disconnected=True)
    assert dropped.disconnected_counts == (48, 48)
    assert int(dropped.resected.sum()) == 24 + 96 and int(dropped.remnant.sum()) == 120
    remnant = _flags_to_array(geometry, dropped.remnant)
    assert remnant[:, :, :10].all() and not remnant[:, :, 10:].any()


def test_edge_contact_is_not_a_connection():
    labels = np.zeros((1, 4, 4), np.uint8)
    labels[0, :2, :2] = 1  # 4 voxels
    labels[0, 2, 2] = 1  # touches the block at a corner only (diagonal in-plane)
    geometry = ResectionGeometry(_image(labels))
    split = geometry.split_remnant(np.zeros(5, bool), drop_disconnected=True)
    assert split.disconnected_counts == (1,)
    assert int(split.remnant.sum()) == 4


@pytest.mark.parametrize("seed", range(6))
def test_random_resections_account_for_every_voxel(seed):
    rng = np.random.default_rng(100 + seed)
    labels = rng.choice([0, 1, 1, 1, 2], size=(6, 8, 9)).astype(np.uint8)
    direction = _rotation(rng.normal(size=3), rng.uniform(0, 180))
    image = _image(labels, spacing=tuple(rng.uniform(0.5, 3.0, 3)), direction=direction)
    parenchyma, tumor = labelmap_masks(image)
    geometry = ResectionGeometry(parenchyma, tumor)
    centre = _centres_lps(image, np.array([[3, 4, 4]]))[0]
    planes = [Plane(tuple(centre + rng.normal(size=3) * 3), tuple(rng.normal(size=3))) for _ in range(2)]
    painted = _image(rng.random(labels.shape) < 0.1, spacing=image.GetSpacing(), direction=direction)
    flags = geometry.resected_flags(painted, planes, margin_mm=float(rng.uniform(0, 3)))
    for drop in (False, True):
        split = geometry.split_remnant(flags, drop_disconnected=drop)
        resected = _flags_to_array(geometry, split.resected)
        remnant = _flags_to_array(geometry, split.remnant)
        assert not (resected & remnant).any()
        np.testing.assert_array_equal(resected | remnant, labels == 1)
        assert not ((resected | remnant) & (labels == 2)).any()
        assert (resected >= _flags_to_array(geometry, flags)).all()
    # Each definition alone is a subset of the union.
    for part in (geometry.mask_flags(painted), *(geometry.plane_flags(p) for p in planes)):
        assert not (part & ~flags).any()


def test_overlapping_masks_count_as_tumor_and_missing_liver_fails():
    parenchyma = np.ones((3, 3, 3), np.uint8)
    tumor = np.zeros_like(parenchyma)
    tumor[1, 1, 1] = 1
    geometry = ResectionGeometry(_image(parenchyma), _image(tumor))
    assert geometry.parenchyma_count == 26 and geometry.tumor_count == 1
    with pytest.raises(ValueError, match="no liver parenchyma"):
        ResectionGeometry(_image(np.zeros((3, 3, 3))))
    with pytest.raises(ValueError, match="no liver parenchyma"):
        ResectionGeometry(_image(tumor), _image(tumor))


def test_labelmap_masks_rejects_unknown_labels_and_keeps_geometry():
    array = np.zeros((2, 3, 4), np.uint8)
    array[0, 0, :2] = 1
    array[1, 2, 3] = 2
    image = _image(array, spacing=(0.5, 0.6, 0.7), origin=(1, 2, 3), direction=_rotation((0, 1, 0), 45))
    parenchyma, tumor = labelmap_masks(image)
    assert sitk.GetArrayViewFromImage(parenchyma).sum() == 2 and sitk.GetArrayViewFromImage(tumor).sum() == 1
    for mask in (parenchyma, tumor):
        check_same_grid(mask, image, "mask", "labels")
    array[0, 1, 1] = 7
    with pytest.raises(ValueError, match=r"values \[7\]"):
        labelmap_masks(_image(array))


def test_itertools_brute_force_plane_on_identity_grid():
    # A second, independent reference: index arithmetic by hand (identity direction).
    array = np.ones((3, 4, 5), np.uint8)
    image = _image(array, spacing=(2.0, 1.0, 0.5), origin=(1.0, 1.0, 1.0))
    geometry = ResectionGeometry(image)
    plane = Plane((4.0, 2.0, 1.6), (1.0, -1.0, 2.0))
    expected = np.zeros(array.shape, bool)
    for z, y, x in itertools.product(range(3), range(4), range(5)):
        point = np.array([1.0 + 2.0 * x, 1.0 + 1.0 * y, 1.0 + 0.5 * z])
        expected[z, y, x] = (point - [4.0, 2.0, 1.6]) @ np.array([1.0, -1.0, 2.0]) > 1e-9
    np.testing.assert_array_equal(_flags_to_array(geometry, geometry.plane_flags(plane)), expected)
