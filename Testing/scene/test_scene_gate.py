"""The Slicer module's segmentation run refuses an implausible volume before a worker starts (fail fast)."""

from __future__ import annotations

import pytest
from hostile_inputs import phantom_labels

from LiverTumorSegLib.core.plausibility import ImplausibleInputError
from LiverTumorSegLib.scene import volumes as scene
from LiverTumorSegLib.scene.run import SegmentationRun


def test_a_labelmap_volume_is_refused_before_the_worker_starts(mrml_scene):
    node = scene.volume_node_from_image(phantom_labels(), "labels loaded as a volume", scene=mrml_scene)
    run = SegmentationRun(node, liver_model="any-liver", tumor_model=None, device="cpu")
    with pytest.raises(ImplausibleInputError, match="volume 'labels loaded as a volume': an integer image with only "
                                                    "3 distinct values"):
        run.start()
    assert not run.worker.work_dir.exists() and run.worker._process is None  # no job folder, no process


def test_the_worker_fetches_missing_models_only_when_the_user_agreed(mrml_scene):
    """Run asks before a download (``LiverTumorSegLogic.missingModels`` / ``downloadConsentText``); only then does the
    job the worker reads allow it."""
    from hostile_inputs import phantom_ct

    from LiverTumorSegLib.worker.job import SegmentationJob

    node = scene.volume_node_from_image(phantom_ct(), "ct", scene=mrml_scene)
    for agreed in (False, True):
        run = SegmentationRun(node, liver_model="demo-liver-segresnet", tumor_model="kuleuven-lesion-ct",
                              device="cpu", allow_download=agreed)
        job = SegmentationJob(image="input.nrrd", output_dir="out", **run.job_options)
        assert SegmentationJob.from_json(job.to_json()).allow_download is agreed
        run.worker.cleanup()
