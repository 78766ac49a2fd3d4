"""Compute core: the cascade, sliding-window inference, model-space preprocessing, measurements, FLR and
resection geometry, HU windows, segment terminology, cancellation. Never imports ``slicer`` or Qt.
"""
