"""Model-space preprocessing: SimpleITK images <-> MONAI MetaTensors, and the transforms of a model.

Geometry conventions:

- A ``SimpleITK.Image`` carries origin, spacing and direction in LPS patient coordinates (DICOM / ITK);
  ``sitk.GetArrayFromImage`` gives a numpy array ordered (z, y, x).
- A MONAI ``MetaTensor`` here is channel-first, ordered (C, x, y, z) (index i, j, k of the image), with a
  4x4 ``affine`` mapping (i, j, k, 1) to RAS patient coordinates in mm (MONAI / NIfTI convention).
  The RAS affine is ``diag(-1, -1, 1, 1) @ A_lps`` with ``A_lps = [[D @ diag(spacing), origin], [0, 1]]``.

The model-space transforms are MONAI's own (``Orientation``, ``Spacing``, ``ScaleIntensityRange``,
``NormalizeIntensity``, ``ScaleIntensity``) built from the model's manifest entry; they keep the affine
up to date, so a model-space result converts back to a ``SimpleITK.Image`` at its true position.
All arrays are float32: no full-resolution float64 copy is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Transform

    from LiverTumorSegLib.models.manifest import ModelEntry

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # MONAI axis labels of our RAS affines


class PreprocessingError(ValueError):
    """A model entry asks for a preprocessing this engine cannot build (message names the model)."""


def lps_affine(image: sitk.Image) -> np.ndarray:
    """4x4 float64 matrix mapping a continuous index (i, j, k, 1) of ``image`` to LPS mm."""
    dimension = image.GetDimension()
    if dimension != 3:
        raise ValueError(f"expected a 3D image, got {dimension}D")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[None, :]
    affine[:3, 3] = image.GetOrigin()
    return affine


def ras_affine(image: sitk.Image) -> np.ndarray:
    """4x4 float64 matrix mapping (i, j, k, 1) of ``image`` to RAS mm (the MONAI/NIfTI affine)."""
    return LPS_TO_RAS @ lps_affine(image)


def sitk_to_metatensor(image: sitk.Image, dtype: Any = None) -> MetaTensor:
    """Convert a 3D ``SimpleITK.Image`` to a channel-first MONAI ``MetaTensor`` of shape (1, x, y, z).

    ``dtype`` is a torch dtype (default float32). The pixels are copied once (no view of the
    SimpleITK buffer survives); the affine is the image's RAS affine (float64).
    """
    import torch
    from monai.data import MetaTensor

    dtype = torch.float32 if dtype is None else dtype
    zyx = sitk.GetArrayViewFromImage(image)
    if zyx.ndim != 3:
        raise ValueError(f"expected a scalar 3D image, got an array of shape {zyx.shape}")
    numpy_dtype = torch.empty((), dtype=dtype).numpy().dtype
    xyz = np.ascontiguousarray(zyx.transpose(2, 1, 0), dtype=numpy_dtype)
    return MetaTensor(
        torch.from_numpy(xyz)[None],
        affine=torch.as_tensor(ras_affine(image), dtype=torch.float64),
        meta={"space": "RAS"},
    )


def geometry_from_ras_affine(affine: Any) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(origin, spacing, direction) in SimpleITK's LPS convention from a 4x4 RAS affine."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    columns = lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"degenerate affine (zero spacing): {affine}")
    direction = columns / spacing[None, :]
    return tuple(lps[:3, 3].tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def metatensor_to_sitk(
    data: torch.Tensor | np.ndarray, affine: Any = None, pixel_type: Any = None
) -> sitk.Image:
    """Convert a (x, y, z) or (1, x, y, z) tensor/array with a RAS affine to a ``SimpleITK.Image``.

    ``affine`` defaults to ``data.affine`` (a MetaTensor). ``pixel_type`` is a numpy dtype for the
    output pixels (default: keep the input dtype).
    """
    if affine is None:
        affine = getattr(data, "affine", None)
        if affine is None:
            raise ValueError("metatensor_to_sitk needs a MetaTensor or an explicit affine")
    if hasattr(data, "detach"):
        data = data.detach().cpu()
        data = data.as_tensor() if hasattr(data, "as_tensor") else data
        data = data.numpy()
    array = np.asarray(data)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"expected a single channel, got shape {array.shape}")
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (x, y, z) array, got shape {array.shape}")
    if pixel_type is not None:
        array = array.astype(pixel_type, copy=False)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    origin, spacing, direction = geometry_from_ras_affine(np.asarray(affine))
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _spatial_specs(entry: ModelEntry, is_mask: bool) -> list[tuple[str, dict[str, Any]]]:
    """(MONAI transform name, arguments) to the model's orientation and spacing (bilinear for CT, nearest for
    masks): the one description both ``build_transforms`` (inference) and ``dictionary_transforms`` (training)
    instantiate."""
    import torch

    specs: list[tuple[str, dict[str, Any]]] = [("Orientation", {"axcodes": entry.orientation, "labels": RAS_LABELS})]
    if entry.spacing_mm is not None:
        specs.append(("Spacing", {"pixdim": tuple(float(s) for s in entry.spacing_mm),
                                  "mode": "nearest" if is_mask else "bilinear", "padding_mode": "border",
                                  "dtype": torch.float32}))
    return specs


def _intensity_specs(entry: ModelEntry) -> list[tuple[str, dict[str, Any]]]:
    """(MONAI transform name, arguments) of the model's ``intensity`` spec (see ``ModelEntry``)."""
    spec = dict(entry.intensity)
    kind = spec.get("type")
    out_min, out_max = float(spec.get("out_min", 0.0)), float(spec.get("out_max", 1.0))
    if kind == "clip_scale":
        try:
            hu_min, hu_max = float(spec["hu_min"]), float(spec["hu_max"])
        except KeyError as error:
            raise PreprocessingError(f"model {entry.id!r}: clip_scale intensity lacks {error}") from None
        return [("ScaleIntensityRange", {"a_min": hu_min, "a_max": hu_max, "b_min": out_min, "b_max": out_max,
                                         "clip": True})]
    if kind == "normalize_nonzero_scale":
        return [("NormalizeIntensity", {"nonzero": True}), ("ScaleIntensity", {"minv": out_min, "maxv": out_max})]
    if not kind:
        return []
    raise PreprocessingError(f"model {entry.id!r}: intensity type {kind!r} is not for CT segmentation")


