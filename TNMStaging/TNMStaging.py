"""TNMStaging: AJCC 8th-edition stage from measured liver lesions (3D Slicer scripted module).

Thin GUI layer. The rules live in ``TNMStagingLib.ajcc`` (pure Python, tested headless); the learned
stage suggestion (SAM encoder features + XGBoost) is added by a later release.
"""

from __future__ import annotations

import logging
from typing import Annotated

import slicer
import vtk
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

from TNMStagingLib import ajcc, scenarios


class TNMStaging(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TNM Staging (liver)")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorAnalysis team"]
        self.parent.helpText = _(
            "AJCC 8th edition staging of hepatocellular carcinoma from the longest diameters of the liver "
            "lesions, with the reader's findings on vascular invasion, adjacent organs, lymph nodes (N) and "
            "distant metastases (M), which the segmentation cannot see. Colorectal liver metastases are M1a "
            "(stage IVA). A suggestion for the reader, not a diagnosis."
        )
        self.parent.acknowledgementText = _("AJCC Cancer Staging Manual, 8th edition (liver chapter).")


@parameterNodeWrapper
class TNMStagingParameterNode:
    """GUI state: the lesion diameters (mm, comma separated) and the reader-confirmed findings."""

    diametersMm: str = ""
    vascularInvasion: Annotated[str, Choice(["none", "suspected", "major"])] = "none"
    adjacentOrganInvasion: bool = False
    perforation: bool = False
    nodalStatus: Annotated[str, Choice(["N0", "N1"])] = "N0"
    metastasis: Annotated[str, Choice(["M0", "M1"])] = "M0"
    tumorType: Annotated[str, Choice(["hcc", "crlm"])] = "hcc"


class TNMStagingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin widget: the parameter node holds the inputs, the logic applies the rules."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TNMStaging.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TNMStagingLogic()
        self.ui.applyRulesButton.connect("clicked(bool)", self.onApplyRules)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

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

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._clearResult)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._clearResult)

    def _clearResult(self, caller=None, event=None) -> None:
        self.ui.resultLabel.text = ""

    def onApplyRules(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot stage these inputs."), waitCursor=False):
            result = self.logic.stageFromParameters(self._parameterNode)
            self.ui.resultLabel.text = _("{T} {N} {M} - stage {stage}\n{explanation}").format(**result.to_dict())


class TNMStagingLogic(ScriptedLoadableModuleLogic):
    """Scriptable logic. Example::

        TNMStagingLogic().stage([18.0, 30.0], vascularInvasion="none")
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


class TNMStagingTest(ScriptedLoadableModuleTest):
    """Self-tests: the scenario functions of TNMStagingLib.scenarios, also run by pytest headless."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        for name in scenarios.SCENARIOS:
            self.setUp()
            self._runScenario(name)

    def _runScenario(self, name: str) -> None:
        logging.info(f"TNMStaging scenario: {name}")
        scenarios.run(name, slicer.mrmlScene)
        self.delayDisplay(f"{name} passed")

    def test_rules_table(self) -> None:
        self._runScenario("rules_table")
