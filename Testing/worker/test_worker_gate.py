"""The worker process runs the CT plausibility gate itself (the Slicer module and scripts reach it through job
files): a labelmap as the CT is an error record and exit 2; ``force`` lets a user insist."""

from __future__ import annotations

import json
import subprocess
import sys

import SimpleITK as sitk
from hostile_inputs import phantom_labels

from LiverTumorSegLib.testing.phantom_scenarios import untrained_test_models


def _run(tmp_path, **extra) -> subprocess.CompletedProcess:
    sitk.WriteImage(phantom_labels(), str(tmp_path / "labels.nrrd"))
    job = {"input": {"image": str(tmp_path / "labels.nrrd")}, "output_dir": str(tmp_path / "out"),
           "liver_model": "untrained-liver", "tumor_model": None, "device": "cpu",
           "manifest": str(untrained_test_models(tmp_path, spacing_mm=6.0)), **extra}
    (tmp_path / "job.json").write_text(json.dumps(job))
    return subprocess.run([sys.executable, "-m", "LiverTumorSegLib.worker", str(tmp_path / "job.json")],
                          capture_output=True, text=True, encoding="utf-8", timeout=300)


def test_the_worker_refuses_a_labelmap_as_the_ct(tmp_path):
    result = _run(tmp_path)
    assert result.returncode == 2, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["stage"] == "error" and "only 3 distinct values" in last["message"] and "--force" in last["message"]
    assert not (tmp_path / "out").exists()


def test_force_runs_the_models_on_it(tmp_path):
    result = _run(tmp_path, force=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["labels.nrrd", "results.json",
                                                                     "segmentation.seg.nrrd"]
