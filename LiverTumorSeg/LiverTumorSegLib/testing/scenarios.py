"""Self-test scenarios shared by Slicer's self-test (ctest, Reload and Test) and the headless pytest suite.

Every scenario works on any CT: it gets a ``ScenarioContext`` whose ``ct()`` adds a CT volume node to the scene
(SampleData's CTLiver inside Slicer, a synthetic phantom in the headless suite) and paints its own liver and
tumors on it when it needs a truth (``testing.cases``). Scenarios use only the scene bridge and the compute core
and raise ``AssertionError`` on failure. The phantom/truth scenarios (DICOM loading, accuracy of the demo models)
are in ``testing/phantom_scenarios.py``, which Slicer does not get.

Scenarios marked ``needs_models`` run the cascade in the background worker, which needs torch and MONAI; inside
Slicer they are skipped, with a message, only when torch is not installed (``plan``); the headless suite runs them
all.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LiverTumorSegLib.core.hu_windows import load_presets
from LiverTumorSegLib.core.measurements import measure_labelmap
from LiverTumorSegLib.scene import segmentations
from LiverTumorSegLib.scene import volumes as scene_bridge
from LiverTumorSegLib.testing import flr_scenarios
from LiverTumorSegLib.testing.cases import painted_case

DEMO_LIVER_MODEL, DEMO_TUMOR_MODEL = "demo-liver-segresnet", "demo-tumor-segresnet"


@dataclass
class ScenarioContext:
    """What a scenario gets: the scene, a scratch folder and ``load_ct(scene) -> volume node`` (any CT in HU)."""

    scene: object
    work_dir: Path
    load_ct: Callable[[object], object]

    def ct(self):
        """A CT volume node in the scene (a new one on every call)."""
        return self.load_ct(self.scene)


@dataclass(frozen=True)
class Scenario:
    """A scenario function and whether it runs the models in the background worker (torch and MONAI)."""

    function: Callable[[ScenarioContext], None]
    needs_models: bool = False


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="LiverTumorSeg-selftest-") as folder:
        yield Path(folder)


def torch_available() -> bool:
    """Whether torch can be imported here (found, not imported: the Slicer process never imports it)."""
    return importlib.util.find_spec("torch") is not None


def plan(scenarios: dict[str, Scenario], *, torch_installed: bool) -> tuple[list[str], list[str], str]:
    """(names to run, names skipped, message): without torch the scenarios that need the models are skipped and
    the message says so and how to install it; with torch everything runs."""
    if torch_installed:
        return list(scenarios), [], ""
    skipped = [name for name, scenario in scenarios.items() if scenario.needs_models]
    message = (f"PyTorch is not installed, so {len(skipped)} scenario(s) that run the segmentation models were "
               f"skipped ({', '.join(skipped)}). Install PyTorch with the PyTorch extension (PyTorch Utils module) "
               "to run them.") if skipped else ""
    return [name for name in scenarios if name not in skipped], skipped, message


# --- any CT, no models ------------------------------------------------------------------------------------


def window_presets(context: ScenarioContext) -> None:
    """Every HU preset sets the window/level of the CT's display node and turns auto W/L off."""
    from LiverTumorSegLib.scene import input as scene_input

    volume_node = context.ct()
    for preset in load_presets().values():
        scene_input.apply_window_preset(volume_node, preset.id)
        display = volume_node.GetDisplayNode()
        assert not display.GetAutoWindowLevel(), preset.id
        assert abs(display.GetWindow() - preset.width_hu) < 1e-6, preset.id
        assert abs(display.GetLevel() - preset.level_hu) < 1e-6, preset.id


def segment_roles_everywhere(context: ScenarioContext) -> None:
    """A hand-added "Tumor 2" counts as a tumor in the measurements table, the FLR and the HU-range region."""
    from LiverTumorSegLib.core.flr import FLRCalculator
    from LiverTumorSegLib.scene import flr as scene_flr
    from LiverTumorSegLib.scene import results
    from LiverTumorSegLib.scene.roles import find_segment_roles
    from LiverTumorSegLib.scene.tables import read_rows

    case = painted_case(context.scene, context.ct())
    roles = find_segment_roles(case.segmentation)
    assert roles.tumor_ids == ("liver_tumor", case.hand_tumor_id), roles
    truth = measure_labelmap(case.labels())
    assert len(truth.lesions) == 2
    rows = {row["Structure"]: row for row in read_rows(results.update_measurements_table(case.segmentation,
                                                                                         case.volume))}
    assert abs(rows["Tumor (total)"]["Volume (mL)"] - truth.tumor_volume_ml) < 1e-6, rows["Tumor (total)"]
    assert rows["Tumor (total)"]["Lesion count"] == 2
    flr = scene_flr.compute_flr_in_scene(case.segmentation, case.volume)
    assert flr.result.figures == FLRCalculator.from_labelmap(case.labels()).compute().figures
    segment_id = results.add_hu_range_segment(case.segmentation, case.volume, -5000, 5000)
    region = sitk.GetArrayFromImage(segmentations.segment_mask(case.segmentation, segment_id, case.volume))
    assert np.array_equal(region != 0, case.liver), "the HU range is taken in the whole liver, every tumor included"
    assert find_segment_roles(case.segmentation) == roles, "derived segments became inputs"


