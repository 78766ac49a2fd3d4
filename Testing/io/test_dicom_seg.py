"""DICOM SEG: our writer and reader, cross-checked with SimpleITK's geometry and dcmqi's reader, on the phantom,
oblique / flipped / Enhanced CT series and real data (a dcmqi-written SEG, a JPEG 2000 series)."""

from __future__ import annotations

import copy
import json
import random
import re
import subprocess
import tomllib
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_cases import (
    REPO,
    blob_labels,
    dcmqi_tool,
    make_volume,
    realct_dir,
    rotation,
    sitk_read,
    uid_of,
    write_series,
)

from LiverTumorSegLib.core.grid import Grid, grid_differences
from LiverTumorSegLib.io import dicom_io
from LiverTumorSegLib.io.dicom_seg import (
    SOFTWARE_VERSION,
    Algorithm,
    cascade_algorithm,
    liver_segments,
    model_version,
    pipeline_label_map,
    read_segment_masks,
    read_segmentation,
    segment_infos,
    source_series,
    write_segmentation,
)
from LiverTumorSegLib.io.dicom_write import write_enhanced_ct

ALGORITHM = Algorithm("pytest truth copy", "1.2.3", (("liver_model", "model-a v1"), ("tumor_model", "model-b v2")))
WHOLE, PARENCHYMA = liver_segments(), liver_segments(whole_liver=False)


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def assert_same_labels(actual: sitk.Image, expected: sitk.Image) -> None:
    """Same grid and every voxel equal."""
    problems = grid_differences(Grid.of(actual), Grid.of(expected))
    assert not problems, problems
    differing = int(np.count_nonzero(_array(actual) != _array(expected)))
    assert differing == 0, f"{differing} voxels differ"


