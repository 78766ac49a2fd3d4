"""Self-test scenarios shared by Slicer's self-test (ctest, Reload and Test) and the headless pytest suite.

Each scenario takes a ``ScenarioContext`` (``LiverTumorSegLib.testing.scenarios``: the scene, a scratch folder and
``ct()``, any CT: SampleData's CTLiver inside Slicer, a phantom headless), paints its liver and tumors on the CT
when it needs them (``LiverTumorSegLib.testing.cases``) and raises ``AssertionError`` on failure. Scenarios marked
``needs_models`` run the learned stage (Segment Anything encoder + XGBoost, the committed demo model) in the
background staging worker: inside Slicer they are skipped, with a message, only when torch is not installed.
"""

from __future__ import annotations

from pathlib import Path

from LiverTumorSegLib.testing.scenarios import Scenario, ScenarioContext, cancel_once_running
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


def rules_table(context: ScenarioContext) -> None:
    """The rules give the expected T category and stage group for one case per group."""
    for diameters_mm, findings, expected_t, expected_stage in RULES_TABLE:
        result = ajcc.stage(diameters_mm, **findings)
        assert (result.T, result.stage) == (expected_t, expected_stage), (diameters_mm, findings, result)
        assert result.explanation, "every stage comes with its explanation"


def form_choices_are_labelled_and_complete(context: ScenarioContext) -> None:
    """Every choice of the form has a readable label; for each tumor type the N and M lists are exactly what the
    rules accept (NX and M1b/M1c for colorectal metastases), and switching type keeps only valid findings."""
    for choices in (ajcc.TumorType, ajcc.VascularInvasion, ajcc.NodalStatus, ajcc.DistantMetastasis):
        for choice in choices:
            assert choice.label() and choice.label() != choice.value, choice
    for tumor_type in ajcc.TumorType:
        for n in ajcc.NodalStatus:
            for m in ajcc.DistantMetastasis:
                allowed = n in ajcc.allowed_n(tumor_type) and m in ajcc.allowed_m(tumor_type)
                try:
                    ajcc.stage([30.0], tumor_type=tumor_type, n=n, m=m)
                except ValueError:
                    assert not allowed, (tumor_type, n, m)
                else:
                    assert allowed, (tumor_type, n, m)
    assert ajcc.NodalStatus.NX in ajcc.allowed_n("crlm") and ajcc.DistantMetastasis.M1c in ajcc.allowed_m("crlm")
    assert ajcc.coerce_findings("hcc", "N2a", "M1c") == (ajcc.NodalStatus.N0, ajcc.DistantMetastasis.M0)
    assert ajcc.coerce_findings("crlm", "N1", "M1") == (ajcc.NodalStatus.N1, ajcc.DistantMetastasis.M1)


def rules_from_segmentation(context: ScenarioContext) -> None:
    """Segments -> measured lesions (every tumor segment, the hand-added one too) -> lesion table -> AJCC stage ->
    result table; the reader's findings change the stage as the rules say."""
    from LiverTumorSegLib.core.measurements import measure_labelmap
    from LiverTumorSegLib.testing.cases import painted_case
    from TNMStagingLib.scene import session, staging

    case = painted_case(context.scene, context.ct())
    expected_mm = [round(lesion.longest_axial_diameter_mm, 1) for lesion in measure_labelmap(case.labels()).lesions]
    assert len(expected_mm) == 2, f"the painted case has two lesions, measured {expected_mm}"
    table = session.new_lesion_table(context.scene)
    session.fill_lesion_table(table, staging.lesion_diameters_mm(case.segmentation, case.volume))
    assert session.lesion_diameters(table) == expected_mm
    for findings in ({}, {"vascular_invasion": "major"}, {"m": "M1"}, {"tumor_type": "crlm"}):
        result, diameters_mm = staging.stage_segmentation(case.segmentation, case.volume, **findings)
        assert diameters_mm == expected_mm and result == ajcc.stage(expected_mm, **findings), findings
    rows = staging.staging_rows(result, diameters_mm, None)
    values = staging.staging_table_values(staging.update_staging_table(rows, scene=context.scene))
    assert values["rule_stage"][0] == f"{result.T} {result.N} {result.M}: stage {result.stage}" == "TX NX M1a: stage IVA"
    assert values["diameters_mm"][0] == ", ".join(f"{d:g}" for d in expected_mm)
    assert "learned_stage" not in values, "no learned stage before the model ran"


