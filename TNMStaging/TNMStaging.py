"""TNMStaging: AJCC 8th-edition stage from the measured liver lesions, beside a learned stage suggestion
(3D Slicer scripted module, Slicer 5.12+).

Thin GUI layer. The rules live in ``TNMStagingLib.core.ajcc`` (pure Python, with the form's choices and their
labels); measuring the segments, the lesion table, the state that drops stale results, the background staging
worker and the result table live in ``TNMStagingLib.scene`` (no Qt). All are tested headless by the shared
scenarios of ``TNMStagingLib.testing.scenarios``.
"""

from __future__ import annotations

import logging
import pathlib

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LiverTumorSegLib.core.options import Device
from TNMStagingLib.core.ajcc import DistantMetastasis, NodalStatus, TumorType, VascularInvasion


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
            "lesions (measured from every tumor segment, corrected by the reader in the lesion table), with the "
            "reader's findings on vascular invasion, adjacent organs, lymph nodes (N) and distant metastases (M), "
            "which the segmentation cannot see. Colorectal liver metastases are M1a (stage IVA). Beside the rules, "
            "a learned stage suggestion (Segment Anything image features + XGBoost) with the model's "
            "cross-validation metrics; the learned stage alone is weak (about 50 % accuracy in the reference "
            "study). A result is cleared as soon as its inputs change. Requires 3D Slicer 5.12 or later. A "
            "suggestion for the reader, not a diagnosis."
        )
        self.parent.acknowledgementText = _("AJCC Cancer Staging Manual, 8th edition (liver chapter).")


