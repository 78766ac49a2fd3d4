"""HU-window preview PNGs: radiological orientation, physical aspect, contours, window, command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from LiverTumorSegLib.core.hu_windows import HUWindow, get_preset
from LiverTumorSegLib.io.preview import (
    DEFAULT_COLORS,
    PreviewWarning,
    default_center_mm,
    render_plane,
    write_previews,
)

WIDE = HUWindow.from_range("wide", "Wide", -1000.0, 1000.0)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped_ras": np.diag([-1.0, -1.0, 1.0]),  # stored right-to-left, anterior-to-posterior
    "flipped_z": np.diag([1.0, -1.0, -1.0]),  # slices stored head to feet
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),  # stored as sagittal slices
    "oblique": _rotation(2, 25.0) @ _rotation(0, 15.0),
}


def _volume(fn, size, spacing_mm, direction=None, center_mm=(0.0, 0.0, 0.0)) -> sitk.Image:
    """A CT whose HU are ``fn(x, y, z)`` of the LPS point of each voxel; voxel grid centred on center_mm."""
    direction = np.eye(3) if direction is None else direction
    size, spacing = np.array(size), np.array(spacing_mm, dtype=float)
    origin = np.asarray(center_mm) - direction @ (spacing * (size - 1) / 2.0)
    k, j, i = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")  # z, y, x index arrays
    index_mm = np.stack([i, j, k]) * spacing[:, None, None, None]
    points = origin[:, None, None, None] + np.einsum("ab,b...->a...", direction, index_mm)
    image = sitk.GetImageFromArray(fn(*points).astype(np.float32))
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(origin))
    image.SetDirection(tuple(direction.ravel()))
    return image


def _ball(x, y, z, center, radius_mm):
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2 <= radius_mm**2


# A dark reference ball at the origin and, per plane, a bright ball in that plane only, at the
# patient's right/anterior/superior side: expected displacement on the image (columns right, rows down).
BRIGHT = {"axial": (-40.0, -25.0, 0.0), "coronal": (-40.0, 0.0, 25.0), "sagittal": (0.0, -40.0, 25.0)}
EXPECTED_SHIFT_PX = {"axial": (-40, -25), "coronal": (-40, -25), "sagittal": (-40, -25)}


def _markers(x, y, z):
    hu = np.where(_ball(x, y, z, (0.0, 0.0, 0.0), 7.0), -900.0, 0.0)
    for point in BRIGHT.values():
        hu = np.where(_ball(x, y, z, point, 7.0), 1000.0, hu)
    return hu


def _blob_center(selected: np.ndarray) -> np.ndarray:
    """(row, column) centroid of the one selected blob that does not touch the image border (the
    outside of an oblique volume is also dark)."""
    labels, count = ndimage.label(selected)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    blobs = [i for i in range(1, count + 1) if i not in border]
    assert len(blobs) == 1 and (labels == blobs[0]).sum() > 50, (count, border)
    return np.argwhere(labels == blobs[0]).mean(axis=0)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_orientation_follows_radiological_convention(direction):
    ct = _volume(_markers, (64, 56, 44), (2.0, 2.5, 3.0), DIRECTIONS[direction], center_mm=(3.0, -2.0, 4.0))
    for plane, (d_col, d_row) in EXPECTED_SHIFT_PX.items():
        rgb, _ = render_plane(ct, plane, window=WIDE, center_mm=(0.0, 0.0, 0.0), pixel_mm=1.0)
        gray = rgb[..., 0].astype(int)
        shift_row, shift_col = _blob_center(gray > 200) - _blob_center(gray < 60)
        assert shift_col == pytest.approx(d_col, abs=1.5), (plane, shift_row, shift_col)
        assert shift_row == pytest.approx(d_row, abs=1.5), (plane, shift_row, shift_col)


def test_anisotropic_spacing_keeps_physical_aspect(tmp_path):
    ct = _volume(lambda x, y, z: 0.0 * x, (60, 40, 12), (1.0, 1.0, 5.0))  # 60 x 40 x 60 mm
    extents_mm = {"axial": (60, 40), "coronal": (60, 60), "sagittal": (40, 60)}  # (width, height)
    paths = write_previews(ct, tmp_path / "mm", window=WIDE, pixel_mm=1.0)
    for plane, size in extents_mm.items():
        assert Image.open(paths[plane]).size == size
    paths = write_previews(ct, tmp_path / "auto", window=WIDE)  # upscaled to >= 256 px, same proportions
    for plane, (width_mm, height_mm) in extents_mm.items():
        width, height = Image.open(paths[plane]).size
        assert max(width, height) == 256
        assert width / height == pytest.approx(width_mm / height_mm, abs=0.01)


def test_contours_have_mask_colour_and_lie_on_boundary(tmp_path):
    ct = _volume(lambda x, y, z: 40.0 + 0.0 * x, (49, 41, 21), (1.0, 1.0, 1.0))
    mask = _volume(
        lambda x, y, z: ((x + 6) / 14) ** 2 + (y / 10) ** 2 + (z / 6) ** 2 <= 1, (49, 41, 21), (1.0, 1.0, 1.0)
    )
    paths = write_previews(
        ct,
        tmp_path,
        window=get_preset("abdomen"),
        masks={"Liver": mask},
        center_mm=(0.0, 0.0, 0.0),
        pixel_mm=1.0,
        planes=("axial",),
        annotate_text=False,
    )
    rgb = np.asarray(Image.open(paths["axial"]))
    colored = np.all(rgb == DEFAULT_COLORS["liver"], axis=2)
    inside = sitk.GetArrayFromImage(mask)[10] > 0  # (y, x) slice at z = 0 mm: the grid matches the voxels
    outside_near = ndimage.binary_dilation(~inside, structure=ndimage.generate_binary_structure(2, 1))
    assert colored.sum() > 40
    assert np.array_equal(colored, inside & outside_near)  # exactly the 1 px inner boundary
    assert np.all(rgb[~colored] == rgb[0, 0])  # the rest is the untouched CT gray


def test_default_colours_fill_and_centre(tmp_path):
    ct = _volume(lambda x, y, z: 40.0 + 0.0 * x, (40, 40, 20), (2.0, 2.0, 2.0))
    liver = _volume(lambda x, y, z: _ball(x, y, z, (-20.0, 4.0, 6.0), 12.0), (40, 40, 20), (2.0, 2.0, 2.0))
    tumor = _volume(lambda x, y, z: _ball(x, y, z, (-20.0, 4.0, 6.0), 5.0), (40, 40, 20), (2.0, 2.0, 2.0))
    masks = {"Liver": liver, "Liver tumor": tumor}
    assert default_center_mm(ct, masks) == pytest.approx((-20.0, 4.0, 6.0), abs=0.5)
    rgb, shown = render_plane(ct, "axial", window=get_preset("abdomen"), masks=masks, fill_alpha=0.5)
    assert shown == ["Liver", "Liver tumor"]
    colors = {tuple(c) for c in rgb.reshape(-1, 3)}
    assert DEFAULT_COLORS["liver"] in colors and DEFAULT_COLORS["liver tumor"] in colors
    assert DEFAULT_COLORS["liver"] != DEFAULT_COLORS["liver tumor"]
    gray = int(np.rint(get_preset("abdomen").apply(40.0) * 255))
    assert (
        int(np.rint(0.5 * gray + 0.5 * 221)),
        int(np.rint(0.5 * gray + 0.5 * 130)),
        int(np.rint(0.5 * gray + 0.5 * 101)),
    ) in colors  # translucent liver fill


def test_window_maps_hu_to_gray(tmp_path):
    window = get_preset("abdomen")  # W 350 / L 40: [-135, 215] HU
    ct = _volume(
        lambda x, y, z: np.select([x < -10, x < 10], [window.lower_hu, window.level_hu], 500.0),
        (60, 20, 10),
        (1.0, 1.0, 1.0),
    )
    paths = write_previews(ct, tmp_path, window=window, pixel_mm=1.0, planes=("axial",), annotate_text=False)
    row = np.asarray(Image.open(paths["axial"]).convert("L"))[10]
    assert row[2] == 0 and row[30] in (127, 128) and row[-3] == 255


def test_annotation_writes_legend_and_warns_outside(tmp_path):
    ct = _volume(lambda x, y, z: 0.0 * x, (40, 40, 10), (2.0, 2.0, 2.0))
    plain = write_previews(ct, tmp_path / "plain", window=WIDE, annotate_text=False)
    text = write_previews(ct, tmp_path / "text", window=WIDE)
    a, b = (np.asarray(Image.open(p["axial"])) for p in (plain, text))
    changed = np.any(a != b, axis=2)
    assert changed[:40, :80].sum() > 100  # title box in the top-left corner
    assert not changed[100:150, 100:150].any()  # the middle of the image stays clean
    with pytest.warns(PreviewWarning, match="outside"):
        write_previews(ct, tmp_path / "far", window=WIDE, center_mm=(500.0, 0.0, 0.0), planes=("axial",))
    with pytest.raises(ValueError, match="oblique"):
        write_previews(ct, tmp_path, window=WIDE, planes=("oblique",))


def test_cli_writes_window_plane_files(tmp_path):
    ct = _volume(
        lambda x, y, z: np.where(x**2 / 1600 + y**2 / 900 < 1, 40.0, -1000.0), (48, 40, 12), (2.0, 2.0, 5.0)
    )
    labels = _volume(
        lambda x, y, z: (
            _ball(x, y, z, (-12.0, 0.0, 0.0), 14.0) * 1 + _ball(x, y, z, (-12.0, 0.0, 0.0), 5.0) * 1
        ),
        (48, 40, 12),
        (2.0, 2.0, 5.0),
    )
    sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8), str(tmp_path / "labels.nrrd"))
    out = tmp_path / "previews"
    command = [
        sys.executable,
        "-m",
        "LiverTumorSegLib.cli",
        "preview",
        "--image",
        str(tmp_path / "ct.nrrd"),
        "--labels",
        str(tmp_path / "labels.nrrd"),
        "--window",
        "abdomen",
        "--window",
        "model_input_thesis",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["center_mm"] == pytest.approx([-12.0, 0.0, 0.0], abs=0.6)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{w}_{p}.png" for w in ("abdomen", "model_input_thesis") for p in ("axial", "coronal", "sagittal")
    )
    axial = np.asarray(Image.open(report["previews"]["abdomen"]["axial"]))
    assert np.all(axial == DEFAULT_COLORS["liver tumor"], axis=2).sum() > 10
    assert np.all(axial == DEFAULT_COLORS["liver"], axis=2).sum() > 20
    missing = subprocess.run(
        command[:5] + [str(tmp_path / "nope.nrrd"), "--out", str(out)],
        capture_output=True,
        text=True, encoding="utf-8",
        timeout=120,
    )
    assert missing.returncode == 2 and "nope.nrrd" in missing.stderr