def dcmqi_check(seg_path: Path, truth: sitk.Image, out_dir: Path, segments=WHOLE) -> None:
    """dcmqi's segimage2itkimage as an independent reader: every segment voxel-exact against the truth labels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([str(dcmqi_tool("segimage2itkimage")), "--inputDICOM", str(seg_path),
                             "--outputDirectory", str(out_dir), "-t", "nrrd"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((out_dir / "meta.json").read_text())
    assert [group[0]["SegmentLabel"] for group in meta["segmentAttributes"]] == [s.label for s in segments]
    truth_array = _array(truth)
    for number, segment in enumerate(segments, 1):
        decoded = sitk.ReadImage(str(out_dir / f"{number}.nrrd"))
        # dcmqi writes the extent of the frames; nearest neighbour onto the truth grid is exact where the grids
        # coincide, and any geometric disagreement shows up as differing voxels
        on_truth = sitk.Resample(decoded, truth, sitk.Transform(), sitk.sitkNearestNeighbor, 0, decoded.GetPixelID())
        expected = np.isin(truth_array, segment.label_values)
        assert int(np.count_nonzero((_array(on_truth) > 0) != expected)) == 0, f"dcmqi: segment {segment.label} differs"


# --- the phantom -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom(small_phantom_dicom):
    folder = small_phantom_dicom["dicom"]
    return dicom_io.load_series(folder), dicom_io.series_headers(folder), sitk.ReadImage(str(small_phantom_dicom["truth"]))


def test_series_headers_are_the_loaded_series_and_its_grid(phantom, small_phantom_dicom):
    ct, headers, _ = phantom
    assert all("PixelData" not in ds for ds in headers)
    source = source_series(list(reversed(headers)))
    assert not grid_differences(source.grid, Grid.of(ct))
    reference = sitk_read(sorted(small_phantom_dicom["dicom"].iterdir()))
    assert not grid_differences(Grid.of(reference), Grid.of(ct))  # the loader agrees with SimpleITK


@pytest.mark.parametrize("tumor", [True, False], ids=["with_tumors", "no_tumor"])
def test_phantom_round_trip_and_dcmqi(phantom, tumor, tmp_path):
    ct, headers, truth = phantom
    labels = truth if tumor else sitk.Cast(truth > 0, sitk.sitkUInt8)
    assert (np.count_nonzero(_array(labels) == 2) > 0) == tumor
    path = tmp_path / "seg.dcm"
    write_segmentation(labels, headers, ALGORITHM).save_as(path, enforce_file_format=True)
    assert_same_labels(read_segmentation(path, ct), labels)
    dcmqi_check(path, labels, tmp_path / "dcmqi")


def test_seg_references_terminology_and_algorithm(phantom):
    ct, headers, truth = phantom
    seg = write_segmentation(truth, headers, ALGORITHM)
    source = headers[0]
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID, seg.PatientID) == (
        source.StudyInstanceUID, source.FrameOfReferenceUID, source.PatientID)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == {ds.SOPInstanceUID for ds in headers}
    liver, tumor = seg.SegmentSequence
    assert (liver.SegmentLabel, tumor.SegmentLabel) == ("Liver", "Liver tumor")

    def code(item, keyword: str) -> tuple[str, str, str]:
        first = item[keyword][0]
        return (first.CodeValue, first.CodingSchemeDesignator, first.CodeMeaning)

    assert code(liver, "SegmentedPropertyTypeCodeSequence") == ("10200004", "SCT", "Liver")
    assert code(liver, "SegmentedPropertyCategoryCodeSequence") == ("123037004", "SCT", "Anatomical Structure")
    assert code(tumor, "SegmentedPropertyTypeCodeSequence") == ("108369006", "SCT", "Neoplasm")
    assert code(tumor, "SegmentedPropertyCategoryCodeSequence") == ("49755003", "SCT", "Morphologically Altered Structure")
    assert code(tumor, "AnatomicRegionSequence") == ("10200004", "SCT", "Liver")
    assert liver.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("pytest truth copy", "1.2.3")
    assert algorithm.AlgorithmParameters == "liver_model=model-a v1,tumor_model=model-b v2"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    for item, rgb in ((liver, (221, 130, 101)), (tumor, (144, 238, 144))):
        shown = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        assert np.allclose(shown, rgb, atol=1)
    by_uid = {ds.SOPInstanceUID: ds for ds in headers}
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame points at its source slice, same position
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in by_uid[uid].ImagePositionPatient])
    assert seg.SeriesDescription == "Liver segmentation (LiverTumorAnalysis)"


def test_cascade_algorithm_names_models_versions_and_demo():
    models = {"liver": {"id": "demo-liver", "sha256": "3209e33c25fc" + "0" * 52, "demo_only": True},
              "tumor": {"id": "real-tumor", "version": "0.2.5", "md5": "ab" * 16, "demo_only": False}}
    algorithm = cascade_algorithm(models)
    assert algorithm.parameters == (("liver_model", "demo-liver sha256:3209e33c25fc"), ("tumor_model", "real-tumor 0.2.5"))
    assert algorithm.demo and algorithm.algorithm_type == "AUTOMATIC" and algorithm.version == SOFTWARE_VERSION
    corrected = cascade_algorithm({"liver": models["tumor"], "tumor": None}, corrected=True)
    assert corrected.algorithm_type == "SEMIAUTOMATIC" and not corrected.demo
    assert corrected.parameters == (("liver_model", "real-tumor 0.2.5"),)
    assert model_version({"md5": "0123456789abcdef"}) == "md5:0123456789ab" and model_version({}) == "unversioned"
    with pytest.raises(ValueError, match="algorithm type must be one of"):
        Algorithm("x", "1", algorithm_type="MANUAL")


def test_demo_models_are_marked_in_the_series_description(phantom):
    ct, headers, truth = phantom
    demo = cascade_algorithm({"liver": {"id": "demo-liver", "demo_only": True}})
    assert write_segmentation(truth, headers, demo).SeriesDescription == "Liver segmentation, DEMO models, not for clinical use"


def test_software_version_is_the_package_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert SOFTWARE_VERSION == project["version"]


def test_liver_definitions_decode_to_the_same_labelmap(phantom):
    ct, headers, truth = phantom
    whole = write_segmentation(truth, headers, ALGORITHM)
    parenchyma = write_segmentation(truth, headers, ALGORITHM, segments=PARENCHYMA)
    assert_same_labels(read_segmentation(whole, ct), truth)
    assert_same_labels(read_segmentation(parenchyma, ct), truth)
    whole_masks, _ = read_segment_masks(whole, ct)
    parenchyma_masks, _ = read_segment_masks(parenchyma, ct)
    tumor_voxels = int(np.count_nonzero(_array(truth) == 2))
    assert whole_masks[1].sum() - parenchyma_masks[1].sum() == tumor_voxels > 0  # the whole liver holds the tumors


def test_read_without_reference_keeps_geometry(phantom):
    ct, headers, truth = phantom
    decoded = read_segmentation(write_segmentation(truth, headers, ALGORITHM))
    # without a reference the grid spans the frames present (empty end slices are not in the SEG): the CT's grid
    # from the first segmented slice on
    first = int(np.flatnonzero(_array(truth).any(axis=(1, 2)))[0])
    index = ct.TransformPhysicalPointToContinuousIndex(decoded.GetOrigin())
    assert np.allclose(index, (0, 0, first), atol=1e-3)
    assert np.allclose(decoded.GetSpacing(), ct.GetSpacing()) and np.allclose(decoded.GetDirection(), ct.GetDirection())
    expected = _array(truth)[first:first + decoded.GetSize()[2]]
    assert np.array_equal(_array(decoded), expected) and expected.sum() == _array(truth).sum()


# --- oblique, flipped, Enhanced CT -------------------------------------------------------------------------

CASES = {
    "axial": np.eye(3),
    "oblique": rotation(17.0, -11.0, 23.0),
    "oblique_2": rotation(-25.0, 8.0, -40.0),
    # left-handed: slices written with decreasing position along row x column; readers reverse them
    "reversed_slice_order": np.diag([1.0, 1.0, -1.0]),
    "negative_row_direction": np.diag([-1.0, 1.0, -1.0]),
    "negative_row_and_column": np.diag([-1.0, -1.0, 1.0]),
    "oblique_left_handed": rotation(30.0, 20.0, 10.0) @ np.diag([1.0, -1.0, 1.0]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_geometry_cases_round_trip(case, tmp_path):
    # odd sizes: frames are not a whole number of bytes, so the bit packing is exercised too
    volume = make_volume((23, 17, 9), (0.7, 0.9, 2.5), (-31.5, 12.25, -80.0), CASES[case], seed=3)
    paths = write_series(volume, tmp_path / "ct")
    truth_ct = sitk_read(paths)  # SimpleITK's geometry is the truth
    ct = dicom_io.load_series(tmp_path / "ct")
    assert not grid_differences(Grid.of(ct), Grid.of(truth_ct)), "the loader disagrees with SimpleITK"
    labels = blob_labels(truth_ct, seed=5)
    assert set(np.unique(_array(labels))) == {0, 1, 2}
    headers = dicom_io.series_headers(tmp_path / "ct")
    random.Random(case).shuffle(headers)  # the writer orders the slices itself
    seg_path = tmp_path / "seg.dcm"
    write_segmentation(labels, headers, ALGORITHM).save_as(seg_path, enforce_file_format=True)
    assert_same_labels(read_segmentation(seg_path, truth_ct), labels)
    dcmqi_check(seg_path, labels, tmp_path / "dcmqi")


def test_enhanced_ct_source_round_trip(tmp_path):
    """One multi-frame Enhanced CT file: frames keep the file's order, each points at its source frame."""
    volume = make_volume((23, 17, 9), (0.7, 0.9, 2.5), (4.0, -6.0, 20.0), rotation(0, 0, 180) @ np.diag([1, 1, -1]), 6)
    write_enhanced_ct(volume, tmp_path / "ct" / "enhanced.dcm")
    ct = dicom_io.load_series(tmp_path / "ct")
    labels = blob_labels(ct, seed=7)
    headers = dicom_io.series_headers(tmp_path / "ct")
    seg = write_segmentation(labels, headers, ALGORITHM)
    assert_same_labels(read_segmentation(seg, ct), labels)
    enhanced = pydicom.dcmread(tmp_path / "ct" / "enhanced.dcm")
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        number = int(source.ReferencedFrameNumber)
        position = enhanced.PerFrameFunctionalGroupsSequence[number - 1].PlanePositionSequence[0].ImagePositionPatient
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                           [float(v) for v in position])