@parameterNodeWrapper
class TNMStagingParameterNode:
    """GUI state: CT and segmentation, the lesion table, the reader-confirmed findings, the staging model (empty:
    the demo model), the device and the result table."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    lesionTable: vtkMRMLTableNode
    newLesionDiameterMm: float = 10.0
    tumorType: TumorType = TumorType.hcc
    vascularInvasion: VascularInvasion = VascularInvasion.none
    adjacentOrganInvasion: bool = False
    perforation: bool = False
    nodalStatus: NodalStatus = NodalStatus.N0
    metastasis: DistantMetastasis = DistantMetastasis.M0
    modelPath: pathlib.Path
    device: Device = Device.auto
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
        self._stagingToken = None

    def setup(self) -> None:
        from LiverTumorSegLib.gui.polling import RunPoller

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TNMStaging.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self._refreshTimer = qt.QTimer()
        self._refreshTimer.setSingleShot(True)
        self._refreshTimer.connect("timeout()", self._refreshResult)
        self.logic = TNMStagingLogic(scheduleRefresh=self._refreshTimer.start)
        self._runPoller = RunPoller(self.ui.stagingProgressBar, self.ui.stagingStatusLabel,
                                    _("Learned staging failed"), onFinished=self._onStagingFinished,
                                    onEnded=self._onParameterNodeModified)
        self.ui.measureLesionsButton.connect("clicked(bool)", self.onMeasureLesions)
        self.ui.addLesionButton.connect("clicked(bool)", self.onAddLesion)
        self.ui.removeLesionButton.connect("clicked(bool)", self.onRemoveLesions)
        self.ui.applyRulesButton.connect("clicked(bool)", self.onApplyRules)
        self.ui.runStagingButton.connect("clicked(bool)", self.onRunStaging)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._runPoller.stop()
        self.logic.session.remove_observers()
        self.removeObservers()

    def onReload(self) -> None:
        """Reload the library too, so that "Reload and Test" runs the edited code."""
        from LiverTumorSegLib.gui.reload import forget_package

        forget_package("TNMStagingLib")
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._runPoller.stop(_("The scene was closed: the learned staging was cancelled."))
        self.logic.session.remove_observers()
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
        if node is not None and self._runPoller.running:
            self._runPoller.abandonIfStale(node.inputVolume)
        running = self._runPoller.running
        haveInputs = bool(node and node.inputVolume and node.segmentation)
        self.ui.measureLesionsButton.enabled = haveInputs
        self.ui.removeLesionButton.enabled = bool(node and node.lesionTable)
        self.ui.runStagingButton.enabled = haveInputs or running
        self.ui.runStagingButton.text = _("Cancel") if running else _("Run learned stage")
        if node is None:
            return
        self.logic.coerceFindings(node)  # N and M the rules accept for the tumor type
        self.ui.demoWarningLabel.visible = self.logic.isDemoModel(node.modelPath)
        self.ui.lesionTableView.setMRMLTableNode(node.lesionTable)
        self.ui.stagingTableView.setMRMLTableNode(node.resultTable)
        self._refreshResult()

    def _refreshResult(self) -> None:
        """Drop what the current inputs invalidate (another CT, edited segments or lesions, other findings)."""
        node = self._parameterNode or self.logic.getParameterNode()
        if self.logic.refreshResult(node):
            self.ui.resultLabel.text = ""

    def onMeasureLesions(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot measure the lesions of this segmentation."), waitCursor=True):
            self.logic.measureLesionsIntoTable(self._parameterNode)
            self._showRules(self.logic.applyRules(self._parameterNode))

    def onAddLesion(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot add the lesion."), waitCursor=False):
            self.logic.addLesion(self._parameterNode, self._parameterNode.newLesionDiameterMm)

    def onRemoveLesions(self) -> None:
        rows = sorted({index.row() for index in self.ui.lesionTableView.selectionModel().selectedIndexes()})
        with slicer.util.tryWithErrorDisplay(_("Cannot remove the lesions."), waitCursor=False):
            self.logic.removeLesions(self._parameterNode, rows)

    def onApplyRules(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot stage these inputs."), waitCursor=False):
            self._showRules(self.logic.applyRules(self._parameterNode))

    def _showRules(self, result) -> None:
        self.ui.resultLabel.text = _("{T} {N} {M} - stage {stage}\n{explanation}").format(**result.to_dict())

    def onRunStaging(self) -> None:
        if self._runPoller.running:
            self._runPoller.cancel()  # returns at once
            return
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the learned staging."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            if self.logic.session.rules is None:  # the rule stage always stands beside the learned one
                if node.lesionTable is None:
                    self.logic.measureLesionsIntoTable(node)
                self._showRules(self.logic.applyRules(node))
            run, self._stagingToken = self.logic.startStagingFromParameters(node)
            self._runPoller.start(run)
            self._onParameterNodeModified()

    def _onStagingFinished(self, learned) -> None:
        # written through the logic's parameter node: this also works while the module is hidden
        if self.logic.acceptLearnedStage(self.logic.getParameterNode(), self._stagingToken, learned):
            self.ui.stagingStatusLabel.text = _("Learned stage {stage}").format(stage=learned["stage"])
        else:
            self.ui.stagingStatusLabel.text = _("The inputs changed while the learned stage ran: it was discarded.")


class TNMStagingLogic(ScriptedLoadableModuleLogic):
    """Scriptable logic. Examples::

        logic = TNMStagingLogic()
        logic.stage([18.0, 30.0], vascularInvasion="none")
        logic.process(ctNode, segmentationNode, wait=True)  # rules + learned stage -> table node
    """

    def __init__(self, scheduleRefresh=None) -> None:
        from TNMStagingLib.scene.session import StagingSession

        ScriptedLoadableModuleLogic.__init__(self)
        self.session = StagingSession(scheduleRefresh)

    def getParameterNode(self):
        return TNMStagingParameterNode(super().getParameterNode())

    def stage(self, diametersMm, vascularInvasion="none", adjacentOrganInvasion=False, perforation=False,
              nodalStatus="N0", metastasis="M0", tumorType="hcc"):
        from TNMStagingLib.core import ajcc

        return ajcc.stage(diametersMm, vascular_invasion=vascularInvasion,
                          adjacent_organ_invasion=adjacentOrganInvasion, perforation=perforation,
                          n=nodalStatus, m=metastasis, tumor_type=tumorType)

    @staticmethod
    def findings(parameterNode) -> dict:
        """The reader's findings of the form as keywords of ``ajcc.stage``."""
        return {"vascular_invasion": parameterNode.vascularInvasion, "tumor_type": parameterNode.tumorType,
                "adjacent_organ_invasion": parameterNode.adjacentOrganInvasion,
                "perforation": parameterNode.perforation, "n": parameterNode.nodalStatus,
                "m": parameterNode.metastasis}

    @staticmethod
    def coerceFindings(parameterNode) -> None:
        """Keep N and M within what the rules accept for the tumor type (``ajcc.coerce_findings``)."""
        from TNMStagingLib.core import ajcc

        n, m = ajcc.coerce_findings(parameterNode.tumorType, parameterNode.nodalStatus, parameterNode.metastasis)
        if n != parameterNode.nodalStatus:
            parameterNode.nodalStatus = n
        if m != parameterNode.metastasis:
            parameterNode.metastasis = m

    @staticmethod
    def modelPathOrNone(path) -> str | None:
        """The staging model file of the form, or None for the demo model (an empty path reads as '.')."""
        return str(path) if path and str(path) not in ("", ".") and pathlib.Path(path).is_file() else None

    def isDemoModel(self, modelPath) -> bool:
        from TNMStagingLib.resources import DEMO_MODEL_FILE

        path = self.modelPathOrNone(modelPath)
        return path is None or pathlib.Path(path).resolve() == DEMO_MODEL_FILE

    def stagingInputs(self, parameterNode):
        from TNMStagingLib.scene.session import staging_inputs

        return staging_inputs(parameterNode.inputVolume, parameterNode.segmentation, parameterNode.lesionTable,
                              self.findings(parameterNode), self.modelPathOrNone(parameterNode.modelPath) or "")

    def _lesionTable(self, parameterNode):
        from TNMStagingLib.scene.session import new_lesion_table

        if parameterNode.lesionTable is None or parameterNode.lesionTable.GetScene() is None:
            parameterNode.lesionTable = new_lesion_table(slicer.mrmlScene)
        return parameterNode.lesionTable

    def measureLesionsIntoTable(self, parameterNode) -> list[float]:
        """Longest axial diameters (mm) of the tumor components of every tumor segment, largest first, into the
        lesion table (replacing its rows)."""
        from TNMStagingLib.scene import session, staging

        diameters = staging.lesion_diameters_mm(parameterNode.segmentation, parameterNode.inputVolume)
        session.fill_lesion_table(self._lesionTable(parameterNode), diameters)
        return diameters

    def addLesion(self, parameterNode, diameterMm: float) -> None:
        from TNMStagingLib.scene import session

        session.add_lesion(self._lesionTable(parameterNode), diameterMm)

    def removeLesions(self, parameterNode, rows) -> None:
        from TNMStagingLib.scene import session

        if parameterNode.lesionTable is not None:
            session.remove_lesions(parameterNode.lesionTable, rows)

    def applyRules(self, parameterNode):
        """AJCC rules on the lesion table and the findings; the result goes into the session and the table."""
        from TNMStagingLib.core import ajcc
        from TNMStagingLib.scene import session

        diameters = session.lesion_diameters(parameterNode.lesionTable)
        result = ajcc.stage(diameters, **self.findings(parameterNode))
        self.session.watch(parameterNode.segmentation, parameterNode.lesionTable)
        self.session.set_rules(result, diameters, self.stagingInputs(parameterNode))
        self._writeTable(parameterNode)
        return result

    def refreshResult(self, parameterNode) -> bool:
        """Drop the stages the current inputs invalidate and rewrite the table; True when something was dropped."""
        dropped = self.session.update(self.stagingInputs(parameterNode))
        self.session.watch(parameterNode.segmentation, parameterNode.lesionTable)
        if dropped:
            self._writeTable(parameterNode)
        return dropped

    def _writeTable(self, parameterNode) -> None:
        from TNMStagingLib.scene import staging

        parameterNode.resultTable = staging.update_staging_table(self.session.rows(), parameterNode.resultTable,
                                                                 scene=slicer.mrmlScene,
                                                                 segmentation_node=parameterNode.segmentation)

    def ensureDependencies(self, askUser: bool = True, inTesting: bool = False) -> bool:
        """Install torch, torchvision (PyTorchUtils) and both modules' requirements (pip_ensure) after asking."""
        from LiverTumorSegLib.gui.dependencies import ensurePythonPackages
        from LiverTumorSegLib.resources import REQUIREMENTS_FILE
        from TNMStagingLib.resources import REQUIREMENTS_FILE as STAGING_REQUIREMENTS

        return ensurePythonPackages([REQUIREMENTS_FILE, STAGING_REQUIREMENTS], _("Learned staging"), askUser,
                                    inTesting)

    def startStagingFromParameters(self, parameterNode, launcher=None):
        """Start the learned stage of the form; returns (run, token) (the token checks the inputs at the end)."""
        token = self.session.start_learned(self.stagingInputs(parameterNode))
        run = self.startStaging(parameterNode.inputVolume, parameterNode.segmentation,
                                self.modelPathOrNone(parameterNode.modelPath), device=parameterNode.device.value,
                                launcher=launcher)
        return run, token

    def startStaging(self, volumeNode, segmentationNode, modelPath=None, device: str = "auto", launcher=None):
        """Start the learned stage in a background process; returns the run (poll, cancel, finish)."""
        from LiverTumorSegLib.scene.run import slicer_launcher
        from TNMStagingLib.scene.staging import StagingRun

        run = StagingRun(volumeNode, segmentationNode, model_path=modelPath, device=device,
                         launcher=launcher or slicer_launcher)
        run.start()
        return run

    def acceptLearnedStage(self, parameterNode, token, learned) -> bool:
        """Put a finished learned stage into the table unless its inputs changed meanwhile."""
        self.session.update(self.stagingInputs(parameterNode))
        if not self.session.finish_learned(token, learned):
            return False
        self._writeTable(parameterNode)
        return True

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
        return scene_staging.update_staging_table(scene_staging.staging_rows(rules, diameters, learned),
                                                  scene=slicer.mrmlScene)


class TNMStagingTest(ScriptedLoadableModuleTest):
    """Self-tests: the scenarios of TNMStagingLib.testing.scenarios on SampleData's CTLiver (the headless suite runs
    the same scenarios on a phantom). Without torch the learned-stage scenarios are skipped, with a message."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        from LiverTumorSegLib.testing.scenarios import run_self_test
        from TNMStagingLib.testing import scenarios

        run_self_test(scenarios.SCENARIOS, scenarios.run, set_up=self.setUp, report=self.delayDisplay,
                      ensure_dependencies=lambda: TNMStagingLogic().ensureDependencies(askUser=False, inTesting=True))

    def test_scenarios(self) -> None:
        """Every shared scenario (see TNMStagingLib.testing.scenarios.SCENARIOS)."""
        self.runTest()
