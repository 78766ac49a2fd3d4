"""KU Leuven's liver and liver-lesion CT networks (``pyliverlesionseg`` 0.3, Apache-2.0) ported to PyTorch.

- ``config``: the two U-Net configurations and the package's size bookkeeping (numpy only);
- ``convert``: Keras 2.2 HDF5 weights -> PyTorch state dict (h5py, numpy);
- ``networks``: the PyTorch ``UNetLike`` with float64 patch statistics (torch);
- ``resample``: exact re-implementations of the package's resampling (pymirc ``zoom3d``, scipy zoom);
- ``pipeline``: the publisher's liver and lesion pipelines on SimpleITK images (no torch);
- ``stages``: those pipelines as cascade stages of a loaded network (``LoadedModel.stage``).

Where our code does something other than the package, a comment says ``DEVIATION``; the model cards
(``Resources/Models/cards``) list each deviation with its measured effect.
"""
