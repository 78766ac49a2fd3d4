"""LiverTumorSeg library.

Compute core (no ``slicer``, no Qt): DICOM input, synthetic phantom, HU windows, previews, inference,
FLR. Scene bridge (``scene``): MRML nodes to and from core results; imports ``slicer`` but never Qt.
"""