def _instantiate(specs: list[tuple[str, dict[str, Any]]], keys: Sequence[str] | None) -> list[Transform]:
    from monai import transforms

    if keys is None:
        return [getattr(transforms, name)(**arguments) for name, arguments in specs]
    return [getattr(transforms, name + "d")(keys=list(keys), **arguments) for name, arguments in specs]


def spatial_transforms(entry: ModelEntry, *, is_mask: bool = False) -> list[Transform]:
    """MONAI transforms to the model's orientation and spacing (bilinear for CT, nearest for masks)."""
    return _instantiate(_spatial_specs(entry, is_mask), None)


def intensity_transforms(entry: ModelEntry) -> list[Transform]:
    """MONAI intensity transforms of the model's ``intensity`` spec (see ``ModelEntry``)."""
    return _instantiate(_intensity_specs(entry), None)


def build_transforms(entry: ModelEntry, *, is_mask: bool = False) -> list[Transform]:
    """The full transform list of one input channel: spatial, then intensity (CT only)."""
    transforms = spatial_transforms(entry, is_mask=is_mask)
    if not is_mask:
        transforms += intensity_transforms(entry)
    return transforms


def dictionary_transforms(entry: ModelEntry, image_key: str = "image", mask_keys: Sequence[str] = ()) -> list[Transform]:
    """The same preprocessing as ``build_transforms`` as MONAI dictionary transforms, for training: the CT under
    ``image_key`` resampled bilinearly and intensity-transformed, each of ``mask_keys`` (labels, liver masks)
    resampled by nearest neighbour onto the same grid. Training and inference thus share one model entry."""
    steps = _instantiate(_spatial_specs(entry, is_mask=False), [image_key])
    if mask_keys:
        steps += _instantiate(_spatial_specs(entry, is_mask=True), list(mask_keys))
    return steps + _instantiate(_intensity_specs(entry), [image_key])


def apply_transforms(data: MetaTensor, transforms: Sequence[Transform]) -> MetaTensor:
    """Apply ``transforms`` in order (a MONAI ``Compose`` without lazy resampling)."""
    from monai.transforms import Compose

    return Compose(list(transforms))(data)


def preprocess_ct(image: sitk.Image, entry: ModelEntry) -> MetaTensor:
    """CT (HU, any pixel type) -> model-space float32 MetaTensor (1, x, y, z) with its RAS affine."""
    return apply_transforms(sitk_to_metatensor(image), build_transforms(entry))


def preprocess_mask(mask: sitk.Image, entry: ModelEntry) -> MetaTensor:
    """Binary mask -> model-space float32 MetaTensor (1, x, y, z) of 0/1, nearest-neighbour resampled."""
    return apply_transforms(sitk_to_metatensor(mask), build_transforms(entry, is_mask=True))