def test_flip_is_detected_not_absorbed(tmp_path):
    """A labelmap flipped along k on the same grid must NOT decode equal: the comparison can fail."""
    volume = make_volume((23, 17, 9), (0.7, 0.9, 2.5), (0.0, 0.0, 0.0), rotation(10, 0, 0), seed=1)
    paths = write_series(volume, tmp_path / "ct")
    truth_ct = sitk_read(paths)
    labels = blob_labels(truth_ct, seed=5)
    flipped = sitk.Flip(labels, [False, False, True], flipAboutOrigin=False)
    flipped.CopyInformation(labels)
    seg = write_segmentation(flipped, dicom_io.series_headers(tmp_path / "ct"), ALGORITHM)
    assert np.count_nonzero(_array(read_segmentation(seg, truth_ct)) != _array(labels)) > 0


def _reindexed(image: sitk.Image, flip: tuple[bool, bool, bool], swap_xy: bool) -> sitk.Image:
    """The same voxels in the same places, indexed differently (axes flipped and/or x, y swapped), as another
    reader might deliver them; built with numpy and explicit geometry, not with a resampler."""
    array = sitk.GetArrayFromImage(image)
    direction = np.array(image.GetDirection()).reshape(3, 3).copy()
    spacing = list(image.GetSpacing())
    corner = [0, 0, 0]
    for axis, do in enumerate(flip):
        if do:
            array = np.flip(array, axis=2 - axis)
            direction[:, axis] *= -1
            corner[axis] = image.GetSize()[axis] - 1
    origin = image.TransformIndexToPhysicalPoint(corner)
    if swap_xy:
        array = np.swapaxes(array, 1, 2)
        direction[:, [0, 1]] = direction[:, [1, 0]]
        spacing[0], spacing[1] = spacing[1], spacing[0]
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetOrigin(origin)
    out.SetSpacing(spacing)
    out.SetDirection(tuple(direction.ravel()))
    return out


