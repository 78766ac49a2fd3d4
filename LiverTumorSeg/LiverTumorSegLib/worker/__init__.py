"""The background worker: the job file (``job``), the process entry point (``python -m LiverTumorSegLib.worker``,
``segmentation``), what all workers share (``runner``), the client that starts, watches and cancels one
(``process``) and the Python packages it needs (``dependencies``). Never imports ``slicer`` or Qt.
"""