def results_in_the_ct_study_under_its_transform(context: ScenarioContext) -> None:
    """A worker result on a CT in a study and under a transform: the segmentation lies in the study, under the same
    transform, voxel for voxel on the CT; DICOM SEG export needs only the CT's DICOM UIDs."""
    import slicer
    import vtk

    from LiverTumorSegLib.core.terminology import segment_specs
    from LiverTumorSegLib.io.seg_nrrd import write_seg_nrrd
    from LiverTumorSegLib.scene import dicom_database, results

    volume = context.ct()
    case = painted_case(context.scene, volume, hand_tumor=False)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(context.scene)
    volume_item = hierarchy.GetItemByDataNode(volume) or hierarchy.CreateItem(hierarchy.GetSceneItemID(), volume)
    study = hierarchy.GetItemParent(volume_item)
    if hierarchy.GetItemLevel(study) != slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy():
        patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Self-test patient")
        study = hierarchy.CreateStudyItem(patient, "Self-test study")
        hierarchy.SetItemParent(volume_item, study)
    transform = context.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "self-test tilt")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 1, 0.2)
    matrix.SetElement(2, 3, 15.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    output = context.work_dir / "worker_output"
    output.mkdir(parents=True)
    labels = case.labels()
    sitk.WriteImage(labels, str(output / "labels.nrrd"))
    write_seg_nrrd(labels, output / "segmentation.seg.nrrd", segment_specs())
    (output / "results.json").write_text(json.dumps({"models": {"liver": {"id": DEMO_LIVER_MODEL}, "tumor": None}}))
    node = results.import_results(output, volume)
    assert node.GetTransformNodeID() == transform.GetID(), "the result is not under the CT's transform"
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study, "the result is not in the CT's study"
    liver = sitk.GetArrayFromImage(segmentations.segment_mask(node, "liver", volume)) != 0
    assert np.array_equal(liver, sitk.GetArrayViewFromImage(labels) == 1), "the result is not on the CT's voxels"
    problems = dicom_database.dicom_seg_export_problems(node)
    if volume.GetAttribute(dicom_database.INSTANCE_UIDS_ATTRIBUTE):
        assert problems == [], problems
    else:
        assert len(problems) == 1 and "DICOM instance UIDs" in problems[0], problems


def live_updates_follow_the_module(context: ScenarioContext) -> None:
    """Observers exist only while the module is shown; an edit made while hidden is caught up on enter; a missing
    liver is reported once as text; "Update while editing" turned on later observes; the painted segment follows
    the parameters; a large volume waits 300 ms between updates."""
    from LiverTumorSegLib.scene import live

    case = painted_case(context.scene, context.ct())
    scheduled: list[tuple[str, int]] = []
    updates = live.LiveUpdates(lambda kind, delay: scheduled.append((kind, delay)))
    shown = live.LiveSettings(case.segmentation, case.volume, visible=True, live_flr=False)
    updates.sync(shown)
    assert updates.observing and [kind for kind, _ in scheduled] == ["measurements"]
    report = updates.update_measurements()
    assert report.error is None and report.table_node is not None
    updates.sync(live.LiveSettings(case.segmentation, case.volume, visible=False))
    assert not updates.observing, "observers left after exit()"
    grown = case.tumors[1] | np.roll(case.tumors[1], 2, axis=2) & case.liver
    segmentations.import_labelmap_segments(case.segmentation, grown.astype(np.uint8), [case.hand_tumor_id],
                                           case.volume)
    assert [kind for kind, _ in scheduled] == ["measurements"], "a hidden module reacted to an edit"
    updates.sync(shown)
    assert updates.observing and len(scheduled) == 2
    table = updates.update_measurements().table_node
    truth = case.tumors[0] | grown
    tumor_ml = float(np.count_nonzero(truth)) * case.voxel_ml
    from LiverTumorSegLib.scene.tables import read_rows

    rows = {row["Structure"]: row for row in read_rows(table)}
    assert abs(rows["Tumor (total)"]["Volume (mL)"] - tumor_ml) < 1e-6, "the edit made while hidden was missed"
    # FLR: computed once without "Update while editing", then turned on: observed from then on
    updates.compute_flr()
    assert updates.planner is not None and not updates.planner.observing
    updates.sync(live.LiveSettings(case.segmentation, case.volume, visible=True, live_flr=True,
                                   flr_parameters={"resection_segment_id": case.hand_tumor_id}))
    assert updates.planner.observing and updates.planner.parameters.resection_segment_id == case.hand_tumor_id
    flr = updates.update_flr()
    assert flr.error is None and flr.flr is not None and flr.flr.result.figures.resected_ml >= 0
    # a liver that loses its role: reported once as text, never raised
    liver = case.segmentation.GetSegmentation().GetSegment("liver")
    liver.SetName("Organ")
    liver.SetTerminology("")
    first, second = updates.update_measurements(force=True), updates.update_measurements(force=True)
    assert first.error and "no liver segment" in first.error and first.new_error and not second.new_error
    flr_report = updates.update_flr()
    assert flr_report.error and "no liver segment" in flr_report.error, flr_report
    updates.stop()
    assert not updates.observing
    assert live.update_delay_ms(512 * 512 * 200) == 300 and live.update_delay_ms(128 * 128 * 64) == 0


def stale_runs_are_abandoned(context: ScenarioContext) -> None:
    """A run whose input volume is no longer the selected one, or left the scene, says why it must be abandoned."""
    from LiverTumorSegLib.scene.run import SegmentationRun

    volume, other = context.ct(), context.ct()
    run = SegmentationRun(volume, liver_model=DEMO_LIVER_MODEL, tumor_model=None)
    try:
        assert run.stale_reason(volume) is None
        assert "input volume changed" in run.stale_reason(other)
        context.scene.RemoveNode(volume)
        assert "removed from the scene" in run.stale_reason()
        run.abandon()  # never started: the job folder goes at once
        assert not run.worker.work_dir.exists()
    finally:
        run.worker.cleanup()


# --- the models in the background worker -------------------------------------------------------------------


def _wait_for_stage(run, stage: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(event.stage == stage for event in run.poll()):
        if not run.running():
            raise AssertionError("the worker ended before it could be cancelled: " + "; ".join(run.log_lines()[-3:]))
        time.sleep(0.05)


def cancel_once_running(run, scene, stage: str, grace_s: float = 15.0) -> None:
    """Start ``run`` (a ``scene.run.BackgroundRun``), cancel it once the worker reports ``stage``, and check that
    cancel returns at once and nothing is left: ``RunCancelled``, the scene as before, no job folder, no worker
    process."""
    from LiverTumorSegLib.scene.run import RunCancelled
    from LiverTumorSegLib.worker.process import process_alive

    nodes_before = scene.GetNumberOfNodes()
    run.start()
    _wait_for_stage(run, stage)
    worker_pid = int((run.worker.work_dir / "worker.pid").read_text())
    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 0.5, "cancel blocked the caller"
    try:
        run.finish()
    except RunCancelled:
        pass
    else:
        raise AssertionError("a cancelled run returned a result")
    assert time.monotonic() - started < grace_s, "cancel took too long"
    assert scene.GetNumberOfNodes() == nodes_before, "the scene changed although the run was cancelled"
    assert not run.worker.work_dir.exists(), "temporary files were left behind"
    assert run.worker.wait_until_stopped(grace_s) and not process_alive(worker_pid), \
        f"worker process {worker_pid} is still running"


def segment_ct_with_demo_models(context: ScenarioContext) -> None:
    """CT -> blocking run of the demo models in the background worker -> a new segmentation: Liver and Liver tumor
    segments with their terminology and colours, the CT as reference geometry, monotonic progress to 1, the job
    folder removed. (The demo models are trained on phantoms: their accuracy is checked on phantoms only.)"""
    from LiverTumorSegLib.scene.run import SegmentationRun

    volume = context.ct()
    run = SegmentationRun(volume, liver_model=DEMO_LIVER_MODEL, tumor_model=DEMO_TUMOR_MODEL, device="cpu")
    fractions: list[float] = []
    node = run.run_blocking(on_progress=lambda event: fractions.append(event.fraction or 0.0))
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0, "progress is not monotonic to 1"
    assert not run.worker.work_dir.exists(), "the job folder was not removed"
    reference = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
    assert reference is not None and reference.GetID() == volume.GetID(), "reference geometry is not the CT"
    terminology_ok(node, (("liver", "Liver"), ("liver_tumor", "Liver tumor")))


def terminology_ok(segmentation_node, segments: tuple[tuple[str, str], ...]) -> None:
    """Each (definition id, name) segment exists with the terminology and colour of segment_terminology.json."""
    import vtk

    from LiverTumorSegLib.core.terminology import load_segment_definitions

    definitions = load_segment_definitions()
    segmentation = segmentation_node.GetSegmentation()
    for segment_id, name in segments:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
        assert segment is not None, f"no {name} segment"
        value = vtk.reference("")
        assert segment.GetTag("TerminologyEntry", value), f"{name} has no terminology"
        assert str(value) == definitions[segment_id].terminology_entry, (name, str(value))
        assert np.allclose(segment.GetColor(), definitions[segment_id].color_rgb, atol=1e-3), name


def cancel_returns_at_once_and_leaves_nothing(context: ScenarioContext) -> None:
    """Cancel during the liver stage returns at once; no segmentation node, no job folder, no worker process."""
    from LiverTumorSegLib.scene.run import SegmentationRun

    run = SegmentationRun(context.ct(), liver_model=DEMO_LIVER_MODEL, tumor_model=DEMO_TUMOR_MODEL, device="cpu")
    cancel_once_running(run, context.scene, "liver")


def closing_the_scene_imports_nothing(context: ScenarioContext) -> None:
    """The scene is closed while the worker runs (the widget then abandons the run): nothing is imported, the
    worker ends, the job folder goes."""
    from LiverTumorSegLib.scene.run import SegmentationRun
    from LiverTumorSegLib.worker.process import process_alive

    run = SegmentationRun(context.ct(), liver_model=DEMO_LIVER_MODEL, tumor_model=DEMO_TUMOR_MODEL, device="cpu")
    run.start()
    _wait_for_stage(run, "liver")
    worker_pid = int((run.worker.work_dir / "worker.pid").read_text())
    context.scene.Clear(0)  # what File > Close Scene does to the nodes
    reason = run.stale_reason()
    assert reason and "removed from the scene" in reason, reason
    started = time.monotonic()
    run.abandon()
    assert time.monotonic() - started < 0.5, "abandoning blocked the caller"
    assert run.worker.wait_until_stopped(30) and not process_alive(worker_pid)
    assert not run.worker.work_dir.exists(), "the job folder of the abandoned run is still there"
    assert context.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


SCENARIOS: dict[str, Scenario] = {
    "window_presets": Scenario(window_presets),
    "segment_roles_everywhere": Scenario(segment_roles_everywhere),
    "results_in_the_ct_study_under_its_transform": Scenario(results_in_the_ct_study_under_its_transform),
    "live_updates_follow_the_module": Scenario(live_updates_follow_the_module),
    "stale_runs_are_abandoned": Scenario(stale_runs_are_abandoned),
    **{name: Scenario(function) for name, function in flr_scenarios.SCENARIOS.items()},
    "segment_ct_with_demo_models": Scenario(segment_ct_with_demo_models, needs_models=True),
    "cancel_returns_at_once_and_leaves_nothing": Scenario(cancel_returns_at_once_and_leaves_nothing, needs_models=True),
    "closing_the_scene_imports_nothing": Scenario(closing_the_scene_imports_nothing, needs_models=True),
}


def run(name: str, scene, work_dir: Path, load_ct: Callable[[object], object]) -> None:
    """Run one scenario by name on the CTs ``load_ct(scene)`` gives."""
    SCENARIOS[name].function(ScenarioContext(scene, Path(work_dir), load_ct))


def run_self_test(scenarios: dict[str, Scenario], run_one, *, ensure_dependencies, set_up, report,
                  load_ct=None) -> list[str]:
    """What the modules' self-test classes do inside Slicer: ``plan`` (without torch the model scenarios are skipped
    and ``report`` says so), install the dependencies of the model scenarios (``ensure_dependencies``), then run
    each scenario (``run_one(name, scene, work_dir, load_ct)``) on a clean scene (``set_up``) with ``load_ct``
    (default: SampleData's CTLiver). Returns the names that ran."""
    import logging

    import slicer

    names, _, message = plan(scenarios, torch_installed=torch_available())
    if message:
        logging.warning(message)
        report(message)
    if any(scenarios[name].needs_models for name in names):
        ensure_dependencies()
    for name in names:
        set_up()
        logging.info(f"self-test scenario: {name}")
        with scratch_folder() as work_dir:
            run_one(name, slicer.mrmlScene, work_dir, load_ct or slicer_sample_ct)
        report(f"{name} passed")
    return names


def slicer_sample_ct(scene):
    """SampleData's CTLiver (a portal-venous abdominal CT of the Medical Segmentation Decathlon) as a new volume
    node: the CT the self-test uses inside Slicer."""
    import SampleData

    volume = SampleData.downloadSample("CTLiver")
    assert volume is not None and volume.GetScene() is scene, "SampleData did not load CTLiver into the scene"
    return volume


def scenario_volume_from_image(image: sitk.Image, name: str):
    """``load_ct`` for a given SimpleITK CT: each call adds a new volume node with its voxels."""
    return lambda scene: scene_bridge.volume_node_from_image(image, name, scene=scene)