@pytest.mark.parametrize("flip,swap_xy", [((False, False, True), False), ((True, False, False), False),
                                          ((False, False, False), True), ((True, True, True), True)])
def test_reader_follows_a_differently_indexed_reference(flip, swap_xy, tmp_path):
    volume = make_volume((23, 17, 9), (0.7, 0.9, 2.5), (5.0, -3.0, 40.0), rotation(12.0, -7.0, 31.0), seed=2)
    paths = write_series(volume, tmp_path / "ct")
    truth_ct = sitk_read(paths)
    labels = blob_labels(truth_ct, seed=9)
    seg = write_segmentation(labels, dicom_io.series_headers(tmp_path / "ct"), ALGORITHM)
    reference = _reindexed(truth_ct, flip, swap_xy)
    expected = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    assert np.count_nonzero(_array(expected)) == np.count_nonzero(_array(labels))  # nothing lost
    decoded = read_segmentation(seg, reference)
    assert_same_labels(decoded, expected)
    assert not np.array_equal(_array(decoded), _array(labels)) or decoded.GetSize() != labels.GetSize()


# --- real data ------------------------------------------------------------------------------------------------


def test_real_dcmqi_seg_matches_its_nrrd():
    folder = realct_dir() / "dcmqi_ct_3slice"
    ct_paths = sorted(folder.glob("ct-3slice_0*.dcm"))
    reference = sitk_read(ct_paths)
    truth = sitk.ReadImage(str(folder / "liver_seg.nrrd"))
    decoded = read_segmentation(folder / "liver.dcm", reference)
    assert np.array_equal(_array(decoded), _array(truth).astype(np.uint8))
    assert int(_array(decoded).sum()) == 107098  # the liver is really there
    (info,) = segment_infos(pydicom.dcmread(str(folder / "liver.dcm")))
    assert (info.number, info.label, info.property_type) == (1, "Liver", ("T-62000", "SRT", "Liver"))
    assert pipeline_label_map(pydicom.dcmread(str(folder / "liver.dcm"))) == {1: 1}  # the legacy code is the liver
    # our own loader's grid gives the same labels
    with pytest.warns(dicom_io.DicomInputWarning, match="LICENSE-dcmqi.txt .not DICOM."):  # files beside the series
        ct = dicom_io.load_series(folder, uid_of(ct_paths[0], "SeriesInstanceUID"))
    assert np.array_equal(_array(read_segmentation(folder / "liver.dcm", ct)), _array(decoded))


def test_real_jpeg2000_series_round_trip(tmp_path):
    """Compressed real CT: TotalSegmentator's liver (label 5) as a SEG, back voxel for voxel, dcmqi too."""
    folder = realct_dir() / "totalseg_contrast_dicom"
    ct = dicom_io.load_series(folder / "dicom")
    headers = dicom_io.series_headers(folder / "dicom")
    # the sample's anonymiser blanked the study/series/SOP UIDs: the writer refuses that with the file's name ...
    with pytest.raises(ValueError, match=r"^CT\S*: empty or missing SOPClassUID; a DICOM SEG cannot reference it$"):
        write_segmentation(sitk.Cast(ct * 0, sitk.sitkUInt8), headers, ALGORITHM, segments=PARENCHYMA[:1])
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()  # ... so give them back to go on
    for ds in headers:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    reference = sitk.ReadImage(str(folder / "totalsegmentator_labels.nii.gz"))  # RAS on disk, LPS in SimpleITK
    liver = sitk.Cast(sitk.Resample(reference, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0) == 5, sitk.sitkUInt8)
    assert _array(liver).sum() > 10000
    seg_path = tmp_path / "seg.dcm"
    write_segmentation(liver, headers, ALGORITHM, segments=PARENCHYMA[:1]).save_as(seg_path, enforce_file_format=True)
    assert_same_labels(read_segmentation(seg_path, ct), liver)
    dcmqi_check(seg_path, liver, tmp_path / "dcmqi", segments=PARENCHYMA[:1])


