"""LiverTumorSeg: liver and liver tumor segmentation of contrast CT (3D Slicer scripted module).

This file is the thin GUI layer: the module description, the widget (bound to a parameter node), a
logic class usable from Slicer's Python console, and the self-test class. Every decision lives in
``LiverTumorSegLib`` (compute core and scene bridge), which the headless test suite runs without Qt.
"""

from __future__ import annotations

import logging
import pathlib

import qt
import slicer
import vtk
from LiverTumorSegLib import scenarios, scene_input
from LiverTumorSegLib.hu_windows import load_presets
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


class LiverTumorSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Tumor Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorAnalysis team"]
        self.parent.helpText = _(
            "Load a contrast-enhanced abdominal CT (DICOM folder or any loaded scalar volume) and window it "
            "with CT presets. Liver and tumor segmentation, measurements and resection planning are added by "
            "the following releases. Research use only; not a medical device."
        )
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, MONAI, SimpleITK and pydicom. Segmentation recipe after a two-stage "
            "SegResNet thesis on colorectal liver metastases."
        )


@parameterNodeWrapper
class LiverTumorSegParameterNode:
    """GUI state, saved with the scene.

    inputVolume: the CT to work on (HU).
    dicomFolder: the folder the last DICOM series was loaded from.
    """

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    dicomFolder: pathlib.Path


class LiverTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin widget: reads the GUI through the parameter node and calls the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverTumorSegLogic()

        self._createWindowPresetButtons()
        self.ui.loadDicomButton.connect("clicked(bool)", self.onLoadDicomButton)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def _createWindowPresetButtons(self) -> None:
        """One button per HU window preset; the presets are data (Resources/hu_window_presets.json)."""
        layout = self.ui.windowPresetButtonsFrame.layout()
        for preset in load_presets().values():
            button = qt.QPushButton(preset.label)
            button.toolTip = _("Window {width:g} / level {level:g} HU. {note}").format(
                width=preset.width_hu, level=preset.level_hu, note=preset.note)
            button.connect("clicked(bool)", lambda _checked, presetId=preset.id: self.onWindowPreset(presetId))
            layout.addWidget(button)

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        hasVolume = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.windowPresetButtonsFrame.enabled = hasVolume
        folder = self._parameterNode.dicomFolder if self._parameterNode else None
        self.ui.loadDicomButton.enabled = bool(folder and str(folder) not in ("", ".") and folder.is_dir())

    def onLoadDicomButton(self) -> None:
        folder = self._parameterNode.dicomFolder
        with slicer.util.tryWithErrorDisplay(_("Failed to load the DICOM series."), waitCursor=True):
            volumeNode, messages = self.logic.loadDicomFolder(folder)
            self._parameterNode.inputVolume = volumeNode
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
            self.ui.statusLabel.text = "\n".join(messages) if messages else _("Loaded {name}.").format(
                name=volumeNode.GetName())

    def onWindowPreset(self, presetId: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to apply the window."), waitCursor=False):
            self.logic.applyWindowPreset(self._parameterNode.inputVolume, presetId)


class LiverTumorSegLogic(ScriptedLoadableModuleLogic):
    """Scriptable logic (usable from the Python console without the widget).

    Example::

        logic = slicer.util.getModuleLogic("LiverTumorSeg")  # or LiverTumorSegLogic()
        volumeNode, messages = logic.loadDicomFolder("/data/patient01")
        logic.applyWindowPreset(volumeNode, "liver")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return LiverTumorSegParameterNode(super().getParameterNode())

    def loadDicomFolder(self, folder, seriesUID: str | None = None):
        """Load one CT series of ``folder`` as a volume node (HU); returns (node, warning messages)."""
        return scene_input.load_dicom_volume(folder, seriesUID, scene=slicer.mrmlScene)

    def applyWindowPreset(self, volumeNode, presetId: str) -> None:
        """Apply the HU window preset ``presetId`` (ids in Resources/hu_window_presets.json)."""
        scene_input.apply_window_preset(volumeNode, presetId)


class LiverTumorSegTest(ScriptedLoadableModuleTest):
    """Self-tests: the scenario functions of LiverTumorSegLib.scenarios, also run by pytest headless."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        for name in scenarios.SCENARIOS:
            self.setUp()
            self._runScenario(name)

    def _runScenario(self, name: str) -> None:
        logging.info(f"LiverTumorSeg scenario: {name}")
        with scenarios.scratch_folder() as workDir:
            scenarios.run(name, slicer.mrmlScene, workDir)
        self.delayDisplay(f"{name} passed")

    def test_load_phantom_dicom(self) -> None:
        self._runScenario("load_phantom_dicom")

    def test_window_presets(self) -> None:
        self._runScenario("window_presets")

    def test_bad_dicom_leaves_scene_unchanged(self) -> None:
        self._runScenario("bad_dicom_leaves_scene_unchanged")
