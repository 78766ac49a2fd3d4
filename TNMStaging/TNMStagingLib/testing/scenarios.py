"""Self-test scenarios shared by Slicer's self-test (ctest, Reload and Test) and the headless pytest suite.

Each scenario is ``(scene, work_dir) -> None`` and raises ``AssertionError`` on failure. They use only the
scene bridge (``scene_staging``) and the compute core, so that pytest on slicer-core and Slicer run the
same code. The learned-stage scenarios run the committed demo model (random-init SAM ``vit_b`` encoder on
one slice, about half a minute on a laptop CPU) through the real background worker.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from TNMStagingLib.core import ajcc

# (diameters mm, reader findings, expected T, expected stage) - one line per AJCC 8th stage group.
RULES_TABLE = [
    ([18.0], {}, "T1a", "IA"),
    ([35.0], {}, "T1b", "IB"),
    ([35.0], {"vascular_invasion": "suspected"}, "T2", "II"),
    ([30.0, 45.0], {}, "T2", "II"),
    ([30.0, 62.0], {}, "T3", "IIIA"),
    ([30.0], {"vascular_invasion": "major"}, "T4", "IIIB"),
    ([30.0], {"n": "N1"}, "T1b", "IVA"),
    ([30.0], {"m": "M1"}, "T1b", "IVB"),
]

# Two tumors on a small grid: quick to segment from the truth and to encode.
STAGING_PHANTOM = {"seed": 7, "size_xy": 96, "slice_thickness_mm": 5.0, "n_tumors": 2}


def rules_table(scene, work_dir: Path) -> None:
    """The rules give the expected T category and stage group for one case per group."""
    for diameters_mm, findings, expected_t, expected_stage in RULES_TABLE:
        result = ajcc.stage(diameters_mm, **findings)
        assert (result.T, result.stage) == (expected_t, expected_stage), (diameters_mm, findings, result)
        assert result.explanation, "every stage comes with its explanation"


def _phantom_in_scene(scene, phantom_args: dict | None = None):
    """A phantom CT volume node and a segmentation node made from its truth labels."""
    from LiverTumorSegLib.scene import segmentations
    from LiverTumorSegLib.scene import volumes as scene_bridge
    from LiverTumorSegLib.synthetic.phantom import make_phantom

    phantom = make_phantom(**(phantom_args or STAGING_PHANTOM))
    volume_node = scene_bridge.volume_node_from_image(phantom.ct, "staging phantom", scene=scene)
    segmentation_node = segmentations.labelmap_to_segmentation(phantom.labels, volume_node, name="phantom truth",
                                                              scene=scene)
    return phantom, volume_node, segmentation_node


def rules_from_segmentation(scene, work_dir: Path) -> None:
    """Segments -> measured lesion diameters -> AJCC stage -> table: the diameters are those of the truth
    labelmap measured directly, and the reader's findings change the stage as the rules say."""
    from LiverTumorSegLib.core.measurements import measure_labelmap
    from TNMStagingLib.scene import staging as scene_staging

    phantom, volume_node, segmentation_node = _phantom_in_scene(scene)
    expected_mm = [round(lesion.longest_axial_diameter_mm, 1) for lesion in measure_labelmap(phantom.labels).lesions]
    assert len(expected_mm) == 2, f"the scenario phantom should have two lesions, measured {expected_mm}"
    for findings in ({}, {"vascular_invasion": "major"}, {"m": "M1"}, {"tumor_type": "crlm"}):
        result, diameters_mm = scene_staging.stage_segmentation(segmentation_node, volume_node, **findings)
        assert diameters_mm == expected_mm, (diameters_mm, expected_mm)
        assert result == ajcc.stage(expected_mm, **findings), findings
    table = scene_staging.update_staging_table(scene_staging.staging_rows(result, diameters_mm, None),
                                               scene=scene, segmentation_node=segmentation_node)
    values = scene_staging.staging_table_values(table)
    assert values["rule_stage"][0] == f"{result.T} {result.N} {result.M}: stage {result.stage}" == "TX NX M1a: stage IVA"
    assert values["diameters_mm"][0] == ", ".join(f"{d:g}" for d in expected_mm)
    assert "learned_stage" not in values, "no learned stage before the model ran"