# --- other SEGs, errors ---------------------------------------------------------------------------------------


def test_terminology_label_map_handles_other_segment_orders(phantom):
    """A SEG listing the tumor first and the liver second decodes to 0/1/2 by terminology."""
    ct, headers, truth = phantom
    seg = write_segmentation(truth, headers, ALGORITHM, segments=(PARENCHYMA[1], PARENCHYMA[0]))
    assert pipeline_label_map(seg) == {1: 2, 2: 1}
    assert_same_labels(read_segmentation(seg, ct, label_for_segment=pipeline_label_map(seg)), truth)
    by_number = _array(read_segmentation(seg, ct))  # plain segment numbers: tumor 1, parenchyma 2
    assert np.array_equal(by_number == 1, _array(truth) == 2)


@pytest.mark.parametrize("kind", ["FRACTIONAL", "LABELMAP"])
def test_fractional_and_labelmap_segs_are_read(kind, tmp_path):
    """SEG types our writer does not produce (other tools do), written with highdicom directly."""
    volume = make_volume((23, 17, 9), (0.7, 0.9, 2.5), (1.0, 2.0, 3.0), rotation(0, 15, 0), seed=4)
    paths = write_series(volume, tmp_path / "ct")
    truth_ct = sitk_read(paths)
    labels = blob_labels(truth_ct, seed=3)
    ordered = source_series(dicom_io.series_headers(tmp_path / "ct")).images
    array = _array(labels)
    descriptions = [hd.seg.SegmentDescription(number, segment.label, hd.sr.CodedConcept("123037004", "SCT", "x"),
                                              hd.sr.CodedConcept(*code), "AUTOMATIC", ALGORITHM.identification())
                    for number, segment, code in ((1, WHOLE[0], ("10200004", "SCT", "Liver")),
                                                  (2, WHOLE[1], ("108369006", "SCT", "Neoplasm")))]
    pixels = np.stack([array == 1, array == 2], axis=-1).astype(np.float32) * 0.9 if kind == "FRACTIONAL" else array
    seg = hd.seg.Segmentation(ordered, pixels, kind, descriptions, hd.UID(), 5, hd.UID(), 1, "m", "m", "1", "1",
                              specific_character_set="ISO_IR 192")
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    assert_same_labels(read_segmentation(tmp_path / "seg.dcm", truth_ct), labels)


def test_labels_off_grid_are_refused(phantom):
    ct, headers, truth = phantom
    shifted = sitk.Image(truth)
    shifted.SetOrigin(tuple(o + 0.5 for o in truth.GetOrigin()))
    with pytest.raises(ValueError, match=r"^labels is not on the grid of the source series [0-9.]+: origin"):
        write_segmentation(shifted, headers, ALGORITHM)


def test_undescribed_label_values_are_refused(phantom):
    ct, headers, truth = phantom
    bad = sitk.Image(truth)
    bad[10, 10, 10] = 7
    with pytest.raises(ValueError, match=re.escape("label values [7] are not covered by any segment (allowed: [0, 1, 2])")):
        write_segmentation(bad, headers, ALGORITHM)


def test_sources_of_two_series_are_refused(phantom, tmp_path):
    ct, headers, truth = phantom
    other = copy.deepcopy(headers[1])
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(ValueError, match="2 different SeriesInstanceUID values; give one series"):
        write_segmentation(truth, [headers[0], other, *headers[2:]], ALGORITHM)


def test_reading_a_ct_as_seg_names_the_file(small_phantom_dicom):
    path = sorted(small_phantom_dicom["dicom"].iterdir())[0]
    with pytest.raises(ValueError, match=f"{path.name}: not a DICOM Segmentation"):
        read_segmentation(path)


def test_reference_grid_mismatch_is_refused(phantom):
    ct, headers, truth = phantom
    seg = write_segmentation(truth, headers, ALGORITHM)
    half_voxel = sitk.Image(ct)
    half_voxel.SetOrigin(tuple(np.array(ct.GetOrigin()) + np.array(ct.GetSpacing()) * [0.5, 0, 0]))
    with pytest.raises(ValueError, match=r"frame \d+ at .* mm is not on a voxel of the reference grid"):
        read_segmentation(seg, half_voxel)
    coarse = sitk.Image(ct)
    coarse.SetSpacing(tuple(s * 2 for s in ct.GetSpacing()))
    with pytest.raises(ValueError, match="do not follow the reference grid"):
        read_segmentation(seg, coarse)
