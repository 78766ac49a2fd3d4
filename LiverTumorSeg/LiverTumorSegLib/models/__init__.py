"""Models as data: the manifest (``Resources/Models/models.json``), the model cache with verified downloads
and imports, and building a network from its entry. Never imports ``slicer`` or Qt.
"""