def learned_stage_in_background(scene, work_dir: Path) -> None:
    """The demo staging model in the background worker: monotonic progress to 1, probabilities that sum to
    1, the model's cross-validation metrics and the DEMO ONLY mark in the table, job folder removed."""
    from TNMStagingLib.core.classifier import load_model
    from TNMStagingLib.resources import DEMO_MODEL_FILE
    from TNMStagingLib.scene import staging as scene_staging

    _, volume_node, segmentation_node = _phantom_in_scene(scene)
    run = scene_staging.StagingRun(volume_node, segmentation_node, device="cpu")
    fractions: list[float] = []
    learned = run.run_blocking(on_progress=lambda event: fractions.append(event.fraction or 0.0), timeout_s=600)
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0, f"progress {fractions}"
    assert not run.worker.work_dir.exists(), "the job folder was not removed"
    assert abs(sum(learned["probabilities"].values()) - 1.0) < 1e-5, learned["probabilities"]
    assert learned["stage"] == max(learned["probabilities"], key=learned["probabilities"].get)
    model = load_model(DEMO_MODEL_FILE)
    assert learned["demo_only"] is True and learned["cv_metrics"]["accuracy"] == model.cv["accuracy"]
    assert learned["encoder"]["used"] == model.needs_image_features()
    rules, diameters_mm = scene_staging.stage_segmentation(segmentation_node, volume_node)
    table = scene_staging.update_staging_table(scene_staging.staging_rows(rules, diameters_mm, learned), scene=scene)
    values = scene_staging.staging_table_values(table)
    assert values["learned_stage"] == (learned["stage"], scene_staging.DEMO_NOTE)
    assert f"accuracy {model.cv['accuracy']:.3f}" in values["cv_metrics"][0]
    assert {key for key in values if key.startswith("p_")} == {f"p_{stage}" for stage in model.classifier.classes_}
    assert values["rule_stage"][0].endswith(f"stage {rules.stage}"), "the rule stage stays beside the learned one"


def cancel_staging_leaves_nothing(scene, work_dir: Path) -> None:
    """Cancel while the encoder runs: RunCancelled, no new node, no job folder, no worker process left."""
    from LiverTumorSegLib.testing.scenarios import cancel_once_running
    from TNMStagingLib.scene import staging as scene_staging

    _, volume_node, segmentation_node = _phantom_in_scene(scene)
    cancel_once_running(scene_staging.StagingRun(volume_node, segmentation_node, device="cpu"), scene, "features")


def bad_staging_input_leaves_scene_unchanged(scene, work_dir: Path) -> None:
    """No liver segment, or a file that is not a staging model: a message naming the problem, scene as it was."""
    import SimpleITK as sitk

    from LiverTumorSegLib.scene import segmentations
    from LiverTumorSegLib.scene.run import RunFailed
    from TNMStagingLib.scene import staging as scene_staging

    phantom, volume_node, segmentation_node = _phantom_in_scene(scene)
    tumor_labels = sitk.Cast(phantom.labels == 2, sitk.sitkUInt8) * 2
    tumor_only = segmentations.labelmap_to_segmentation(tumor_labels, volume_node, name="tumor only",
                                                       segments={2: "liver_tumor"}, scene=scene)
    nodes_before = scene.GetNumberOfNodes()
    for attempt in (lambda: scene_staging.stage_segmentation(tumor_only, volume_node),
                    lambda: scene_staging.StagingRun(volume_node, tumor_only, device="cpu").start()):
        try:
            attempt()
        except ValueError as error:
            assert "'Liver' segment" in str(error), str(error)
        else:
            raise AssertionError("a segmentation without a liver was accepted")
    not_a_model = Path(work_dir) / "not_a_model.tnm"
    not_a_model.write_text("this is not a model")
    run = scene_staging.StagingRun(volume_node, segmentation_node, model_path=not_a_model, device="cpu")
    try:
        run.run_blocking(timeout_s=120)
    except RunFailed as error:
        assert str(not_a_model) in str(error) and "not a TNMStaging model" in str(error), str(error)
    else:
        raise AssertionError("a file that is not a staging model was accepted")
    assert not run.worker.work_dir.exists(), "temporary files were left behind"
    assert scene.GetNumberOfNodes() == nodes_before, "a failed staging changed the scene"


SCENARIOS: dict[str, Callable[[object, Path], None]] = {
    "rules_table": rules_table,
    "rules_from_segmentation": rules_from_segmentation,
    "learned_stage_in_background": learned_stage_in_background,
    "cancel_staging_leaves_nothing": cancel_staging_leaves_nothing,
    "bad_staging_input_leaves_scene_unchanged": bad_staging_input_leaves_scene_unchanged,
}


def run(name: str, scene, work_dir: Path) -> None:
    """Run one scenario by name."""
    SCENARIOS[name](scene, Path(work_dir))
