"""DICOM through Slicer's database: import a folder in the background, load a series with Slicer's DICOM plugins.

Loading through the plugins (DICOMScalarVolumePlugin) gives the volume its DICOM instance UIDs, places it under
its patient and study in the subject hierarchy and, for a tilted or irregular series, adds Slicer's acquisition
regularization transform: what DICOM SEG export and the result's placement (``scene.results.import_results``)
rely on. Which series to load is decided in ``scene.dicom_database`` / ``io.series_choice``; this file only talks
to ctk, Qt and DICOMLib (GUI layer).
"""

from __future__ import annotations

from pathlib import Path

import slicer
from slicer.i18n import tr as _

from LiverTumorSegLib.scene import dicom_database


def openDicomDatabase():
    """Slicer's DICOM database, or ``RuntimeError`` saying how to get one."""
    database = getattr(slicer, "dicomDatabase", None)
    if database is None or not database.isOpen:
        raise RuntimeError(_("Slicer's DICOM database is not open. Open the DICOM module once (it creates the "
                             "database), then load the folder again."))
    return database


class DicomFolderImport:
    """Indexes a folder into Slicer's DICOM database without blocking the GUI (``ctkDICOMIndexer`` with background
    import). ``onProgress(percent, text)`` while it runs; ``onDone(seriesUIDs)`` with the series of the folder."""

    def __init__(self, onProgress, onDone) -> None:
        self.onProgress, self.onDone = onProgress, onDone
        self.indexer = None
        self.folder = None

    @property
    def running(self) -> bool:
        return self.indexer is not None

    def start(self, folder) -> None:
        import ctk

        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(_("{folder} is not a folder").format(folder=folder))
        database = openDicomDatabase()
        self.folder = folder
        self.indexer = ctk.ctkDICOMIndexer()
        self.indexer.setDatabase(database)
        self.indexer.backgroundImportEnabled = True
        self.indexer.connect("progress(int)", lambda percent: self.onProgress(percent, ""))
        self.indexer.connect("progressDetail(QString)", lambda text: self.onProgress(None, text))
        self.indexer.connect("indexingComplete(int,int,int,int)", self._onComplete)
        self.onProgress(0, _("Importing {folder} into the DICOM database...").format(folder=folder))
        self.indexer.addDirectory(str(folder))

    def cancel(self) -> None:
        if self.indexer is not None:
            self.indexer.cancel()

    def _onComplete(self, patients, studies, series, images) -> None:
        indexer, self.indexer = self.indexer, None
        if indexer is None:
            return
        self.onDone(dicom_database.series_in_folder(openDicomDatabase(), self.folder))


def loadSeries(seriesUID: str, onProgress=None):
    """Load one series with Slicer's DICOM plugins; returns its scalar volume node (``RuntimeError`` with the
    plugins' messages when the series gives none)."""
    from DICOMLib import DICOMUtils

    openDicomDatabase()
    messages: list[str] = []

    def progress(step, percent):
        if onProgress is not None:
            onProgress(int(percent), str(step))
        return False  # never cancel

    nodeIDs = DICOMUtils.loadSeriesByUID([seriesUID], messages=messages, progressCallback=progress)
    volumes = [node for node in (slicer.mrmlScene.GetNodeByID(nodeID) for nodeID in nodeIDs)
               if node is not None and node.IsA("vtkMRMLScalarVolumeNode")]
    if not volumes:
        raise RuntimeError(_("The series could not be loaded as a volume. {messages}").format(
            messages=" ".join(messages)))
    return volumes[0]
