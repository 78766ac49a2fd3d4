"""TNMStaging: AJCC 8th-edition stage from the measured liver lesions, beside a learned stage suggestion
(3D Slicer scripted module).

Thin GUI layer. The rules live in ``TNMStagingLib.core.ajcc`` (pure Python); measuring the segments, the
background staging worker and the result table live in ``TNMStagingLib.scene.staging`` (no Qt). Both are
tested headless by the shared scenarios of ``TNMStagingLib.testing.scenarios``.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LiverTumorSegLib.gui.polling import RunPoller
from TNMStagingLib.core import ajcc
from TNMStagingLib.testing import scenarios


class TNMStaging(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TNM Staging (liver)")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["LiverTumorSeg"]
        self.parent.contributors = ["LiverTumorAnalysis team"]
        self.parent.helpText = _(
            "AJCC 8th edition staging of hepatocellular carcinoma from the longest diameters of the liver "
            "lesions, with the reader's findings on vascular invasion, adjacent organs, lymph nodes (N) and "
            "distant metastases (M), which the segmentation cannot see. Colorectal liver metastases are M1a "
            "(stage IVA). Beside the rules, a learned stage suggestion (Segment Anything image features + "
            "XGBoost) with the model's cross-validation metrics; the learned stage alone is weak (about 50 % "
            "accuracy in the reference study). A suggestion for the reader, not a diagnosis."
        )
        self.parent.acknowledgementText = _("AJCC Cancer Staging Manual, 8th edition (liver chapter).")


@parameterNodeWrapper
class TNMStagingParameterNode:
    """GUI state: CT and segmentation, the lesion diameters (mm, comma separated), the reader-confirmed
    findings, the staging model (empty: the demo model) and the result table."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    diametersMm: str = ""
    vascularInvasion: Annotated[str, Choice(["none", "suspected", "major"])] = "none"
    adjacentOrganInvasion: bool = False
    perforation: bool = False
    nodalStatus: Annotated[str, Choice(["N0", "N1"])] = "N0"
    metastasis: Annotated[str, Choice(["M0", "M1"])] = "M0"
    tumorType: Annotated[str, Choice(["hcc", "crlm"])] = "hcc"
    modelPath: str = ""
    device: Annotated[str, Choice(["auto", "cpu"])] = "auto"
    resultTable: vtkMRMLTableNode


class TNMStagingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin widget: the parameter node holds the inputs, the logic measures, stages and runs the worker."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runPoller = None
        self._rules = None  # (StageResult, diameters) of the last "Apply AJCC rules"
        self._learned = None  # result dict of the last learned-stage run

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TNMStaging.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TNMStagingLogic()
        self._runPoller = RunPoller(self.ui.stagingProgressBar, self.ui.stagingStatusLabel,
                                    _("Learned staging failed"), onFinished=self._onStagingFinished,
                                    onEnded=self._onParameterNodeModified)
        self.ui.measureLesionsButton.connect("clicked(bool)", self.onMeasureLesions)
        self.ui.applyRulesButton.connect("clicked(bool)", self.onApplyRules)
        self.ui.runStagingButton.connect("clicked(bool)", self.onRunStaging)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._runPoller is not None:
            self._runPoller.stop()
        self.removeObservers()

    def onReload(self) -> None:
        """Reload the library too, so that "Reload and Test" runs the edited code."""
        from LiverTumorSegLib.gui.reload import forget_package

        forget_package("TNMStagingLib")
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not self._parameterNode.segmentation:
            self._parameterNode.segmentation = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        node = self._parameterNode
        haveInputs = bool(node and node.inputVolume and node.segmentation)
        self.ui.measureLesionsButton.enabled = haveInputs
        running = self._runPoller is not None and self._runPoller.running
        self.ui.runStagingButton.enabled = haveInputs or running
        self.ui.runStagingButton.text = _("Cancel") if running else _("Run learned stage")
        self.ui.demoWarningLabel.visible = bool(node) and self.logic.isDemoModel(node.modelPath)
        self.ui.stagingTableView.setMRMLTableNode(node.resultTable if node else None)

    def onMeasureLesions(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot measure the lesions of this segmentation."), waitCursor=True):
            diameters = self.logic.measureLesions(node.segmentation, node.inputVolume)
            node.diametersMm = ", ".join(f"{d:g}" for d in diameters)
            self.onApplyRules()

    def onApplyRules(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot stage these inputs."), waitCursor=False):
            result = self.logic.stageFromParameters(self._parameterNode)
            self._rules = (result, ajcc.parse_diameters_mm(self._parameterNode.diametersMm))
            self.ui.resultLabel.text = _("{T} {N} {M} - stage {stage}\n{explanation}").format(**result.to_dict())
            self._showResult()

    def _showResult(self) -> None:
        node = self._parameterNode
        rules, diameters = self._rules if self._rules else (None, None)
        node.resultTable = self.logic.updateResultTable(rules, diameters, self._learned, node.resultTable)

    def onRunStaging(self) -> None:
        if self._runPoller.running:
            self._runPoller.cancel()
            return
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the learned staging."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            if not self._rules:
                self.onMeasureLesions()  # the rule stage always stands beside the learned one
            self._learned = None
            self._runPoller.start(self.logic.startStaging(node.inputVolume, node.segmentation,
                                                          node.modelPath or None, device=node.device))
            self._onParameterNodeModified()

    def _onStagingFinished(self, learned) -> None:
        self._learned = learned
        self.ui.stagingStatusLabel.text = _("Learned stage {stage}").format(stage=learned["stage"])
        self._showResult()


class TNMStagingLogic(ScriptedLoadableModuleLogic):
    """Scriptable logic. Examples::

        logic = TNMStagingLogic()
        logic.stage([18.0, 30.0], vascularInvasion="none")
        logic.process(ctNode, segmentationNode, wait=True)  # rules + learned stage -> table node
    """

    def getParameterNode(self):
        return TNMStagingParameterNode(super().getParameterNode())

    def stage(self, diametersMm, vascularInvasion="none", adjacentOrganInvasion=False, perforation=False,
              nodalStatus="N0", metastasis="M0", tumorType="hcc") -> ajcc.StageResult:
        return ajcc.stage(diametersMm, vascular_invasion=vascularInvasion,
                          adjacent_organ_invasion=adjacentOrganInvasion, perforation=perforation,
                          n=nodalStatus, m=metastasis, tumor_type=tumorType)

    def stageFromParameters(self, parameterNode) -> ajcc.StageResult:
        return self.stage(ajcc.parse_diameters_mm(parameterNode.diametersMm), parameterNode.vascularInvasion,
                          parameterNode.adjacentOrganInvasion, parameterNode.perforation,
                          parameterNode.nodalStatus, parameterNode.metastasis, parameterNode.tumorType)

    def measureLesions(self, segmentationNode, volumeNode) -> list[float]:
        """Longest axial diameters (mm) of the tumor components of the current segments, largest first."""
        from TNMStagingLib.scene import staging as scene_staging

        return scene_staging.lesion_diameters_mm(segmentationNode, volumeNode)

    @staticmethod
    def isDemoModel(modelPath: str) -> bool:
        from TNMStagingLib.resources import DEMO_MODEL_FILE

        return not modelPath or pathlib.Path(modelPath).resolve() == DEMO_MODEL_FILE

    def ensureDependencies(self, askUser: bool = True) -> bool:
        from LiverTumorSegLib.gui.dependencies import ensurePythonPackages
        from LiverTumorSegLib.worker import dependencies

        return ensurePythonPackages(dependencies.STAGING_REQUIREMENTS, _("Learned staging"), askUser)

    def startStaging(self, volumeNode, segmentationNode, modelPath=None, device: str = "auto", launcher=None):
        """Start the learned stage in a background process; returns the run (poll, cancel, finish)."""
        from LiverTumorSegLib.scene.run import slicer_launcher
        from TNMStagingLib.scene.staging import StagingRun

        run = StagingRun(volumeNode, segmentationNode, model_path=modelPath, device=device,
                         launcher=launcher or slicer_launcher)
        run.start()
        return run

    def updateResultTable(self, rules, diametersMm, learned, tableNode=None):
        """Write the rule stage and the learned stage (either may be None) into the result table node."""
        from TNMStagingLib.scene import staging as scene_staging

        return scene_staging.update_staging_table(scene_staging.staging_rows(rules, diametersMm, learned),
                                                  tableNode, scene=slicer.mrmlScene)

    def process(self, volumeNode, segmentationNode, modelPath=None, device: str = "auto", wait: bool = True,
                **findings):
        """Rules on the measured lesions (``findings``: keywords of ``TNMStagingLib.core.ajcc.stage``) and the
        learned stage; with ``wait`` blocks and returns the result table node, else the started run."""
        from TNMStagingLib.scene import staging as scene_staging

        if not wait:
            return self.startStaging(volumeNode, segmentationNode, modelPath, device)
        rules, diameters = scene_staging.stage_segmentation(segmentationNode, volumeNode, **findings)
        run = scene_staging.StagingRun(volumeNode, segmentationNode, model_path=modelPath, device=device)
        learned = run.run_blocking(on_progress=lambda event: logging.info(f"{event.stage}: {event.message}"))
        return self.updateResultTable(rules, diameters, learned)


class TNMStagingTest(ScriptedLoadableModuleTest):
    """Self-tests: the scenario functions of TNMStagingLib.testing.scenarios, also run by pytest headless."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        for name in scenarios.SCENARIOS:
            self.setUp()
            self._runScenario(name)

    def _runScenario(self, name: str) -> None:
        import tempfile

        logging.info(f"TNMStaging scenario: {name}")
        with tempfile.TemporaryDirectory(prefix="TNMStaging-selftest-") as workDir:
            scenarios.run(name, slicer.mrmlScene, pathlib.Path(workDir))
        self.delayDisplay(f"{name} passed")

    def test_scenarios(self) -> None:
        """Every shared scenario (see TNMStagingLib.testing.scenarios.SCENARIOS)."""
        self.runTest()
