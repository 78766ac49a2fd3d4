"""The staging worker as a real subprocess: result file, progress, and one-line errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from test_staging_classifier import _case, _feature_table

from LiverTumorSegLib.worker.process import WorkerProcess
from TNMStagingLib.core import classifier, features
from TNMStagingLib.resources import MODULE_FOLDER
from TNMStagingLib.worker.staging import EXIT_BAD_INPUT, EXIT_MODEL

TINY = features.EncoderSpec("tiny", 128, 32, 2, 2, (1,), 16, window_size=4)


@pytest.fixture(scope="module")
def measured_model(tmp_path_factory) -> Path:
    """A small measured-features-only staging model (no encoder: the worker runs in about a second)."""
    folder = tmp_path_factory.mktemp("staging_model")
    cohort_table = _feature_table(folder, features.FeatureConfig(encoder=TINY, image_features=False))
    from TNMStagingLib.cli import main

    model_path = folder / "model.tnm"
    assert main(["train", "--features", str(cohort_table), "--out", str(model_path), "--n-features", "5",
                 "--folds", "4"]) == 0
    return model_path


def _write_case(folder: Path, diameter_vox: int = 18) -> tuple[Path, Path]:
    ct, labels = _case(diameter_vox=diameter_vox, seed=99)
    sitk.WriteImage(ct, str(folder / "ct.nrrd"))
    sitk.WriteImage(labels, str(folder / "labels.nrrd"))
    return folder / "ct.nrrd", folder / "labels.nrrd"


def _run_worker(job: dict, folder: Path) -> subprocess.CompletedProcess:
    job_file = folder / "job.json"
    job_file.write_text(json.dumps(job))
    env_path = f"{MODULE_FOLDER}:{MODULE_FOLDER.parent / 'LiverTumorSeg'}"
    return subprocess.run([sys.executable, "-m", "TNMStagingLib.worker", str(job_file)], capture_output=True,
                          text=True, encoding="utf-8", env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
                          timeout=300)


def test_worker_writes_the_learned_stage_with_monotonic_progress(measured_model, tmp_path):
    image, labels = _write_case(tmp_path)
    worker = WorkerProcess({"image": str(image), "labels": str(labels), "model": str(measured_model),
                            "device": "cpu"}, module="TNMStagingLib.worker", python_path=[MODULE_FOLDER],
                           work_dir=tmp_path / "job")
    worker.start()
    fractions = []
    outcome = worker.wait(timeout_s=300, on_progress=lambda event: fractions.append(event.fraction))
    assert outcome.succeeded, outcome.error or outcome.log
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    result = json.loads((worker.output_dir / "staging.json").read_text())
    model = classifier.load_model(measured_model)
    assert result["stage"] == "IIIA" and set(result["probabilities"]) == set(model.classifier.classes_)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert result["cv_metrics"]["accuracy"] == model.cv["accuracy"] and result["demo_only"] is False
    assert result["encoder"]["used"] is False and result["model"] == str(measured_model)
    assert result["measured"]["tumor_count"] == 1
    assert [p.name for p in worker.output_dir.iterdir()] == ["staging.json"], "temporary files left in the output"


@pytest.mark.parametrize("case, expected_code, message", [
    ("missing image", EXIT_BAD_INPUT, "does not exist"),
    ("labels on another grid", EXIT_BAD_INPUT, "is not on the grid of"),
    ("no liver", EXIT_BAD_INPUT, "holds no liver"),
    ("not a model", EXIT_MODEL, "is not a TNMStaging model artifact"),
])
def test_worker_fails_with_a_one_line_error(measured_model, tmp_path, case, expected_code, message):
    image, labels = _write_case(tmp_path)
    job = {"image": str(image), "labels": str(labels), "model": str(measured_model), "device": "cpu",
           "output_dir": str(tmp_path / "out")}
    if case == "missing image":
        job["image"] = str(tmp_path / "nowhere.nrrd")
    elif case == "labels on another grid":
        moved = sitk.ReadImage(str(labels))
        moved.SetOrigin((10.0, 0.0, 0.0))
        sitk.WriteImage(moved, str(labels))
    elif case == "no liver":
        sitk.WriteImage(sitk.ReadImage(str(labels)) * 0, str(labels))
    else:
        job["model"] = str(image)
    completed = _run_worker(job, tmp_path)
    assert completed.returncode == expected_code, completed.stderr
    last = json.loads(completed.stdout.strip().splitlines()[-1])
    assert last["stage"] == "error" and message in last["message"], last
    assert len(completed.stderr.strip().splitlines()) == 1 and message in completed.stderr
    assert not (tmp_path / "out" / "staging.json").exists()
