"""LiverTumorSeg: liver and liver tumor segmentation of contrast CT (3D Slicer scripted module, Slicer 5.12+).

This file is the thin GUI layer: the module description, the widget (bound to a parameter node), a logic class
usable from Slicer's Python console, and the self-test class. Every decision lives in ``LiverTumorSegLib`` (compute
core and scene bridge), which the headless test suite runs without Qt. Importing this file at Slicer start-up loads
nothing heavy: the library is imported when the module is first shown or used.
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
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from LiverTumorSegLib.core.options import MIN_TUMOR_ML, Device, LiverCondition


class LiverTumorSeg(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver Tumor Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverTumorAnalysis team"]
        self.parent.helpText = _(
            "Import a contrast-enhanced abdominal CT into Slicer's DICOM database (the portal-venous series is "
            "preselected) or select any loaded CT, press Run and get Liver and Liver tumor segments from a two-stage "
            "SegResNet cascade computed in a background process. Correct them with Segment Editor: the measurements "
            "and the future liver remnant follow the edits; every segment named or coded as a tumor counts. Models "
            "marked DEMO ONLY are trained on synthetic phantoms. Requires 3D Slicer 5.12 or later. Research use "
            "only; not a medical device."
        )
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, MONAI, SimpleITK and pydicom. Segmentation recipe after a two-stage SegResNet "
            "thesis on colorectal liver metastases."
        )


@parameterNodeWrapper
class LiverTumorSegParameterNode:
    """GUI state, saved with the scene. Empty model ids mean "not chosen": the default models of the manifest."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    dicomFolder: pathlib.Path
    liverModelId: str = ""
    tumorModelId: str = ""
    device: Device = Device.auto
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
    paintedSegmentId: str = ""
    dropDisconnected: bool = False
    heightCm: Annotated[float, WithinRange(0.0, 250.0)] = 0.0
    weightKg: Annotated[float, WithinRange(0.0, 300.0)] = 0.0  # core.flr.WEIGHT_RANGE_KG; 0: unknown
    liverCondition: LiverCondition = LiverCondition.normal
    liveFlr: bool = True


class LiverTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin widget: reads the GUI through the parameter node and calls the logic; live updates, runs and DICOM
    imports are objects of the library that it only wires to Qt."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runPoller = None
        self._live = None
        self._dicomImport = None
        self._seriesUIDs: list[str] = []

    def setup(self) -> None:
        from LiverTumorSegLib.gui.dicom import DicomFolderImport
        from LiverTumorSegLib.gui.polling import RunPoller

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverTumorSegLogic()

        self._runPoller = RunPoller(self.ui.progressBar, self.ui.progressLabel, _("Segmentation failed"),
                                    onFinished=self._onSegmentationFinished, onEnded=self._onParameterNodeModified,
                                    onLogLine=self.ui.logTextEdit.appendPlainText)
        self._timers = {kind: self._singleShotTimer(callback) for kind, callback in
                        (("measurements", self._updateMeasurements), ("flr", self._updateFlr))}
        self._live = self.logic.liveUpdates(lambda kind, delayMs: self._timers[kind].start(delayMs))
        self._dicomImport = DicomFolderImport(self._onDicomProgress, self._onDicomImported)

        self._createWindowPresetButtons()
        self._fillModelComboBoxes()
        self.ui.importDicomButton.connect("clicked(bool)", self.onImportDicom)
        self.ui.loadSeriesButton.connect("clicked(bool)", self.onLoadSeries)
        self.ui.modelInputPreviewButton.connect("clicked(bool)", self.onModelInputPreview)
        self.ui.runButton.connect("clicked(bool)", self.onRunButton)
        self.ui.addHuRangeButton.connect("clicked(bool)", self.onAddHuRangeSegment)
        self.ui.computeFlrButton.connect("clicked(bool)", self.onComputeFlr)
        self.ui.flipPlaneButton.connect("clicked(bool)", self.onFlipPlane)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.liverModelComboBox.connect("currentIndexChanged(int)", self._onModelChoice)
        self.ui.tumorModelComboBox.connect("currentIndexChanged(int)", self._onModelChoice)
        self.ui.paintedSegmentSelector.connect("currentSegmentChanged(QString)", self._onPaintedSegment)
        self.ui.seriesTableWidget.connect("itemSelectionChanged()", self._onParameterNodeModified)
        self.ui.flrCollapsibleButton.connect("contentsCollapsed(bool)", self._onParameterNodeModified)
        self.ui.resectionPlanePlaceWidget.placeButton().show()  # the other markups buttons stay hidden

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        if not self.logic.slicerSupported():
            self.ui.statusLabel.text = _("This module needs 3D Slicer 5.12 or later.")
        self.initializeParameterNode()

    @staticmethod
    def _singleShotTimer(callback):
        timer = qt.QTimer()
        timer.setSingleShot(True)
        timer.connect("timeout()", callback)
        return timer

    def _createWindowPresetButtons(self) -> None:
        """One button per HU window preset; the presets are data (Resources/hu_window_presets.json)."""
        from LiverTumorSegLib.core.hu_windows import load_presets

        layout = self.ui.windowPresetButtonsFrame.layout()
        for preset in load_presets().values():
            button = qt.QPushButton(preset.label)
            button.toolTip = _("Window {width:g} / level {level:g} HU. {note}").format(
                width=preset.width_hu, level=preset.level_hu, note=preset.note)
            button.connect("clicked(bool)", lambda _checked, presetId=preset.id: self.onWindowPreset(presetId))
            layout.addWidget(button)

    def _fillModelComboBoxes(self) -> None:
        """Models of the manifest; the user data of each item is the model id ("none": liver only)."""
        for comboBox, stage in ((self.ui.liverModelComboBox, "liver"), (self.ui.tumorModelComboBox, "tumor")):
            comboBox.clear()
            for choice in self.logic.modelChoices(stage):
                comboBox.addItem(choice.label, choice.id)

    def cleanup(self) -> None:
        self._runPoller.stop()
        self._live.stop()
        self._dicomImport.cancel()
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
        self._syncLive(visible=False)  # no edit observers while the module is hidden

    def onSceneStartClose(self, caller, event) -> None:
        self._runPoller.stop(_("The scene was closed: the segmentation was cancelled."))
        self._live.stop()
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
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        node = self._parameterNode
        running = self._runPoller.running
        if node is not None and running:
            self._runPoller.abandonIfStale(node.inputVolume)  # another CT selected: the old run imports nothing
            running = self._runPoller.running
        hasVolume = bool(node and node.inputVolume)
        hasSegmentation = bool(node and node.outputSegmentation)
        self.ui.windowPresetButtonsFrame.enabled = hasVolume
        self.ui.modelInputPreviewButton.enabled = hasVolume
        self.ui.importDicomButton.enabled = bool(node) and self.logic.isFolder(node.dicomFolder) \
            and not self._dicomImport.running
        self.ui.loadSeriesButton.enabled = self.ui.seriesTableWidget.currentRow() >= 0
        self.ui.runButton.enabled = running or hasVolume
        self.ui.runButton.text = _("Cancel") if running else _("Run")
        self.ui.addHuRangeButton.enabled = hasSegmentation and hasVolume
        self.ui.computeFlrButton.enabled = hasSegmentation and hasVolume
        self.ui.flipPlaneButton.enabled = bool(node and node.resectionPlane)
        self.ui.exportDicomButton.enabled = hasSegmentation and hasVolume
        if node is None:
            return
        self._selectModelItems()
        if node.usePlane and node.outputSegmentation and not node.resectionPlane \
                and not self.ui.flrCollapsibleButton.collapsed:
            self.logic.ensureResectionPlane(node)  # something to place: the place button needs a plane node
            return  # the new plane modified the parameter node, which called this again
        self.ui.resectionPlanePlaceWidget.setCurrentNode(node.resectionPlane)
        self.ui.paintedSegmentSelector.blockSignals(True)
        self.ui.paintedSegmentSelector.setCurrentNode(node.outputSegmentation)
        self.ui.paintedSegmentSelector.setCurrentSegmentID(node.paintedSegmentId)
        self.ui.paintedSegmentSelector.blockSignals(False)
        self._syncLive()

    def _syncLive(self, visible: bool | None = None) -> None:
        if self._parameterNode is None:
            self._live.stop()
            return
        visible = self.parent.isEntered if visible is None else visible
        self._live.sync(self.logic.liveSettings(self._parameterNode, visible=visible))

    def _selectModelItems(self) -> None:
        liverId, tumorId = self.logic.modelIds(self._parameterNode)
        for comboBox, modelId in ((self.ui.liverModelComboBox, liverId), (self.ui.tumorModelComboBox, tumorId)):
            comboBox.blockSignals(True)
            comboBox.currentIndex = max(comboBox.findData(modelId), 0)
            comboBox.blockSignals(False)

    def _onModelChoice(self, _index=None) -> None:
        if self._parameterNode:
            self._parameterNode.liverModelId = self.ui.liverModelComboBox.currentData or ""
            self._parameterNode.tumorModelId = self.ui.tumorModelComboBox.currentData or ""

    def _onPaintedSegment(self, segmentId) -> None:
        if self._parameterNode:
            self._parameterNode.paintedSegmentId = segmentId or ""

    # --- input and display -------------------------------------------------------------------------
    def onImportDicom(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to import the DICOM folder."), waitCursor=False):
            self.ui.seriesTableWidget.setRowCount(0)
            self.ui.seriesReasonLabel.text = ""
            self.ui.dicomProgressBar.visible = True
            self._dicomImport.start(self._parameterNode.dicomFolder)
            self._onParameterNodeModified()

    def _onDicomProgress(self, percent, text) -> None:
        if percent is not None:
            self.ui.dicomProgressBar.value = percent
        if text:
            self.ui.statusLabel.text = text

    def _onDicomImported(self, seriesUIDs) -> None:
        self.ui.dicomProgressBar.visible = False
        with slicer.util.tryWithErrorDisplay(_("Failed to list the series of the DICOM folder."), waitCursor=True):
            choice = self.logic.dicomSeriesChoice(seriesUIDs)
            rows = self.logic.seriesPickerRows(choice)
            table = self.ui.seriesTableWidget
            table.setRowCount(len(rows))
            self._seriesUIDs = [row.series_uid for row in rows]
            for rowIndex, row in enumerate(rows):
                for column, text in enumerate(row.cells):
                    item = qt.QTableWidgetItem(text)
                    item.setToolTip(row.tooltip)
                    if not row.selectable:
                        item.setFlags(qt.Qt.NoItemFlags)
                    table.setItem(rowIndex, column, item)
            table.resizeColumnsToContents()
            if rows and rows[0].selectable:
                table.selectRow(0)
            self.ui.seriesReasonLabel.text = choice.reason
            self.ui.statusLabel.text = ""
        self._onParameterNodeModified()

    def onLoadSeries(self) -> None:
        row = self.ui.seriesTableWidget.currentRow()
        if row < 0 or row >= len(self._seriesUIDs):
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the DICOM series."), waitCursor=True):
            volumeNode = self.logic.loadDicomSeries(self._seriesUIDs[row], onProgress=self._onDicomProgress)
            self._parameterNode.inputVolume = volumeNode
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
            self.ui.statusLabel.text = _("Loaded {name}.").format(name=volumeNode.GetName())

    def onWindowPreset(self, presetId: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to apply the window."), waitCursor=False):
            self.logic.applyWindowPreset(self._parameterNode.inputVolume, presetId)

    def onModelInputPreview(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("This model has no HU input window to preview."), waitCursor=False):
            self.logic.applyModelInputWindow(self._parameterNode.inputVolume, self.logic.modelIds(self._parameterNode)[0])

    # --- segmentation run --------------------------------------------------------------------------
    def onRunButton(self) -> None:
        if self._runPoller.running:
            self._runPoller.cancel()  # returns at once; the poll reports the end
            return
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            missing = self.logic.missingModels(*self.logic.modelIds(node))
            if missing and not slicer.util.confirmOkCancelDisplay(
                    self.logic.downloadConsentText(missing), windowTitle=_("Download models")):
                return
            self.ui.logTextEdit.clear()
            self._runPoller.start(self.logic.startSegmentationFromParameters(node, allowDownload=bool(missing)))
            self._onParameterNodeModified()

    def _onSegmentationFinished(self, segmentationNode) -> None:
        # the logic's parameter node: the widget's may be disconnected while the module is hidden
        self.logic.getParameterNode().outputSegmentation = segmentationNode
        self.ui.progressLabel.text = _("Done: {name}").format(name=segmentationNode.GetName())

    # --- measurements ------------------------------------------------------------------------------
    def _updateMeasurements(self) -> None:
        report = self._live.update_measurements()
        if report.table_node is not None:
            self.ui.measurementsTableView.setMRMLTableNode(report.table_node)
        self.ui.liveStatusLabel.text = report.error or ""
        if report.new_error:
            logging.warning(f"LiverTumorSeg measurements: {report.error}")

    def onAddHuRangeSegment(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to add the HU-range segment."), waitCursor=True):
            self.logic.addHuRangeSegment(node.outputSegmentation, node.inputVolume, node.huLowerHu, node.huUpperHu)

    # --- resection planning ------------------------------------------------------------------------
    def onComputeFlr(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot compute the future liver remnant."), waitCursor=True):
            self._showFlr(self.logic.computeFlr(self._live, self._parameterNode))

    def onFlipPlane(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot flip the resection plane."), waitCursor=False):
            self.logic.flipResectionPlane(self._parameterNode.resectionPlane)

    def _updateFlr(self) -> None:
        report = self.logic.updateLiveFlr(self._live, self.logic.getParameterNode())
        if report.error is not None:
            self.ui.flrStatusLabel.text = report.error
        elif report.flr is not None:
            self._showFlr(report.flr)

    # --- results to DICOM ---------------------------------------------------------------------------
    def onExportDicom(self) -> None:
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Export to DICOM failed."), waitCursor=True):
            planner = self._live.planner
            flr = planner.last.result.figures.to_dict() if planner is not None and planner.last else None
            paths = self.logic.exportToDicom(node.outputSegmentation, node.inputVolume, flrFigures=flr)
            if paths:
                self.ui.exportStatusLabel.text = _(
                    "DICOM SEG and report added to the DICOM database under the CT's study: {files}. Send them "
                    "with the DICOM module.").format(files=", ".join(path.name for path in paths))

    def _showFlr(self, result) -> None:
        figures = result.result.figures.to_dict()
        self.ui.flrTableView.setMRMLTableNode(result.table_node)
        self.ui.flrStatusLabel.text = _("FLR {flr:.0f} mL ({ratio:.1%} of the functional liver): {verdict}").format(
            flr=figures["flr_ml"], ratio=figures["flr_ratio"], verdict=figures["verdict"])


class LiverTumorSegLogic(ScriptedLoadableModuleLogic):
    """Scriptable logic (usable from the Python console without the widget).

    Example::

        logic = LiverTumorSegLogic()
        seriesUIDs = logic.importDicomFolder("/data/patient01")
        volumeNode = logic.loadDicomSeries(logic.dicomSeriesChoice(seriesUIDs).best.series_uid)
        segmentationNode = logic.process(volumeNode, "demo-liver-segresnet", "demo-tumor-segresnet", wait=True)
    """

    def getParameterNode(self):
        return LiverTumorSegParameterNode(super().getParameterNode())

    @staticmethod
    def slicerSupported() -> bool:
        from LiverTumorSegLib.resources import MINIMUM_SLICER_VERSION

        return (slicer.app.majorVersion, slicer.app.minorVersion) >= MINIMUM_SLICER_VERSION

    @staticmethod
    def isFolder(path) -> bool:
        return bool(path) and str(path) not in ("", ".") and pathlib.Path(path).is_dir()

    # --- models ---
    @staticmethod
    def modelChoices(stage: str):
        """The items of the liver or tumor model combo box (``models.selection.model_choices``)."""
        from LiverTumorSegLib.models.manifest import load_manifest
        from LiverTumorSegLib.models.selection import model_choices

        return model_choices(load_manifest(), stage)

    @staticmethod
    def modelIds(parameterNode) -> tuple[str, str]:
        """(liver model id, tumor model id or "none") to use: the stored choice, else the manifest's default."""
        from LiverTumorSegLib.models.manifest import load_manifest
        from LiverTumorSegLib.models.selection import resolve_model_id

        manifest = load_manifest()
        return (resolve_model_id(parameterNode.liverModelId, manifest, "liver"),
                resolve_model_id(parameterNode.tumorModelId, manifest, "tumor"))

    # --- DICOM ---
    def importDicomFolder(self, folder) -> list[str]:
        """Import ``folder`` into Slicer's DICOM database (blocking; the widget imports in the background) and
        return the UIDs of its series."""
        from DICOMLib import DICOMUtils

        from LiverTumorSegLib.gui.dicom import openDicomDatabase
        from LiverTumorSegLib.scene.dicom_database import series_in_folder

        database = openDicomDatabase()
        DICOMUtils.importDicom(str(folder), database)
        return series_in_folder(database, folder)

    def dicomSeriesChoice(self, seriesUIDs):
        """The series to segment among ``seriesUIDs`` of the DICOM database and why (``io.series_choice``)."""
        from LiverTumorSegLib.gui.dicom import openDicomDatabase
        from LiverTumorSegLib.scene.dicom_database import choose_from_database

        return choose_from_database(openDicomDatabase(), seriesUIDs)

    @staticmethod
    def seriesPickerRows(choice):
        from LiverTumorSegLib.io.series_choice import picker_rows

        return picker_rows(choice)

    def loadDicomSeries(self, seriesUID: str, onProgress=None):
        """Load one series with Slicer's DICOM plugins (UIDs, patient/study, regularization); the volume node."""
        from LiverTumorSegLib.gui.dicom import loadSeries

        return loadSeries(seriesUID, onProgress)

    def applyWindowPreset(self, volumeNode, presetId: str) -> None:
        """Apply the HU window preset ``presetId`` (ids in Resources/hu_window_presets.json)."""
        from LiverTumorSegLib.scene import input as scene_input

        scene_input.apply_window_preset(volumeNode, presetId)

    def applyModelInputWindow(self, volumeNode, modelId: str) -> None:
        """Window the CT to the input range of ``modelId`` (how the model sees the intensities)."""
        from LiverTumorSegLib.core.hu_windows import model_input_window
        from LiverTumorSegLib.models.manifest import load_manifest
        from LiverTumorSegLib.scene import volumes as scene

        window = model_input_window(load_manifest()[modelId].intensity)
        if window is None:
            raise ValueError(f"model {modelId} normalizes intensities per image; it has no fixed HU window")
        scene.apply_hu_window(volumeNode, window)

    # --- segmentation ---
    def ensureDependencies(self, askUser: bool = True, inTesting: bool = False) -> bool:
        """Install torch (PyTorchUtils) and Resources/requirements.txt (pip_ensure) after asking."""
        from LiverTumorSegLib.gui.dependencies import ensurePythonPackages
        from LiverTumorSegLib.resources import REQUIREMENTS_FILE

        return ensurePythonPackages([REQUIREMENTS_FILE], _("Liver segmentation"), askUser, inTesting)

    def exportToDicom(self, segmentationNode, volumeNode, flrFigures=None, askUser: bool = True) -> list[pathlib.Path]:
        """Write a DICOM SEG and a DICOM SR (TID 1500) of the CURRENT segments of ``segmentationNode`` and import
        them into Slicer's DICOM database, under the study of ``volumeNode`` (a CT loaded from that database).
        ``flrFigures``: the planned resection's figures (``FLRFigures.to_dict()``), else the FLR table's.
        Returns the files' names as written (the database keeps copies); [] when the user declined the install."""
        import shutil
        import time

        from DICOMLib import DICOMUtils

        from LiverTumorSegLib.scene import dicom_export

        if not self.ensureDependencies(askUser):  # highdicom is among the worker's requirements
            return []
        database = slicer.dicomDatabase
        if database is None or not database.isOpen:
            raise ValueError(_("Slicer's DICOM database is not open: open the DICOM module once, then export."))
        outDir = pathlib.Path(slicer.app.temporaryPath) / "LiverTumorSeg-DICOM-export" / time.strftime("%Y%m%d-%H%M%S")
        try:
            return dicom_export.export_to_dicom_database(
                segmentationNode, volumeNode, outDir, file_for_instance=database.fileForInstance,
                import_files=lambda paths: DICOMUtils.importDicom(str(outDir), database, copyFiles=True),
                flr=flrFigures)
        finally:
            shutil.rmtree(outDir, ignore_errors=True)

    @staticmethod
    def missingModels(liverModelId: str, tumorModelId: str | None = None) -> list:
        """Manifest entries of the chosen models whose weights are not on this computer yet."""
        from LiverTumorSegLib.models.manifest import load_manifest
        from LiverTumorSegLib.models.registry import missing_models
        from LiverTumorSegLib.models.selection import tumor_model_or_none

        manifest = load_manifest()
        chosen = [model_id for model_id in (liverModelId, tumor_model_or_none(tumorModelId or "")) if model_id]
        return missing_models([manifest[model_id] for model_id in chosen if model_id in manifest])

    @staticmethod
    def downloadConsentText(entries: list) -> str:
        """What the user agrees to before a first run downloads ``entries`` (model, size, licence, source, citation)."""
        from LiverTumorSegLib.models.registry import consent_text

        return consent_text(entries) + "\n\n" + _("Download them now and run? Progress and Cancel as for a run.")

    def startSegmentationFromParameters(self, parameterNode, launcher=None, allowDownload: bool = False):
        """Start the run the panel describes: its CT, models (defaults when not chosen) and options. With
        ``allowDownload`` the worker first fetches models missing from the cache (ask the user before)."""
        from LiverTumorSegLib.models.selection import tumor_model_or_none

        liverId, tumorId = self.modelIds(parameterNode)
        return self.startSegmentation(parameterNode.inputVolume, liverId, tumor_model_or_none(tumorId),
                                      device=parameterNode.device.value, minTumorMl=parameterNode.minTumorMl,
                                      perLesionSegments=parameterNode.perLesionSegments, launcher=launcher,
                                      allowDownload=allowDownload)

    def startSegmentation(self, volumeNode, liverModelId: str, tumorModelId: str | None, device: str = "auto",
                          minTumorMl: float = MIN_TUMOR_ML, perLesionSegments: bool = False, launcher=None,
                          allowDownload: bool = False):
        """Start the cascade in a background process; returns the run (poll, cancel, finish)."""
        from LiverTumorSegLib.scene.run import SegmentationRun, slicer_launcher

        run = SegmentationRun(volumeNode, liver_model=liverModelId, tumor_model=tumorModelId, device=device,
                              min_tumor_ml=minTumorMl, per_lesion_segments=perLesionSegments,
                              launcher=launcher or slicer_launcher, allow_download=allowDownload)
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

    # --- measurements and FLR ---
    @staticmethod
    def liveUpdates(schedule=None):
        """The live measurements and FLR of one panel (``scene.live.LiveUpdates``)."""
        from LiverTumorSegLib.scene.live import LiveUpdates

        return LiveUpdates(schedule)

    @staticmethod
    def flrParameters(parameterNode) -> dict:
        """The FLR parameters of the panel (``scene.flr.FLRParameters`` fields)."""
        return {
            "resection_segment_id": (parameterNode.paintedSegmentId or None) if parameterNode.usePainted else None,
            "margin_mm": parameterNode.marginMm if parameterNode.useMargin else None,
            "drop_disconnected": parameterNode.dropDisconnected,
            "height_cm": parameterNode.heightCm or None,
            "weight_kg": parameterNode.weightKg or None,
            "condition": parameterNode.liverCondition.value,
        }

    def liveSettings(self, parameterNode, visible: bool = True):
        """What the live updates follow (``scene.live.LiveSettings``) from the panel's parameters."""
        from LiverTumorSegLib.scene.live import LiveSettings

        planes = (parameterNode.resectionPlane,) if parameterNode.usePlane and parameterNode.resectionPlane else ()
        return LiveSettings(parameterNode.outputSegmentation, parameterNode.inputVolume, visible=visible,
                            live_flr=parameterNode.liveFlr, plane_nodes=planes,
                            flr_parameters=self.flrParameters(parameterNode))

    def computeFlr(self, liveUpdates, parameterNode):
        """The "Compute FLR" button: compute now; an FLR output the user edited becomes the painted segment."""
        liveUpdates.sync(self.liveSettings(parameterNode, visible=liveUpdates.settings.visible))
        result = liveUpdates.compute_flr()
        self._takeReleased(parameterNode, result)
        return result

    def updateLiveFlr(self, liveUpdates, parameterNode):
        """A live FLR update after an edit (``scene.live.LiveReport``), released outputs taken as painted."""
        report = liveUpdates.update_flr()
        if report.flr is not None:
            self._takeReleased(parameterNode, report.flr)
        return report

    @staticmethod
    def _takeReleased(parameterNode, result) -> None:
        if result.released:
            parameterNode.paintedSegmentId = result.released[-1][1]
            parameterNode.usePainted = True

    @staticmethod
    def ensureResectionPlane(parameterNode):
        """The resection plane of the panel; an empty "Resection plane" markups node (to place) when there is none."""
        if parameterNode.resectionPlane is None:
            parameterNode.resectionPlane = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode",
                                                                             _("Resection plane"))
        return parameterNode.resectionPlane

    @staticmethod
    def flipResectionPlane(planeNode) -> None:
        from LiverTumorSegLib.scene.flr import flip_plane_normal

        flip_plane_normal(planeNode)

    def addHuRangeSegment(self, segmentationNode, volumeNode, lowerHu: float, upperHu: float) -> str:
        from LiverTumorSegLib.scene.results import add_hu_range_segment

        return add_hu_range_segment(segmentationNode, volumeNode, lowerHu, upperHu)


class LiverTumorSegTest(ScriptedLoadableModuleTest):
    """Self-tests: the scenarios of LiverTumorSegLib.testing.scenarios on SampleData's CTLiver (the headless suite
    runs the same scenarios on a phantom). Without torch the model scenarios are skipped, with a message."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        from LiverTumorSegLib.testing import scenarios

        scenarios.run_self_test(scenarios.SCENARIOS, scenarios.run, set_up=self.setUp, report=self.delayDisplay,
                                ensure_dependencies=lambda: LiverTumorSegLogic().ensureDependencies(
                                    askUser=False, inTesting=True))

    def test_scenarios(self) -> None:
        """Every shared scenario (see LiverTumorSegLib.testing.scenarios.SCENARIOS)."""
        self.runTest()
