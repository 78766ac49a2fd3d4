"""Safe outputs (io.atomic): complete or absent, never clobbered, checked before the work, one run per folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import SimpleITK as sitk
from hostile_inputs import fill, leftovers, phantom_ct, phantom_labels, tiny_disk  # noqa: F401 - tiny_disk is a fixture

from LiverTumorSegLib.io.atomic import (
    OutputError,
    OutputExistsError,
    OutputLockedError,
    atomic_write,
    check_output_file,
    check_output_folder,
    locked_output_folder,
    staged_folder,
    write_image,
    write_text,
)


def test_a_written_file_appears_complete_and_missing_folders_are_made(tmp_path):
    path = write_image(phantom_ct(), tmp_path / "new" / "ct.nrrd")
    assert sitk.GetArrayViewFromImage(sitk.ReadImage(str(path))).sum() == sitk.GetArrayViewFromImage(
        phantom_ct()).sum()
    assert leftovers(tmp_path) == ["new", "new/ct.nrrd"]


def test_an_existing_file_is_kept_unless_overwrite(tmp_path):
    path = write_text(tmp_path / "a.txt", "the user's")
    with pytest.raises(OutputExistsError, match="a.txt exists"):
        write_text(path, "ours")
    assert path.read_text() == "the user's"
    write_text(path, "ours", overwrite=True)
    assert path.read_text() == "ours" and leftovers(tmp_path) == ["a.txt"]


def test_a_file_created_while_writing_is_not_replaced(tmp_path):
    path = tmp_path / "race.txt"

    def write(temporary):
        temporary.write_text("ours")
        path.write_text("another job's")  # appears after the first check, before the rename

    with pytest.raises(OutputExistsError):
        atomic_write(path, write)
    assert path.read_text() == "another job's" and leftovers(tmp_path) == ["race.txt"]


@pytest.mark.parametrize("failure", [RuntimeError("writer failed"), KeyboardInterrupt()])
def test_a_failed_or_cancelled_write_leaves_nothing(tmp_path, failure):
    def write(temporary):
        temporary.write_bytes(b"half a file")
        raise failure

    with pytest.raises((OutputError, KeyboardInterrupt)):
        atomic_write(tmp_path / "deep" / "out.nrrd", write)
    assert leftovers(tmp_path) == []


def test_a_full_disk_is_named_and_leaves_nothing(tiny_disk):  # noqa: F811
    with pytest.raises(OutputError, match="no space left on the device"):
        write_image(phantom_ct(), tiny_disk / "ct.nrrd", compress=False)  # 385 kB raw on a 256 kB disk
    assert leftovers(tiny_disk) == []
    fill(tiny_disk)
    with pytest.raises(OutputError, match="no space left on the device"):
        write_text(tiny_disk / "results.json", "{}" * 10000)
    # SimpleITK's NRRD writer returns normally on a full disk, leaving an empty file: read back, refused
    with pytest.raises(OutputError, match="no space left on the device"):
        write_image(phantom_labels(), tiny_disk / "labels.nrrd")
    assert leftovers(tiny_disk) == ["filler.bin"]


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with staged_folder(out) as staging:
        (staging / "a.txt").write_text("a")
        (staging / "b.txt").write_text("b")
    assert leftovers(out) == ["a.txt", "b.txt"]
    with pytest.raises(OutputExistsError, match="already holds a.txt"), staged_folder(out) as staging:
        (staging / "a.txt").write_text("new a")
        (staging / "c.txt").write_text("c")
    assert (out / "a.txt").read_text() == "a" and leftovers(out) == ["a.txt", "b.txt"]
    with pytest.raises(OutputError, match="cannot write into"), staged_folder(tmp_path / "other") as staging:
        (staging / "a.txt").write_text("a")
        raise OSError(28, "No space left on device")
    assert not (tmp_path / "other").exists()


def test_outputs_are_checked_before_the_work(tmp_path):
    series = tmp_path / "dicom"
    series.mkdir()
    (series / "IM0001.dcm").write_bytes(b"a slice")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="is inside the input folder"):
        check_output_file(series / "IM0001.dcm", inputs=[series], overwrite=True)
    with pytest.raises(OutputError, match="is inside the input folder"):
        check_output_folder(series / "out", inputs=[series])
    with pytest.raises(OutputError, match="is the input"):
        check_output_file(a_file, inputs=[a_file], overwrite=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(a_file)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(a_file / "sub")
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(series)
    with pytest.raises(OutputError, match="not enough free space"):
        check_output_folder(tmp_path / "new", needed_bytes=10**18)
    check_output_folder(tmp_path / "new" / "deeper", inputs=[series])
    assert leftovers(tmp_path) == ["dicom", "dicom/IM0001.dcm", "file"]  # the checks write nothing


def test_one_run_at_a_time_per_output_folder(tmp_path):
    out = tmp_path / "out"
    with locked_output_folder(out):
        with pytest.raises(OutputLockedError, match="in use by another run"), locked_output_folder(out):
            pass
        other = subprocess.run([sys.executable, "-c", "from LiverTumorSegLib.io.atomic import locked_output_folder\n"
                                f"with locked_output_folder({str(out)!r}): pass"],
                               capture_output=True, text=True, env=os.environ, timeout=60)
        assert other.returncode != 0 and "in use by another run" in other.stderr
    assert not out.exists()  # created for the run, removed again when nothing was written
    with locked_output_folder(out):
        pass  # released
