"""LiverTumorSeg: liver and liver tumor segmentation of contrast CT (3D Slicer scripted module).

This file is the thin GUI layer: the module description, the widget (bound to a parameter node), a
logic class usable from Slicer's Python console, and the self-test class. Every decision lives in
``LiverTumorSegLib`` (compute core and scene bridge), which the headless test suite runs without Qt.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LiverTumorSegLib.core.cascade import MIN_TUMOR_ML
from LiverTumorSegLib.core.hu_windows import load_presets, model_input_window
from LiverTumorSegLib.gui.polling import RunPoller
from LiverTumorSegLib.models.manifest import load_manifest
from LiverTumorSegLib.scene import input as scene_input
from LiverTumorSegLib.testing import scenarios
from LiverTumorSegLib.worker import dependencies

NO_TUMOR_MODEL = ""
DEBOUNCE_MS = 300


class LiverTumorSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Tumor Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorAnalysis team"]
        self.parent.helpText = _(
            "Load a contrast-enhanced abdominal CT, press Run and get Liver and Liver tumor segments from a "
            "two-stage SegResNet cascade computed in a background process. Correct them with Segment Editor: the "
            "measurements and the future liver remnant follow the edits. Models marked DEMO ONLY are trained on "
            "synthetic phantoms. Research use only; not a medical device."
        )
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, MONAI, SimpleITK and pydicom. Segmentation recipe after a two-stage SegResNet "
            "thesis on colorectal liver metastases."
        )


@parameterNodeWrapper
class LiverTumorSegParameterNode:
    """GUI state, saved with the scene."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    dicomFolder: pathlib.Path
    liverModelId: str = ""
    tumorModelId: str = ""
    device: Annotated[str, Choice(["auto", "cpu"])] = "auto"
    minTumorMl: Annotated[float, WithinRange(0.0, 100.0)] = MIN_TUMOR_ML
    perLesionSegments: bool = False
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    huLowerHu: Annotated[float, WithinRange(-1024.0, 3000.0)] = 0.0
    huUpperHu: Annotated[float, WithinRange(-1024.0, 3000.0)] = 60.0
    usePlane: bool = True
    resectionPlane: slicer.vtkMRMLMarkupsPlaneNode
    useMargin: bool = False
    marginMm: Annotated[float, WithinRange(0.0, 100.0)] = 10.0
    usePainted: bool = False
    dropDisconnected: bool = False
    heightCm: Annotated[float, WithinRange(0.0, 250.0)] = 0.0
    weightKg: Annotated[float, WithinRange(0.0, 400.0)] = 0.0
    liverCondition: Annotated[str, Choice(["normal", "chemotherapy", "cirrhosis"])] = "normal"
    liveFlr: bool = True


class LiverTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin widget: reads the GUI through the parameter node and calls the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runPoller = None
        self._measurementsUpdater = None
        self._flrPlanner = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverTumorSegLogic()

        self._runPoller = RunPoller(self.ui.progressBar, self.ui.progressLabel, _("Segmentation failed"),
                                    onFinished=self._onSegmentationFinished, onEnded=self._onParameterNodeModified,
                                    onLogLine=self.ui.logTextEdit.appendPlainText)
        self._measurementsTimer = self._singleShotTimer(self._updateMeasurements)
        self._flrTimer = self._singleShotTimer(self._updateFlrIfDirty)

        self._createWindowPresetButtons()
        self._fillModelComboBoxes()
        self.ui.loadDicomButton.connect("clicked(bool)", self.onLoadDicomButton)
        self.ui.modelInputPreviewButton.connect("clicked(bool)", self.onModelInputPreview)
        self.ui.runButton.connect("clicked(bool)", self.onRunButton)
        self.ui.addHuRangeButton.connect("clicked(bool)", self.onAddHuRangeSegment)
        self.ui.computeFlrButton.connect("clicked(bool)", self.onComputeFlr)
        self.ui.liverModelComboBox.connect("currentIndexChanged(int)", self._onModelChoice)
        self.ui.tumorModelComboBox.connect("currentIndexChanged(int)", self._onModelChoice)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    @staticmethod
    def _singleShotTimer(callback):
        timer = qt.QTimer()
        timer.setSingleShot(True)
        timer.setInterval(DEBOUNCE_MS)
        timer.connect("timeout()", callback)
        return timer

    def _createWindowPresetButtons(self) -> None:
        """One button per HU window preset; the presets are data (Resources/hu_window_presets.json)."""
        layout = self.ui.windowPresetButtonsFrame.layout()
        for preset in load_presets().values():
            button = qt.QPushButton(preset.label)
            button.toolTip = _("Window {width:g} / level {level:g} HU. {note}").format(
                width=preset.width_hu, level=preset.level_hu, note=preset.note)
            button.connect("clicked(bool)", lambda _checked, presetId=preset.id: self.onWindowPreset(presetId))
            layout.addWidget(button)

    def _fillModelComboBoxes(self) -> None:
        """Models from the manifest; the user data of each item is the model id."""
        self.ui.liverModelComboBox.clear()
        self.ui.tumorModelComboBox.clear()
        for entry in load_manifest().values():
            if entry.task in ("liver", "multi-organ"):
                self.ui.liverModelComboBox.addItem(entry.display_name, entry.id)
            elif entry.task == "tumor":
                self.ui.tumorModelComboBox.addItem(entry.display_name, entry.id)
        self.ui.tumorModelComboBox.addItem(_("None (liver only)"), NO_TUMOR_MODEL)

    def cleanup(self) -> None:
        self._stopLiveUpdates()
        if self._runPoller is not None:
            self._runPoller.stop()
        self.removeObservers()

    def onReload(self) -> None:
        """Reload the library too, so that "Reload and Test" runs the edited code."""
        from LiverTumorSegLib.gui.reload import forget_package

        forget_package("LiverTumorSegLib")
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._stopLiveUpdates()
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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._selectModelItems()
            self._onParameterNodeModified()

    def _selectModelItems(self) -> None:
        for comboBox, modelId in ((self.ui.liverModelComboBox, self._parameterNode.liverModelId),
                                  (self.ui.tumorModelComboBox, self._parameterNode.tumorModelId)):
            index = comboBox.findData(modelId)
            if index >= 0:
                comboBox.currentIndex = index
        self._onModelChoice()

    def _onModelChoice(self, _index=None) -> None:
        if self._parameterNode:
            self._parameterNode.liverModelId = self.ui.liverModelComboBox.currentData or ""
            self._parameterNode.tumorModelId = self.ui.tumorModelComboBox.currentData or ""

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        node = self._parameterNode
        hasVolume = bool(node and node.inputVolume)
        running = self._runPoller is not None and self._runPoller.running
        self.ui.windowPresetButtonsFrame.enabled = hasVolume
        self.ui.modelInputPreviewButton.enabled = hasVolume
        folder = node.dicomFolder if node else None
        self.ui.loadDicomButton.enabled = bool(folder and str(folder) not in ("", ".") and folder.is_dir())
        self.ui.runButton.enabled = running or (hasVolume and bool(node.liverModelId))
        self.ui.runButton.text = _("Cancel") if running else _("Run")
        hasSegmentation = bool(node and node.outputSegmentation)
        self.ui.addHuRangeButton.enabled = hasSegmentation and hasVolume
        self.ui.computeFlrButton.enabled = hasSegmentation and hasVolume
        self._refreshPaintedSegments()
        self._syncLiveUpdates()

    # --- input and display -------------------------------------------------------------------------
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

    def onModelInputPreview(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("This model has no HU input window to preview."), waitCursor=False):
            self.logic.applyModelInputWindow(self._parameterNode.inputVolume, self._parameterNode.liverModelId)

    # --- segmentation run --------------------------------------------------------------------------
    def onRunButton(self) -> None:
        if self._runPoller.running:
            self._runPoller.cancel()
            return
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            self.ui.logTextEdit.clear()
            self._runPoller.start(self.logic.startSegmentation(
                node.inputVolume, node.liverModelId, node.tumorModelId or None, device=node.device,
                minTumorMl=node.minTumorMl, perLesionSegments=node.perLesionSegments))
            self._onParameterNodeModified()

    def _onSegmentationFinished(self, segmentationNode) -> None:
        self._parameterNode.outputSegmentation = segmentationNode
        self.ui.progressLabel.text = _("Done: {name}").format(name=segmentationNode.GetName())

    # --- measurements ------------------------------------------------------------------------------
    def _syncLiveUpdates(self) -> None:
        """Keep the measurements (and, when asked, the FLR) following the selected segmentation."""
        node = self._parameterNode
        segmentation = node.outputSegmentation if node else None
        volume = node.inputVolume if node else None
        if self._measurementsUpdater is None or self._measurementsUpdater.segmentation_node is not segmentation:
            self._stopLiveUpdates()
            if segmentation is not None and volume is not None:
                self._measurementsUpdater = self.logic.measurementsUpdater(segmentation, volume,
                                                                           self._measurementsTimer.start)
                self._updateMeasurements()
        if self._flrPlanner is not None:
            self._flrPlanner.set_plane_nodes([node.resectionPlane] if node.usePlane and node.resectionPlane else [])
            self._flrPlanner.set_parameters(**self.logic.flrParameters(node, self._paintedSegmentId()))

    def _stopLiveUpdates(self) -> None:
        for updater in (self._measurementsUpdater, self._flrPlanner):
            if updater is not None:
                updater.remove_observers()
        self._measurementsUpdater = self._flrPlanner = None

    def _updateMeasurements(self) -> None:
        if self._measurementsUpdater is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to update the measurements."), waitCursor=False):
            self._measurementsUpdater.update_if_dirty()
            self.ui.measurementsTableView.setMRMLTableNode(self._measurementsUpdater.table_node)

    def onAddHuRangeSegment(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to add the HU-range segment."), waitCursor=True):
            self.logic.addHuRangeSegment(node.outputSegmentation, node.inputVolume, node.huLowerHu, node.huUpperHu)

    # --- resection planning ------------------------------------------------------------------------
    def _refreshPaintedSegments(self) -> None:
        comboBox = self.ui.paintedSegmentComboBox
        current = comboBox.currentData
        comboBox.blockSignals(True)
        comboBox.clear()
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentation is not None:
            for segmentId in segmentation.GetSegmentation().GetSegmentIDs():
                comboBox.addItem(segmentation.GetSegmentation().GetSegment(segmentId).GetName(), segmentId)
        index = comboBox.findData(current)
        comboBox.currentIndex = max(index, 0)
        comboBox.blockSignals(False)

    def _paintedSegmentId(self):
        return self.ui.paintedSegmentComboBox.currentData if self._parameterNode.usePainted else None

    def onComputeFlr(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot compute the future liver remnant."), waitCursor=True):
            if self._flrPlanner is None:
                self._flrPlanner = self.logic.flrPlanner(node, self._paintedSegmentId(), self._flrTimer.start,
                                                         observe=node.liveFlr)
            result = self._flrPlanner.update()
            self._showFlr(result)

    def _updateFlrIfDirty(self) -> None:
        if self._flrPlanner is None or not self._parameterNode.liveFlr:
            return
        try:
            result = self._flrPlanner.update_if_dirty()
        except ValueError as error:  # e.g. the liver segment was deleted while editing
            self.ui.flrStatusLabel.text = str(error)
            return
        if result is not None:
            self._showFlr(result)

    def _showFlr(self, result) -> None:
        figures = result.result.figures.to_dict()
        self.ui.flrTableView.setMRMLTableNode(result.table_node)
        self.ui.flrStatusLabel.text = _("FLR {flr:.0f} mL ({ratio:.1%} of the functional liver): {verdict}").format(
            flr=figures["flr_ml"], ratio=figures["flr_ratio"], verdict=figures["verdict"])


class LiverTumorSegLogic(ScriptedLoadableModuleLogic):
    """Scriptable logic (usable from the Python console without the widget).

    Example::

        logic = LiverTumorSegLogic()
        volumeNode, messages = logic.loadDicomFolder("/data/patient01")
        segmentationNode = logic.process(volumeNode, "demo-liver-segresnet", "demo-tumor-segresnet", wait=True)
    """

    def getParameterNode(self):
        return LiverTumorSegParameterNode(super().getParameterNode())

    def loadDicomFolder(self, folder, seriesUID: str | None = None):
        """Load one CT series of ``folder`` as a volume node (HU); returns (node, warning messages)."""
        return scene_input.load_dicom_volume(folder, seriesUID, scene=slicer.mrmlScene)

    def applyWindowPreset(self, volumeNode, presetId: str) -> None:
        """Apply the HU window preset ``presetId`` (ids in Resources/hu_window_presets.json)."""
        scene_input.apply_window_preset(volumeNode, presetId)

    def applyModelInputWindow(self, volumeNode, modelId: str) -> None:
        """Window the CT to the input range of ``modelId`` (how the model sees the intensities)."""
        from LiverTumorSegLib.scene import volumes as scene

        window = model_input_window(load_manifest()[modelId].intensity)
        if window is None:
            raise ValueError(f"model {modelId} normalizes intensities per image; it has no fixed HU window")
        scene.apply_hu_window(volumeNode, window)

    def ensureDependencies(self, askUser: bool = True) -> bool:
        """Install what the segmentation worker needs, after asking (see ``ensurePythonPackages``)."""
        from LiverTumorSegLib.gui.dependencies import ensurePythonPackages

        return ensurePythonPackages(dependencies.WORKER_REQUIREMENTS, _("Liver segmentation"), askUser)

    def startSegmentation(self, volumeNode, liverModelId: str, tumorModelId: str | None, device: str = "auto",
                          minTumorMl: float = MIN_TUMOR_ML, perLesionSegments: bool = False, launcher=None):
        """Start the cascade in a background process; returns the run (poll, cancel, finish)."""
        from LiverTumorSegLib.scene.run import SegmentationRun, slicer_launcher

        run = SegmentationRun(volumeNode, liver_model=liverModelId, tumor_model=tumorModelId, device=device,
                              min_tumor_ml=minTumorMl, per_lesion_segments=perLesionSegments,
                              launcher=launcher or slicer_launcher)
        run.start()
        return run

    def process(self, volumeNode, liverModelId: str, tumorModelId: str | None, device: str = "auto",
                wait: bool = True, **options):
        """Segment ``volumeNode``; with ``wait`` blocks and returns the new segmentation node, else the run."""
        from LiverTumorSegLib.scene.run import SegmentationRun

        if not wait:
            return self.startSegmentation(volumeNode, liverModelId, tumorModelId, device, **options)
        run = SegmentationRun(volumeNode, liver_model=liverModelId, tumor_model=tumorModelId, device=device,
                              min_tumor_ml=options.get("minTumorMl", MIN_TUMOR_ML),
                              per_lesion_segments=options.get("perLesionSegments", False))
        return run.run_blocking(on_progress=lambda event: logging.info(f"{event.stage}: {event.message}"))

    def measurementsUpdater(self, segmentationNode, volumeNode, scheduleUpdate):
        from LiverTumorSegLib.scene.results import MeasurementsUpdater

        return MeasurementsUpdater(segmentationNode, volumeNode, schedule_update=scheduleUpdate)

    def addHuRangeSegment(self, segmentationNode, volumeNode, lowerHu: float, upperHu: float) -> str:
        from LiverTumorSegLib.scene.results import add_hu_range_segment

        return add_hu_range_segment(segmentationNode, volumeNode, lowerHu, upperHu)

    @staticmethod
    def flrParameters(parameterNode, paintedSegmentId=None) -> dict:
        return {
            "resection_segment_id": paintedSegmentId,
            "margin_mm": parameterNode.marginMm if parameterNode.useMargin else None,
            "drop_disconnected": parameterNode.dropDisconnected,
            "height_cm": parameterNode.heightCm or None,
            "weight_kg": parameterNode.weightKg or None,
            "condition": parameterNode.liverCondition,
        }

    def flrPlanner(self, parameterNode, paintedSegmentId, scheduleUpdate, observe: bool = True):
        from LiverTumorSegLib.scene.flr import FLRPlanner

        planes = [parameterNode.resectionPlane] if parameterNode.usePlane and parameterNode.resectionPlane else []
        return FLRPlanner(parameterNode.outputSegmentation, parameterNode.inputVolume, schedule_update=scheduleUpdate,
                          plane_nodes=planes, observe=observe, **self.flrParameters(parameterNode, paintedSegmentId))


class LiverTumorSegTest(ScriptedLoadableModuleTest):
    """Self-tests: the scenario functions of LiverTumorSegLib.testing.scenarios, also run by pytest headless."""

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

    def test_scenarios(self) -> None:
        """Every shared scenario (see LiverTumorSegLib.testing.scenarios.SCENARIOS)."""
        self.runTest()
