"""Stage a CT volume node and its liver/tumor segmentation in the scene (no Qt).

Two answers side by side, never one without the other:

- the AJCC 8th-edition rules (``ajcc``) on the lesions measured from the current "Liver tumor" segment
  (longest axial diameters, 26-connected components) plus the reader's findings: instant, in this process;
- the learned stage (SAM encoder features + XGBoost, ``core.predict.predict_case``) in the background
  staging worker (``python -m TNMStagingLib.worker``), started, watched and cancelled like the
  segmentation worker (``LiverTumorSegLib.worker.process.WorkerProcess``).

Both go into one table node ("TNM staging"): Item, Value, Note and a Key column for scripts. The learned
stage's rows carry the model's cross-validation metrics and, for the demo model, a DEMO ONLY note.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import SimpleITK as sitk
import slicer

from LiverTumorSegLib.scene import volumes as scene_bridge
from LiverTumorSegLib.scene.results import current_labelmap
from LiverTumorSegLib.scene.run import BackgroundRun, default_python
from LiverTumorSegLib.scene.tables import keyed_values, text_columns, write_table
from LiverTumorSegLib.worker.process import ProgressEvent, WorkerProcess
from TNMStagingLib.core import ajcc
from TNMStagingLib.resources import MODULE_FOLDER
from TNMStagingLib.worker.staging import OUTPUT_FILE

TABLE_NAME = "TNM staging"
TABLE_COLUMNS = ("Item", "Value", "Note", "Key")
TABLE_SOURCE_ATTRIBUTE = "TNMStaging.Segmentation"
DEMO_NOTE = "DEMO ONLY: trained on synthetic phantoms, not for clinical use"


def lesion_diameters_mm(segmentation_node, volume_node) -> list[float]:
    """Longest axial diameter (mm) of each tumor component of the current segments, largest first."""
    from LiverTumorSegLib.core.measurements import measure_labelmap

    lesions = measure_labelmap(current_labelmap(segmentation_node, volume_node)).lesions
    return [round(lesion.longest_axial_diameter_mm, 1) for lesion in lesions]


def stage_segmentation(segmentation_node, volume_node, **findings) -> tuple[ajcc.StageResult, list[float]]:
    """AJCC rules on the measured lesions with the reader's ``findings`` (keywords of ``ajcc.stage``)."""
    diameters_mm = lesion_diameters_mm(segmentation_node, volume_node)
    return ajcc.stage(diameters_mm, **findings), diameters_mm


