"""The background worker as a real subprocess: progress, outputs, cancel, bad input, model errors."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LiverTumorSegLib.io import seg_nrrd
from LiverTumorSegLib.worker.process import WorkerProcess, process_alive

SMALL_NET = {"spatial_dims": 3, "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1], "out_channels": 2}


def write_ct(path: Path, size=(48, 40, 24), spacing=(1.5, 1.5, 3.0)) -> sitk.Image:
    """A small CT in HU with an oblique direction: air, a body and a bright 'liver' blob, with scanner noise
    (a CT has many distinct values: the plausibility gate refuses a three-valued 'CT' as a labelmap)."""
    z, y, x = np.mgrid[0:size[2], 0:size[1], 0:size[0]]
    body = ((x - size[0] / 2) / 20) ** 2 + ((y - size[1] / 2) / 16) ** 2 <= 1
    liver = ((x - 18) / 9) ** 2 + ((y - 20) / 8) ** 2 + ((z - 12) / 8) ** 2 <= 1
    noise = np.random.default_rng(0).normal(0.0, 10.0, body.shape)
    hu = np.where(body, 40, -1000) + 70 * liver + noise
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((-40.0, 12.5, -300.0))
    angle = np.deg2rad(20)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    sitk.WriteImage(image, str(path))
    return image


def model_entry(model_id: str, task: str, file_name: str, roi, in_channels: int, sha256: str) -> dict:
    return {
        "id": model_id, "title": f"test {task}", "task": task, "labels": {task: 1},
        "network": {"class": "monai.networks.nets.SegResNet", "args": dict(SMALL_NET, in_channels=in_channels)},
        "input_channels": ["ct"] if task == "liver" else ["ct", "liver_mask"], "orientation": "RAS",
        "spacing_mm": [3.0, 3.0, 3.0] if task == "liver" else [1.5, 1.5, 3.0],
        "intensity": {"type": "clip_scale", "hu_min": -100, "hu_max": 200, "out_min": 0.0, "out_max": 1.0},
        "roi_size": list(roi), "sw_overlap": 0.25, "file_name": file_name, "local_path": file_name,
        "sha256": sha256, "checkpoint_format": "state_dict", "license": "Apache-2.0",
        "training_data": "none (random initialisation for tests)", "demo_only": True,
    }


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """A manifest with random-init liver and tumor SegResNets saved beside it."""
    from monai.networks.nets import SegResNet

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    entries = []
    for model_id, task, roi, channels in (("t-liver", "liver", (16, 16, 16), 1), ("t-tumor", "tumor", (16, 16, 8), 2)):
        path = folder / f"{model_id}.pt"
        torch.save({"state_dict": SegResNet(**SMALL_NET, in_channels=channels).state_dict()}, path)
        entries.append(model_entry(model_id, task, path.name, roi, channels,
                                   hashlib.sha256(path.read_bytes()).hexdigest()))
    (folder / "models.json").write_text(json.dumps({"models": entries}))
    return folder / "models.json"


def job_file(tmp_path: Path, manifest: Path, image: Path, **extra) -> Path:
    job = {"input": {"image": str(image)}, "output_dir": str(tmp_path / "out"), "liver_model": "t-liver",
           "tumor_model": "t-tumor", "device": "cpu", "manifest": str(manifest), **extra}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


def run_worker(job: Path, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "LiverTumorSegLib.worker", str(job)], capture_output=True,
                          text=True, encoding="utf-8", timeout=timeout)


def progress_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_worker_writes_outputs_on_the_input_grid_with_monotonic_progress(tmp_path, manifest):
    ct = write_ct(tmp_path / "ct.nrrd")
    result = run_worker(job_file(tmp_path, manifest, tmp_path / "ct.nrrd"))
    assert result.returncode == 0, result.stderr
    lines = progress_lines(result.stdout)
    fractions = [line["fraction"] for line in lines]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert {"load", "models", "liver", "write", "done"} <= {line["stage"] for line in lines}
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["labels.nrrd", "results.json", "segmentation.seg.nrrd"]
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    assert labels.GetSize() == ct.GetSize()
    np.testing.assert_allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(labels.GetSpacing(), ct.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayViewFromImage(labels))) <= {0, 1, 2}
    seg_image, segments = seg_nrrd.read_seg_nrrd(out / "segmentation.seg.nrrd")
    assert [s.name for s in segments] == ["Liver", "Liver tumor"]
    assert np.array_equal(sitk.GetArrayViewFromImage(seg_image), sitk.GetArrayViewFromImage(labels))
    results = json.loads((out / "results.json").read_text())
    assert results["models"]["liver"]["id"] == "t-liver" and results["models"]["liver"]["demo_only"] is True
    assert results["device"] == "cpu" and results["grid"]["size"] == list(ct.GetSize())
    assert {"load_s", "liver_inference_s", "total_s"} <= set(results["timings_s"])
    assert results["timings_s"]["total_s"] >= results["timings_s"]["liver_inference_s"] > 0


def test_worker_refuses_to_overwrite_existing_outputs(tmp_path, manifest):
    write_ct(tmp_path / "ct.nrrd")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "labels.nrrd").write_text("the user's file")
    result = run_worker(job_file(tmp_path, manifest, tmp_path / "ct.nrrd"))
    assert result.returncode == 2
    assert "already holds labels.nrrd" in result.stderr
    assert (tmp_path / "out" / "labels.nrrd").read_text() == "the user's file"


@pytest.mark.parametrize("case, expected_code, message", [
    ("missing_image", 2, "does not exist"),
    ("not_an_image", 2, "cannot read"),
    ("unknown_model", 3, "unknown model"),
    ("checksum", 3, "t-liver"),
])
def test_worker_fails_with_a_one_line_error(tmp_path, manifest, case, expected_code, message):
    image = tmp_path / "ct.nrrd"
    extra = {}
    if case == "missing_image":
        image = tmp_path / "nowhere.nrrd"
    elif case == "not_an_image":
        image.write_text("not an image")
    else:
        write_ct(image)
    if case == "unknown_model":
        extra["liver_model"] = "no-such-model"
    if case == "checksum":
        corrupt = tmp_path / "models"
        corrupt.mkdir()
        document = json.loads(manifest.read_text())
        for entry in document["models"]:
            (corrupt / entry["file_name"]).write_bytes((manifest.parent / entry["file_name"]).read_bytes()[:-10])
        (corrupt / "models.json").write_text(json.dumps(document))
        manifest = corrupt / "models.json"
    result = run_worker(job_file(tmp_path, manifest, image, **extra))
    assert result.returncode == expected_code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert progress_lines(result.stdout)[-1]["stage"] == "error"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _worker_in_liver_stage(tmp_path, manifest) -> WorkerProcess:
    """A worker on a CT large enough to be cancelled, started and polled until it reports the liver stage."""
    write_ct(tmp_path / "ct.nrrd", size=(160, 160, 96), spacing=(1.0, 1.0, 1.5))
    process = WorkerProcess({"input": {"image": str(tmp_path / "ct.nrrd")}, "liver_model": "t-liver",
                             "tumor_model": "t-tumor", "device": "cpu", "manifest": str(manifest)},
                            work_dir=tmp_path / "job")
    process.start()
    deadline = time.monotonic() + 120
    seen_liver = False
    while time.monotonic() < deadline and not seen_liver:
        seen_liver = any(event.stage == "liver" for event in process.poll())
        time.sleep(0.05)
    assert seen_liver, "the worker never reached the liver stage"
    return process


def test_cancel_stops_the_worker_and_leaves_no_output(tmp_path, manifest):
    process = _worker_in_liver_stage(tmp_path, manifest)
    worker_pid = int((tmp_path / "job" / "worker.pid").read_text())
    started = time.monotonic()
    process.cancel(grace_s=10)
    assert time.monotonic() - started < 0.5, "cancel must return at once (the GUI thread calls it)"
    outcome = process.outcome()
    assert time.monotonic() - started < 10
    assert outcome.cancelled and outcome.returncode == 130, outcome
    assert not any(process.output_dir.glob("*")) if process.output_dir.exists() else True
    assert process.wait_until_stopped(15) and not process_alive(worker_pid)
    process.cleanup()
    assert not (tmp_path / "job").exists()


def test_the_cancel_file_alone_stops_the_worker(tmp_path, manifest, monkeypatch):
    """How a cancel reaches a console worker on Windows, where no signal does: the worker sees the file."""
    from LiverTumorSegLib.worker import process as worker_process

    monkeypatch.setattr(worker_process, "_signal", lambda pid, signum: None)
    process = _worker_in_liver_stage(tmp_path, manifest)
    process.cancel(grace_s=30)
    outcome = process.outcome()
    assert outcome.returncode == 130 and "cancelled" in outcome.error, outcome


def test_sigterm_directly_to_the_worker_exits_130(tmp_path, manifest):
    write_ct(tmp_path / "ct.nrrd", size=(160, 160, 96), spacing=(1.0, 1.0, 1.5))
    job = job_file(tmp_path, manifest, tmp_path / "ct.nrrd")
    worker = subprocess.Popen([sys.executable, "-m", "LiverTumorSegLib.worker", str(job)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, encoding="utf-8")
    for line in worker.stdout:
        if '"stage": "liver"' in line:
            break
    worker.send_signal(signal.SIGTERM)
    stdout, stderr = worker.communicate(timeout=15)
    assert worker.returncode == 130, stderr
    assert "cancelled" in stderr
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())
