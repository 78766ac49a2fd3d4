"""Scene bridge: core results to MRML nodes and back (volumes, segmentations, tables, markups). Imports
``slicer`` MRML classes and ``slicer.util`` array helpers, never Qt and never ``slicer.app``, so it runs inside
Slicer and headless on the slicer-core wheel.
"""