class StagingRun(BackgroundRun):
    """One background run of the learned stage on ``volume_node`` (CT, HU) and ``segmentation_node``.

    ``model_path`` is a ``.tnm`` artifact (None: the committed demo model); ``checkpoint`` the SAM weights
    when the model was trained with real ones (None: resolved through the model manifest). ``launcher`` is
    ``slicer.util.launchConsoleProcess``-compatible (``launcher(args, env) -> Popen``).
    """

    def __init__(self, volume_node, segmentation_node, *, model_path: str | Path | None = None,
                 checkpoint: str | Path | None = None, device: str = "auto", python: str | None = None,
                 launcher=None) -> None:
        if volume_node is None or volume_node.GetImageData() is None:
            raise ValueError("No CT volume selected: select the CT the segmentation was made on.")
        if segmentation_node is None:
            raise ValueError("No segmentation selected: run LiverTumorSeg first or select its segmentation.")
        self.volume_node, self.segmentation_node = volume_node, segmentation_node
        job = {"model": str(model_path) if model_path else None,
               "checkpoint": str(checkpoint) if checkpoint else None, "device": device}
        options = {"python": python or default_python(), "module": "TNMStagingLib.worker",
                   "python_path": [str(MODULE_FOLDER)],
                   "extra_env": {"CUDA_VISIBLE_DEVICES": "-1"} if device == "cpu" else {}}
        if launcher is not None:
            options["launcher"] = launcher
        self.worker = WorkerProcess(job, **options)
        self.last_progress: ProgressEvent | None = None

    what = "staging"

    def input_nodes(self) -> tuple:
        return (self.volume_node, self.segmentation_node)

    def start(self) -> None:
        """Write the CT and the current segments (0/1/2 on the CT grid) to the job folder; start the worker."""
        labels = current_labelmap(self.segmentation_node, self.volume_node)  # raises when there is no liver
        image_path, labels_path = self.worker.work_dir / "ct.nrrd", self.worker.work_dir / "labels.nrrd"
        sitk.WriteImage(scene_bridge.image_from_volume_node(self.volume_node, local_frame=True), str(image_path))
        sitk.WriteImage(labels, str(labels_path), useCompression=True)
        self.worker.job.update({"image": str(image_path), "labels": str(labels_path)})
        self.worker.start()

    def _read_outputs(self) -> dict:
        """The worker's result: ``core.predict.predict_case``'s dict plus the model file and timings."""
        return json.loads((self.worker.output_dir / OUTPUT_FILE).read_text(encoding="utf-8"))


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def staging_rows(rules: ajcc.StageResult | None, diameters_mm: list[float] | None,
                 learned: dict | None) -> list[tuple[str, str, str, str]]:
    """Table rows ``(item, value, note, key)``: the rule stage, then the learned stage with its metrics."""
    rows = []
    if rules is not None:
        rows += [
            ("Rule stage (AJCC 8th)", f"{rules.T} {rules.N} {rules.M}: stage {rules.stage}",
             "rules on the measured lesions and the reader's findings", "rule_stage"),
            ("Rule explanation", rules.explanation, "", "rule_explanation"),
            ("Lesion diameters", ", ".join(f"{d:g}" for d in diameters_mm or []) or "none", "mm, longest axial",
             "diameters_mm"),
        ]
    if learned is not None:
        demo_note = DEMO_NOTE if learned.get("demo_only") else ""
        rows.append(("Learned stage", learned["stage"], demo_note or "highest probability", "learned_stage"))
        for stage, probability in sorted(learned["probabilities"].items(), key=lambda item: -item[1]):
            rows.append((f"P(stage {stage})", f"{probability:.3f}", demo_note, f"p_{stage}"))
        cv = learned.get("cv_metrics") or {}
        rows.append(("Model cross-validation",
                     f"accuracy {_number(cv.get('accuracy'))}, balanced accuracy "
                     f"{_number(cv.get('balanced_accuracy'))}, AUC {_number(cv.get('auc_ovr_macro'))}",
                     f"{_number(cv.get('n'))} scans, {_number(cv.get('n_patients'))} patients, "
                     f"{_number(cv.get('n_splits'))} folds (patient-level)", "cv_metrics"))
        encoder = learned.get("encoder") or {}
        rows.append(("Model", Path(learned.get("model", "")).name, learned.get("training_data", ""), "model"))
        rows.append(("Image encoder", f"{encoder.get('name', '')} ({encoder.get('weights', '')})",
                     encoder.get("note", "") if encoder.get("used") else "not needed by this model", "encoder"))
    return rows


def update_staging_table(rows: list[tuple[str, str, str, str]], table_node=None, *, scene=None,
                         segmentation_node=None):
    """Write ``rows`` into ``table_node`` in place (a new "TNM staging" table when None or removed)."""
    if table_node is None or table_node.GetScene() is None:
        scene = scene if scene is not None else slicer.mrmlScene
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(TABLE_NAME))
    if segmentation_node is not None:
        table_node.SetAttribute(TABLE_SOURCE_ATTRIBUTE, segmentation_node.GetID())
    write_table(table_node, text_columns(TABLE_COLUMNS), rows)
    return table_node


def staging_table_values(table_node) -> dict[str, tuple[str, str]]:
    """``{key: (value, note)}`` of a staging table node (for scripts and tests)."""
    return keyed_values(table_node, "Key", ("Value", "Note"))
