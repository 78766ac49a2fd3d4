"""Scene bridge of the staging module: lesions measured from the current segments, the staging run, the
result table. ``slicer`` MRML only, never Qt."""