def lesion_table_editing(context: ScenarioContext) -> None:
    """The reader corrects, adds and removes lesions in the table; a value that is not a diameter names its row."""
    from TNMStagingLib.scene import session

    table = session.new_lesion_table(context.scene)
    assert session.lesion_diameters(table) == []
    session.fill_lesion_table(table, [34.0, 12.5])
    session.add_lesion(table, 8.0)
    assert session.lesion_diameters(table) == [34.0, 12.5, 8.0]
    session.remove_lesions(table, [1])
    assert session.lesion_diameters(table) == [34.0, 8.0]
    assert ajcc.stage(session.lesion_diameters(table)).T == "T2"
    table.GetTable().GetColumn(1).SetValue(1, 0.0)  # the reader typed 0 in the table view
    try:
        session.lesion_diameters(table)
    except ValueError as error:
        assert str(error).startswith("Added 1:"), str(error)
    else:
        raise AssertionError("a 0 mm lesion was accepted")


def stale_results_are_dropped(context: ScenarioContext) -> None:
    """Another CT, an edited segmentation or changed lesions/findings drop the stage computed before; a learned
    stage finishing after its inputs changed is not accepted; the learned stage survives a change of findings."""
    from LiverTumorSegLib.scene import segmentations
    from LiverTumorSegLib.testing.cases import painted_case
    from TNMStagingLib.scene import session

    case = painted_case(context.scene, context.ct())
    other_ct = context.ct()
    table = session.new_lesion_table(context.scene)
    session.fill_lesion_table(table, [30.0])
    scheduled = []
    state = session.StagingSession(lambda: scheduled.append(1))
    state.watch(case.segmentation, table)

    def inputs(volume=case.volume, **findings):
        return session.staging_inputs(volume, case.segmentation, table, findings)

    state.set_rules(ajcc.stage([30.0]), [30.0], inputs())
    token = state.start_learned(inputs())
    assert state.finish_learned(token, {"stage": "1", "probabilities": {"1": 1.0}})
    assert {row[3] for row in state.rows()} >= {"rule_stage", "learned_stage"}
    assert state.update(inputs(n="N1")) and state.rules is None and state.learned is not None, \
        "a new finding drops the rule stage only"
    state.set_rules(ajcc.stage([30.0], n="N1"), [30.0], inputs(n="N1"))
    other_segmentation = session.staging_inputs(case.volume, painted_case(context.scene, case.volume).segmentation,
                                                table, {"n": "N1"})
    assert state.update(other_segmentation) and state.rows() == [], \
        "rules applied to another segmentation must not stand beside the old learned stage"
    state.set_rules(ajcc.stage([30.0], n="N1"), [30.0], inputs(n="N1"))
    token = state.start_learned(inputs(n="N1"))
    assert state.finish_learned(token, {"stage": "1", "probabilities": {"1": 1.0}})
    assert state.update(inputs(other_ct, n="N1")) and state.rows() == [], "another CT must clear the table"
    late = state.start_learned(inputs(n="N1"))
    state.update(inputs(other_ct, n="N1"))
    assert not state.finish_learned(late, {"stage": "2", "probabilities": {"2": 1.0}}), "a stale learned stage"
    state.set_rules(ajcc.stage([30.0]), [30.0], inputs())
    grown = case.tumors[1] | case.liver & (case.tumors[1].any(axis=(1, 2))[:, None, None])
    segmentations.import_labelmap_segments(case.segmentation, grown.astype("uint8"), [case.hand_tumor_id],
                                           case.volume)
    assert scheduled, "an edit of the segments must wake the form"
    assert state.update(inputs()) and state.rules is None, "the stage of the segments before the edit survived"
    session.add_lesion(table, 5.0)
    assert len(scheduled) >= 2, "an edit of the lesion table must wake the form"
    state.remove_observers()


