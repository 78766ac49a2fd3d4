"""Files in and out: DICOM CT series (read, checked, written), Slicer ``.seg.nrrd`` files and preview PNGs.
Compute-core layer: never imports ``slicer`` or Qt.
"""
