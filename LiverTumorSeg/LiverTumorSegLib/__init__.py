"""LiverTumorSeg library, in subpackages by layer and role (docs/architecture.md has the rules):

- ``core``: compute core (cascade, inference, preprocessing, measurements, FLR, HU windows, terminology);
  numpy, SimpleITK, torch and MONAI, never ``slicer`` or Qt;
- ``io``: files in and out (DICOM series, ``.seg.nrrd``, preview PNGs);
- ``models``: the model manifest, the model cache and downloads, building the networks;
- ``worker``: the background process (job file, progress lines, cancel) and the client that starts it;
- ``scene``: the scene bridge, core results to MRML nodes and back, segment roles, live updates, DICOM database
  queries, stale runs; ``slicer`` MRML, never Qt;
- ``gui``: what both modules' widgets share (Qt); used by the module files only;
- ``cli``: the ``livertumor`` command over the functions above;
- ``synthetic``, ``training``, ``testing``: phantoms, model training and evaluation, test scenarios
  (not installed into Slicer, except the self-test scenarios that work on any CT).
"""