def learned_stage_in_background(context: ScenarioContext) -> None:
    """The demo staging model in the background worker: monotonic progress to 1, probabilities that sum to 1, the
    model's cross-validation metrics and the DEMO ONLY mark in the table, job folder removed."""
    from LiverTumorSegLib.testing.cases import painted_case
    from TNMStagingLib.core.classifier import load_model
    from TNMStagingLib.resources import DEMO_MODEL_FILE
    from TNMStagingLib.scene import staging

    case = painted_case(context.scene, context.ct())
    run = staging.StagingRun(case.volume, case.segmentation, device="cpu")
    fractions: list[float] = []
    learned = run.run_blocking(on_progress=lambda event: fractions.append(event.fraction or 0.0), timeout_s=600)
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0, f"progress {fractions}"
    assert not run.worker.work_dir.exists(), "the job folder was not removed"
    assert abs(sum(learned["probabilities"].values()) - 1.0) < 1e-5, learned["probabilities"]
    assert learned["stage"] == max(learned["probabilities"], key=learned["probabilities"].get)
    model = load_model(DEMO_MODEL_FILE)
    assert learned["demo_only"] is True and learned["cv_metrics"]["accuracy"] == model.cv["accuracy"]
    assert learned["encoder"]["used"] == model.needs_image_features()
    rules, diameters_mm = staging.stage_segmentation(case.segmentation, case.volume)
    table = staging.update_staging_table(staging.staging_rows(rules, diameters_mm, learned), scene=context.scene)
    values = staging.staging_table_values(table)
    assert values["learned_stage"] == (learned["stage"], staging.DEMO_NOTE)
    assert f"accuracy {model.cv['accuracy']:.3f}" in values["cv_metrics"][0]
    assert {key for key in values if key.startswith("p_")} == {f"p_{stage}" for stage in model.classifier.classes_}
    assert values["rule_stage"][0].endswith(f"stage {rules.stage}"), "the rule stage stays beside the learned one"


def cancel_staging_leaves_nothing(context: ScenarioContext) -> None:
    """Cancel while the encoder runs: returns at once; RunCancelled, no new node, no job folder, no worker left."""
    from LiverTumorSegLib.testing.cases import painted_case
    from TNMStagingLib.scene import staging

    case = painted_case(context.scene, context.ct())
    cancel_once_running(staging.StagingRun(case.volume, case.segmentation, device="cpu"), context.scene, "features")


def bad_staging_input_leaves_scene_unchanged(context: ScenarioContext) -> None:
    """No liver segment, or a file that is not a staging model: a message naming the problem, scene as it was."""
    from LiverTumorSegLib.scene.run import RunFailed
    from LiverTumorSegLib.testing.cases import painted_case
    from TNMStagingLib.scene import staging

    case = painted_case(context.scene, context.ct())
    tumor_only = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumor only")
    tumor_only.GetSegmentation().AddEmptySegment("", "Liver tumor")
    nodes_before = context.scene.GetNumberOfNodes()
    for attempt in (lambda: staging.stage_segmentation(tumor_only, case.volume),
                    lambda: staging.StagingRun(case.volume, tumor_only, device="cpu").start()):
        try:
            attempt()
        except ValueError as error:
            assert "no liver segment" in str(error), str(error)
        else:
            raise AssertionError("a segmentation without a liver was accepted")
    not_a_model = Path(context.work_dir) / "not_a_model.tnm"
    not_a_model.write_text("this is not a model")
    run = staging.StagingRun(case.volume, case.segmentation, model_path=not_a_model, device="cpu")
    try:
        run.run_blocking(timeout_s=120)
    except RunFailed as error:
        assert str(not_a_model) in str(error) and "not a TNMStaging model" in str(error), str(error)
    else:
        raise AssertionError("a file that is not a staging model was accepted")
    assert not run.worker.work_dir.exists(), "temporary files were left behind"
    assert context.scene.GetNumberOfNodes() == nodes_before, "a failed staging changed the scene"


SCENARIOS: dict[str, Scenario] = {
    "rules_table": Scenario(rules_table),
    "form_choices_are_labelled_and_complete": Scenario(form_choices_are_labelled_and_complete),
    "rules_from_segmentation": Scenario(rules_from_segmentation),
    "lesion_table_editing": Scenario(lesion_table_editing),
    "stale_results_are_dropped": Scenario(stale_results_are_dropped),
    "learned_stage_in_background": Scenario(learned_stage_in_background, needs_models=True),
    "cancel_staging_leaves_nothing": Scenario(cancel_staging_leaves_nothing, needs_models=True),
    "bad_staging_input_leaves_scene_unchanged": Scenario(bad_staging_input_leaves_scene_unchanged, needs_models=True),
}


def run(name: str, scene, work_dir: Path, load_ct) -> None:
    """Run one scenario by name on the CTs ``load_ct(scene)`` gives."""
    SCENARIOS[name].function(ScenarioContext(scene, Path(work_dir), load_ct))
