"""Training data sets in the Medical Segmentation Decathlon layout.

``ROOT/imagesTr/<case>.nii.gz`` (CT in HU) and ``ROOT/labelsTr/<case>.nii.gz`` (0 background, 1 liver,
2 tumor), as MSD Task03_Liver and LiTS. ``make_phantom_dataset`` writes generated phantoms in the same
layout so that training code has one input format.
"""

from __future__ import annotations

import random
from pathlib import Path

import SimpleITK as sitk

from LiverTumorSegLib.io.atomic import write_image

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd")


def _case_name(path: Path) -> str:
    for suffix in IMAGE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def list_msd_cases(root: str | Path, liver_masks: str | Path | None = None) -> list[dict[str, str]]:
    """``[{"case", "image", "label"}]`` for every image in ``imagesTr`` that has a label of the same name.

    ``liver_masks``: a folder (absolute, or relative to ``root``) of predicted liver masks named as the
    images (``write_predicted_liver_masks``); each case then also has ``"liver_mask"``, and a missing one is
    an error.
    """
    root = Path(root)
    masks_dir = None if liver_masks is None else root / liver_masks
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise FileNotFoundError(f"{root} is not in MSD layout: imagesTr/ and labelsTr/ are required")
    cases = []
    for image in sorted(p for p in images_dir.iterdir() if p.name.endswith(IMAGE_SUFFIXES)
                        and not p.name.startswith(".")):
        label = labels_dir / image.name
        if not label.is_file():
            raise FileNotFoundError(f"{image} has no label file {label}")
        case = {"case": _case_name(image), "image": str(image), "label": str(label)}
        if masks_dir is not None:
            mask = masks_dir / image.name
            if not mask.is_file():
                raise FileNotFoundError(f"{image} has no predicted liver mask {mask}")
            case["liver_mask"] = str(mask)
        cases.append(case)
    if not cases:
        raise FileNotFoundError(f"No images (*.nii.gz, *.nii, *.nrrd) in {images_dir}")
    return cases


def split_cases(cases: list[dict], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Patient-level split (one case = one patient here), reproducible from ``seed``; at least one of each."""
    if len(cases) < 2:
        raise ValueError("At least two cases are needed to hold one out for validation")
    shuffled = list(cases)
    random.Random(seed).shuffle(shuffled)
    n_val = min(len(cases) - 1, max(1, round(val_fraction * len(cases))))
    return shuffled[n_val:], shuffled[:n_val]


def make_phantom_dataset(out_dir: str | Path, n_cases: int, *, first_seed: int = 1000, size_xy: int = 128,
                         slice_thickness_mm: float | None = None, max_tumors: int = 5) -> Path:
    """Write ``n_cases`` phantoms (seeds ``first_seed``..) in MSD layout (NIfTI); returns ``out_dir``.

    Existing cases are kept, so an interrupted generation resumes where it stopped.
    """
    from LiverTumorSegLib.synthetic.phantom import make_phantom

    out_dir = Path(out_dir)
    (out_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out_dir / "labelsTr").mkdir(parents=True, exist_ok=True)
    for seed in range(first_seed, first_seed + n_cases):
        name = f"phantom_{seed:05d}.nii.gz"
        image_path, label_path = out_dir / "imagesTr" / name, out_dir / "labelsTr" / name
        if image_path.is_file() and label_path.is_file():
            continue
        phantom = make_phantom(seed, size_xy=size_xy, slice_thickness_mm=slice_thickness_mm, max_tumors=max_tumors)
        write_image(phantom.labels, label_path, overwrite=True)
        write_image(phantom.ct, image_path, overwrite=True)
    return out_dir


def predicted_masks_folder(liver_entry) -> str:
    """Folder name (under a data set's root) for the liver masks predicted by the model ``liver_entry``.

    The name carries the model id and the start of its SHA-256, so masks of another model are never reused.
    """
    return f"liversTr_{liver_entry.id}_{liver_entry.sha256[:12]}"


def write_predicted_liver_masks(root: str | Path, liver_model, *, out_root: str | Path | None = None,
                                device: str = "cpu", log=print) -> Path:
    """Run the cascade's liver stage on every case of ``root`` and write the masks; returns their folder.

    The folder (``predicted_masks_folder``) is made under ``out_root`` (default ``root``); pass it to
    ``list_msd_cases(root, folder)``.

    The mask of a case is exactly what the cascade hands the tumor stage: the liver model's largest
    component with holes filled, on the crop, brought onto the CT's grid (uint8 0/1, the CT's geometry).
    Training the tumor stage on these (``TrainConfig.liver_mask_input = "predicted"``) shows it the liver
    model's errors it will meet in use. Existing masks are kept (the folder is specific to the model).
    """
    from LiverTumorSegLib.core.cascade import run_cascade

    root = Path(root)
    out_dir = Path(out_root or root) / predicted_masks_folder(liver_model.entry)
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in list_msd_cases(root):
        path = out_dir / Path(case["image"]).name
        if path.is_file():
            continue
        result = run_cascade(sitk.ReadImage(case["image"]), liver_model, None, device=device)
        write_image(sitk.Cast(result.labels > 0, sitk.sitkUInt8), path, overwrite=True)
        log(f"predicted liver mask {path.name}: {result.liver_volume_ml:.1f} mL")
    return out_dir


