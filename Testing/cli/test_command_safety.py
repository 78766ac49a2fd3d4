"""The other commands as users call them, on hostile inputs: dicom, preview, flr, phantom, tnmstaging.

Each refusal is one line and exit code 2; no input file is ever modified; a failed write leaves nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest
import SimpleITK as sitk
from hostile_inputs import (  # noqa: F401 - tiny_disk is a fixture
    assert_refused,
    fill,
    leftovers,
    livertumor,
    phantom_ct,
    phantom_labels,
    require_permissions_bind,
    tiny_disk,
    tnmstaging,
    write_dicom_series,
)

from LiverTumorSegLib import cli as livertumor_cli
from LiverTumorSegLib.worker.runner import EXIT_CODES_HELP
from TNMStagingLib import cli as tnmstaging_cli
from TNMStagingLib.resources import DEMO_MODEL_FILE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """ct.nrrd and labels.nrrd (0/1/2) of the small phantom, and its DICOM series."""
    folder = tmp_path_factory.mktemp("inputs")
    sitk.WriteImage(phantom_ct(), str(folder / "ct.nrrd"))
    sitk.WriteImage(phantom_labels(), str(folder / "labels.nrrd"))
    return {"ct": folder / "ct.nrrd", "labels": folder / "labels.nrrd",
            "dicom": write_dicom_series(phantom_ct(), folder / "dicom")}


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- dicom convert --------------------------------------------------------------------------------------------


def test_convert_onto_an_input_slice_is_refused_and_the_series_stays_whole(files):
    slice_file = files["dicom"] / "IM0003.dcm"
    before = _digest(slice_file)
    result = livertumor("dicom", "convert", files["dicom"], "--out", slice_file, "--overwrite")
    assert_refused(result, "inside the input folder")
    assert _digest(slice_file) == before
    listed = livertumor("dicom", "list", files["dicom"])
    assert listed.returncode == 0 and json.loads(listed.stdout)["num_frames"] == 47


def test_convert_keeps_an_existing_file_unless_overwrite(tmp_path, files):
    out = tmp_path / "ct.nrrd"
    out.write_text("the user's")
    assert_refused(livertumor("dicom", "convert", files["dicom"], "--out", out), "exists", "--overwrite")
    assert out.read_text() == "the user's"
    replaced = livertumor("dicom", "convert", files["dicom"], "--out", out, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert sitk.ReadImage(str(out)).GetSize() == phantom_ct().GetSize() and leftovers(tmp_path) == ["ct.nrrd"]


def test_convert_onto_a_full_disk_leaves_nothing_that_blocks_the_next_run(tiny_disk, files):  # noqa: F811
    out = tiny_disk / "ct.nrrd"
    assert_refused(livertumor("dicom", "convert", files["dicom"], "--out", out), f"--out {out}: not enough free space")
    assert leftovers(tiny_disk) == []
    small = write_dicom_series(phantom_ct()[:, :, :10], tiny_disk.parent / "small")
    done = livertumor("dicom", "convert", small, "--out", out)  # fits: no 0-byte file in the way
    assert done.returncode == 0, done.stderr
    assert leftovers(tiny_disk) == ["ct.nrrd"]


def test_a_series_in_an_unreadable_subfolder_is_named(tmp_path):
    require_permissions_bind(tmp_path)
    root = tmp_path / "export"
    write_dicom_series(phantom_ct()[:, :, :5], root / "readable")
    write_dicom_series(phantom_ct()[:, :, 5:10], root / "closed")
    (root / "closed").chmod(0)
    try:
        listed = livertumor("dicom", "list", root, unprivileged=True)
        only = livertumor("dicom", "list", root / "closed", unprivileged=True)
    finally:
        (root / "closed").chmod(0o755)
    assert listed.returncode == 0 and "1 folder(s) could not be opened: closed (Permission denied)" in listed.stderr
    assert_refused(only, "0 file(s) looked at", "1 folder(s) could not be opened")


# --- preview --------------------------------------------------------------------------------------------------


def test_preview_refuses_a_ct_as_labels(tmp_path, files):
    result = livertumor("preview", "--image", files["ct"], "--labels", files["ct"], "--out", tmp_path / "p")
    assert_refused(result, "--labels", "looks like a CT image, not a labelmap")
    assert not (tmp_path / "p").exists()


def test_preview_keeps_existing_pngs_and_a_full_disk_leaves_nothing(tmp_path, tiny_disk, files):  # noqa: F811
    out = tmp_path / "p"
    first = livertumor("preview", "--image", files["ct"], "--labels", files["labels"], "--out", out)
    assert first.returncode == 0, first.stderr
    before = _digest(out / "abdomen_axial.png")
    again = livertumor("preview", "--image", files["ct"], "--out", out)
    assert_refused(again, "already holds abdomen_axial.png", "--overwrite")
    assert _digest(out / "abdomen_axial.png") == before
    fill(tiny_disk)
    full = livertumor("preview", "--image", files["ct"], "--labels", files["labels"], "--out", tiny_disk / "p")
    assert_refused(full, f"cannot write {tiny_disk / 'p'}/abdomen_", "no space left on the device")
    assert leftovers(tiny_disk) == ["filler.bin"]


# --- flr ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("measurements", "needles"), [
    (["--height-cm", "1700", "--weight-kg", "70"], ["height 1700 cm is outside 100-250 cm", "looks like mm: 170 cm?"]),
    (["--height-cm", "17000", "--weight-kg", "70"], ["height 17000 cm is outside 100-250 cm"]),
    (["--height-cm", "170", "--weight-kg", "7000"], ["weight 7000 kg is outside 20-300 kg"]),
    (["--height-cm", "170", "--weight-kg", "70000"], ["looks like g: 70 kg?"]),
    (["--height-cm", "1.7", "--weight-kg", "70"], ["looks like m: 170 cm?"]),
])
def test_flr_refuses_implausible_height_and_weight(files, measurements, needles):
    assert_refused(livertumor("flr", "--labels", files["labels"], *measurements), "--height-cm/--weight-kg", *needles)


def test_flr_plane_beside_the_liver_is_not_assessed_but_warned(files):
    result = livertumor("flr", "--labels", files["labels"], "--plane=1000,0,0,1,0,0")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["verdict"] == "not assessed" and figures["resected_ml"] == 0.0
    assert "misses the liver" in result.stderr and figures["warnings"]
    resected = json.loads(livertumor("flr", "--labels", files["labels"], "--plane=-1000,0,0,1,0,0").stdout)
    assert resected["verdict"] == "inadequate" and "resects the whole liver" in resected["warnings"][0]


def test_flr_out_labels_never_replaces_an_input_and_a_full_disk_leaves_nothing(tmp_path, tiny_disk, files):  # noqa: F811
    before = _digest(files["labels"])
    same = livertumor("flr", "--labels", files["labels"], "--out-labels", files["labels"], "--overwrite")
    assert_refused(same, "--out-labels", "is the input")
    assert _digest(files["labels"]) == before
    filler = fill(tiny_disk)
    full = livertumor("flr", "--labels", files["labels"], "--out-labels", tiny_disk / "flr.nrrd")
    assert_refused(full, "no space left on the device")
    assert leftovers(tiny_disk) == ["filler.bin"]
    filler.unlink()
    done = livertumor("flr", "--labels", files["labels"], "--out-labels", tiny_disk / "flr.nrrd")
    assert done.returncode == 0, done.stderr  # nothing left in the way of the next run
    assert sitk.ReadImage(str(tiny_disk / "flr.nrrd")).GetSize() == phantom_labels().GetSize()


def test_flr_refuses_a_ct_as_labels(files):
    assert_refused(livertumor("flr", "--labels", files["ct"]), "--labels", "looks like a CT image")


# --- phantom, tnmstaging --------------------------------------------------------------------------------------


def test_phantom_keeps_an_earlier_phantom_unless_overwrite(tmp_path):
    args = ["phantom", "--out", tmp_path / "ph", "--size", "32", "--slices", "8", "--tumors", "0"]
    assert livertumor(*args).returncode == 0
    before = _digest(tmp_path / "ph" / "truth.nrrd")
    assert_refused(livertumor(*args, "--seed", "3"), "already holds a phantom", "--overwrite")
    assert _digest(tmp_path / "ph" / "truth.nrrd") == before
    assert livertumor(*args, "--seed", "3", "--overwrite").returncode == 0


def test_tnmstaging_predict_refuses_a_ct_as_labels(files):
    result = tnmstaging("predict", "--model", DEMO_MODEL_FILE, "--image", files["ct"], "--labels", files["ct"],
                        "--device", "cpu")
    assert_refused(result, "tnmstaging predict: error: --labels", "looks like a CT image, not a labelmap")


def test_tnmstaging_features_suggests_only_options_not_given(tmp_path):
    table = tmp_path / "stages.csv"
    table.write_text("patient_id,scan_date,stage\n")
    result = tnmstaging("features", "--cohort", tmp_path / "missing", "--table", table, "--out",
                        tmp_path / "f.csv", "--measured-only")
    line = assert_refused(result, "tnmstaging features: error:")
    assert "--measured-only" not in line and "--random-init" not in line


# --- help -----------------------------------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, name: str):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_command_documents_its_exit_codes():
    for main_parser, prog in ((livertumor_cli.build_parser(), "livertumor"), (tnmstaging_cli.build_parser(),
                                                                               "tnmstaging")):
        for name, parser in _parsers(main_parser, prog):
            if name == "livertumor serve":  # a service: its own codes (stopped, bad arguments, could not start)
                assert "exit codes: 0 stopped" in (parser.epilog or "") and "3 could not start" in parser.epilog
                continue
            assert EXIT_CODES_HELP in (parser.epilog or ""), name
    shown = livertumor("segment", "--help")
    assert shown.returncode == 0 and "130 cancelled" in shown.stdout
