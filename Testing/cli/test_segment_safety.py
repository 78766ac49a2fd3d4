"""``livertumor segment`` as users call it, on hostile inputs: never a silent wrong answer, never a lost file.

Every refusal is exit code 2 with one line naming the input and the problem, before any model runs, and
leaves no output folder behind. The models are random tiny networks on a coarse grid (seconds per run).
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
from hostile_inputs import (  # noqa: F401 - tiny_disk is a fixture
    LIVERTUMOR,
    assert_refused,
    fill,
    leftovers,
    livertumor,
    phantom_ct,
    phantom_labels,
    remove_rescale_tags,
    require_permissions_bind,
    set_rescale_slope,
    tiny_disk,
    write_dicom_series,
)

from LiverTumorSegLib.testing.phantom_scenarios import untrained_test_models

OUTPUTS = ["labels.nrrd", "results.json", "segmentation.seg.nrrd"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """--manifest and model options of two random tiny networks on a 6 mm grid."""
    manifest = untrained_test_models(tmp_path_factory.mktemp("models"), spacing_mm=6.0)
    return ["--manifest", manifest, "--liver-model", "untrained-liver", "--tumor-model", "untrained-tumor",
            "--device", "cpu"]


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ct") / "ct.nrrd"
    sitk.WriteImage(phantom_ct(), str(path))
    return path


def _image(tmp_path, array: np.ndarray, name: str = "input.nrrd"):
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(phantom_ct()) if array.shape == sitk.GetArrayViewFromImage(phantom_ct()).shape else None
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def test_segment_publishes_its_three_outputs(tmp_path, models, ct_file):
    result = livertumor("segment", "--image", ct_file, "--out", tmp_path / "out", *models)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["liver_volume_ml"] >= 0 and summary["warnings"] == []
    assert leftovers(tmp_path / "out") == OUTPUTS
    again = livertumor("segment", "--image", ct_file, "--out", tmp_path / "out", *models)
    assert_refused(again, "already holds labels.nrrd", "--overwrite")


def _hu() -> np.ndarray:
    return sitk.GetArrayFromImage(phantom_ct())


def _with(index, value: float) -> np.ndarray:
    hu = _hu().astype(np.float32)
    hu[index] = value
    return hu


@pytest.mark.parametrize(("case", "array", "needles"), [
    ("all-air image", lambda: np.random.default_rng(0).normal(-1000, 12, _hu().shape).astype(np.float32),
     ["nearly constant", "--force"]),
    ("labelmap passed as the CT", lambda: sitk.GetArrayFromImage(phantom_labels()),
     ["only 3 distinct values", "not a segmentation"]),
    ("one inf voxel", lambda: _with((20, 30, 30), np.inf), ["1 infinite voxel value(s)", "z = 20"]),
    ("NaN slices", lambda: _with(slice(10, 13), np.nan), ["12288 NaN", "z = 10, 11, 12"]),
    ("values +1024 (no intercept)", lambda: _hu() + 1024, ["no air near -1000 HU"]),
])
def test_an_implausible_ct_is_refused_before_the_models(tmp_path, models, case, array, needles):
    result = livertumor("segment", "--image", _image(tmp_path, array()), "--out", tmp_path / "out", *models)
    line = assert_refused(result, "livertumor segment: input image", *needles)
    assert "loading models" not in result.stderr, case
    assert not (tmp_path / "out").exists(), line


@pytest.mark.parametrize(("case", "edit", "needles"), [
    ("RescaleSlope 0", set_rescale_slope("0"), ["RescaleSlope is 0 in 47 of 47 files", "would read -1024 HU"]),
    ("Rescale tags missing", remove_rescale_tags, ["no air near -1000 HU", "Rescale Slope/Intercept missing in 47 of 47"]),
    ("RescaleSlope 1000", set_rescale_slope("1000"), ["outside -1100..3100 HU", "RescaleSlope 1000"]),
])
def test_dicom_rescale_faults_are_named_and_refused(tmp_path, models, case, edit, needles):
    series = write_dicom_series(phantom_ct(), tmp_path / "dicom", edit)
    result = livertumor("segment", "--dicom", series, "--out", tmp_path / "out", *models)
    assert_refused(result, *needles)
    assert not (tmp_path / "out").exists(), case


def test_missing_slices_advise_an_option_segment_has(tmp_path, models):
    series = write_dicom_series(phantom_ct(), tmp_path / "dicom")
    (series / "IM0020.dcm").unlink()
    result = livertumor("segment", "--dicom", series, "--out", tmp_path / "out", *models)
    assert_refused(result, "1 slice(s) missing", "--resample-nonuniform")
    resampled = livertumor("segment", "--dicom", series, "--out", tmp_path / "out", "--resample-nonuniform",
                           *models[:-6], "--liver-model", "no-such-model")
    assert_refused(resampled, "unknown model 'no-such-model'", code=3)  # loaded and checked: the option works
    assert "resampled" in resampled.stderr


def test_out_problems_are_refused_before_the_run(tmp_path, models, ct_file):
    a_file = tmp_path / "a_file"
    a_file.write_text("the user's")
    assert_refused(livertumor("segment", "--image", ct_file, "--out", a_file, *models), "is a file, not a folder")
    assert a_file.read_text() == "the user's"
    series = write_dicom_series(phantom_ct(), tmp_path / "dicom")
    result = livertumor("segment", "--dicom", series, "--out", series / "out", *models)
    assert_refused(result, "inside the input folder")
    assert not (series / "out").exists()
    assert_refused(livertumor("segment", "--image", ct_file, "--out", tmp_path / "o", *models[:-1], "gpu9"),
                   "unknown device 'gpu9'")


def test_an_unwritable_out_is_refused_before_the_run(tmp_path, models, ct_file):
    require_permissions_bind(tmp_path)
    locked = tmp_path / "read_only"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = livertumor("segment", "--image", ct_file, "--out", locked / "out", *models, unprivileged=True)
    finally:
        locked.chmod(0o755)
    assert_refused(result, "cannot write into", "permission denied")
    assert "reading the CT" not in result.stderr and leftovers(locked) == []


def test_a_full_disk_is_refused_before_the_run(tiny_disk, models, ct_file):  # noqa: F811
    fill(tiny_disk, leave_bytes=64 * 1024)
    result = livertumor("segment", "--image", ct_file, "--out", tiny_disk / "out", *models)
    assert_refused(result, "not enough free space", "MB needed")
    assert "loading models" not in result.stderr
    assert leftovers(tiny_disk) == ["filler.bin"]


def test_two_jobs_into_one_out_cannot_both_win(tmp_path, models, ct_file):
    second_ct = tmp_path / "second.nrrd"
    sitk.WriteImage(sitk.Flip(phantom_ct(), [True, False, False]), str(second_ct))
    out = tmp_path / "out"
    jobs = [subprocess.Popen([*LIVERTUMOR, "segment", "--image", str(ct), "--out", str(out), *map(str, models)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for ct in (ct_file, second_ct)]
    ends = [job.communicate(timeout=300) for job in jobs]
    codes = [job.returncode for job in jobs]
    assert sorted(codes) == [0, 2], ends
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    last = ends[loser][1].strip().splitlines()[-1]
    assert "in use by another run" in last or "already holds" in last, last
    results = json.loads((out / "results.json").read_text())
    assert results["input"]["image"] == str((ct_file, second_ct)[winner])  # the winner's outputs, all three
    assert leftovers(out) == OUTPUTS


def test_sigterm_cancels_with_one_line_and_leaves_nothing(tmp_path, ct_file):
    fine = untrained_test_models(tmp_path, spacing_mm=1.0)  # a long run on a fine grid
    out = tmp_path / "out"
    job = subprocess.Popen([*LIVERTUMOR, "segment", "--image", str(ct_file), "--out", str(out), "--manifest",
                            str(fine), "--liver-model", "untrained-liver", "--tumor-model", "untrained-tumor",
                            "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in job.stderr:
            lines.append(line.rstrip("\n"))
            if "% liver]" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(120), lines
    time.sleep(0.5)
    job.send_signal(signal.SIGTERM)
    assert job.wait(60) == 130
    reader.join(10)
    assert lines[-1] == "livertumor segment: cancelled", lines
    assert not any("Traceback" in line for line in lines) and job.stdout.read() == ""
    assert not out.exists()


def test_a_single_slice_ct_warns_that_volumes_are_meaningless(tmp_path, models):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(phantom_ct()[:, :, 20:21], str(path))
    result = livertumor("segment", "--image", path, "--out", tmp_path / "out", *models)
    assert result.returncode == 0, result.stderr
    assert "livertumor segment: warning: input image" in result.stderr and "single slice" in result.stderr
    assert any("single slice" in note for note in json.loads(result.stdout)["warnings"])
